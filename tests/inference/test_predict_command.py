"""``ibrnet predict``: no server, no database; a table or JSON; exit 1 when a formula is refused."""

from __future__ import annotations

import json

import pytest

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from app.cli import main
from tests.model_factory import reference_outputs


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["predict", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_table_with_every_property(capsys, standard_models):
    models_dir, _ = standard_models
    status, out, _ = run(capsys, "Fe2O3", "NaCl", "--models", str(models_dir))
    assert status == 0
    header, rule, *rows = out.splitlines()
    assert header.split()[:2] == ["formula", "composition"]
    assert "band_gap (eV)" in header and "volume_per_atom" in header
    assert set(rule) == {"-", " "}
    assert [row.split()[0] for row in rows] == ["Fe2O3", "NaCl"]
    assert "±" in rows[0]  # the ensemble's uncertainty


def test_bad_formulas_are_reported_per_row_and_fail_the_command(capsys, standard_models):
    models_dir, _ = standard_models
    status, out, _ = run(capsys, "NaCl", "Xx2", "He", "--models", str(models_dir))
    assert status == 1
    rows = out.splitlines()[2:]
    assert rows[0].startswith("NaCl")
    assert rows[1].startswith("Xx2") and "unknown_element" in rows[1]
    assert rows[2].startswith("He") and "unsupported_element" in rows[2]


def test_json_output_matches_the_model(capsys, standard_models):
    models_dir, folders = standard_models
    status, out, _ = run(capsys, "GaAs", "--json", "--properties", "band_gap", "--models", str(models_dir))
    assert status == 0
    (result,) = json.loads(out)["results"]
    assert result["formula"] == "GaAs" and result["composition"] == "GaAs"
    expected = reference_outputs(folders["band_gap"], get_featurizer("ef").transform([parse_formula("GaAs")]))
    assert list(result["predictions"]) == ["band_gap"]
    assert result["predictions"]["band_gap"]["value"] == pytest.approx(expected[0, 0], rel=1e-5, abs=1e-5)
    assert result["predictions"]["band_gap"]["cached"] is False


def test_unknown_property_and_missing_models(capsys, standard_models, tmp_path):
    models_dir, _ = standard_models
    status, _, err = run(capsys, "NaCl", "--properties", "nope", "--models", str(models_dir))
    assert status == 2 and "unknown_property" in err
    status, _, err = run(capsys, "NaCl", "--models", str(tmp_path / "none"))
    assert status == 2 and "does not exist" in err and "no_models" in err
