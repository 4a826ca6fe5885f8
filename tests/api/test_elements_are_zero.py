"""A formation energy of a single element is 0 by definition (its reference state), in every answer.

The training splits hold no single element, so the networks' guesses for one were arbitrary (the
shipped Materials Project model said +0.46 eV/atom for Si). A model whose manifest says
``elements_are_zero`` answers 0 with uncertainty 0 for an element, through /predict, the batch, a
screen and the cache; every other composition, and every other model, answers as before.
"""

from __future__ import annotations

import pytest

from tests.api.harness import flush_cache_writes, make_settings, serve
from tests.model_factory import reference_outputs, write_model
from tests.screening.helpers import all_results, wait_for

pytestmark = pytest.mark.anyio


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    write_model(
        root / "fe", property_name="formation_enthalpy", unit="eV/atom", seed=4, ensemble=True,
        elements_are_zero=True,
    )  # fmt: skip
    write_model(root / "bg", property_name="band_gap", unit="eV", seed=5)
    return root


def network_answer(app, folder, formula: str) -> float:
    model = app.state.registry.get("formation_enthalpy")
    parsed = app.state.predictor.parse(formula, model.elements)
    return float(reference_outputs(folder, model.featurizer.transform([parsed]))[0, 0])


async def test_an_element_has_formation_energy_zero_and_a_compound_the_networks(models, tmp_path):
    settings = make_settings(models, f"sqlite:///{tmp_path / 'cache.db'}")
    async with serve(settings) as (app, client):
        assert network_answer(app, models / "fe", "Si") != pytest.approx(0.0, abs=1e-3)  # what it was
        body = (await client.post("/predict", json={"formula": "Si"})).json()["predictions"]
        assert body["formation_enthalpy"]["value"] == 0.0
        assert body["formation_enthalpy"]["uncertainty"] == 0.0
        assert body["formation_enthalpy"]["interval"] == {"low": 0.0, "high": 0.0, "level": 0.9}
        # A model without the rule answers with its network.
        gap_features = app.state.registry.get("band_gap").featurizer.transform(
            [app.state.predictor.parse("Si", frozenset({"Si"}))]
        )
        assert body["band_gap"]["value"] == pytest.approx(
            float(reference_outputs(models / "bg", gap_features)[0, 0]), rel=1e-5, abs=1e-5
        )

        batch = await client.post("/predict/batch", json={"formulas": ["O2", "Fe2O3", "Fe"]})
        fe = [row["predictions"]["formation_enthalpy"]["value"] for row in batch.json()["results"]]
        assert fe[0] == 0.0 and fe[2] == 0.0
        assert fe[1] == pytest.approx(network_answer(app, models / "fe", "Fe2O3"), rel=1e-5, abs=1e-5)

        screen = await client.post(
            "/screen", json={"chemsys": "Fe-O", "max_atoms": 5, "properties": ["formation_enthalpy"]}
        )
        rows = await all_results(client, (await wait_for(client, screen.json()["id"]))["id"])
        by_key = {row["composition"]: row["predictions"]["formation_enthalpy"]["value"] for row in rows}
        assert by_key["Fe"] == 0.0 and by_key["O"] == 0.0
        assert by_key["Fe2O3"] == pytest.approx(fe[1], rel=1e-5, abs=1e-5)
        await flush_cache_writes(app)

    async with serve(settings) as (_, client):  # after a restart, from the cache: still 0
        again = (await client.post("/predict", json={"formula": "Si"})).json()["predictions"]
        assert again["formation_enthalpy"]["cached"] is True
        assert again["formation_enthalpy"]["value"] == 0.0


def test_the_rule_is_part_of_the_cache_version(models, tmp_path):
    """Rows cached before a model gained the rule hold the network's guess for an element."""
    from app.inference.manifest import ModelManifest
    from app.inference.registry import ModelRegistry

    def version() -> str:
        registry = ModelRegistry.load(
            models, device="cpu", intra_op_threads=1, prefer_int8_on_cpu=False, warmup_rows=1
        )
        return registry.get("formation_enthalpy").cache_version

    with_rule = version()
    manifest = ModelManifest.load(models / "fe")
    manifest.output.elements_are_zero = False
    manifest.save(models / "fe")
    assert version() != with_rule
    assert with_rule.startswith(version())  # the same model file and chemistry


async def test_a_job_queued_before_the_rule_changed_stops_instead_of_mixing_answers(models, tmp_path):
    """The ONNX file (so the version) stays the same when the rule is switched on: a job that ran
    across that restart would rank rows with Si at the network's guess beside rows with Si at 0."""
    from app.inference.manifest import ModelManifest

    settings = make_settings(
        models, f"sqlite:///{tmp_path / 'jobs.db'}", screen_chunk_size=8, screen_chunk_pause_ms=2000.0
    )
    async with serve(settings) as (_, client):
        job = (await client.post("/screen", json={"chemsys": "Fe-O-Si", "max_atoms": 6})).json()
        await wait_for(client, job["id"], statuses=("running",))
        recorded = (await client.get(f"/screen/{job['id']}")).json()["models"]["formation_enthalpy"]
    manifest = ModelManifest.load(models / "fe")
    manifest.output.elements_are_zero = False
    manifest.save(models / "fe")
    async with serve(settings) as (_, client):  # the restarted service resumes the job
        stopped = await wait_for(client, job["id"], statuses=("failed",))
    assert recorded["cache_version"].endswith(".e0")
    assert stopped["status"] == "failed" and stopped["error"].startswith("model_changed")
