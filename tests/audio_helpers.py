"""Test signals and models for the audio tests: pure tones at the mel tests' sample rate, a tiny audio pipeline."""

from pathlib import Path

import numpy as np
import torch

import hfddpm

SR = 16000
# The mel settings of the tiny audio pipeline: 16×16 spectrograms of 0.12 s clips at 8000 Hz.
TINY_MEL = dict(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, num_frames=16)


def tone(freq: float, seconds: float, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """A sine of ``freq`` Hz, ``seconds`` long, float32."""
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def build_audio_pipeline(folder: Path, num_class_embeds: int | None = None) -> Path:
    """Save a tiny untrained ``HFDDPMAudioPipeline`` (``TINY_MEL``, the "tiny" UNet seeded with 0) in ``folder``;
    ``num_class_embeds`` makes it class-conditional (one more than the number of classes). Returns ``folder``."""
    torch.manual_seed(0)
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=num_class_embeds)
    mel = hfddpm.HFDDPMMel(**TINY_MEL)
    hfddpm.HFDDPMAudioPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler(), mel=mel).save_pretrained(folder)
    return folder
