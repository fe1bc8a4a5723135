"""The feature extractors that metrics compare images with, by short name: one place that turns images into
features for precision / recall and the memorisation check (FID, KID and FD-DINOv2 call the same networks).

- ``digits``: the shipped digit classifier's 128-d penultimate layer (offline, any image; colour is averaged to grey).
- ``inception``: Inception-v3's 2048-d pool features (torch-fidelity weights: ``find_inception_weights``).
- ``dinov2``: DINOv2's normalised CLS token (``transformers`` and local weights, see ``dinov2.load_dinov2``).

Example:
    >>> import torch
    >>> features, name = extract_features("digits", torch.zeros(2, 1, 28, 28))
    >>> tuple(features.shape), name.startswith("digit-classifier sha256:")
    ((2, 128), True)
"""

from __future__ import annotations

import os

import numpy as np
import torch

from .dinov2 import DEFAULT_DINOV2_MODEL, dinov2_features, dinov2_name, load_dinov2

FEATURE_EXTRACTORS = ("digits", "inception", "dinov2")


@torch.no_grad()
def extract_features(
    extractor: str,
    images: torch.Tensor,
    *,
    inception_weights: str | os.PathLike | None = None,
    dinov2_model: str | os.PathLike = DEFAULT_DINOV2_MODEL,
    batch_size: int = 100,
) -> tuple[np.ndarray, str]:
    """``(features [N, D] float64, the extractor's name as results record it)`` of float ``[N, C, H, W]`` images in
    [0, 1] with the ``extractor`` of :data:`FEATURE_EXTRACTORS`."""
    if extractor == "digits":
        from .digits import DigitFeatureExtractor

        network = DigitFeatureExtractor()
    elif extractor == "inception":
        from .inception import InceptionFeatures

        network = InceptionFeatures(inception_weights)
    elif extractor == "dinov2":
        model = load_dinov2(dinov2_model)
        return dinov2_features(images, model).double().numpy(), dinov2_name(model)
    else:
        raise ValueError(f"Unknown feature extractor {extractor!r}; choose one of {FEATURE_EXTRACTORS}.")
    network = network.eval()
    features = torch.cat([network(batch.float()) for batch in images.split(batch_size)])
    return features.double().numpy(), network.name
