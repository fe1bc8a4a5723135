"""HFDDPMPipeline: the diffusers pipeline contract, guidance, scheduler swaps and input errors."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMPipeline, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from PIL import Image

from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet


def tiny_pipe(num_classes=None, channels=1, size=16, **scheduler_kwargs):
    torch.manual_seed(0)
    unet = build_unet(
        "tiny",
        in_channels=channels,
        out_channels=channels,
        sample_size=size,
        num_class_embeds=num_classes + 1 if num_classes else None,
    )
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(**scheduler_kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample(pipe, seed=0, **kwargs):
    kwargs = {"batch_size": 2, "num_inference_steps": 3, "output_type": "np", **kwargs}
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_pinned_output_slice():
    images = sample(tiny_pipe())
    assert images.shape == (2, 16, 16, 1)
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    assert float(images.sum()) == pytest.approx(289.8900, abs=1e-2)
    np.testing.assert_allclose(images[0, 0, :4, 0], [0.17394, 0.00310, 0.35562, 0.36455], atol=1e-4)


def test_same_generator_same_images_different_seed_different_images():
    pipe = tiny_pipe()
    assert np.array_equal(sample(pipe, seed=1), sample(pipe, seed=1))
    assert not np.array_equal(sample(pipe, seed=1), sample(pipe, seed=2))


def test_output_types():
    pipe = tiny_pipe()
    pil = sample(pipe, output_type="pil")
    assert len(pil) == 2 and isinstance(pil[0], Image.Image) and pil[0].mode == "L" and pil[0].size == (16, 16)
    rgb = sample(tiny_pipe(channels=3), output_type="pil")
    assert rgb[0].mode == "RGB"
    pt = sample(pipe, output_type="pt")
    assert isinstance(pt, torch.Tensor) and pt.shape == (2, 1, 16, 16)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), sample(pipe), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(pil[0]), (sample(pipe)[0, :, :, 0] * 255).round().astype(np.uint8))
    (tup,) = pipe(batch_size=1, num_inference_steps=2, output_type="np", return_dict=False)
    assert tup.shape == (1, 16, 16, 1)


def test_swapped_ddim_scheduler_equals_ours_at_eta_zero():
    pipe = tiny_pipe()
    ours = sample(pipe, num_inference_steps=5)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    np.testing.assert_allclose(sample(pipe, num_inference_steps=5), ours, atol=1e-5)


@pytest.mark.parametrize("solver", [DPMSolverMultistepScheduler, EulerDiscreteScheduler])
def test_any_diffusers_scheduler_can_be_swapped_in(solver):
    pipe = tiny_pipe()
    pipe.scheduler = solver.from_config(pipe.scheduler.config)
    calls = []
    original = pipe.scheduler.scale_model_input
    pipe.scheduler.scale_model_input = lambda x, t: calls.append(int(t)) or original(x, t)
    images = sample(pipe, num_inference_steps=4)
    assert len(calls) == 4 and np.isfinite(images).all()
    assert np.array_equal(images, sample(pipe, num_inference_steps=4))


def test_eta_reaches_the_scheduler():
    pipe = tiny_pipe()
    assert not np.array_equal(sample(pipe, eta=1.0), sample(pipe, eta=0.0))
    assert np.array_equal(sample(pipe, eta=1.0, seed=5), sample(pipe, eta=1.0, seed=5))


def test_guidance_is_one_batched_forward_pass_and_follows_the_cfg_formula():
    pipe = tiny_pipe(num_classes=10)
    seen = []
    hook = pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: seen.append((args[0].shape[0], kwargs["class_labels"].tolist())), with_kwargs=True
    )
    sample(pipe, class_labels=[3, 7], guidance_scale=3.0, num_inference_steps=2)
    hook.remove()
    assert seen == [(4, [3, 7, 10, 10])] * 2  # conditional half then the null class, one call per step

    # one step from the same noise: guided output = uncond + w * (cond - uncond)
    steps = {"num_inference_steps": 1, "output_type": "pt"}
    cond = sample(pipe, class_labels=[3, 7], **steps)
    uncond = sample(pipe, class_labels=None, **steps)
    guided = sample(pipe, class_labels=[3, 7], guidance_scale=3.0, **steps)
    # with one v-prediction step to t=-1, x_0 is linear in the model output where no clipping happens
    inside = ((uncond + 3.0 * (cond - uncond)) - 0.5).abs() < 0.45
    assert inside.any()
    assert torch.allclose(guided[inside], (uncond + 3.0 * (cond - uncond))[inside], atol=1e-4)


def test_class_labels_change_the_images_and_scalar_label_broadcasts():
    pipe = tiny_pipe(num_classes=10)
    assert not np.array_equal(sample(pipe, class_labels=[1, 1]), sample(pipe, class_labels=[2, 2]))
    assert np.array_equal(sample(pipe, class_labels=4), sample(pipe, class_labels=[4, 4]))
    assert np.array_equal(sample(pipe, class_labels=torch.tensor([4, 4])), sample(pipe, class_labels=[4, 4]))


def test_callback_on_step_end():
    pipe = tiny_pipe()
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((i, int(t), tuple(kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])}

    images = sample(pipe, num_inference_steps=3, callback_on_step_end=callback)
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][1] == 999 and seen[0][2] == (2, 1, 16, 16)
    assert np.allclose(images, 0.5)  # the last replacement is what gets decoded


def test_progress_bar_is_shown(capsys):
    pipe = tiny_pipe()
    pipe.set_progress_bar_config(disable=False)
    pipe(batch_size=1, num_inference_steps=3, output_type="np")
    assert "3/3" in capsys.readouterr().err


def test_matches_diffusers_ddpm_pipeline_on_the_same_unet_and_scheduler():
    # ancestral DDPM over every training step: a short 50-step chain keeps the full loop cheap
    pipe = tiny_pipe(noise_schedule="linear", prediction_type="epsilon", clip_sample=False, num_train_timesteps=50)
    from diffusers import DDPMScheduler

    ref = DDPMPipeline(unet=pipe.unet, scheduler=DDPMScheduler.from_config(pipe.scheduler.config))
    ref.set_progress_bar_config(disable=True)
    expected = ref(
        batch_size=2, num_inference_steps=50, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    ours = sample(pipe, num_inference_steps=50, eta=1.0, batch_size=2)
    np.testing.assert_allclose(ours, expected, atol=1e-3)


@pytest.mark.parametrize(
    "num_classes,kwargs,match",
    [
        (None, {"class_labels": [1, 2]}, "class_labels were given but this UNet is unconditional"),
        (None, {"guidance_scale": 2.0}, "guidance_scale=2.0 needs a class-conditional UNet"),
        (10, {"class_labels": [1, 10]}, r"class_labels must be in \[0, 9\].*got \[10\]\.$"),
        (10, {"class_labels": [-1, 3]}, r"class_labels must be in \[0, 9\] .*got \[-1\]\.$"),
        (10, {"class_labels": torch.tensor([1.5, 2.0])}, r"class_labels must be whole numbers .*got \[1.5, 2.0\]"),
        (10, {"class_labels": [1, 2, 3]}, "Got 3 class_labels for batch_size=2"),
        (10, {"guidance_scale": 2.0}, "needs class_labels"),
        (None, {"output_type": "latent"}, "output_type='latent'.*'pil', 'np', 'pt'"),
        (None, {"batch_size": 0}, "batch_size must be an integer >= 1"),
        (None, {"batch_size": 2.0}, r"batch_size must be an integer >= 1, got 2.0"),
        (None, {"num_inference_steps": 2.5}, r"num_inference_steps must be an integer >= 1, got 2.5"),
    ],
)
def test_input_errors(num_classes, kwargs, match):
    pipe = tiny_pipe(num_classes=num_classes)
    with pytest.raises(ValueError, match=match):
        sample(pipe, **kwargs)


def test_a_generator_list_has_one_generator_per_image():
    with pytest.raises(ValueError, match=r"Got a list of 3 generators for 2 images; pass one generator, or one per"):
        tiny_pipe()(batch_size=2, num_inference_steps=2, generator=[torch.Generator() for _ in range(3)])
