"""An answer outside its model's training domain says so, and claims no interval.

The shipped band-gap model answered Si (one element; its training compounds have 2 to 7) with
0.0 +- 0.0 and the interval [0, 0]: a certainty calibrated on compositions unlike it. A model
whose manifest records its training domain (element counts, and how many training compounds hold
each element) now flags such answers (``in_domain: false`` with a ``domain_warning``) and serves
them without an interval, through /predict, the batch and its CSV, the cache, the CLI and screens.
"""

from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest

from app.chemistry.formula import parse_formula
from app.chemistry.ragged import RaggedBatch
from app.cli import main
from app.commands.predict import OUTSIDE_MARK
from app.inference.manifest import ModelManifest, TrainingDomain
from ibrnet.frames import results_frame
from tests.api.harness import flush_cache_writes, make_settings, oqmd_formulas, serve
from tests.model_factory import write_model
from tests.screening.helpers import all_results, wait_for
from training.domain import training_domain

pytestmark = pytest.mark.anyio

TRAIN_SAMPLE = 3000  # real OQMD train compounds: the test models' "training data"


@pytest.fixture(scope="module")
def domain() -> TrainingDomain:
    return training_domain(oqmd_formulas(TRAIN_SAMPLE, split="train"))


@pytest.fixture
def models(tmp_path, domain):
    root = tmp_path / "models"
    write_model(root / "bg", property_name="band_gap", unit="eV", seed=5, ensemble=True, domain=domain)
    write_model(
        root / "fe", property_name="formation_enthalpy", unit="eV/atom", seed=4, ensemble=True,
        elements_are_zero=True, domain=domain,
    )  # fmt: skip
    write_model(root / "vol", property_name="volume_per_atom", unit="Å³/atom", seed=3)  # no domain recorded
    return root


def rare_element(domain: TrainingDomain) -> str:
    """A featurizable element fewer than min_compounds of the sample's compounds contain."""
    from app.chemistry.featurizers import get_featurizer

    return next(e for e in get_featurizer("ef").labels if domain.elements.get(e, 0) < domain.min_compounds)


def test_the_domain_is_counted_from_the_training_compounds(domain):
    formulas = oqmd_formulas(TRAIN_SAMPLE, split="train")
    sizes = [len(parse_formula(text).elements) for text in formulas]
    assert domain.element_counts == (min(sizes), max(sizes))
    assert domain.elements["O"] == sum("O" in parse_formula(text).elements for text in formulas)


def test_each_reason_is_named():
    domain = TrainingDomain(element_counts=(2, 3), elements={"Fe": 20, "O": 20, "Kr": 3}, min_fraction=0.01)
    assert domain.warning(parse_formula("Fe2O3")) is None
    absent = domain.warning(parse_formula("FeF2"))
    assert absent == {"code": "rare_element", "message": "outside the training domain: no training "
                      "compound contains F"}  # fmt: skip
    rare = domain.warning(parse_formula("KrO2"))["message"]
    assert rare.endswith("few training compounds contain Kr in 3 (fewer than 10)")
    trace = domain.warning(parse_formula("Fe10000O0.001"))
    assert (
        trace["code"] == "trace_element"
        and "O is 1e-07 of the atoms; no element is under 0.01" in (trace["message"])
    )
    several = domain.warning(parse_formula("Fe"))["message"]
    assert "a single element; the model's training compounds have 2 to 3" in several
    assert domain.warning(parse_formula("Fe"), exact_for_elements=True) is None


def test_the_batch_rule_agrees_with_the_per_formula_rule(domain):
    formulas = [*oqmd_formulas(2000, split="test"), "Si", "Fe", f"{rare_element(domain)}F2", "LiNaKRbCsFrO",
                "Fe10000Si0.0001", "Fe0.999Ni0.001O"]  # fmt: skip
    parsed = [parse_formula(text) for text in formulas]
    batch = RaggedBatch.from_formulas(parsed)
    for exact in (False, True):
        inside = domain.inside(batch, exact)
        expected = [domain.warning(formula, exact) is None for formula in parsed]
        assert inside.tolist() == expected
    assert 0 < sum(expected) < len(expected)  # both kinds are among them


