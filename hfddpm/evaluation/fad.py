"""FAD: Fréchet Audio Distance (Kilgour et al. 2019, https://arxiv.org/abs/1812.08466), the Fréchet distance between
Gaussians fitted to the clip embeddings of generated and of real audio, here on a pretrained audio network loaded
through ``transformers``.

The default embedding is LAION-CLAP (``laion/clap-htsat-unfused``, Wu et al. 2023, https://arxiv.org/abs/2211.06687):
the unit-norm audio embedding of ``ClapModel.get_audio_features`` at 48 kHz, one of the embeddings ``fadtk`` (Gui et
al. 2024, https://arxiv.org/abs/2311.01616) computes FAD with. An Audio Spectrogram Transformer folder
(``ASTModel``, e.g. ``MIT/ast-finetuned-audioset-10-10-0.4593`` at 16 kHz; its ``pooler_output``) works as well.
Waveforms are resampled (librosa) to the network's rate. Weights must already be on disk (a local folder or the
Hugging Face cache); nothing is downloaded.

Example (the rate handling; a FAD needs weights, see ``load_fad_model``):
    >>> import numpy as np
    >>> clips = resample_clips(np.zeros((2, 16000), dtype=np.float32), 16000, 48000)
    >>> len(clips), clips[0].shape
    (2, (48000,))
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .dinov2 import from_pretrained_without_code
from .frechet import FRECHET_BOUNDS, FrechetToReference, feature_statistics, frechet_distance
from .inception import MetricUnavailableError
from .uncertainty import audio_fingerprint, bootstrap_interval, details

logger = logging.getLogger(__name__)

DEFAULT_FAD_MODEL = "laion/clap-htsat-unfused"
# transformers model types whose audio embedding FAD uses -> what results call that embedding
FAD_EMBEDDINGS = {"clap": "audio_embeds", "audio-spectrogram-transformer": "pooler_output"}
# real clips read for the reference statistics at most (a seeded random subset of a larger dataset)
MAX_REFERENCE_CLIPS = 2000


def _unavailable(source: str, err: Exception) -> MetricUnavailableError:
    from huggingface_hub.constants import HF_HUB_CACHE

    return MetricUnavailableError(
        f"FAD weights {source!r} are not on disk (looked in the Hugging Face cache {HF_HUB_CACHE}) and nothing is"
        f" downloaded ({type(err).__name__}: {err}).",
        f"on a machine with internet run `hf download {DEFAULT_FAD_MODEL}` and copy the cache (or set HF_HOME), pass"
        " a local folder (the model with its preprocessor_config.json) with --fad-model PATH, or rerun without fad in"
        " --metrics.",
    )


@dataclass(frozen=True)
class AudioEmbedding:
    """A pretrained audio network and its feature extractor: clips -> one embedding each (see ``FAD_EMBEDDINGS``)."""

    model: torch.nn.Module
    feature_extractor: object

    @property
    def sample_rate(self) -> int:
        """The sample rate the network takes."""
        return int(self.feature_extractor.sampling_rate)

    @property
    def name(self) -> str:
        """How results name the features: ``fad``, the Hub id or folder, the embedding."""
        source = getattr(self.model.config, "_name_or_path", "") or type(self.model).__name__
        return f"fad {source} {FAD_EMBEDDINGS[self.model.config.model_type]}"

    @torch.no_grad()
    def __call__(self, clips: Sequence[np.ndarray]) -> torch.Tensor:
        """Mono clips at ``sample_rate`` -> ``[N, D]`` float32 embeddings."""
        inputs = self.feature_extractor(list(clips), sampling_rate=self.sample_rate, return_tensors="pt")
        if self.model.config.model_type == "clap":
            out = self.model.get_audio_features(**inputs)
            out = out if isinstance(out, torch.Tensor) else out.pooler_output  # transformers < 5 returned the tensor
            return F.normalize(out.float(), dim=-1)
        return self.model(**inputs).pooler_output.float()


@functools.lru_cache(maxsize=1)
def load_fad_model(model_name_or_path: str | os.PathLike = DEFAULT_FAD_MODEL) -> AudioEmbedding:
    """The FAD embedding network (CLAP or AST) and its feature extractor from a local folder or the Hugging Face cache
    (``local_files_only``), read once per process: the checks before sampling and the metric share it.

    Raises:
        MetricUnavailableError: transformers is not installed or the weights are not on disk.
        ValueError: the folder holds another kind of model than ``FAD_EMBEDDINGS``, or names code of its own
            (``auto_map``), which never runs (``from_pretrained_without_code``).
    """
    if importlib.util.find_spec("transformers") is None:
        raise MetricUnavailableError(
            "FAD needs the transformers package, which is not installed.",
            "`pip install 'hfddpm[eval]'` (or `pip install transformers`), or rerun without fad in --metrics.",
        )
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    source = str(model_name_or_path)
    instead = f"pass a CLAP or AST folder or cached Hub id (default {DEFAULT_FAD_MODEL}) with --fad-model"
    try:
        config = from_pretrained_without_code(AutoConfig, source, "The FAD model", instead)
        if config.model_type not in FAD_EMBEDDINGS:
            raise ValueError(
                f"FAD embeds audio with {sorted(FAD_EMBEDDINGS)} models; {source!r} is a {config.model_type!r} model."
                f" Pass one of those with --fad-model (default {DEFAULT_FAD_MODEL})."
            )
        model = from_pretrained_without_code(AutoModel, source, "The FAD model", instead)
        feature_extractor = from_pretrained_without_code(AutoFeatureExtractor, source, "The FAD model", instead)
    except (OSError, HFValidationError) as err:
        raise _unavailable(source, err) from None
    return AudioEmbedding(model.eval().requires_grad_(False), feature_extractor)


def resample_clips(clips: Sequence[np.ndarray] | np.ndarray, sample_rate: int, target_rate: int) -> list[np.ndarray]:
    """Mono clips at ``sample_rate`` -> float32 clips at ``target_rate`` (librosa's default soxr resampler)."""
    import librosa

    clips = [np.asarray(clip, dtype=np.float32).reshape(-1) for clip in clips]
    if int(sample_rate) == int(target_rate):
        return clips
    return [librosa.resample(clip, orig_sr=int(sample_rate), target_sr=int(target_rate)) for clip in clips]


def audio_embeddings(
    clips: Sequence[np.ndarray] | np.ndarray, sample_rate: int, embedding: AudioEmbedding, batch_size: int = 32
) -> torch.Tensor:
    """``[N, D]`` embeddings of mono clips at ``sample_rate`` (resampled to the network's rate)."""
    clips = resample_clips(clips, sample_rate, embedding.sample_rate)
    # the window a CLAP model sees: longer clips are cut here to their start (its extractor would crop at random)
    max_samples = getattr(embedding.feature_extractor, "nb_max_samples", None)
    if max_samples:
        clips = [clip[:max_samples] for clip in clips]
    starts = tqdm(range(0, len(clips), batch_size), desc="FAD embeddings", unit="batch", leave=False)
    return torch.cat([embedding(clips[i : i + batch_size]) for i in starts])


def fad(
    fake: Sequence[np.ndarray] | np.ndarray,
    real: Sequence[np.ndarray] | np.ndarray,
    sample_rate: int,
    embedding: AudioEmbedding | None = None,
    batch_size: int = 32,
) -> float:
    """FAD between generated clips ``fake`` and real clips ``real`` (mono, at ``sample_rate``, at least 2 each)."""
    return fad_with_details(fake, real, sample_rate, embedding, batch_size)[0]


def fad_with_details(
    fake: Sequence[np.ndarray] | np.ndarray,
    real: Sequence[np.ndarray] | np.ndarray,
    sample_rate: int,
    embedding: AudioEmbedding | None = None,
    batch_size: int = 32,
    *,
    seed: int = 0,
    reference_name: str = "reference",
) -> tuple[float, dict]:
    """``fad`` and its ``uncertainty.details`` (95% bootstrap interval, count, embedding, reference fingerprint)."""
    if len(fake) < 2 or len(real) < 2:
        raise ValueError(
            f"FAD needs at least 2 generated and 2 real clips (a covariance), got {len(fake)}, {len(real)}."
        )
    embedding = embedding if embedding is not None else load_fad_model()
    # 1. one embedding per clip, at the network's sample rate
    fake_features = audio_embeddings(fake, sample_rate, embedding, batch_size).double().numpy()
    real_features = audio_embeddings(real, sample_rate, embedding, batch_size).double().numpy()
    # 2. Gaussian fits and their Fréchet distance (Kilgour et al. 2019; eq. (6) of Heusel et al. 2017, frechet.py)
    mu_fake, sigma_fake = feature_statistics(fake_features)
    mu_real, sigma_real = feature_statistics(real_features)
    value = frechet_distance(mu_fake, sigma_fake, mu_real, sigma_real)
    n = len(fake_features)
    interval = bootstrap_interval(
        FrechetToReference(fake_features, mu_real, sigma_real), n, value, seed=seed, bounds=FRECHET_BOUNDS
    )
    reference = {"name": reference_name, **audio_fingerprint(real, sample_rate)}
    return value, details(interval, n, embedding.name, reference, seed)


def reference_clips(
    settings: dict,
    sample_rate: int,
    num_samples: int,
    *,
    max_clips: int = MAX_REFERENCE_CLIPS,
    seed: int = 0,
) -> np.ndarray:
    """Real clips for FAD as float32 ``[N, num_samples]`` at ``sample_rate``, read as training reads them (mono,
    resampled, cut or zero-padded to the model's clip length).

    ``settings`` name the source like ``training_config.json`` does: ``dataset_name``, ``dataset_config_name``,
    ``train_data_dir`` (an audio folder), ``dataset_split``, ``audio_column``, ``cache_dir``, ``streaming``. At most
    ``max_clips`` are read (a seeded random subset of a larger dataset; the first ones of a streamed one); unreadable
    clips are skipped, as training skips them.
    """
    import datasets

    from hfddpm.audio import AudioDecodeError, decode_audio, resolve_audio_column
    from hfddpm.data import load_training_source, sample_column

    if settings.get("dataset_name") is None and settings.get("train_data_dir") is None:
        raise ValueError(
            "FAD needs real clips: pass an audio folder or dataset with --reference-audio (`hfddpm evaluate` reads"
            " the run's training source from PIPELINE/training_config.json when there is one)."
        )
    dataset = load_training_source(settings)
    column = resolve_audio_column(dataset, settings.get("audio_column"))
    if column is None:
        raise ValueError(
            f"The FAD reference {settings.get('dataset_name') or settings.get('train_data_dir')!r} has no audio column"
            f" (columns {list(dataset.features or {})}); pass real clips with --reference-audio."
        )
    if isinstance(dataset.features[column], datasets.Audio) and dataset.features[column].decode:
        dataset = dataset.cast_column(column, datasets.Audio(decode=False))
    values = sample_column(dataset, column, max_clips, seed, name="FAD reference")
    clips = []
    for value in values:
        try:
            waveform, _ = decode_audio(value, sample_rate)
        except AudioDecodeError:
            continue
        clips.append(np.pad(waveform[:num_samples], (0, max(0, num_samples - len(waveform)))))
    if len(clips) < 2:
        raise ValueError(f"The FAD reference gave {len(clips)} readable clips; FAD needs at least 2.")
    return np.stack(clips).astype(np.float32)
