"""The page at ``/`` in a real browser (Debian's Chromium) against a real ``ibrnet serve``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from tests.api.harness import oqmd_formulas

pytestmark = pytest.mark.slow

# Real OQMD test formulas (distinct compositions) and one the service refuses.
REAL = oqmd_formulas(6, split="test")
REFUSED = "Xx2"


def value_of(row, selector: str) -> str:
    """The exact number a cell holds (``data-value``; the text shows it rounded)."""
    return row.query_selector(selector).get_attribute("data-value")


def number_or_none(text: str) -> float | None:
    return float(text) if text else None


def served_values(server: str, formula: str) -> dict[str, float]:
    answer = httpx.post(f"{server}/predict", json={"formula": formula}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {name: p["value"] for name, p in answer.json()["predictions"].items()}


def test_a_typed_formula_shows_the_services_own_values(page, server, screenshots_dir):
    formula = REAL[0]
    page.fill("#single-formula", formula)
    page.press("#single-formula", "Enter")  # the keyboard submits; no mouse needed
    page.wait_for_selector("#single-result [data-role=composition]")
    expected = served_values(server, formula)
    shown = {
        row.get_attribute("data-property"): number_or_none(value_of(row, "[data-role=value]"))
        for row in page.query_selector_all("#single-result tr[data-property]")
    }
    assert shown == expected
    # Every model's value is shown; e_above_hull has none here (Al, Sm, Tm are outside the Li-O
    # reference), and the page says why.
    assert all(shown[name] is not None for name in shown if name != "e_above_hull")
    assert shown["e_above_hull"] is None
    assert "no compound of the hull reference contains" in page.inner_text("#single-result")
    composition = httpx.post(f"{server}/predict", json={"formula": formula}, timeout=30).json()["composition"]
    assert page.inner_text("#single-result [data-role=composition]") == composition
    page.screenshot(path=screenshots_dir / "one-formula.png")


def test_a_refused_formula_shows_its_code_message_and_offending_token(page, screenshots_dir):
    page.fill("#single-formula", "Fe2Xx3")
    page.click("#single-submit")
    box = page.wait_for_selector("#single-result .error")
    assert box.get_attribute("data-code") == "unknown_element"
    assert "Xx" in box.inner_text() and "position 3" in box.inner_text()
    assert page.inner_text("#single-result mark[data-role=offending-token]") == "Xx"
    page.screenshot(path=screenshots_dir / "refused-formula.png")


def test_a_pasted_list_gives_one_row_per_formula_in_order(page, server, screenshots_dir, tmp_path):
    formulas = [REAL[1], REFUSED, *REAL[2:6]]
    page.fill("#batch-input", "\n".join(formulas))
    page.click("#batch-submit")
    page.wait_for_selector("#batch-result tbody tr")
    rows = page.query_selector_all("#batch-result tbody tr")
    assert [row.query_selector("td:nth-child(2)").inner_text() for row in rows] == formulas
    refused = page.query_selector_all("#batch-result tr.refused")
    assert len(refused) == 1 and refused[0].get_attribute("data-index") == "1"
    assert refused[0].query_selector("td.refusal").get_attribute("data-code") == "unknown_element"
    assert page.inner_text("#batch-status") == f"{len(formulas)} formulas, 1 refused"
    # A value in the table is the service's own.
    expected = served_values(server, REAL[1])["formation_enthalpy"]
    assert float(value_of(rows[0], "td[data-property=formation_enthalpy]")) == expected
    page.screenshot(path=screenshots_dir / "many-formulas.png")

    # Sorting by a property (keyboard: focus the header button, press Enter) orders the rows by
    # value, the refused row last; the download is the whole list in input order.
    page.focus("#batch-result button[data-sort=formation_enthalpy]")
    page.keyboard.press("Enter")
    values = [
        value_of(row, "td[data-property=formation_enthalpy]")
        for row in page.query_selector_all("#batch-result tbody tr")
    ]
    numbers = [float(v) for v in values if v]
    assert numbers == sorted(numbers) and values[-1] == ""
    with page.expect_download() as download_info:
        page.click("#batch-download")
    path = tmp_path / "download.csv"
    download_info.value.save_as(path)
    table = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [row["formula"] for row in table] == formulas
    assert table[1]["error_code"] == "unknown_element" and table[0]["volume_per_atom_uncertainty"]
    assert {"p_stable", "known", "decomposition"} <= set(table[0])  # e_above_hull's own fields


def test_a_csv_upload_is_predicted_like_a_pasted_list(page, tmp_path):
    upload = tmp_path / "formulas.csv"
    upload.write_text(f"id,Formula\n1,{REAL[0]}\n2,{REFUSED}\n3,{REAL[3]}\n")
    page.set_input_files("#batch-file", str(upload))
    page.click("#batch-submit")
    page.wait_for_selector("#batch-result tbody tr")
    rows = page.query_selector_all("#batch-result tbody tr")
    assert [row.query_selector("td:nth-child(2)").inner_text() for row in rows] == [REAL[0], REFUSED, REAL[3]]


def test_a_csv_without_a_formula_column_is_explained(page, tmp_path):
    upload = tmp_path / "bad.csv"
    upload.write_text("name,energy\nrust,1\n")
    page.set_input_files("#batch-file", str(upload))
    page.click("#batch-submit")
    box = page.wait_for_selector("#batch-result .error")
    assert box.get_attribute("data-code") == "invalid_csv" and "formula" in box.inner_text()


def _progress_seen_mid_run(page) -> None:
    """Wait until the page shows the job running with some, not all, rows done."""
    page.wait_for_function(
        """() => {
            const bar = document.getElementById('screen-progress');
            return document.getElementById('screen-job').dataset.status === 'running'
                && bar.value > 0 && bar.value < bar.max;
        }""",
        timeout=60_000,
    )


def _run_screen(page, chemsys: str, max_atoms: int, sort_by: str) -> None:
    page.fill("#screen-chemsys", chemsys)
    page.fill("#screen-max-atoms", str(max_atoms))
    page.select_option("#screen-sort", sort_by)
    page.click("#screen-submit")


def test_a_binary_screen_runs_with_visible_progress_and_plots(page, server, screenshots_dir, tmp_path):
    _run_screen(page, "Fe-O", 12, "formation_enthalpy")
    _progress_seen_mid_run(page)
    page.screenshot(path=screenshots_dir / "screen-running.png")
    page.wait_for_selector("#screen-job[data-status=succeeded]", timeout=120_000)
    assert "succeeded" in page.inner_text("#screen-status") and "(100%)" in page.inner_text("#screen-status")
    # Both plots rendered by plotly (an SVG with data points), the map as a line over composition.
    page.wait_for_selector("#screen-histogram .main-svg")
    page.wait_for_selector("#screen-map .main-svg .scatterlayer .point")
    assert page.query_selector("#screen-map .main-svg .scatterlayer .js-line") is not None
    # Each plot fits its box (plotly sizes a plot once, from its node's width when drawn).
    fits = page.evaluate(
        """() => [...document.querySelectorAll('#screen-plots .plot')].map((node) =>
            node.querySelector('.main-svg').getBoundingClientRect().width <= node.clientWidth + 1)"""
    )
    assert fits == [True, True]
    # The ranked table agrees with the service's own results.
    rows = page.query_selector_all("#screen-result tbody tr")
    values = [float(value_of(row, "td[data-property=formation_enthalpy]")) for row in rows]
    assert len(rows) > 10 and values == sorted(values)
    jobs = httpx.get(f"{server}/screen", timeout=30).json()["jobs"]
    job_id = next(job["id"] for job in jobs if job["request"]["chemsys"] == "Fe-O")
    page_one = httpx.get(f"{server}/screen/{job_id}/results", params={"limit": 1}, timeout=30).json()
    first = page_one["results"][0]
    assert rows[0].query_selector("td:nth-child(2)").inner_text() == first["formula"]
    page.screenshot(path=screenshots_dir / "screen-binary.png", full_page=True)
    with page.expect_download() as download_info:
        page.click("#screen-download-parquet")
    assert download_info.value.suggested_filename == f"screen-{job_id}.parquet"
    download_info.value.save_as(tmp_path / "screen.parquet")
    assert Path(tmp_path / "screen.parquet").read_bytes()[:4] == b"PAR1"


def test_a_ternary_screen_draws_the_composition_triangle(page, screenshots_dir):
    _run_screen(page, "Li-Fe-O", 4, "band_gap")
    page.wait_for_selector("#screen-job[data-status=succeeded]", timeout=120_000)
    page.wait_for_selector("#screen-map .main-svg .ternary .scatterlayer .point")
    page.screenshot(path=screenshots_dir / "screen-ternary.png", full_page=True)


def test_a_running_screen_can_be_cancelled(page):
    _run_screen(page, "Li-Na-K-Fe-O", 10, "band_gap")
    _progress_seen_mid_run(page)
    page.click("#screen-cancel")
    page.wait_for_selector("#screen-job[data-status=cancelled]", timeout=60_000)
    assert "cancelled" in page.inner_text("#screen-status")


def test_a_refused_screen_shows_the_services_error(page):
    _run_screen(page, "Fe-Xx", 4, "band_gap")
    box = page.wait_for_selector("#screen-result .error")
    assert box.get_attribute("data-code") and "Xx" in box.inner_text()


def test_the_page_reads_well_on_a_phone(page, screenshots_dir):
    page.set_viewport_size({"width": 390, "height": 844})
    page.fill("#single-formula", REAL[0])
    page.press("#single-formula", "Enter")
    page.wait_for_selector("#single-result [data-role=composition]")
    # Nothing wider than the screen: tables scroll inside their own box.
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.screenshot(path=screenshots_dir / "phone.png")


def test_stability_fields_and_the_predicted_hull_are_shown(page, server, screenshots_dir):
    page.fill("#single-formula", "Li2O2")
    page.press("#single-formula", "Enter")
    row = page.wait_for_selector("#single-result tr[data-property=e_above_hull]")
    served = httpx.post(f"{server}/predict", json={"formula": "Li2O2"}, timeout=30).json()
    stability = served["predictions"]["e_above_hull"]
    assert float(value_of(row, "[data-role=value]")) == stability["value"]
    text = row.inner_text()
    assert "P(stable)" in text and "known compound, reference" in text and "Li2O" in text
    # A binary screen ranked by e_above_hull: the map draws the predicted hull as its own trace.
    _run_screen(page, "Li-O", 6, "e_above_hull")
    page.wait_for_selector("#screen-job[data-status=succeeded]", timeout=120_000)
    page.wait_for_selector("#screen-map .legendtext")
    legend = [node.text_content() for node in page.query_selector_all("#screen-map .legendtext")]
    assert "predicted hull" in legend
    page.screenshot(path=screenshots_dir / "screen-stability.png", full_page=True)


def test_an_answer_outside_the_training_domain_is_flagged(page, screenshots_dir):
    """Si has one element; the band-gap model's training compounds have 2 to 7: an extrapolation."""
    page.fill("#single-formula", "Si")
    page.press("#single-formula", "Enter")
    page.wait_for_selector("#single-result [data-role=composition]")
    warnings = page.query_selector_all("#single-result [data-role=domain-warning]")
    assert [w.get_attribute("data-property") for w in warnings] == ["band_gap"]
    assert "a single element; the model's training compounds have 2 to 7" in warnings[0].inner_text()
    interval = page.inner_text("#single-result tr[data-property=band_gap] [data-role=interval]")
    assert "outside training domain" in interval
    page.screenshot(path=screenshots_dir / "outside-domain.png")