async def test_answers_outside_the_domain_say_so_and_have_no_interval(models, tmp_path, domain):
    rare = rare_element(domain)
    inside = next(t for t in oqmd_formulas(50) if domain.warning(parse_formula(t)) is None)
    settings = make_settings(models, f"sqlite:///{tmp_path / 'cache.db'}")
    async with serve(settings) as (app, client):
        si = (await client.post("/predict", json={"formula": "Si"})).json()["predictions"]
        gap = si["band_gap"]
        assert gap["in_domain"] is False and gap["interval"] is None
        assert gap["domain_warning"]["code"] == "element_count"
        low, high = domain.element_counts
        assert (
            f"a single element; the model's training compounds have {low} to {high}"
            in (gap["domain_warning"]["message"])
        )
        assert gap["value"] is not None and gap["uncertainty"] is not None  # still answered
        # An element's formation enthalpy is 0 by definition: exact, so inside.
        assert si["formation_enthalpy"]["in_domain"] is True
        assert si["formation_enthalpy"]["interval"] is not None
        assert si["volume_per_atom"]["in_domain"] is None  # its manifest records no domain

        ordinary = (await client.post("/predict", json={"formula": inside})).json()["predictions"]
        assert ordinary["band_gap"]["in_domain"] is True and ordinary["band_gap"]["domain_warning"] is None
        assert ordinary["band_gap"]["interval"] is not None

        formulas = [inside, f"{rare}F2", "Si", "Fe10000Si0.0001"]
        batch = await client.post("/predict/batch", json={"formulas": formulas})
        flags = [row["predictions"]["band_gap"] for row in batch.json()["results"]]
        assert [flag["in_domain"] for flag in flags] == [True, False, False, False]
        assert flags[3]["domain_warning"]["code"] == "trace_element"  # pure Fe, to any network
        assert flags[1]["domain_warning"]["code"] == "rare_element"
        assert f"{rare} in {domain.elements.get(rare, 0)}" in flags[1]["domain_warning"]["message"]
        frame = results_frame(batch.json()["results"])  # the Python client's DataFrame of these answers
        assert frame["band_gap_in_domain"].tolist() == [True, False, False, False]
        assert frame["band_gap_domain_warning"][1] == flags[1]["domain_warning"]["message"]
        assert frame["band_gap_domain_code"].tolist() == [
            None,
            "rare_element",
            "element_count",
            "trace_element",
        ]
        assert "volume_per_atom_in_domain" not in frame  # no domain recorded: no column

        as_csv = await client.post(
            "/predict/batch", json={"formulas": [inside, "Si"]}, headers={"accept": "text/csv"}
        )
        rows = list(csv.DictReader(io.StringIO(as_csv.text)))
        assert [row["band_gap_in_domain"] for row in rows] == ["true", "false"]
        assert rows[1]["band_gap_low"] == "" and rows[0]["band_gap_low"] != ""
        assert rows[1]["band_gap_domain_warning"] == gap["domain_warning"]["message"]
        assert [row["band_gap_domain_code"] for row in rows] == ["", "element_count"]
        assert [row["volume_per_atom_in_domain"] for row in rows] == ["", ""]
        await flush_cache_writes(app)

    async with serve(settings) as (_, client):  # from the cache after a restart: the same flags
        again = (await client.post("/predict", json={"formula": "Si"})).json()["predictions"]["band_gap"]
        assert again["cached"] is True
        assert again["in_domain"] is False and again["interval"] is None


