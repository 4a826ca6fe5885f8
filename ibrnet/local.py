"""``ibrnet.predict``: the same DataFrame as ``Client.predict``, computed in this process (no server).

It runs the service's own code: the model registry (same ONNX files, same version checks), the
same parser and featurizers, and ``app.commands.predict.predict``, the path of ``ibrnet predict``
on the command line. ``app`` (ONNX Runtime, pymatgen) is imported on the first call, not at
``import ibrnet``, so a client that only talks HTTP stays light.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from ibrnet.errors import ServiceError
from ibrnet.frames import results_frame
from ibrnet.inputs import as_formulas, as_properties

if TYPE_CHECKING:
    from app.inference.predictor import Predictor

# Loading the models takes seconds; a notebook calls predict again and again. One predictor per
# models folder, kept for the life of the process (clear_models() drops them).
_predictors: dict[Path, Predictor] = {}
_lock = threading.Lock()


def predict(
    formulas: str | Iterable[Any],
    properties: str | Iterable[str] | None = None,
    models_dir: str | Path | None = None,
) -> pd.DataFrame:
    """Predict ``formulas`` in this process; the DataFrame ``ibrnet.Client.predict`` returns.

    ``models_dir``: a folder of ``<name>/model.onnx`` + ``model.json`` (default: IBRNET_MODELS_DIR,
    else the repository's ``models/``). Models are loaded once per folder and reused. Device,
    threads and formula length follow the same IBRNET_* settings as ``ibrnet serve``.

    A bad formula is a row with ``error_code`` / ``error_message``; an unknown property raises
    ServiceError (code ``unknown_property``), as the service's 422 does.
    """
    texts = as_formulas(formulas)
    names = as_properties(properties)
    predictor = _predictor(models_dir)
    from app.commands.predict import predict as predict_results
    from app.errors import DomainError

    try:
        served = list(predictor.plan(names).outputs)  # derived properties (e_above_hull) included
    except DomainError as error:
        raise ServiceError(error.status_code, error.code, error.message, error.details) from None
    results = predict_results(predictor, texts, served) if texts else []
    return results_frame([result.to_dict() for result in results], served)


def clear_models() -> None:
    """Forget the loaded models (after replacing files in a models folder, for instance)."""
    with _lock:
        predictors = list(_predictors.values())
        _predictors.clear()
    for predictor in predictors:
        predictor.close()


def _predictor(models_dir: str | Path | None) -> Predictor:
    from app.commands.predict import local_predictor
    from app.settings import get_settings

    folder = Path(models_dir) if models_dir is not None else get_settings().models_dir
    key = folder.expanduser().resolve()
    with _lock:  # two threads asking at once load the models once
        predictor = _predictors.get(key)
        if predictor is None:
            predictor = local_predictor(key, lambda line: warnings.warn(line, stacklevel=4))
            if predictor.registry.models:  # an empty folder is read again next time: it may have been fixed
                _predictors[key] = predictor
    return predictor
