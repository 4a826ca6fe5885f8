"""One number that makes an ensemble's standard deviation mean "one sigma".

The spread of a few independently seeded networks understates their error: the shipped
formation-enthalpy ensemble of 5 had only 44% of its validation errors within one raw standard
deviation, where a calibrated Gaussian has 68.3%. Export therefore multiplies the served
``uncertainty`` by the factor that puts 68.3% of the VALIDATION rows within one sigma (test is only
scored, never used), and records the factor in the manifest. The ranking of rows by uncertainty
(the Spearman rho in the metrics) does not change; only the unit of the sigma does.
"""

from __future__ import annotations

import numpy as np

ONE_SIGMA_SHARE = 0.6827  # P(|z| <= 1) for a Gaussian


def sigma_scale(target: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """The factor s with a ONE_SIGMA_SHARE of rows inside |target - mean| <= s * std."""
    usable = std > 0  # a row where every member agrees exactly says nothing about the scale
    if not usable.any():
        return 1.0
    ratio = np.abs(np.asarray(target, np.float64) - mean)[usable] / np.asarray(std, np.float64)[usable]
    return float(np.quantile(ratio, ONE_SIGMA_SHARE))
