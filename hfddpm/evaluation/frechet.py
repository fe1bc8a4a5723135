"""Fréchet distance between Gaussians fitted to two feature sets (the formula behind FID)."""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg

# The range of a Fréchet distance: bootstrap intervals are clipped to it (``uncertainty.bootstrap_interval``).
FRECHET_BOUNDS = (0.0, math.inf)


def _distance(diff: np.ndarray, trace1: float, trace2: float, tr_covmean: float) -> float:
    """``||diff||^2 + tr1 + tr2 - 2 tr_covmean``, clamped at 0: a distance of equal sets comes out as a tiny negative
    number (round-off, e.g. -2.4e-05), never a real one."""
    return max(0.0, float(diff @ diff + trace1 + trace2 - 2.0 * tr_covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and unbiased covariance ``[D, D]`` of ``[N, D]`` features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, eq. (6) of Heusel et al. 2017
    (https://arxiv.org/abs/1706.08500). Returns a Python float, >= 0.

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
    return _distance(mu1 - mu2, np.trace(sigma1), np.trace(sigma2), tr_covmean)


class FrechetToReference:
    """The Fréchet distance of any subset (rows picked by index, repeats allowed) of ``features`` to a fixed
    reference ``(mu_ref, sigma_ref)``, fast enough to recompute for every bootstrap resample.

    With ``A = sigma_ref^(1/2)`` (computed once), ``S A`` shares its spectrum with the symmetric ``A S A`` ``=
    (X A)^T (X A) / (n - 1)`` for centred features ``X``, whose non-zero eigenvalues are those of the smaller of the
    ``[D, D]`` and ``[n, n]`` Gram matrices of ``X A``: one ``eigvalsh`` per call instead of a general ``eigvals``
    (with fewer samples than dimensions the ``[n, n]`` one is picked from the Gram matrix of all samples).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x, y = rng.standard_normal((50, 3)), rng.standard_normal((80, 3)) + 1.0
        >>> fast = FrechetToReference(x, *feature_statistics(y))()
        >>> abs(fast - frechet_distance(*feature_statistics(x), *feature_statistics(y))) < 1e-9
        True
    """

    def __init__(self, features: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray):
        self.features = np.asarray(features, dtype=np.float64)
        eigenvalues, vectors = np.linalg.eigh(np.atleast_2d(sigma_ref).astype(np.float64))
        root = (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T
        self.projected = self.features @ root
        self.mu_ref = np.atleast_1d(mu_ref).astype(np.float64)
        self.trace_ref = float(np.trace(np.atleast_2d(sigma_ref)))
        # more dimensions than samples: the [n, n] Gram matrix of a resample is picked from this one and centred
        self.gram = self.projected @ self.projected.T if len(self.features) < self.projected.shape[1] else None

    def __call__(self, index: np.ndarray | None = None) -> float:
        """The distance of ``features[index]`` (all rows when ``index`` is ``None``)."""
        x = self.features if index is None else self.features[index]
        g = self.projected if index is None else self.projected[index]
        n = len(x)
        mu = x.mean(axis=0)
        trace = float(((x - mu) ** 2).sum()) / (n - 1)
        if self.gram is not None:
            gram = self.gram if index is None else self.gram[np.ix_(index, index)]
            gram = gram - gram.mean(axis=0) - gram.mean(axis=1, keepdims=True) + gram.mean()  # centred rows of X A
        else:
            g = g - g.mean(axis=0)
            gram = g.T @ g
        tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(gram / (n - 1)), 0.0, None)).sum()
        return _distance(mu - self.mu_ref, trace, self.trace_ref, tr_covmean)
