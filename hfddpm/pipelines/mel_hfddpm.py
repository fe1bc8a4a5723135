# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Waveform <-> log-mel spectrogram image, with the conversion's parameters stored as a pipeline component.

``HFDDPMMel`` is the ``mel`` component of ``HFDDPMAudioPipeline``: training turns clips into spectrogram images with
:meth:`~HFDDPMMel.audio_to_spectrogram`, sampling turns generated images back into sound with
:meth:`~HFDDPMMel.spectrogram_to_audio` (Griffin-Lim). A better vocoder can replace it: any ``ConfigMixin`` component
with ``spectrogram_to_audio`` and ``sample_rate`` works in the pipeline.

This file is copied verbatim into every saved audio pipeline folder (``mel/mel_hfddpm.py``): it imports nothing from
hfddpm. The DSP is librosa's (mel filter bank, STFT, Griffin-Lim), imported when first used.

Example:
    >>> import numpy as np
    >>> mel = HFDDPMMel(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, num_frames=16)
    >>> tone = np.sin(2 * np.pi * 1000 * np.arange(mel.num_samples) / 8000)
    >>> image = mel.audio_to_spectrogram(tone)
    >>> image.shape, float(image.min()) >= 0, float(image.max())
    ((16, 16), True, 1.0)
    >>> mel.spectrogram_to_audio(image[None]).shape
    (1, 960)
"""

import numpy as np
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config

# A power this small (or a clip whose loudest mel bin is this small) is silence.
POWER_FLOOR = 1e-10


def _librosa():
    try:
        import librosa
    except ImportError as err:
        raise ImportError(
            "Audio pipelines need librosa for the mel spectrogram and Griffin-Lim: `pip install 'hfddpm[audio]'` or"
            " `pip install librosa soundfile`."
        ) from err
    return librosa


class HFDDPMMel(SchedulerMixin, ConfigMixin):
    """Log-mel spectrograms as ``[n_mels, num_frames]`` images in [0, 1] and back, by Griffin-Lim.

    Rows are mel bands with the lowest frequencies at the bottom; columns are STFT frames (``hop_length`` samples
    apart, centred). A clip is cut or zero-padded to ``num_samples = (num_frames - 1) * hop_length``; its mel power is
    taken in dB relative to its loudest bin, clipped at ``-top_db`` and mapped to [0, 1] (1 = the loudest bin).
    Loudness is not kept: :meth:`spectrogram_to_audio` returns clips with a peak amplitude of ``peak``.

    ``SchedulerMixin`` gives it ``save_pretrained``/``from_pretrained`` of its config (``mel/mel_config.json``), the
    way diffusers' pipeline loader saves and loads non-model components; it schedules nothing.

    Args:
        sample_rate: samples per second of the waveforms.
        n_fft: STFT window length in samples.
        hop_length: samples between frames.
        n_mels: mel bands (image height).
        num_frames: frames (image width).
        top_db: dynamic range kept, in dB.
        n_iter: Griffin-Lim iterations.
        peak: peak amplitude of the waveforms returned (0 keeps Griffin-Lim's scale).
    """

    config_name = "mel_config.json"

    @register_to_config
    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        hop_length: int = 256,
        n_mels: int = 64,
        num_frames: int = 64,
        top_db: float = 80.0,
        n_iter: int = 32,
        peak: float = 0.9,
    ):
        for name, value in (("sample_rate", sample_rate), ("n_fft", n_fft), ("hop_length", hop_length)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
        for name, value in (("n_mels", n_mels), ("num_frames", num_frames)):
            if not (isinstance(value, int) and value >= 2):
                raise ValueError(f"{name} must be an integer >= 2, got {value!r}.")
        if n_mels > n_fft // 2 + 1:
            raise ValueError(
                f"n_mels={n_mels} is more than the {n_fft // 2 + 1} frequency bins of n_fft={n_fft}; use a larger"
                " n_fft or fewer mel bands."
            )
        if not top_db > 0:
            raise ValueError(f"top_db must be > 0, got {top_db}.")

    @property
    def num_samples(self) -> int:
        """Samples of a clip: ``num_frames`` centred frames ``hop_length`` apart."""
        return (self.config.num_frames - 1) * self.config.hop_length

    @property
    def audio_seconds(self) -> float:
        """Length of a clip in seconds."""
        return self.num_samples / self.config.sample_rate

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    def fit_length(self, waveform: np.ndarray) -> np.ndarray:
        """A mono waveform cut to its first ``num_samples`` samples or zero-padded at the end to that length."""
        waveform = np.asarray(waveform, dtype=np.float32).reshape(-1)[: self.num_samples]
        return np.pad(waveform, (0, self.num_samples - waveform.shape[0]))

    def audio_to_spectrogram(self, waveform: np.ndarray) -> np.ndarray:
        """A mono waveform at ``sample_rate`` -> its log-mel spectrogram, float32 ``[n_mels, num_frames]`` in [0, 1]
        (lowest band in the last row). A silent clip gives zeros."""
        librosa, c = _librosa(), self.config
        # 1. mel power spectrogram: |STFT|^2 through a mel filter bank (Slaney), centred frames
        power = librosa.feature.melspectrogram(
            y=self.fit_length(waveform), sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, n_mels=c.n_mels
        )
        loudest = float(power.max())
        if loudest <= POWER_FLOOR:
            return np.zeros((c.n_mels, c.num_frames), dtype=np.float32)
        # 2. dB relative to the loudest bin, clipped to [-top_db, 0], then mapped to [0, 1]
        db = librosa.power_to_db(power, ref=loudest, amin=POWER_FLOOR, top_db=c.top_db)
        image = (db + c.top_db) / c.top_db
        return np.clip(image[::-1], 0.0, 1.0).astype(np.float32)

    def spectrogram_to_audio(self, spectrograms: np.ndarray) -> np.ndarray:
        """Spectrogram images ``[..., n_mels, num_frames]`` in [0, 1] -> waveforms ``[..., num_samples]`` (float32),
        by Griffin-Lim (Griffin & Lim 1984) on the mel-inverted magnitudes; deterministic (seeded phase)."""
        librosa, c = _librosa(), self.config
        spectrograms = np.asarray(spectrograms, dtype=np.float64)
        if spectrograms.shape[-2:] != (c.n_mels, c.num_frames):
            raise ValueError(
                f"Spectrograms must be [..., {c.n_mels}, {c.num_frames}] (n_mels, num_frames) for this converter, got"
                f" shape {spectrograms.shape}."
            )
        flat = spectrograms.reshape(-1, c.n_mels, c.num_frames)
        waveforms = np.zeros((flat.shape[0], self.num_samples), dtype=np.float32)
        for i, image in enumerate(flat):
            # 1. [0, 1] -> dB -> power (relative to the loudest bin), lowest band back in row 0
            power = librosa.db_to_power(np.clip(image[::-1], 0.0, 1.0) * c.top_db - c.top_db)
            # 2. mel -> linear magnitudes (non-negative least squares), then phase by Griffin-Lim
            magnitude = librosa.feature.inverse.mel_to_stft(power, sr=c.sample_rate, n_fft=c.n_fft)
            audio = librosa.griffinlim(
                magnitude, n_iter=c.n_iter, hop_length=c.hop_length, length=self.num_samples, random_state=0
            )
            peak = float(np.abs(audio).max())
            if c.peak > 0 and peak > 0:
                audio = audio * (c.peak / peak)
            waveforms[i] = audio
        return waveforms.reshape(*spectrograms.shape[:-2], self.num_samples)
