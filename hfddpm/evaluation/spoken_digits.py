"""Offline metrics for spoken-digit audio models, computed on their spectrograms with a small classifier shipped in
the package (the audio counterpart of :mod:`hfddpm.evaluation.digits`).

The classifier is trained by ``training/train_spoken_digit_classifier.py`` on the espeak-ng demo data of
``training/make_spoken_digits.py`` (log-mel spectrograms made with ``SPOKEN_DIGIT_MEL``), holding out the ``en-029``
accent. Its weights, held-out accuracy and the feature statistics of all 360 real clips ship next to this file
(``spoken_digit_classifier.safetensors``, ``spoken_digit_classifier.json``, ``spoken_digit_reference.safetensors``).

Metrics (``spoken_digit_metrics``):
- ``fd_spoken_digits``: Fréchet distance between the classifier's penultimate-layer features of the generated
  spectrograms and of the real clips.
- ``spoken_classes_covered``: how many digits the classifier hears among the samples (mode coverage).
- ``spoken_digit_accuracy``: for class-conditional samples, how often the classifier hears the requested digit.

Example:
    >>> import torch
    >>> scores = spoken_digit_metrics(torch.rand(8, 1, 64, 64), torch.arange(8))
    >>> sorted(scores)  # doctest: +NORMALIZE_WHITESPACE
    ['details', 'fd_spoken_digits', 'num_images', 'spoken_class_histogram', 'spoken_classes_covered',
     'spoken_digit_accuracy']
    >>> scores["details"]["spoken_digit_accuracy"]["num_samples"]
    8
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from .classifier_metrics import classifier_metrics
from .small_cnn import SmallCNN, load_weights

SPOKEN_DIGIT_CLASSIFIER_WEIGHTS = Path(__file__).with_name("spoken_digit_classifier.safetensors")
SPOKEN_DIGIT_CLASSIFIER_INFO = Path(__file__).with_name("spoken_digit_classifier.json")
SPOKEN_DIGIT_REFERENCE = Path(__file__).with_name("spoken_digit_reference.safetensors")
NUM_SPOKEN_DIGITS = 10
# The spectrogram conversion the classifier was trained on (HFDDPMMel settings: the mel64 defaults of train.py).
SPOKEN_DIGIT_MEL = {"sample_rate": 16000, "n_fft": 1024, "hop_length": 256, "n_mels": 64, "num_frames": 64}
# The accent of the demo data held out from the classifier's training (its held-out accuracy is measured on it).
HELDOUT_ACCENT = "en-029"


class SpokenDigitClassifier(SmallCNN):
    """A small CNN for ``[N, 1, 64, 64]`` log-mel spectrograms in [0, 1]; ``features`` returns the 64-d penultimate
    layer."""

    def __init__(self):
        super().__init__(width=16, num_classes=NUM_SPOKEN_DIGITS, mean=0.5, std=0.5)


def load_spoken_digit_classifier(path=None) -> SpokenDigitClassifier:
    """The shipped classifier (or weights at ``path``), in eval mode."""
    return load_weights(
        SpokenDigitClassifier(),
        path if path is not None else SPOKEN_DIGIT_CLASSIFIER_WEIGHTS,
        "Spoken-digit classifier",
        "`python training/train_spoken_digit_classifier.py --data_dir spoken_digits`",
    )


def spoken_digit_classifier_info() -> dict:
    """The json written beside the weights: held-out accuracy, split, spectrogram settings, training settings."""
    return json.loads(SPOKEN_DIGIT_CLASSIFIER_INFO.read_text())


def check_spectrogram_settings(mel_config) -> None:
    """``ValueError`` unless a pipeline's ``mel`` config makes the spectrograms the classifier was trained on."""
    differing = {k: mel_config.get(k) for k, v in SPOKEN_DIGIT_MEL.items() if mel_config.get(k) != v}
    if differing:
        raise ValueError(
            f"The spoken_digits metrics score spectrograms made with {SPOKEN_DIGIT_MEL}, but this pipeline's mel"
            f" component has {differing}; train with those settings (the mel64 preset's defaults) or leave"
            " spoken_digits out of --metrics."
        )


def _check_spectrograms(images: torch.Tensor) -> torch.Tensor:
    shape = (1, SPOKEN_DIGIT_MEL["n_mels"], SPOKEN_DIGIT_MEL["num_frames"])
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"spoken-digit metrics need spectrograms shaped [N, {', '.join(map(str, shape))}] (made with"
            f" {SPOKEN_DIGIT_MEL}), got {tuple(images.shape)}."
        )
    return images.float().clamp(0, 1)


@torch.no_grad()
def classify_spoken_digits(images: torch.Tensor, classifier=None, batch_size: int = 500):
    """Features ``[N, 64]`` and class probabilities ``[N, 10]`` of ``[N, 1, 64, 64]`` spectrograms in [0, 1]."""
    classifier = classifier if classifier is not None else load_spoken_digit_classifier()
    return classifier.classify(_check_spectrograms(images), batch_size)


def spoken_digit_reference_statistics():
    """Mean and covariance (float64 numpy) of the shipped classifier's features of the 360 real demo clips."""
    stats = load_file(str(SPOKEN_DIGIT_REFERENCE))
    return stats["mu"].double().numpy(), stats["sigma"].double().numpy()


def spoken_digit_metrics(images: torch.Tensor, labels: torch.Tensor | None = None, *, seed: int = 0) -> dict:
    """Spoken-digit metrics of generated spectrograms (``[N, 1, 64, 64]`` in [0, 1], at least 2).

    Returns ``fd_spoken_digits``, ``spoken_class_histogram`` (10 counts), ``spoken_classes_covered``, ``num_images``
    and, with ``labels`` (the digit each sample was asked to be), ``spoken_digit_accuracy``; and ``details``: per
    metric its bootstrap 95% interval (``seed`` seeds it), sample count, feature extractor and reference.
    """
    images = _check_spectrograms(images)
    if images.shape[0] < 2:
        raise ValueError(f"spoken-digit metrics need at least 2 spectrograms for a covariance, got {images.shape[0]}.")
    features, probs = classify_spoken_digits(images)
    names = {
        "fd": "fd_spoken_digits",
        "histogram": "spoken_class_histogram",
        "covered": "spoken_classes_covered",
        "accuracy": "spoken_digit_accuracy",
    }
    return classifier_metrics(
        features,
        probs,
        spoken_digit_reference_statistics(),
        labels,
        names=names,
        extractor=spoken_digit_features_name(),
        reference={"name": f"espeak-ng spoken digits ({SPOKEN_DIGIT_REFERENCE.name})", **_reference_digest()},
        seed=seed,
    )


@functools.lru_cache(maxsize=1)
def spoken_digit_features_name() -> str:
    """How results name the classifier's features: ``spoken-digit-classifier sha256:<first 12 hex digits>``."""
    digest = hashlib.sha256(SPOKEN_DIGIT_CLASSIFIER_WEIGHTS.read_bytes()).hexdigest()
    return f"spoken-digit-classifier sha256:{digest[:12]}"


@functools.lru_cache(maxsize=1)
def _reference_digest() -> dict:
    info = spoken_digit_classifier_info()
    return {
        "count": info.get("num_train", 0) + info.get("num_heldout", 0),
        "sha256": hashlib.sha256(SPOKEN_DIGIT_REFERENCE.read_bytes()).hexdigest()[:16],
    }
