"""Metrics read off a classifier's outputs on generated samples, shared by the digit metrics
(:mod:`hfddpm.evaluation.digits`) and the spoken-digit metrics (:mod:`hfddpm.evaluation.spoken_digits`): a Fréchet
distance of its penultimate features to a reference (the idea of FID, Heusel et al. 2017, with a feature network
that knows the data), the predicted-class histogram and coverage, the share of confident samples, and for
class-conditional samples how often the requested class is recognised; each with its bootstrap 95% interval.

Example:
    >>> import numpy as np, torch
    >>> features, probs = torch.randn(50, 4), torch.eye(3)[torch.arange(50) % 3]
    >>> mu, sigma = np.zeros(4), np.eye(4)
    >>> names = {"fd": "fd", "histogram": "hist", "covered": "covered", "accuracy": "acc", "confident": "sure"}
    >>> scores = classifier_metrics(features, probs, (mu, sigma), torch.arange(50) % 3, names=names,
    ...                             confidence_threshold=0.9, extractor="toy", reference=None)
    >>> scores["covered"], scores["acc"], scores["sure"], scores["details"]["acc"]["ci95"]
    (3, 1.0, 1.0, [1.0, 1.0])
"""

from __future__ import annotations

import numpy as np
import torch

from .frechet import FRECHET_BOUNDS, FrechetToReference, feature_statistics, frechet_distance
from .uncertainty import DETAILS_KEY, bootstrap_interval, details


def classifier_metrics(
    features: torch.Tensor,
    probs: torch.Tensor,
    reference_statistics: tuple[np.ndarray, np.ndarray],
    labels: torch.Tensor | None = None,
    *,
    names: dict[str, str],
    extractor: str,
    reference: dict | None,
    confidence_threshold: float | None = None,
    seed: int = 0,
) -> dict:
    """The metrics of ``N`` samples' classifier ``features`` ``[N, D]`` and class ``probs`` ``[N, C]``.

    ``names`` maps ``fd``, ``histogram``, ``covered``, ``accuracy`` (with ``labels``) and ``confident`` (with
    ``confidence_threshold``) to the names the results use. Returns those metrics, ``num_images`` and ``details``
    (per metric its interval, sample count, ``extractor`` and ``reference``).
    """
    n, num_classes = probs.shape
    mu_ref, sigma_ref = reference_statistics
    mu, sigma = feature_statistics(features.double().numpy())
    confidence, predicted = probs.max(dim=-1)
    histogram = torch.bincount(predicted, minlength=num_classes)
    metrics = {
        names["fd"]: frechet_distance(mu, sigma, mu_ref, sigma_ref),
        names["histogram"]: histogram.tolist(),
        names["covered"]: int((histogram > 0).sum()),
        "num_images": int(n),
    }
    # per-sample values, so a resample's metric is a mean or a count over picked rows
    predicted_np = predicted.numpy()
    statistics = {
        names["fd"]: (FrechetToReference(features.double().numpy(), mu_ref, sigma_ref), FRECHET_BOUNDS),
        names["covered"]: (lambda idx: len(np.unique(predicted_np[idx])), (0, num_classes)),
    }
    if confidence_threshold is not None:
        confident = (confidence >= confidence_threshold).double().numpy()
        metrics[names["confident"]] = float(confident.mean())
        statistics[names["confident"]] = (lambda idx: confident[idx].mean(), (0.0, 1.0))
    if labels is not None:
        labels = torch.as_tensor(labels).long().view(-1)
        if labels.shape[0] != n:
            raise ValueError(f"got {labels.shape[0]} labels for {n} images.")
        correct = (predicted == labels).double().numpy()
        metrics[names["accuracy"]] = float(correct.mean())
        statistics[names["accuracy"]] = (lambda idx: correct[idx].mean(), (0.0, 1.0))
    metrics[DETAILS_KEY] = {
        key: details(
            bootstrap_interval(statistic, n, metrics[key], seed=seed, bounds=bounds), n, extractor, reference, seed
        )
        for key, (statistic, bounds) in statistics.items()
    }
    return metrics
