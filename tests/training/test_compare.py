from __future__ import annotations

import json

from app.cli import main


def test_compare_prints_a_papers_style_table(small_folder, tmp_path, capsys):
    out = tmp_path / "comparison"
    args = ["compare", "--data", str(small_folder), "--out", str(out), "--arch", "brnet", "elemnet", "rf"]
    assert main([*args, "--epochs", "1", "--batch-size", "100", "--rf-trees", "5"]) == 0
    table = capsys.readouterr().out
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| model | features | parameters | epochs | best epoch |")
    models = [line.split("|")[1].strip() for line in lines[2:]]
    assert models == ["BRNet", "ElemNet-17", "Random forest"]
    rows = json.loads((out / "comparison.json").read_text())
    assert [r["features"] for r in rows] == ["ef", "ef", "pa"]
    assert rows[0]["parameters"] == "4,548,385"
    assert all(r["test_mae"] > 0 for r in rows)
    assert (out / "brnet" / "best.pt").exists() and (out / "elemnet" / "log.csv").exists()
    assert "ibrnet compare" in (out / "comparison.md").read_text()