async def test_a_screen_flags_its_rows_and_can_keep_only_those_inside(models, tmp_path, domain):
    rare = rare_element(domain)
    inside = next(t for t in oqmd_formulas(50) if domain.warning(parse_formula(t)) is None)
    formulas = [inside, "Si", f"{rare}F2", "Xx"]
    settings = make_settings(models, f"sqlite:///{tmp_path / 'cache.db'}")
    async with serve(settings) as (_, client):
        body = {"formulas": formulas, "properties": ["band_gap", "formation_enthalpy"]}
        job = await wait_for(client, (await client.post("/screen", json=body)).json()["id"])
        rows = await all_results(client, job["id"])
        assert [row.get("in_domain") for row in rows] == [True, False, False, None]  # None: refused
        # Which model it is outside of, as /predict says: Si's formation enthalpy is exact (inside).
        si = rows[1]["predictions"]
        assert si["band_gap"]["in_domain"] is False and si["formation_enthalpy"]["in_domain"] is True
        assert rows[0]["predictions"]["band_gap"]["in_domain"] is True

        # An uncertainty outside the domain says nothing: it never passes an uncertainty bound.
        for bound in ({"filters": {"band_gap": {"max_uncertainty": 1e9}}}, {"max_uncertainty": 1e9}):
            certain = await client.post("/screen", json={**body, **bound})
            kept = await all_results(client, (await wait_for(client, certain.json()["id"]))["id"])
            assert [row["formula"] for row in kept] == [inside], bound
        assert results_frame(rows, index=True)["in_domain"].tolist() == [True, False, False, pd.NA]

        only = await client.post("/screen", json={**body, "in_domain_only": True})
        kept = await all_results(client, (await wait_for(client, only.json()["id"]))["id"])
        assert [row["formula"] for row in kept] == [inside]

        download = await client.get(f"/screen/{job['id']}/results", params={"format": "csv"})
        table = list(csv.DictReader(io.StringIO(download.text)))
        assert [row["in_domain"] for row in table] == ["true", "false", "false", ""]
        # ... and per property, as /predict/batch's CSV: Si is outside for band gap only.
        assert [row["band_gap_in_domain"] for row in table] == ["true", "false", "false", ""]
        assert [row["formation_enthalpy_in_domain"] for row in table] == ["true", "true", "false", ""]
        parquet = await client.get(f"/screen/{job['id']}/results", params={"format": "parquet"})
        frame = pd.read_parquet(io.BytesIO(parquet.content))
        assert frame["formation_enthalpy_in_domain"].tolist() == [True, True, False, None]

        # Only formation enthalpies: an element's is exact, so Si is inside.
        fe = await client.post("/screen", json={"formulas": ["Si"], "properties": ["formation_enthalpy"]})
        assert (await all_results(client, (await wait_for(client, fe.json()["id"]))["id"]))[0]["in_domain"]


def test_the_cli_table_marks_answers_outside(models, capsys):
    status = main(["predict", "Si", "Fe2O3", "--properties", "band_gap", "--models", str(models)])
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    si, fe2o3 = lines[2], lines[3]
    assert si.startswith("Si") and si.endswith(f" {OUTSIDE_MARK}")
    assert fe2o3.startswith("Fe2O3") and not fe2o3.endswith(OUTSIDE_MARK)
    assert lines[4].startswith(f"{OUTSIDE_MARK} outside the model's training domain")

    status = main(["predict", "Si", "--json", "--properties", "band_gap", "--models", str(models)])
    answer = json.loads(capsys.readouterr().out)["results"][0]["predictions"]["band_gap"]
    assert answer["in_domain"] is False and answer["interval"] is None


def test_equal_domains_compare_equal(domain):
    assert TrainingDomain(**domain.model_dump()) == domain
    assert TrainingDomain(**{**domain.model_dump(), "min_compounds": 2}) != domain


