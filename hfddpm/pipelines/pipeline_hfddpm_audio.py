# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Spectrogram diffusion: ``HFDDPMPipeline`` sampling of log-mel spectrogram images, turned into sound by its ``mel``
component (Griffin-Lim by default).

This file is copied verbatim into every saved audio pipeline folder (``pipeline_hfddpm_audio.py``, next to
``pipeline_hfddpm.py``, which it imports relatively): it imports nothing from hfddpm.
"""

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers import ConfigMixin, DiffusionPipeline, UNet2DModel
from diffusers.utils import BaseOutput

from .pipeline_hfddpm import COMPONENTS, OUTPUT_TYPES, HFDDPMPipeline


@dataclass
class HFDDPMAudioPipelineOutput(BaseOutput):
    """Generated sound and the spectrograms it was made from.

    Attributes:
        audios: float32 waveforms ``[N, num_samples]`` in [-1, 1], mono.
        images: the spectrograms (PIL images, ``[N, n_mels, num_frames, 1]`` or ``[N, 1, n_mels, num_frames]`` floats
            in [0, 1], by ``output_type``); the lowest mel band is the last row.
        sample_rate: samples per second of ``audios``.
    """

    audios: np.ndarray
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    sample_rate: int


class HFDDPMAudioPipeline(HFDDPMPipeline):
    """Sample sound: a ``UNet2DModel`` generates log-mel spectrograms (one channel, ``n_mels x num_frames``) with any
    diffusers scheduler and optional classifier-free guidance; ``mel`` turns them into waveforms.

    Example:
        >>> import torch
        >>> from hfddpm import HFDDPMAudioPipeline, HFDDPMMel, HFDDPMScheduler, build_unet
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=3)
        >>> mel = HFDDPMMel(sample_rate=8000, n_fft=256, hop_length=64, n_mels=16, num_frames=16)
        >>> pipe = HFDDPMAudioPipeline(unet=unet, scheduler=HFDDPMScheduler(), mel=mel)
        >>> pipe.set_progress_bar_config(disable=True)
        >>> out = pipe(batch_size=2, class_labels=[0, 1], num_inference_steps=2, generator=torch.manual_seed(0))
        >>> out.audios.shape, out.sample_rate, out.images[0].size
        ((2, 960), 8000, (16, 16))
    """

    # The components HFDDPMPipeline.from_pretrained loads, with the base class each must have.
    _components = {**COMPONENTS, "mel": ((ConfigMixin,), ["mel_hfddpm", "HFDDPMMel"])}

    def __init__(self, unet: UNet2DModel, scheduler, mel):
        DiffusionPipeline.__init__(self)
        self.register_modules(unet=unet, scheduler=scheduler, mel=mel)

    @property
    def sample_rate(self) -> int:
        return self.mel.config.sample_rate

    @torch.no_grad()
    def __call__(self, *args, output_type: str = "pil", return_dict: bool = True, **kwargs):
        """Generate ``batch_size`` clips; takes the arguments of :meth:`HFDDPMPipeline.__call__`.

        ``output_type`` applies to the spectrogram ``images`` (``"pil"``, ``"np"``, ``"pt"``); ``audios`` are always
        a numpy array. Returns an ``HFDDPMAudioPipelineOutput`` (or ``(audios, images)`` with ``return_dict=False``).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of {OUTPUT_TYPES}.")
        # 1. spectrogram images in [0, 1], as the image pipeline samples them
        images = super().__call__(*args, output_type="pt", return_dict=True, **kwargs).images
        expected = (1, self.mel.config.n_mels, self.mel.config.num_frames)
        if tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"The UNet makes {tuple(images.shape[1:])} images but the mel component expects {expected}"
                " (channels, n_mels, num_frames); use a UNet and a mel component saved together."
            )
        # 2. spectrograms -> waveforms (Griffin-Lim or the vocoder that replaces it)
        audios = self.mel.spectrogram_to_audio(images[:, 0].numpy())
        if output_type == "np":
            images = images.permute(0, 2, 3, 1).numpy()
        elif output_type == "pil":
            images = self.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
        if not return_dict:
            return (audios, images)
        return HFDDPMAudioPipelineOutput(audios=audios, images=images, sample_rate=self.sample_rate)
