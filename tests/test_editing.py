"""Editing pipelines: RePaint inpainting (HFDDPMInpaintPipeline) and SDEdit image-to-image (HFDDPMImg2ImgPipeline)."""

import json
import os
import re
import subprocess
import sys
import textwrap

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from hfddpm import HFDDPMImg2ImgPipeline, HFDDPMInpaintPipeline, HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.evaluation import SCHEDULERS, make_scheduler
from hfddpm.pipelines.pipeline_hfddpm import PIPELINE_MODULES
from hfddpm.pipelines.pipeline_hfddpm_inpaint import repaint_schedule

SIZE = 16


def tiny_unet(num_class_embeds=11, seed=0):
    torch.manual_seed(seed)
    return build_unet("tiny", in_channels=1, out_channels=1, sample_size=SIZE, num_class_embeds=num_class_embeds)


@pytest.fixture(scope="module")
def pipe():
    pipe = HFDDPMPipeline(unet=tiny_unet(), scheduler=HFDDPMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inpaint(pipe):
    edit = HFDDPMInpaintPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    return edit


@pytest.fixture(scope="module")
def img2img(pipe):
    edit = HFDDPMImg2ImgPipeline.from_pipe(pipe)
    edit.set_progress_bar_config(disable=True)
    return edit


def digits(n=2, seed=1):
    """Images on the 8-bit grid, as real inputs are (so PIL round trips are exact)."""
    return torch.randint(0, 256, (n, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(seed)).float() / 255


def lower_half_mask(n=1):
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[..., SIZE // 2 :, :] = 1
    return mask


def constant_unet(value: float):
    """A UNet whose output is ``value`` everywhere (a zero output convolution with bias ``value``): with
    ``prediction_type="sample"`` it predicts the clean image x_0 = ``value`` at every step."""
    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(value)
    return unet


# ------------------------------------------------------------------------------------------------------------------
# Inpainting
# ------------------------------------------------------------------------------------------------------------------
def test_from_pipe_shares_the_weights(pipe, inpaint, img2img):
    assert inpaint.unet is pipe.unet and img2img.unet is pipe.unet
    assert inpaint.scheduler is pipe.scheduler


@pytest.fixture(scope="module")
def latent_pipe():
    """A latent model: a 2x-downsampling AutoencoderKL (16 px grey -> 4x8x8) and a UNet on its latents."""
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=4, block_out_channels=[8, 8], layers_per_block=1,
        norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    unet = build_unet("tiny", in_channels=4, out_channels=4, sample_size=SIZE // 2, num_class_embeds=11)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(), vae=vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_latent_models_edit_in_latent_space_and_keep_the_unmasked_pixels(latent_pipe):
    inpaint, img2img = (cls.from_pipe(latent_pipe) for cls in (HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline))
    assert inpaint.vae is latent_pipe.vae and img2img.vae is latent_pipe.vae and inpaint._vae_scale_factor() == 2
    for edit in (inpaint, img2img):
        edit.set_progress_bar_config(disable=True)
    images, mask = digits(2), lower_half_mask()
    out = inpaint(images, mask, num_inference_steps=3, jump_length=1, jump_n_sample=2, class_labels=[1, 2],
                  generator=torch.manual_seed(0), output_type="pt").images  # fmt: skip
    assert out.shape == (2, 1, SIZE, SIZE)
    assert torch.equal(out[..., : SIZE // 2, :], images[..., : SIZE // 2, :])  # kept pixels: the input's own
    assert not torch.equal(out[..., SIZE // 2 :, :], images[..., SIZE // 2 :, :])
    # img2img: strength 0 is the input, strength 1 is the latent model's own sampling (decoded), seed for seed
    assert torch.equal(img2img(images, strength=0.0, output_type="pt").images, images)
    kwargs = dict(num_inference_steps=3, class_labels=[1, 2], output_type="pt")
    edited = img2img(images, strength=1.0, generator=torch.manual_seed(5), **kwargs).images
    sampled = latent_pipe(batch_size=2, generator=torch.manual_seed(5), **kwargs).images
    torch.testing.assert_close(edited, sampled)
    partial = img2img(images, strength=0.5, generator=torch.manual_seed(5), **kwargs).images
    assert partial.shape == (2, 1, SIZE, SIZE) and not torch.allclose(partial, sampled)
    with pytest.raises(ValueError, match=r"image must be 1x16x16"):
        img2img(torch.rand(1, 1, SIZE // 2, SIZE // 2), strength=0.5)  # the latent size is not the image size


@pytest.mark.parametrize("output_type", ["pt", "np", "pil"])
def test_pixels_outside_the_mask_equal_the_input_exactly(inpaint, output_type):
    images, mask = digits(2), lower_half_mask()
    out = inpaint(
        images,
        mask,
        num_inference_steps=3,
        jump_length=1,
        jump_n_sample=2,
        class_labels=[3, 7],
        guidance_scale=2.0,
        generator=torch.Generator().manual_seed(0),
        output_type=output_type,
    ).images
    if output_type == "pil":
        out = torch.stack([torch.from_numpy(np.array(im)).float() / 255 for im in out]).unsqueeze(1)
    elif output_type == "np":
        out = torch.from_numpy(out).permute(0, 3, 1, 2)
    keep = mask.expand_as(images) == 0
    assert torch.equal(out[keep], images[keep])
    assert not torch.equal(out[~keep], images[~keep])  # the masked half was repainted


def test_masked_region_comes_from_the_model():
    # a model that predicts x_0 = 0.5 (pixel 0.75) everywhere: RePaint's last step makes the masked pixels exactly
    # the model's x_0, whatever the noise and the known part did before
    for scheduler in (HFDDPMScheduler(prediction_type="sample"), diffusers.DDPMScheduler(prediction_type="sample")):
        edit = HFDDPMInpaintPipeline(unet=constant_unet(0.5), scheduler=scheduler)
        edit.set_progress_bar_config(disable=True)
        images, mask = digits(1), lower_half_mask()
        out = edit(images, mask, num_inference_steps=4, jump_length=2, jump_n_sample=3, output_type="pt").images
        torch.testing.assert_close(out[..., SIZE // 2 :, :], torch.full((1, 1, SIZE // 2, SIZE), 0.75))
        assert torch.equal(out[..., : SIZE // 2, :], images[..., : SIZE // 2, :])


def test_input_formats_give_the_same_result(inpaint):
    image, mask = digits(1), lower_half_mask()
    kwargs = dict(num_inference_steps=2, jump_length=1, jump_n_sample=1, output_type="np")
    as_pil = Image.fromarray((image[0, 0].numpy() * 255).round().astype(np.uint8), mode="L")
    mask_pil = Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8), mode="L")
    results = [
        inpaint(img, m, generator=torch.Generator().manual_seed(0), **kwargs).images
        for img, m in [
            (image, mask),  # NCHW torch
            (image[0], mask[0, 0]),  # CHW and HW torch
            (image[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy()),  # HWC and HW numpy
            (as_pil, mask_pil),  # PIL L
            (as_pil.convert("RGB"), mask_pil.convert("RGB")),  # PIL RGB: converted to the UNet's grey
            ([as_pil], [mask_pil]),  # lists
        ]
    ]
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_repaint_schedule():
    # no resampling: the plain reverse chain
    assert repaint_schedule(5, jump_length=2, jump_n_sample=1) == [0, 1, 2, 3, 4, 5]
    assert repaint_schedule(6, jump_length=2, jump_n_sample=2) == [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 4, 5, 6]
    positions = repaint_schedule(50, jump_length=10, jump_n_sample=10)
    moves = np.diff(positions)
    assert positions[0] == 0 and positions[-1] == 50 and min(positions[1:]) > 0
    assert set(moves.tolist()) == {1, -10}
    # jump points 50, 40, 30, 20 (more than jump_length steps from the start), 9 jumps each
    assert (moves == -10).sum() == 4 * 9
    assert (moves == 1).sum() == 50 + 4 * 9 * 10  # model evaluations


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image=torch.rand(1, 1, 8, 8)), r"image must be 1x16x16 .* got images of shape \(1, 8, 8\)"),
        (dict(image=torch.rand(1, 3, 16, 16)), r"image has 3 channels, but this model takes 1-channel images"),
        # a 3-D numpy array is HWC, as documented: an RGB(A) image for this grey model, not 16 images of 16x3
        (
            dict(image=np.zeros((16, 16, 3), np.float32)),
            r"image has 3 channels, .* takes 1-channel .*image.convert\(\"L\"\)",
        ),
        (dict(image=np.zeros((16, 16, 4), np.float32)), r"image has 4 channels, .*array\.mean\(axis=-1\)"),
        (dict(image=[]), r"image: no images given"),
        (dict(mask_image=[]), r"mask_image: no images given"),
        (dict(mask_image=np.zeros((16, 16, 3), np.float32)), r"mask_image must have one channel .* got 3 channels"),
        (dict(image=torch.rand(1, 1, 16, 16) * 2), r"image values must be in \[0, 1\]"),
        (dict(image=np.zeros((16, 16), dtype=np.uint8)), r"must hold floats in \[0, 1\], got dtype torch.uint8"),
        (dict(image="in.png"), r"image must be PIL images, numpy arrays"),
        (dict(mask_image=torch.full((1, 1, 16, 16), 0.5)), r"mask_image must be binary .* got values \[0.5\]"),
        (dict(mask_image=torch.ones(1, 1, 8, 16)), r"mask_image must have the image's size \(16, 16\).*\(8, 16\)"),
        (dict(mask_image=torch.ones(3, 1, 16, 16)), r"Got 3 masks for 2 images"),
        (dict(mask_image=torch.zeros(1, 3, 16, 16)), r"mask_image must have one channel .* got 3 channels"),
        (dict(mask_image=np.zeros((1, 16, 16, 3), np.float32)), r"mask_image must have one channel .* got 3"),
        # a 3-D torch tensor is CHW, as documented: an RGB image for this grey model, not 3 grey images
        (dict(image=torch.rand(3, 16, 16)), r"image has 3 channels, but this model takes 1-channel images"),
        (dict(jump_length=0), r"jump_length must be an integer >= 1, got 0"),
        (dict(jump_n_sample=1.5), r"jump_n_sample must be an integer >= 1, got 1.5"),
        (dict(class_labels=[10, 1]), r"class_labels must be in \[0, 9\]"),
        (dict(output_type="latent"), r"output_type='latent' is not supported"),
    ],
)
def test_inpaint_bad_input(inpaint, kwargs, message):
    args = dict(image=digits(2), mask_image=lower_half_mask(), num_inference_steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        inpaint(**args)


@pytest.mark.parametrize(
    "image, message",
    [
        (
            np.zeros((SIZE, SIZE), np.float32),
            r"image has 1 channel, but this model takes 3-channel .*\.convert\(\"RGB\"\)",
        ),
        (np.zeros((SIZE, SIZE, 1), np.float32), r"image has 1 channel, but this model takes 3-channel"),
        (np.zeros((SIZE, SIZE, 4), np.float32), r"image has 4 channels, .* drop the alpha channel"),
    ],
)
def test_rgb_model_names_the_channels_of_a_grey_or_rgba_array(image, message):
    edit = HFDDPMImg2ImgPipeline(unet=build_unet("tiny", in_channels=3, out_channels=3, sample_size=SIZE),
                                 scheduler=HFDDPMScheduler())  # fmt: skip
    rgb = np.zeros((SIZE, SIZE, 3), np.float32)  # HWC with the model's channels: one image
    assert edit(rgb, strength=0.0, output_type="pt").images.shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match=message):
        edit(image, strength=0.5, num_inference_steps=2)


@pytest.mark.parametrize("name", ["ddim", "dpmsolver++", "euler", "unipc"])
def test_inpaint_refuses_schedulers_repaint_is_not_defined_for(pipe, name):
    edit = HFDDPMInpaintPipeline(unet=pipe.unet, scheduler=make_scheduler(name, pipe.scheduler.config))
    with pytest.raises(ValueError, match=r"RePaint is defined for .*'HFDDPMScheduler', 'DDPMScheduler'.*, not \w+"):
        edit(digits(1), lower_half_mask(), num_inference_steps=2)


def tiny_vae(latent_channels: int):
    return diffusers.AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=latent_channels, block_out_channels=[8, 8], layers_per_block=1,
        norm_num_groups=4, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip


@pytest.mark.parametrize("pipeline_cls", [HFDDPMPipeline, HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline])
def test_a_vae_that_does_not_fit_the_unet_is_refused_when_the_pipeline_is_built(latent_pipe, pipeline_cls):
    unet, scheduler = latent_pipe.unet, latent_pipe.scheduler
    with pytest.raises(ValueError, match=r"vae \(AutoencoderKL\) has 8 latent channels but the UNet takes 4 input"):
        pipeline_cls(unet=unet, scheduler=scheduler, vae=tiny_vae(8))
    with pytest.raises(ValueError, match=r"vae must be one of AutoencoderKL, AutoencoderTiny .* got a UNet2DModel"):
        pipeline_cls(unet=unet, scheduler=scheduler, vae=unet)
    assert pipeline_cls(unet=unet, scheduler=scheduler, vae=diffusers.AutoencoderTiny(latent_channels=4)).vae


def test_a_saved_folder_with_a_swapped_vae_is_refused_when_loaded(latent_pipe, tmp_path, capsys):
    from hfddpm.cli import main

    latent_pipe.save_pretrained(tmp_path / "pipe")
    tiny_vae(8).save_pretrained(tmp_path / "pipe" / "vae")
    for pipeline_cls in (HFDDPMPipeline, HFDDPMInpaintPipeline, HFDDPMImg2ImgPipeline):
        with pytest.raises(ValueError, match=r"8 latent channels but the UNet takes 4 input channels"):
            pipeline_cls.from_pretrained(tmp_path / "pipe")
    out = tmp_path / "grid.png"
    assert (
        main(["sample", str(tmp_path / "pipe"), "--num-images", "1", "--num-inference-steps", "1", "--out", str(out)])
        == 2
    )
    assert "8 latent channels but the UNet takes 4 input channels" in capsys.readouterr().err and not out.exists()


# ------------------------------------------------------------------------------------------------------------------
# Image-to-image
# ------------------------------------------------------------------------------------------------------------------
def test_strength_0_returns_the_input(img2img):
    images = digits(2)
    out = img2img(images, strength=0.0, class_labels=5, num_inference_steps=3, output_type="pt").images
    assert torch.equal(out, images)
    pil = img2img(images, strength=0.0, num_inference_steps=3).images
    assert np.array_equal(np.array(pil[1]), (images[1, 0].numpy() * 255).round().astype(np.uint8))


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_strength_1_is_plain_sampling(pipe, name):
    scheduler = make_scheduler(name, pipe.scheduler.config)
    sampler = HFDDPMPipeline(unet=pipe.unet, scheduler=scheduler)
    edit = HFDDPMImg2ImgPipeline.from_pipe(sampler)
    edit.set_progress_bar_config(disable=True)
    sampler.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=4, class_labels=[3, 7], guidance_scale=2.0, output_type="pt")
    expected = sampler(batch_size=2, generator=torch.Generator().manual_seed(0), **kwargs).images
    out = edit(digits(2), strength=1.0, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert torch.equal(out, expected)
    # and a partial edit runs with the same scheduler
    partial = edit(digits(2), strength=0.7, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert partial.shape == (2, 1, SIZE, SIZE) and torch.isfinite(partial).all()


def test_img2img_starts_from_the_noised_image():
    # x_0 predicted as 0.5 everywhere: the edited image is the model's x_0 whatever the input and strength
    edit = HFDDPMImg2ImgPipeline(unet=constant_unet(0.5), scheduler=HFDDPMScheduler(prediction_type="sample"))
    edit.set_progress_bar_config(disable=True)
    out = edit(digits(2), strength=0.5, num_inference_steps=4, output_type="pt").images
    torch.testing.assert_close(out, torch.full_like(out, 0.75))


def test_strength_sets_the_steps(img2img):
    seen = []
    img2img(
        digits(1),
        strength=0.5,
        num_inference_steps=10,
        callback_on_step_end=lambda p, i, t, kw: seen.append(int(t)),
        output_type="pt",
    )
    img2img.scheduler.set_timesteps(10)
    assert seen == img2img.scheduler.timesteps[5:].tolist()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(strength=1.5), r"strength must be a number in \[0, 1\] .* got 1.5"),
        (dict(strength=-0.1), r"strength must be a number in \[0, 1\] .* got -0.1"),
        (dict(strength="0.5"), r"strength must be a number in \[0, 1\] .* got '0.5' \(str\)\."),
        (dict(strength=torch.tensor(1.5)), r"strength must be a number in \[0, 1\] .* got 1.5 \(float\)\."),
        (dict(image=torch.rand(1, 1, 28, 28)), r"image must be 1x16x16"),
        (dict(image=-torch.rand(1, 1, 16, 16)), r"image values must be in \[0, 1\]"),
        (dict(class_labels=[1, 2, 3]), r"Got 3 class_labels for batch_size=2"),
    ],
)
def test_img2img_bad_input(img2img, kwargs, message):
    args = dict(image=digits(2), strength=0.5, num_inference_steps=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        img2img(**args)


def test_img2img_refuses_a_scheduler_without_add_noise(pipe):
    edit = HFDDPMImg2ImgPipeline(unet=pipe.unet, scheduler=diffusers.IPNDMScheduler())
    with pytest.raises(ValueError, match=r"SDEdit needs a scheduler with set_timesteps and add_noise; IPNDMScheduler"):
        edit(digits(1), strength=0.5, num_inference_steps=2)


def test_unconditional_unet(pipe):
    unet = tiny_unet(num_class_embeds=None)
    edit = HFDDPMImg2ImgPipeline(unet=unet, scheduler=HFDDPMScheduler())
    edit.set_progress_bar_config(disable=True)
    assert edit(digits(1), strength=0.5, num_inference_steps=2, output_type="pt").images.shape == (1, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="this UNet is unconditional"):
        edit(digits(1), strength=0.5, num_inference_steps=2, class_labels=1)


# ------------------------------------------------------------------------------------------------------------------
# Saving and loading
# ------------------------------------------------------------------------------------------------------------------
INPAINT = dict(num_inference_steps=3, jump_length=1, jump_n_sample=2, class_labels=[3, 7], output_type="np")
IMG2IMG = dict(strength=0.6, num_inference_steps=3, class_labels=[1, 2], guidance_scale=2.0, output_type="np")


def edit_both(inpaint, img2img):
    seed = torch.Generator().manual_seed
    images, mask = digits(2), lower_half_mask()
    return (
        inpaint(images, mask, generator=seed(0), **INPAINT).images,
        img2img(images, generator=seed(0), **IMG2IMG).images,
    )


def test_saved_edit_pipeline_loads_with_hfddpm(inpaint, img2img, tmp_path):
    inpaint.save_pretrained(tmp_path / "inpaint")
    files = sorted(p.name for p in (tmp_path / "inpaint").glob("*.py"))
    assert files == sorted(f"{m}.py" for m in PIPELINE_MODULES)
    index = json.loads((tmp_path / "inpaint" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_hfddpm_inpaint", "HFDDPMInpaintPipeline"]
    expected = edit_both(inpaint, img2img)
    loaded_inpaint = HFDDPMInpaintPipeline.from_pretrained(tmp_path / "inpaint")
    loaded_img2img = HFDDPMImg2ImgPipeline.from_pretrained(tmp_path / "inpaint")
    assert type(HFDDPMPipeline.from_pretrained(tmp_path / "inpaint")) is HFDDPMPipeline
    for p in (loaded_inpaint, loaded_img2img):
        p.set_progress_bar_config(disable=True)
    for got, want in zip(edit_both(loaded_inpaint, loaded_img2img), expected, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


LOAD_WITH_PLAIN_DIFFUSERS = """
import sys
sys.modules["hfddpm"] = None  # as if hfddpm were not installed
import numpy as np, torch
from diffusers import DiffusionPipeline

images = torch.randint(0, 256, (2, 1, 16, 16), generator=torch.Generator().manual_seed(1)).float() / 255
mask = torch.zeros(1, 1, 16, 16)
mask[..., 8:, :] = 1
out = {{}}
for i, source in enumerate({sources!r}):
    for name in ("pipeline_hfddpm_inpaint", "pipeline_hfddpm_img2img"):
        pipe = DiffusionPipeline.from_pretrained(source, custom_pipeline=name, trust_remote_code=True)
        assert not type(pipe).__module__.startswith("hfddpm"), type(pipe).__module__
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        if name.endswith("inpaint"):
            out[f"{{i}}-{{name}}"] = pipe(images, mask, generator=generator, **{inpaint}).images
        else:
            out[f"{{i}}-{{name}}"] = pipe(images, generator=generator, **{img2img}).images
np.savez("edited.npz", **out)
"""


def run_plain_diffusers(sources: list[str], tmp_path) -> dict:
    """Inpainting and img2img results of each source, loaded by plain diffusers in a fresh process."""
    script = LOAD_WITH_PLAIN_DIFFUSERS.format(sources=sources, inpaint=INPAINT, img2img=IMG2IMG)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")}
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]
    with np.load(tmp_path / "edited.npz") as loaded:
        return {
            source: (loaded[f"{i}-pipeline_hfddpm_inpaint"], loaded[f"{i}-pipeline_hfddpm_img2img"])
            for i, source in enumerate(sources)
        }


def test_plain_diffusers_runs_the_edit_pipelines_of_a_folder_and_a_hub_repo(pipe, inpaint, img2img, hub, tmp_path):
    from hub_server import USER_TOKEN

    from hfddpm.hub import push_to_hub

    pipe.save_pretrained(tmp_path / "saved")  # saved as the sampling pipeline: the edit files travel with it
    push_to_hub(tmp_path / "saved", "user/hfddpm-edit", token=USER_TOKEN)
    assert {f"{m}.py" for m in PIPELINE_MODULES} <= set(hub.files("user/hfddpm-edit"))
    expected = edit_both(inpaint, img2img)
    for source, edited in run_plain_diffusers([str(tmp_path / "saved"), "user/hfddpm-edit"], tmp_path).items():
        for got, want in zip(edited, expected, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=source)
    # hfddpm's own loader downloads them too (PIPELINE_FILES) and builds an edit pipeline by repo id
    loaded = HFDDPMInpaintPipeline.from_pretrained("user/hfddpm-edit")
    assert type(loaded) is HFDDPMInpaintPipeline


# ------------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    pipe.save_pretrained(folder / "pipe")
    for i, image in enumerate(digits(2)):
        Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8), mode="L").save(folder / f"in{i}.png")
    Image.fromarray((lower_half_mask()[0, 0].numpy() * 255).astype(np.uint8), mode="L").save(folder / "mask.png")
    Image.fromarray(np.full((SIZE, SIZE), 128, dtype=np.uint8), mode="L").save(folder / "grey_mask.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(folder / "small.png")
    return folder


def test_cli_inpaint(cli_files, tmp_path, capsys):
    from hfddpm.cli import main

    d = cli_files
    args = ["inpaint", str(d / "pipe"), "--num-inference-steps", "2", "--jump-length", "1", "--jump-n-sample", "2"]
    assert (
        main([*args, "--image", str(d / "in0.png"), "--mask", str(d / "mask.png"), "--out", str(tmp_path / "o.png")])
        == 0
    )
    out, image = np.array(Image.open(tmp_path / "o.png")), np.array(Image.open(d / "in0.png"))
    assert out.shape == (SIZE, SIZE) and np.array_equal(out[: SIZE // 2], image[: SIZE // 2])
    assert "the result (HFDDPMScheduler)" in capsys.readouterr().out
    # several images: inputs, masks and results in a grid, one column per image
    images = ["--image", str(d / "in0.png"), str(d / "in1.png"), "--class-label", "3,7", "--guidance-scale", "2"]
    assert main([*args, *images, "--mask", str(d / "mask.png"), "--out", str(tmp_path / "grid.png")]) == 0
    grid = np.array(Image.open(tmp_path / "grid.png").convert("L"))
    assert grid.shape == (3 * SIZE, 2 * SIZE)
    assert np.array_equal(grid[:SIZE, SIZE:], np.array(Image.open(d / "in1.png")))
    assert np.array_equal(grid[2 * SIZE : 2 * SIZE + SIZE // 2, SIZE:], grid[: SIZE // 2, SIZE:])  # kept top half


def test_cli_img2img(cli_files, tmp_path):
    from hfddpm.cli import main

    d = cli_files
    args = [
        "img2img",
        str(d / "pipe"),
        "--image",
        str(d / "in0.png"),
        str(d / "in1.png"),
        "--num-inference-steps",
        "2",
    ]
    assert main([*args, "--strength", "0", "--out", str(tmp_path / "same.png")]) == 0
    grid = np.array(Image.open(tmp_path / "same.png").convert("L"))
    assert grid.shape == (2 * SIZE, 2 * SIZE) and np.array_equal(grid[:SIZE], grid[SIZE:])  # strength 0: unchanged
    assert main([*args, "--strength", "0.5", "--class-label", "3", "--out", str(tmp_path / "edit.png")]) == 0
    assert not np.array_equal(np.array(Image.open(tmp_path / "edit.png").convert("L"))[SIZE:], grid[SIZE:])


@pytest.mark.parametrize(
    "command, message",
    [
        (["inpaint", "--mask", "small.png"], r"mask_image must have the image's size \(16, 16\)"),
        (["inpaint", "--mask", "grey_mask.png"], r"mask_image must be binary"),
        (
            ["inpaint", "--mask", "mask.png", "--scheduler", "ddim"],
            r"--scheduler ddim \(DDIMScheduler\) has neither\. Use --scheduler hfddpm or --scheduler ddpm\.$",
        ),
        (["inpaint", "--mask", "mask.png", "--scheduler", "Euler"], r"--scheduler Euler \(EulerDiscreteScheduler\)"),
        (["inpaint", "--mask", "mask.png", "mask.png"], r"Got 2 --mask files for 1 --image files"),
        (["inpaint", "--mask", "missing.png"], r"--mask .*missing.png: no such file"),
        (["img2img", "--class-label", "10"], r"--class-labels must be in \[0, 9\]"),
        (["img2img", "--image", "small.png"], r"image must be 1x16x16"),
    ],
)
def test_cli_edit_bad_input(cli_files, tmp_path, capsys, monkeypatch, command, message):
    from hfddpm.cli import main

    monkeypatch.chdir(cli_files)
    name, *extra = command
    args = [name, "pipe", "--num-inference-steps", "1", "--out", str(tmp_path / "o.png")]
    if "--image" not in extra:
        args += ["--image", "in0.png"]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hfddpm {name}: error:") and re.search(message, err), err
    assert not (tmp_path / "o.png").exists()


def test_cli_inpaint_names_the_scheduler_flag_for_a_saved_ddim_scheduler(pipe, cli_files, tmp_path, capsys):
    from hfddpm.cli import main

    HFDDPMPipeline(unet=pipe.unet, scheduler=make_scheduler("ddim", pipe.scheduler.config)).save_pretrained(
        tmp_path / "ddim"
    )
    d, out = cli_files, tmp_path / "o.png"
    args = ["--image", str(d / "in0.png"), "--mask", str(d / "mask.png"), "--num-inference-steps", "1"]
    assert main(["inpaint", str(tmp_path / "ddim"), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the saved scheduler DDIMScheduler has neither. Use --scheduler hfddpm or --scheduler ddpm." in err, err
    assert "pipe.scheduler" not in err and not out.exists()
    assert main(["inpaint", str(tmp_path / "ddim"), *args, "--scheduler", "ddpm", "--out", str(out)]) == 0


def test_cli_strength_out_of_range(cli_files, capsys):
    from hfddpm.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["img2img", str(cli_files / "pipe"), "--image", str(cli_files / "in0.png"), "--strength", "1.5"])
    assert exit_info.value.code == 2
    assert "--strength: must be a finite number in [0, 1] (0 keeps the image, 1 ignores it), got 1.5" in (
        capsys.readouterr().err
    )


def test_img2img_takes_a_zero_dim_tensor_strength_as_its_number(img2img):
    args = dict(image=digits(2), num_inference_steps=4, output_type="pt")
    number = img2img(strength=0.5, generator=torch.Generator().manual_seed(3), **args).images
    tensor = img2img(strength=torch.tensor(0.5), generator=torch.Generator().manual_seed(3), **args).images
    assert torch.equal(number, tensor)
