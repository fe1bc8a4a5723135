"""Named ``UNet2DModel`` configurations, as plain JSON-type dicts.

A preset is data: ``UNet2DModel.from_config(UNET_PRESETS["cifar10"])`` needs nothing from hfddpm, so weights trained
from a preset load with plain diffusers.

Example:
    >>> from hfddpm import build_unet
    >>> unet = build_unet("mnist", num_class_embeds=11)  # 10 digits + the null class for guidance
    >>> unet.config.in_channels, unet.config.sample_size
    (1, 28)
"""

import copy
import inspect

import torch
from diffusers import UNet2DModel

# Parameter counts and training FLOPs per image (forward + backward, torch.utils.flop_counter) are measured by
# `python benchmarks/bench_presets.py`; tests/test_unet_presets.py pins the parameter counts.
UNET_PRESETS: dict[str, dict] = {
    # A few thousand parameters, for tests.
    "tiny": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 1,
        "block_out_channels": [8, 16],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 4,
        "attention_head_dim": 8,
    },
    # 28x28 grey digits: 28 -> 14 -> 7, self-attention at 7x7 only (attention at 14x14 costs 1.3x the step time on a
    # CPU); sized for the 10-minute default run on a 2-core CPU.
    "mnist": {
        "sample_size": 28,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": [32, 64, 64],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 16,
        "attention_head_dim": 32,
    },
    # The 35.7M-parameter CIFAR-10 network of Ho et al. 2020 (App. B): base 128 channels, multipliers (1, 2, 2, 2),
    # 2 residual blocks per level, self-attention at 16x16, dropout 0.1. Same layout as google/ddpm-cifar10-32.
    "cifar10": {
        "sample_size": 32,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "block_out_channels": [128, 256, 256, 256],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "dropout": 0.1,
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
    },
    # 64x64 flowers (Oxford 102): multipliers (1, 2, 3, 4) of 64, attention at 16x16 and 8x8.
    "flowers64": {
        "sample_size": 64,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "block_out_channels": [64, 128, 192, 256],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
        "dropout": 0.1,
        "attention_head_dim": 64,
    },
    # CelebA-HQ 256x256, the layout of google/ddpm-ema-celebahq-256 (Ho et al. 2020, App. B).
    "celebahq256": {
        "sample_size": 256,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": 2,
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "down_block_types": [
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_eps": 1e-6,
        "downsample_padding": 0,
        "flip_sin_to_cos": False,
        "freq_shift": 1,
    },
    # Latent presets: the UNet of latent diffusion (hfddpm.latents, --vae), on 4-channel autoencoder latents.
    # 8x8x4 latents (32 px images through an 8x-downsampling autoencoder such as training/train_vae.py's digit
    # autoencoder, or 64 px through stabilityai/sd-vae-ft-mse): 8 -> 4, self-attention at 4x4.
    "latent8": {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [64, 128],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"],
        "norm_num_groups": 16,
        "attention_head_dim": 32,
    },
    # 32x32x4 latents of 256 px images (stabilityai/sd-vae-ft-mse, madebyollin/taesd): 32 -> 16 -> 8 -> 4,
    # self-attention at 16x16, 8x8 and 4x4, as in the LDM-8 models of Rombach et al. 2022 (Table 13).
    "latent32": {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": [128, 256, 256, 512],
        "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": 64,
    },
    # 64x64 log-mel spectrograms (64 mel bands x 64 frames, e.g. ~1 s of 16 kHz audio at hop 256): 64 -> 32 -> 16
    # -> 8, self-attention at 8x8 only; sized for a few minutes of CPU training on the spoken-digit demo.
    "mel64": {
        "sample_size": 64,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 1,
        "block_out_channels": [32, 64, 64, 128],
        "down_block_types": ["DownBlock2D", "DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
        "norm_num_groups": 16,
        "attention_head_dim": 32,
    },
    # 256x256 log-mel spectrograms, the size of the former diffusers audio-diffusion models (e.g. 5 s at 22.05 kHz,
    # hop 512): the 6-level layout of celebahq256 with one channel, attention at 16x16.
    "mel256": {
        "sample_size": 256,
        "in_channels": 1,
        "out_channels": 1,
        "layers_per_block": 2,
        "block_out_channels": [128, 128, 256, 256, 512, 512],
        "down_block_types": [
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "DownBlock2D",
            "AttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"],
    },
}


def build_unet(name: str, **overrides) -> UNet2DModel:
    """A plain ``diffusers.UNet2DModel`` from preset ``name``, with config ``overrides`` (e.g. ``num_class_embeds``).

    Class-conditional models use ``num_class_embeds = num_classes + 1``: the last index is the null class that
    classifier-free guidance trains with and samples against.
    """
    if name not in UNET_PRESETS:
        raise ValueError(f"Unknown UNet preset {name!r}; choose one of {sorted(UNET_PRESETS)}.")
    settings = set(inspect.signature(UNet2DModel.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - settings)
    if unknown:  # diffusers would only warn and drop them
        raise ValueError(f"{unknown} are not UNet2DModel settings; valid overrides: {sorted(settings)}.")
    config = copy.deepcopy(UNET_PRESETS[name])
    config.update(overrides)
    return UNet2DModel.from_config(config)


def count_training_flops(unet: UNet2DModel, batch_size: int = 1) -> int:
    """FLOPs of one training step (forward and backward) on ``batch_size`` images, by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    c = unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else tuple(c.sample_size)
    size = (size, size) if isinstance(size, int) else size
    x = torch.randn(batch_size, c.in_channels, *size)
    t = torch.randint(0, 1000, (batch_size,))
    labels = torch.zeros(batch_size, dtype=torch.long) if c.num_class_embeds else None
    counter = FlopCounterMode(display=False)
    with counter:
        unet(x, t, class_labels=labels).sample.sum().backward()
    unet.zero_grad(set_to_none=True)
    return counter.get_total_flops()
