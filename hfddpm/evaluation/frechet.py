"""Fréchet distance between Gaussians fitted to two feature sets (the formula behind FID)."""

from __future__ import annotations

import numpy as np
from scipy import linalg


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``[N, D]`` features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, eq. (6) of Heusel et al. 2017
    (https://arxiv.org/abs/1706.08500). Returns a Python float.

    ``Tr((S1 S2)^(1/2))`` is the sum of the square roots of the eigenvalues of ``S1 S2``, which are real and
    non-negative for covariance matrices; this stays exact when ``S1 S2`` is singular (fewer samples than feature
    dimensions), where a matrix square root (``scipy.linalg.sqrtm``) is ill-conditioned.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(
            f"feature statistics differ in shape: {mu1.shape} / {sigma1.shape} vs {mu2.shape} / {sigma2.shape}."
        )
    eigenvalues = linalg.eigvals(sigma1 @ sigma2).real
    tr_covmean = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