@pytest.mark.slow
def test_dask_workers_flag_rows_as_the_local_screen_does(models, tmp_path):
    import pandas as pd

    from tests.screening.test_screen_cli import ibrnet_screen, read

    common = ["--chemsys", "Li-Fe-O", "--max-atoms", "6", "--models", str(models), "--properties",
              "band_gap", "formation_enthalpy"]  # fmt: skip
    ibrnet_screen(*common, "--out", str(tmp_path / "all.parquet"), cwd=tmp_path)
    kept = ["--in-domain-only", "--out"]
    ibrnet_screen(*common, *kept, str(tmp_path / "local.parquet"), cwd=tmp_path)
    on_dask = ["--dask", "local:2", "--partition-size", "16"]
    ibrnet_screen(*common, *on_dask, *kept, str(tmp_path / "dask.parquet"), cwd=tmp_path)
    everything = read(tmp_path / "all.parquet")
    flags = dict(zip(everything["composition"], everything["in_domain"].tolist(), strict=True))
    assert [flags["Li"], flags["Fe2O3"]] == [False, True]  # the band gap of an element is outside
    local, dask = read(tmp_path / "local.parquet"), read(tmp_path / "dask.parquet")
    assert list(local["composition"]) == [key for key, flag in flags.items() if flag]
    pd.testing.assert_frame_equal(local, dask)


def test_a_dask_worker_with_another_training_domain_refuses(models, tmp_path, domain):
    """The domain decides the answers' flags but not their values or the model version: a worker
    whose model.json records another one must not screen (its rows would be flagged otherwise)."""
    import shutil

    from app.inference.registry import ModelRegistry
    from app.screening import dask_runner
    from app.screening.compute import ScreenModels

    registry = ModelRegistry.load(models, device="cpu", intra_op_threads=1, prefer_int8_on_cpu=False)
    client_models = ScreenModels.from_registry(registry, ["band_gap"])
    worker_dir = tmp_path / "worker-models"
    shutil.copytree(models, worker_dir)
    spec = dask_runner.ModelSpec.of(client_models, worker_dir)
    manifest = ModelManifest.load(worker_dir / "bg")
    manifest.domain = TrainingDomain(**{**domain.model_dump(), "min_compounds": 1})
    manifest.save(worker_dir / "bg")
    with pytest.raises(RuntimeError, match="give every worker the same model files"):
        dask_runner.worker_models(spec)


async def test_outside_the_domain_e_above_hull_claims_no_p_stable(tmp_path, domain, paper_reference):
    # p_stable is read from the same calibrated sigma as the interval: outside the source model's
    # domain it said 0.15 for Fe10000Si0.0001 while the interval was (rightly) withheld.
    root = tmp_path / "models"
    write_model(
        root / "mp", property_name="formation_energy_mp", unit="eV/atom", seed=7, ensemble=True,
        elements_are_zero=True, domain=domain,
    )  # fmt: skip
    trace = "Li10000O0.001"  # oxygen 1e-7 of the atoms: pure lithium to any network
    assert domain.warning(parse_formula(trace))["code"] == "trace_element"
    settings = make_settings(root, f"sqlite:///{tmp_path / 'cache.db'}", hull_reference=paper_reference)
    async with serve(settings) as (_, client):
        answers = {
            formula: (await client.post("/predict", json={"formula": formula})).json()["predictions"]
            for formula in ("Li2O", trace)
        }
        job = await client.post("/screen", json={"formulas": [trace, "Li2O"], "sort_by": "p_stable"})
        rows = await all_results(client, (await wait_for(client, job.json()["id"]))["id"])
    inside, outside = answers["Li2O"]["e_above_hull"], answers[trace]["e_above_hull"]
    assert inside["in_domain"] is True and 0 <= inside["p_stable"] <= 1
    assert outside["in_domain"] is False and outside["value"] is not None
    assert outside["p_stable"] is None and outside["interval"] is None
    # a screen says the same, and ranks the row without one last
    assert [row["formula"] for row in rows] == ["Li2O", trace]
    assert rows[1]["predictions"]["e_above_hull"]["p_stable"] is None
