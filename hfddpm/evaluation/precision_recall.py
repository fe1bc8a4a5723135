"""Improved precision and recall of a generative model (Kynkäänniemi et al. 2019, https://arxiv.org/abs/1904.06991).

Each set of features spans a manifold: the union of balls around its points, each ball reaching that point's k-th
nearest neighbour in its own set (eq. (2) of the paper). Precision is the share of generated samples inside the real
manifold ("how many samples look real"), recall the share of real images inside the generated manifold ("how much of
the real variety the samples cover", eq. (1)): fewer kinds of images lower the recall, worse images the precision.

Example (identical sets cover each other; samples collapsed onto one real image have precision 1, recall low):
    >>> import numpy as np
    >>> real = np.random.default_rng(0).standard_normal((100, 8))
    >>> precision_recall(real, real)[:2]
    (1.0, 1.0)
    >>> collapsed = real[:1].repeat(50, axis=0) + 1e-3
    >>> p, r, _ = precision_recall(collapsed, real)
    >>> p, r < 0.1
    (1.0, True)
"""

from __future__ import annotations

import numpy as np
import torch

from .uncertainty import bootstrap_interval

NEAREST_NEIGHBOURS = 3  # k of the paper (its default)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]`` (float64)."""
    return torch.cdist(
        torch.from_numpy(np.asarray(a, np.float64)), torch.from_numpy(np.asarray(b, np.float64))
    ).numpy()


def knn_radii(distances: np.ndarray, k: int) -> np.ndarray:
    """Each point's distance to its ``k``-th nearest other point, from the square distance matrix of a set."""
    distances = distances.copy()
    np.fill_diagonal(distances, np.inf)
    return np.partition(distances, k - 1, axis=1)[:, k - 1]


def precision_recall(
    fake: np.ndarray, real: np.ndarray, *, k: int = NEAREST_NEIGHBOURS, seed: int = 0
) -> tuple[float, float, dict]:
    """``(precision, recall, intervals)`` of ``fake`` features ``[n, D]`` against ``real`` ``[m, D]`` with
    ``k``-NN manifolds; ``intervals`` holds each one's 95% bootstrap interval over resamples of ``fake``."""
    n, m = len(fake), len(real)
    if min(n, m) <= k:
        raise ValueError(f"precision / recall with k={k} need more than {k} generated and real samples, got {n}, {m}.")
    d_fake_real = pairwise_distances(fake, real)
    real_radii = knn_radii(pairwise_distances(real, real), k)
    d_fake_fake = pairwise_distances(fake, fake)
    # 1. precision: a sample is real-looking when it lies in some real image's k-NN ball
    inside_real = (d_fake_real <= real_radii[None, :]).any(axis=1).astype(np.float64)

    # 2. recall: a real image is covered when it lies in some sample's k-NN ball (the balls of the samples picked)
    def recall(index: np.ndarray) -> float:
        radii = knn_radii(d_fake_fake[np.ix_(index, index)], k)
        return float((d_fake_real[index].T <= radii[None, :]).any(axis=1).mean())

    everything = np.arange(n)
    precision_value, recall_value = float(inside_real.mean()), recall(everything)
    intervals = {
        "precision": bootstrap_interval(lambda idx: inside_real[idx].mean(), n, precision_value, seed=seed,
                                        bounds=(0.0, 1.0)),
        "recall": bootstrap_interval(recall, n, recall_value, seed=seed, bounds=(0.0, 1.0)),
    }  # fmt: skip
    return precision_value, recall_value, intervals
