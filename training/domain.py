"""A model's training domain (app/inference/manifest.py: TrainingDomain) from its labelled train rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from app.chemistry.formula import parse_formula
from app.inference.manifest import TrainingDomain
from training.data import DataRequest, load_dataset


def training_domain(formulas: Iterable[str]) -> TrainingDomain:
    """How many elements a training compound has (fewest, most), how many contain each element, and
    the smallest share of the atoms an element has in one.

    The formulas are the train split as the network saw it (its loader's refused rows are gone)."""
    element_counts: Counter[int] = Counter()
    compounds: Counter[str] = Counter()
    smallest = 1.0
    for text in formulas:
        formula = parse_formula(text)
        element_counts[len(formula.elements)] += 1
        compounds.update(formula.elements)
        smallest = min(smallest, *formula.fractions)
    if not element_counts:
        raise ValueError("a training domain needs at least one training compound")
    return TrainingDomain(
        element_counts=(min(element_counts), max(element_counts)),
        elements=dict(sorted(compounds.items())),
        min_fraction=smallest,
    )


def domain_of_request(request: DataRequest) -> TrainingDomain:
    """The domain of the labelled train rows ``request`` loads (--add-train's included; a distilled
    student's transfer compositions are labelled by its teacher, so they are not among them)."""
    return training_domain(load_dataset(request, splits=("train",)).splits["train"].formulas)
