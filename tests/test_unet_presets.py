"""UNet presets are plain JSON data that build plain diffusers UNet2DModels."""

import json

import pytest
import torch
from diffusers import UNet2DModel

from hfddpm import UNET_PRESETS, build_unet, count_training_flops

# Parameter counts, also listed in the README (benchmarks/bench_presets.py prints them with FLOPs).
PARAMS = {
    "tiny": 45_259,
    "mnist": 1_112_801,
    "cifar10": 35_746_307,
    "flowers64": 22_080_323,
    "celebahq256": 113_673_219,
    "latent8": 3_993_476,
    "latent32": 75_372_036,
    "mel64": 3_146_401,
    "mel256": 113_668_609,
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_preset_is_json_data_and_builds_a_plain_unet(name):
    config = UNET_PRESETS[name]
    assert json.loads(json.dumps(config)) == config  # JSON types only (lists, not tuples)
    unet = build_unet(name)
    assert type(unet) is UNet2DModel
    assert n_params(unet) == PARAMS[name]
    assert n_params(UNet2DModel.from_config(config)) == PARAMS[name]  # needs nothing of hfddpm


def test_cifar10_is_the_ddpm_paper_network():
    config = UNET_PRESETS["cifar10"]
    assert config["block_out_channels"] == [128, 256, 256, 256] and config["layers_per_block"] == 2
    assert config["dropout"] == 0.1
    # attention at 16x16: the second level of a 32x32 network
    assert config["down_block_types"][1] == "AttnDownBlock2D" and config["sample_size"] == 32
    assert abs(PARAMS["cifar10"] - 35.7e6) / 35.7e6 < 0.02


def test_overrides_and_class_embeddings():
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=28, num_class_embeds=11)
    assert unet.config.sample_size == 28 and unet.class_embedding.num_embeddings == 11
    out = unet(torch.randn(2, 1, 28, 28), torch.tensor([3, 500]), class_labels=torch.tensor([0, 10])).sample
    assert out.shape == (2, 1, 28, 28)
    assert UNET_PRESETS["tiny"]["in_channels"] == 3  # the preset itself is not modified


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"Unknown UNet preset 'mnist64'.*'celebahq256', 'cifar10'"):
        build_unet("mnist64")


def test_training_flops_are_measured_and_scale_with_batch():
    unet = build_unet("tiny")
    one = count_training_flops(unet, batch_size=1)
    assert one > 0 and count_training_flops(unet, batch_size=2) == 2 * one
    assert all(p.grad is None for p in unet.parameters())
    # a forward pass is at least 2 * params multiply-adds per output pixel-position of the first conv alone
    assert one > 2 * 3 * 8 * 9 * 32 * 32


def test_a_misspelled_override_is_refused_naming_the_valid_ones():
    valid = r"valid overrides: .*'num_class_embeds'"
    with pytest.raises(ValueError, match=rf"\['num_classes'\] are not UNet2DModel settings; {valid}"):
        build_unet("tiny", num_classes=10)
