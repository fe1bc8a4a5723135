# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Inpainting with a trained diffusion model (pixel-space or latent): RePaint (Lugmayr et al. 2022,
https://arxiv.org/abs/2201.09865) with resampling jumps, optionally class-conditional with classifier-free guidance.

This file is copied verbatim into every saved pipeline folder (``pipeline_hfddpm_inpaint.py``), so that
``DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline_hfddpm_inpaint",
trust_remote_code=True)`` runs it with plain diffusers: it imports nothing from hfddpm, only its neighbour
``pipeline_hfddpm.py``.
"""

from typing import Callable

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor

from .pipeline_hfddpm import HFDDPMPipelineMixin, check_count

# RePaint runs the ancestral DDPM reverse step and re-noises with the forward process between steps: it is defined
# for these schedulers (by class name, so the copies that plain diffusers loads from a saved folder count too).
REPAINT_SCHEDULERS = ("HFDDPMScheduler", "DDPMScheduler")


def repaint_schedule(num_inference_steps: int, jump_length: int, jump_n_sample: int) -> list[int]:
    """The positions the sampler visits, as indices into the ``num_inference_steps`` descending timesteps
    (``0`` is pure noise at the first timestep, ``num_inference_steps`` the finished image).

    A position one higher than the last is a denoising step; a lower one is a jump back that re-noises the sample
    (Sec. 4.2 of RePaint, "resampling"). Counted from the end, every ``jump_length``-th position (those more than
    ``jump_length`` steps from the start) sends the sample ``jump_length`` steps back, ``jump_n_sample - 1`` times.
    ``jump_n_sample=1`` has no jumps. The number of model evaluations is the number of upward moves.

    Example:
        >>> repaint_schedule(6, jump_length=2, jump_n_sample=2)
        [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 4, 5, 6]
    """
    remaining = {p: jump_n_sample - 1 for p in range(num_inference_steps, jump_length, -jump_length)}
    positions = [0]
    position = 0
    while position < num_inference_steps:
        position += 1
        positions.append(position)
        if remaining.get(position, 0) > 0:
            remaining[position] -= 1
            position -= jump_length
            positions.append(position)
    return positions


class HFDDPMInpaintPipeline(HFDDPMPipelineMixin, DiffusionPipeline):
    """Fill the masked part of images with RePaint: at every step the known part is the input noised to that step,
    the unknown part comes from the model's reverse step, and resampling jumps let the two agree.

    Schedulers: RePaint needs the ancestral DDPM posterior step and forward re-noising between steps, so it is defined
    for ``HFDDPMScheduler`` (run at ``eta=1``, ancestral DDPM, whatever its config says) and ``DDPMScheduler``; any
    other scheduler (DDIM, DPM-Solver, Euler, ...) is refused with a ``ValueError``. Swap one in with
    ``HFDDPMScheduler.from_config(pipe.scheduler.config)``.

    ``mask_image`` follows diffusers' inpainting convention: white (1) pixels are repainted, black (0) pixels are
    kept, and equal the input exactly in the output.

    A latent model (one with a ``vae``) inpaints its latents: the image is encoded, every latent that sees a masked
    pixel is repainted (the mask max-pooled to the latent grid), the result is decoded, and the kept pixels are
    pasted back from the input, so they still equal it exactly.

    Built from a loaded pipeline without copying weights: ``HFDDPMInpaintPipeline.from_pipe(pipe)``, or
    ``HFDDPMInpaintPipeline.from_pretrained(folder)`` on any saved hfddpm folder.

    Example:
        >>> import torch
        >>> from hfddpm import HFDDPMInpaintPipeline, HFDDPMPipeline, HFDDPMScheduler, build_unet
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
        >>> pipe = HFDDPMInpaintPipeline.from_pipe(HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()))
        >>> pipe.set_progress_bar_config(disable=True)
        >>> image = torch.rand(1, 1, 16, 16)
        >>> mask = torch.zeros(1, 1, 16, 16)
        >>> mask[..., 8:, :] = 1  # repaint the lower half
        >>> out = pipe(image, mask, num_inference_steps=4, jump_length=2, jump_n_sample=2, class_labels=3,
        ...            generator=torch.manual_seed(0), output_type="pt")
        >>> bool((out.images[..., :8, :] == image[..., :8, :]).all())
        True
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler, vae: AutoencoderKL | AutoencoderTiny | None = None):
        super().__init__()
        self._register_edit_components(unet, scheduler, vae)

    def _check_scheduler(self):
        name = type(self.scheduler).__name__
        if name not in REPAINT_SCHEDULERS:
            raise ValueError(
                f"RePaint is defined for the ancestral DDPM schedulers {list(REPAINT_SCHEDULERS)}, not {name}: it"
                " needs the DDPM posterior step and forward re-noising between steps. Swap one in, e.g."
                " pipe.scheduler = HFDDPMScheduler.from_config(pipe.scheduler.config)."
            )

    def _mask_to_tensor(self, mask_image, images: torch.Tensor) -> torch.Tensor:
        """``mask_image`` as ``[N or 1, 1, H, W]`` of 0 and 1, checked against ``images``."""
        mask = self._images_to_tensor(mask_image, name="mask_image", mask=True)
        if mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"mask_image must have the image's size {tuple(images.shape[-2:])} (height x width), got"
                f" {tuple(mask.shape[-2:])}."
            )
        if mask.shape[0] not in (1, images.shape[0]):
            raise ValueError(
                f"Got {mask.shape[0]} masks for {images.shape[0]} images; give one mask or one per image."
            )
        values = mask.unique()
        if not bool(((values == 0) | (values == 1)).all()):
            odd = [round(v, 4) for v in values[(values != 0) & (values != 1)].tolist()[:5]]
            raise ValueError(
                f"mask_image must be binary (0 = keep, 1 = repaint; 0 and 255 in an 8-bit image), got values {odd};"
                " threshold it first, e.g. mask > 0.5."
            )
        return mask

    @torch.no_grad()
    def __call__(
        self,
        image,
        mask_image,
        num_inference_steps: int = 50,
        jump_length: int = 10,
        jump_n_sample: int = 10,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> ImagePipelineOutput | tuple:
        """Inpaint ``image`` (one image or a batch) where ``mask_image`` is 1.

        Args:
            image: PIL image(s), numpy (``HW``, ``HWC``, ``NHWC``) or torch (``HW``, ``CHW``, ``NCHW``) in [0, 1], of
                the model's image size and channels (the autoencoder's for a latent model; no resizing).
            mask_image: the same formats with one channel and the image's size, binary: 1 (white) = repaint,
                0 (black) = keep. One mask for all images or one per image.
            num_inference_steps: denoising steps of the schedule.
            jump_length: steps the sample is sent back by each resampling jump (j of RePaint, 10 in the paper).
            jump_n_sample: times each stretch is sampled (r of RePaint, 10 in the paper; 1 = no resampling). The model
                runs about ``num_inference_steps * jump_n_sample`` times (``len(repaint_schedule(...)) - 1``).
            generator: a ``torch.Generator`` (or one per image).
            class_labels: the class of each image, one per image or one for all (class-conditional UNets).
            guidance_scale: classifier-free guidance weight (eq. (6) of Ho & Salimans 2022); 1.0 disables it.
            output_type: ``"pil"``, ``"np"`` (NHWC floats in [0, 1]) or ``"pt"`` (NCHW floats in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``fn(pipe, move_index, timestep, callback_kwargs)`` after each denoising
                step; it may return a dict with a replacement ``"latents"``.
            callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs``.
        """
        # 1. check inputs
        for name, value in (
            ("num_inference_steps", num_inference_steps),
            ("jump_length", jump_length),
            ("jump_n_sample", jump_n_sample),
        ):
            check_count(name, value)
        self._check_output_type(output_type)
        self._check_scheduler()
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        images = self._images_to_tensor(image)
        mask = self._mask_to_tensor(mask_image, images)
        batch_size = images.shape[0]
        labels = self._check_class_labels(batch_size, class_labels, guidance_scale)
        device, dtype = self._execution_device, self.unet.dtype
        if labels is not None:
            labels = labels.to(device)
        original = self._encode((images * 2 - 1).to(device=device, dtype=dtype))  # a latent model's latents
        keep_pixels = 1 - mask
        # a latent model repaints every latent that sees a masked pixel: the mask max-pooled to the latent grid
        factor = self._vae_scale_factor()
        keep = 1 - torch.nn.functional.max_pool2d(mask, factor) if factor > 1 else keep_pixels
        keep = keep.to(device=device, dtype=dtype)

        # 2. timesteps, the resampling schedule, and alpha_bar at each position (1 for the finished image)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        alphas_cumprod = self.scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)
        alpha_bar = [*alphas_cumprod[timesteps.long()].tolist(), 1.0]
        positions = repaint_schedule(num_inference_steps, jump_length, jump_n_sample)
        step_kwargs = self._step_kwargs(generator, eta=1.0)  # ancestral DDPM: HFDDPMScheduler's eta=1

        # 3. x_T ~ N(0, I)
        latents = self._initial_noise(batch_size, generator, device, dtype)
        latents = latents * self.scheduler.init_noise_sigma

        with self.progress_bar(total=len(positions) - 1) as progress_bar:
            for i, (position, target) in enumerate(zip(positions[:-1], positions[1:], strict=True)):
                if target == position + 1:
                    t = timesteps[position]
                    # 4. unknown part: one reverse step x_t -> x_{t-1} ~ p(x_{t-1} | x_t), eq. (9) of RePaint
                    model_output = self._model_output(latents, t, labels, guidance_scale)
                    unknown = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
                    # 5. known part: x_{t-1} ~ q(x_{t-1} | x_0), eq. (8) of RePaint (x_0 itself after the last step)
                    if target == num_inference_steps:
                        known = original
                    else:
                        noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
                        known = self.scheduler.add_noise(original, noise, timesteps[target : target + 1])
                    # 6. x_{t-1} = m * known + (1 - m) * unknown, eq. (10) of RePaint
                    latents = keep * known + (1 - keep) * unknown
                    latents = self._step_end(callback_on_step_end, i, t, latents, callback_on_step_end_tensor_inputs)
                else:
                    # 7. resampling jump back: x_s ~ q(x_s | x_t) = N(sqrt(a_s / a_t) x_t, (1 - a_s / a_t) I) for the
                    #    noisier s, eq. (4) of https://arxiv.org/abs/2006.11239 between two noise levels
                    ratio = alpha_bar[target] / alpha_bar[position]
                    noise = randn_tensor(latents.shape, generator=generator, device=device, dtype=dtype)
                    latents = ratio**0.5 * latents + (1 - ratio) ** 0.5 * noise
                progress_bar.update()

        # 8. a latent model decodes; [-1, 1] -> [0, 1]; the kept pixels are the input's own values (step 6 made them
        #    x_0, up to rounding and the autoencoder's reconstruction)
        result = (self._decode(latents) / 2 + 0.5).clamp(0, 1).float().cpu()
        result = torch.where(keep_pixels.bool().expand_as(result), images, result)
        return self._output(result, output_type, return_dict)
