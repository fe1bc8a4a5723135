"""FD-DINOv2: Fréchet distance on DINOv2 features (Stein et al. 2023, https://arxiv.org/abs/2306.04675).

Uses ``transformers`` and weights already on disk (a local folder or the Hugging Face cache); nothing is downloaded.
``from_pretrained_without_code``, the loader that never runs a folder's own code, is FAD's (``fad.py``) as well.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.nn.functional as F

from .frechet import FRECHET_BOUNDS, FrechetToReference, feature_statistics, frechet_distance
from .inception import MetricUnavailableError
from .uncertainty import bootstrap_interval, details, fingerprint

DEFAULT_DINOV2_MODEL = "facebook/dinov2-base"
DINOV2_RESOLUTION = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def from_pretrained_without_code(auto_class, source: str, what: str, instead: str):
    """``auto_class.from_pretrained(source)`` (a transformers ``AutoConfig``, ``AutoModel``, ...) from disk only
    (``local_files_only``), with transformers' own code only (``trust_remote_code=False``): a folder whose config
    names code of its own (``auto_map``) is refused with a ``ValueError`` naming it, never run and never a
    "Do you wish to run the custom code?" prompt. ``what`` names the model in the message, ``instead`` what to pass.
    ``OSError`` (files missing) and ``HFValidationError`` (neither a folder nor a Hub id) pass through."""
    from huggingface_hub.errors import HFValidationError

    try:
        return auto_class.from_pretrained(source, local_files_only=True, trust_remote_code=False)
    except HFValidationError:
        raise
    except ValueError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{what} {source!r} does not load with transformers' own code ({reason}). hfddpm never runs code from a"
            f" model folder; {instead}."
        ) from None


@functools.lru_cache(maxsize=1)
def load_dinov2(model_name_or_path: str | os.PathLike = DEFAULT_DINOV2_MODEL):
    """A DINOv2 ``transformers`` model from a local folder or the Hugging Face cache (``local_files_only``), read
    once per process: the checks before sampling, the metric and the evaluations during training share it. No code
    from the folder runs (``from_pretrained_without_code``).

    Raises:
        MetricUnavailableError: transformers is not installed or the weights are not on disk.
        ValueError: the folder's config names code of its own (``auto_map``) or is not a transformers model.
    """
    if importlib.util.find_spec("transformers") is None:
        raise MetricUnavailableError(
            "FD-DINOv2 needs the transformers package, which is not installed.",
            "`pip install 'hfddpm[eval]'` (or `pip install transformers`), or rerun without dinov2 in --metrics.",
        )
    from huggingface_hub.constants import HF_HUB_CACHE
    from transformers import AutoModel

    try:
        model = from_pretrained_without_code(
            AutoModel,
            str(model_name_or_path),
            "The FD-DINOv2 model",
            f"pass a DINOv2 folder or cached Hub id (default {DEFAULT_DINOV2_MODEL}) with --dinov2-model",
        )
    except OSError as err:
        raise MetricUnavailableError(
            f"FD-DINOv2 weights {str(model_name_or_path)!r} are not on disk (looked in the Hugging Face cache"
            f" {HF_HUB_CACHE}) and nothing is downloaded ({type(err).__name__}: {err}).",
            f"on a machine with internet run `hf download {DEFAULT_DINOV2_MODEL}` and copy the cache (or set"
            " HF_HOME), pass a local folder with --dinov2-model PATH, or rerun without dinov2 in --metrics.",
        ) from None
    return model.eval().requires_grad_(False)


def dinov2_preprocess(images: torch.Tensor, resolution: int = DINOV2_RESOLUTION) -> torch.Tensor:
    """Float ``[N, 1 or 3, H, W]`` images in [0, 1] -> ImageNet-normalised RGB at ``resolution`` (bicubic)."""
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    images = F.interpolate(images.float(), size=(resolution, resolution), mode="bicubic", antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.clamp(0, 1) - mean) / std


@torch.no_grad()
def dinov2_features(images: torch.Tensor, model, batch_size: int = 50) -> torch.Tensor:
    """The normalised CLS token (``pooler_output``) of every image, ``[N, hidden_size]``."""
    return torch.cat(
        [model(pixel_values=dinov2_preprocess(batch)).pooler_output for batch in images.split(batch_size)]
    )


def fd_dinov2(fake: torch.Tensor, real: torch.Tensor, model=None, batch_size: int = 50) -> float:
    """Fréchet distance between the DINOv2 features of ``fake`` and ``real`` images (float, [0, 1])."""
    return fd_dinov2_with_details(fake, real, model, batch_size)[0]


def dinov2_name(model) -> str:
    """How results name a DINOv2 model's features: its Hub id or folder name, and ``pooler_output``."""
    return f"dinov2 {getattr(model.config, '_name_or_path', '') or type(model).__name__} pooler_output"


def fd_dinov2_with_details(
    fake: torch.Tensor,
    real: torch.Tensor,
    model=None,
    batch_size: int = 50,
    *,
    seed: int = 0,
    reference_name: str = "reference",
) -> tuple[float, dict]:
    """``fd_dinov2`` and its ``uncertainty.details`` (95% bootstrap interval, count, features, reference)."""
    model = model if model is not None else load_dinov2()
    fake_features = dinov2_features(fake, model, batch_size).double().numpy()
    mu_fake, sigma_fake = feature_statistics(fake_features)
    mu_real, sigma_real = feature_statistics(dinov2_features(real, model, batch_size).double().numpy())
    value = frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real)
    n = len(fake_features)
    interval = bootstrap_interval(
        FrechetToReference(fake_features, mu_real, sigma_real), n, value, seed=seed, bounds=FRECHET_BOUNDS
    )
    reference = {"name": reference_name, **fingerprint(real)}
    return value, details(interval, n, dinov2_name(model), reference, seed)
