"""ibrnet: materials property predictions from chemical formulas, as pandas DataFrames.

    import ibrnet
    client = ibrnet.Client("http://127.0.0.1:8000")           # api_key="..." if the service wants one
    df = client.predict(["Fe2O3", "LiFePO4", "NaCl"])          # one row per formula, in order
    top = client.screen(chemsys="Li-Fe-O", max_atoms=6, sort_by="formation_enthalpy", top_k=20)
    local = ibrnet.predict(["Fe2O3"])                          # the same DataFrame, no server

Refused formulas are rows with ``error_code`` / ``error_message``, never exceptions; a request
the service refuses as a whole raises ``ibrnet.ServiceError``. ``ibrnet.predict`` loads the
models in this process (ONNX Runtime), only when first called.
"""

from __future__ import annotations

from ibrnet.client import Client, ScreenJob
from ibrnet.errors import ServiceError
from ibrnet.local import clear_models, predict
from ibrnet.retry import RetryPolicy

__all__ = ["Client", "RetryPolicy", "ScreenJob", "ServiceError", "clear_models", "predict"]
