"""FID and KID through torchmetrics, with Inception-v3 (torch-fidelity weights) or any feature network.

Inception-v3 needs the ``torch-fidelity`` package and its weights file ``pt_inception-2015-12-05-6726825d.pth``;
neither is downloaded here. ``find_inception_weights`` says what is missing and what to do instead.
"""

from __future__ import annotations

import importlib.util
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .frechet import FRECHET_BOUNDS, FrechetToReference, feature_statistics, frechet_distance
from .uncertainty import bootstrap_interval, details, fingerprint

INCEPTION_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_FEATURES_NAME = "inception-v3-compat pool3 (torch-fidelity pt_inception-2015-12-05)"


class MetricUnavailableError(RuntimeError):
    """A metric's network or weights are not available offline.

    ``reason`` says what is missing, ``options`` what to do instead; the message is ``"<reason> Options:
    <options>"``.

    Example:
        >>> err = MetricUnavailableError("X is not installed.", "install it, or leave the metric out.")
        >>> err.reason, str(err)
        ('X is not installed.', 'X is not installed. Options: install it, or leave the metric out.')
    """

    def __init__(self, reason: str, options: str):
        super().__init__(f"{reason} Options: {options}")
        self.reason, self.options = reason, options


def inception_problems(
    path: str | os.PathLike | None = None, *, weights_flag: str | None = "--inception-weights"
) -> tuple[Path, list[str]]:
    """``(weights file, what keeps Inception-v3 from running offline)``: an empty list when nothing does."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE
    weights = Path(path) if path is not None else cached
    problems = []
    if importlib.util.find_spec("torch_fidelity") is None:
        problems.append("the torch-fidelity package is not installed (`pip install torch-fidelity`)")
    if not weights.is_file():
        put = (
            f"pass the file with {weights_flag}, or put it in that folder" if weights_flag else "put it in that folder"
        )
        problems.append(
            f"the Inception-v3 weights {INCEPTION_WEIGHTS_FILE} are not at {weights} (download {INCEPTION_WEIGHTS_URL}"
            f" on a machine with internet and {put})"
        )
    return weights, problems


def find_inception_weights(
    path: str | os.PathLike | None = None,
    *,
    weights_flag: str | None = "--inception-weights",
    fallback_flag: str | None = "--fid-fallback",
) -> Path:
    """The Inception-v3 weights to use: ``path`` if given, else torch hub's cache (where torch-fidelity downloads
    them: ``<torch.hub.get_dir()>/checkpoints/pt_inception-2015-12-05-6726825d.pth``).

    ``weights_flag`` and ``fallback_flag`` are the caller's flags that the error names (``hfddpm evaluate``'s by
    default): the flag taking the weights file (``None``: the caller reads torch hub's cache only) and the one
    choosing the fallback (``None``: the caller always falls back to the digit classifier's features, as the
    evaluations during training do).

    Raises:
        MetricUnavailableError: torch-fidelity is not installed or the weights file is missing; its ``reason`` says
            which, its ``options`` what to do instead.
    """
    weights, problems = inception_problems(path, weights_flag=weights_flag)
    if not problems:
        return weights
    reason = "FID/KID with Inception-v3 are unavailable: " + "; ".join(problems) + ". Nothing is downloaded."
    if fallback_flag:
        options = (
            f"provide them, or rerun with {fallback_flag} digits (FID/KID on the digit classifier's features,"
            f" reported as fid_digits/kid_digits, comparable only with other hfddpm runs) or {fallback_flag} skip"
            " (leave FID/KID out)."
        )
    else:
        options = (
            "FID/KID use the digit classifier's features instead (reported as fid_digits/kid_digits, comparable only"
            " with other hfddpm runs); for FID/KID on Inception-v3, provide them before training, or score the"
            " saved pipeline later with `hfddpm evaluate PIPELINE --metrics fid,kid --inception-weights"
            f" {INCEPTION_WEIGHTS_FILE}` (torch-fidelity installed)."
        )
    raise MetricUnavailableError(reason, options)


class InceptionFeatures(nn.Module):
    """torchmetrics' Inception-v3 (2048-d pool features) taking float images in [0, 1], grey or RGB."""

    num_features = 2048
    name = INCEPTION_FEATURES_NAME

    def __init__(self, weights_path: str | os.PathLike | None = None):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        weights = find_inception_weights(weights_path)
        self.inception = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        # torch-fidelity's Inception takes uint8 RGB and resizes to 299 itself
        return self.inception((images * 255).round().clamp(0, 255).to(torch.uint8))


def _feature_network(feature: nn.Module | None, inception_weights) -> nn.Module:
    return feature if feature is not None else InceptionFeatures(inception_weights)


@torch.no_grad()
def fid_kid(
    fake: torch.Tensor,
    real: torch.Tensor,
    *,
    feature: nn.Module | None = None,
    inception_weights: str | os.PathLike | None = None,
    metrics: tuple[str, ...] = ("fid", "kid"),
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    batch_size: int = 100,
    seed: int = 0,
    reference_name: str = "reference",
) -> dict:
    """FID (``frechet.frechet_distance``) and/or KID (torchmetrics) between ``fake`` and ``real`` images (float
    ``[N, C, H, W]`` in [0, 1]).

    Args:
        feature: the feature network, an ``nn.Module`` taking a float image batch and returning ``[B, D]``, with a
            ``num_features`` attribute; default: Inception-v3 (``InceptionFeatures``).
        inception_weights: the Inception-v3 weights file, when not in torch hub's cache.
        metrics: which of ``"fid"``, ``"kid"`` to compute.
        kid_subsets, kid_subset_size: KID's random subsets (the size is capped at the smaller set's size).
        seed: seeds KID's subset sampling (the global RNG state is restored afterwards) and the bootstrap.
        reference_name: what ``details`` calls the reference set.

    Returns:
        ``{"fid": float, "kid": float (mean over subsets), "kid_std": float}`` for the requested metrics, and
        ``details``: each one's 95% bootstrap interval, sample count, feature extractor (the network's ``name``) and
        reference fingerprint (``uncertainty.details``).
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    unknown = set(metrics) - {"fid", "kid"}
    if unknown:
        raise ValueError(f"Unknown metrics {sorted(unknown)}; choose from ['fid', 'kid'].")
    network = _feature_network(feature, inception_weights).eval()
    # Features once per image set, shared by FID and KID through an identity "network".
    features = {}
    for name, images in (("real", real), ("fake", fake)):
        features[name] = torch.cat([network(batch.float()) for batch in images.split(batch_size)]).double()
    fake_np, real_np = features["fake"].numpy(), features["real"].numpy()

    identity = _Identity(features["real"].shape[1])
    results = {}
    if "fid" in metrics:  # the Fréchet distance of frechet.py, as every other one hfddpm reports
        results["fid"] = frechet_distance(*feature_statistics(fake_np), *feature_statistics(real_np))
    if "kid" in metrics:
        subset_size = min(kid_subset_size, len(real), len(fake))
        with warnings.catch_warnings():  # "KID will save all extracted features": we pass features, not images
            warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
            kid = KernelInceptionDistance(
                feature=identity, subsets=kid_subsets, subset_size=subset_size, sync_on_compute=False
            )
        kid.update(features["real"], real=True)
        kid.update(features["fake"], real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = kid.compute()
        results["kid"], results["kid_std"] = float(mean), float(std)

    # 95% intervals: FID and KID recomputed on resamples of the generated features
    statistics = {
        "fid": (FrechetToReference(fake_np, *feature_statistics(real_np)), FRECHET_BOUNDS),
        "kid": (KernelMMD(fake_np, real_np), (-math.inf, math.inf)),  # unbiased: a KID can be below 0
    }
    extractor = getattr(network, "name", type(network).__name__)
    reference = {"name": reference_name, **fingerprint(real)}
    n = len(fake_np)
    results["details"] = {
        key: details(
            bootstrap_interval(statistics[key][0], n, results[key], seed=seed, bounds=statistics[key][1]),
            n,
            extractor,
            reference,
            seed,
        )
        for key in ("fid", "kid")
        if key in results
    }
    return results


class KernelMMD:
    """KID's unbiased squared MMD with the cubic polynomial kernel ``(x.y / d + 1)^3`` (Bińkowski et al. 2018,
    https://arxiv.org/abs/1801.01401, eq. (3)) between any subset of ``fake`` (rows picked by index, repeats allowed)
    and all of ``real``, from kernel matrices computed once: a bootstrap resample costs an index, not a kernel.
    """

    def __init__(self, fake: np.ndarray, real: np.ndarray):
        d = fake.shape[1]
        self.k_ff = (fake @ fake.T / d + 1) ** 3
        self.k_fr_mean = ((fake @ real.T / d + 1) ** 3).mean(axis=1)
        k_rr = (real @ real.T / d + 1) ** 3
        m = len(real)
        self.real_term = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))

    def __call__(self, index: np.ndarray | None = None) -> float:
        index = np.arange(len(self.k_ff)) if index is None else index
        n = len(index)
        k_ff = self.k_ff[np.ix_(index, index)]
        fake_term = (k_ff.sum() - np.trace(k_ff)) / (n * (n - 1))
        return float(fake_term + self.real_term - 2 * self.k_fr_mean[index].mean())


class _Identity(nn.Module):
    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
