"""Formulas per second: our parser and featurizers against matminer's, on the same real formulas.

    python benchmarks/featurize.py [--n 5000] [--matminer-n 1000]

Formulas: a deterministic spread of the packaged OQMD formation-enthalpy test split. matminer
(Stoichiometry + ElementProperty magpie + ValenceOrbital frac + IonProperty fast) runs on the
first --matminer-n of them, one formula at a time as it is built to; rates are per formula, so the
ratios compare like with like. Ours runs on the whole batch in one call (best of --repeat).
"""

from __future__ import annotations

import argparse
import csv
import io
import time
import warnings
import zipfile
from collections.abc import Callable

import numpy as np

from app.chemistry.featurizers import get_featurizer
from app.chemistry.formula import parse_formula
from training.data import ensure_wheel

OQMD_TEST = "crabnet/data/benchmark_data/OQMD_Formation_Enthalpy/test.csv"


def load_formulas(n: int) -> list[str]:
    with zipfile.ZipFile(ensure_wheel()) as wheel, wheel.open(OQMD_TEST) as handle:
        texts = [row["formula"] for row in csv.DictReader(io.TextIOWrapper(handle, "utf-8"))]
    return [texts[i] for i in np.linspace(0, len(texts) - 1, n).astype(int)]


def best_seconds(work: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--matminer-n", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    # Dev-only dependencies, imported here so --help works without them.
    from matminer.featurizers.composition import (
        ElementProperty,
        IonProperty,
        Stoichiometry,
        ValenceOrbital,
    )
    from pymatgen.core import Composition

    warnings.simplefilter("ignore")  # pymatgen/matminer deprecation chatter
    texts = load_formulas(args.n)
    subset = texts[: args.matminer_n]
    print(f"{len(texts)} OQMD formulas (matminer on the first {len(subset)})\n")

    rates: dict[str, float] = {}
    # parse_formula memoises recent texts: the first pass is the honest (cold) figure.
    rates["parse (ours: parse_formula)"] = len(texts) / best_seconds(
        lambda: [parse_formula(t) for t in texts], 1
    )
    rates["parse (ours, memoised repeat)"] = len(texts) / best_seconds(
        lambda: [parse_formula(t) for t in texts], args.repeat
    )
    parsed = [parse_formula(t) for t in texts]
    for spec in ("ef", "pa", "ef+pa"):
        featurizer = get_featurizer(spec)
        featurizer.transform(parsed[:10])  # load tables outside the timing
        rates[f"{spec} (ours, one batch)"] = len(texts) / best_seconds(
            lambda f=featurizer: f.transform(parsed), args.repeat
        )

    rates["parse (pymatgen Composition)"] = len(subset) / best_seconds(
        lambda: [Composition(t) for t in subset], 1
    )
    compositions = [Composition(t) for t in subset]
    reference = {
        "Stoichiometry": Stoichiometry(),
        "ElementProperty magpie": ElementProperty.from_preset("magpie"),
        "ValenceOrbital frac": ValenceOrbital(props=["frac"]),
        "IonProperty fast": IonProperty(fast=True),
    }
    total = 0.0
    rows: list[list[float]] = [[] for _ in compositions]
    for label, featurizer in reference.items():
        start = time.perf_counter()
        values = [featurizer.featurize(c) for c in compositions]
        seconds = time.perf_counter() - start
        total += seconds
        rates[f"matminer {label}"] = len(subset) / seconds
        for row, v in zip(rows, values, strict=True):
            row.extend(float(x) for x in v)
    rates["pa (matminer, all four)"] = len(subset) / total

    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"{name:<{width}}  {rate:>12,.0f} formulas/s  {1e6 / rate:>9.1f} us/formula")
    matminer_pa = rates["pa (matminer, all four)"]
    print()
    print(f"pa ours / matminer:           {rates['pa (ours, one batch)'] / matminer_pa:,.0f}x")
    print(f"ef+pa ours / matminer pa:     {rates['ef+pa (ours, one batch)'] / matminer_pa:,.0f}x")
    theirs_end_to_end = 1 / rates["parse (pymatgen Composition)"] + 1 / matminer_pa
    ours_end_to_end = 1 / rates["parse (ours: parse_formula)"] + 1 / rates["pa (ours, one batch)"]
    print(f"parse+pa ours / Composition+matminer pa: {theirs_end_to_end / ours_end_to_end:,.0f}x")
    ours = get_featurizer("pa").transform(parsed[: len(subset)], dtype=np.float64)
    theirs = np.array(rows)
    print(f"max |ours - matminer| on the subset: {np.abs(ours - theirs).max():.2e}")


if __name__ == "__main__":
    main()
