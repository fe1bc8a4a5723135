# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Image-to-image editing with a trained diffusion model (pixel-space or latent): SDEdit (Meng et al. 2022,
https://arxiv.org/abs/2108.01073), optionally towards a class label with classifier-free guidance.

This file is copied verbatim into every saved pipeline folder (``pipeline_hfddpm_img2img.py``), so that
``DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline_hfddpm_img2img",
trust_remote_code=True)`` runs it with plain diffusers: it imports nothing from hfddpm, only its neighbour
``pipeline_hfddpm.py``.
"""

import numbers
from typing import Callable

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DiffusionPipeline, ImagePipelineOutput, UNet2DModel

from .pipeline_hfddpm import HFDDPMPipelineMixin, check_count


class HFDDPMImg2ImgPipeline(HFDDPMPipelineMixin, DiffusionPipeline):
    """Edit images with SDEdit: noise them to an intermediate time set by ``strength``, then denoise them with the
    model, optionally towards ``class_labels`` (e.g. turn a 3 into an 8).

    Schedulers: any diffusers-style scheduler with ``set_timesteps`` and ``add_noise``: hfddpm's
    ``HFDDPMScheduler``, DDPM, DDIM, PNDM, DPM-Solver(++), UniPC, DEIS, SA-Solver, Euler (ancestral), Heun, LMS,
    KDPM2. A scheduler without ``add_noise`` (e.g. ``IPNDMScheduler``) is refused with a ``ValueError``.

    ``strength`` in [0, 1] is the share of the ``num_inference_steps`` schedule that runs, as in diffusers'
    image-to-image pipelines: 0 returns the input unchanged, 1 ignores it and starts from pure noise, which is plain
    sampling (the same images as ``HFDDPMPipeline`` with the same seed and scheduler).

    A latent model (one with a ``vae``) edits its latents: the image is encoded (the scaled posterior mean), noised
    and denoised there, then decoded; images have the autoencoder's size, not the UNet's.

    Built from a loaded pipeline without copying weights: ``HFDDPMImg2ImgPipeline.from_pipe(pipe)``, or
    ``HFDDPMImg2ImgPipeline.from_pretrained(folder)`` on any saved hfddpm folder.

    Example:
        >>> import torch
        >>> from hfddpm import HFDDPMImg2ImgPipeline, HFDDPMPipeline, HFDDPMScheduler, build_unet
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
        >>> pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
        >>> edit = HFDDPMImg2ImgPipeline.from_pipe(pipe)
        >>> edit.set_progress_bar_config(disable=True)
        >>> image = torch.rand(2, 1, 16, 16)
        >>> out = edit(image, strength=0.5, class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=4,
        ...            generator=torch.manual_seed(0), output_type="pt")
        >>> tuple(out.images.shape)
        (2, 1, 16, 16)
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = ["vae"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler, vae: AutoencoderKL | AutoencoderTiny | None = None):
        super().__init__()
        self._register_edit_components(unet, scheduler, vae)

    def _check_scheduler(self):
        missing = [
            name for name in ("set_timesteps", "add_noise") if not callable(getattr(self.scheduler, name, None))
        ]
        if missing:
            raise ValueError(
                f"SDEdit needs a scheduler with set_timesteps and add_noise; {type(self.scheduler).__name__} has no"
                f" {' or '.join(missing)}. Use HFDDPMScheduler, DDPMScheduler, DDIMScheduler,"
                " DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler or another scheduler"
                " with add_noise."
            )

    @torch.no_grad()
    def __call__(
        self,
        image,
        strength: float = 0.6,
        num_inference_steps: int = 50,
        generator: torch.Generator | list[torch.Generator] | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
        eta: float = 0.0,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],  # noqa: B006 (diffusers' signature)
    ) -> ImagePipelineOutput | tuple:
        """Edit ``image`` (one image or a batch).

        Args:
            image: PIL image(s), numpy (``HW``, ``HWC``, ``NHWC``) or torch (``HW``, ``CHW``, ``NCHW``) in [0, 1], of
                the model's image size and channels (the autoencoder's for a latent model; no resizing).
            strength: how far the image is noised, in [0, 1]: ``int(num_inference_steps * strength)`` steps run.
            num_inference_steps: steps of the full schedule (strength=1).
            generator: a ``torch.Generator`` (or one per image).
            class_labels: the class to edit towards, one per image or one for all (class-conditional UNets).
            guidance_scale: classifier-free guidance weight (eq. (6) of Ho & Salimans 2022); 1.0 disables it.
            eta: DDIM noise, passed to schedulers that take it.
            output_type: ``"pil"``, ``"np"`` (NHWC floats in [0, 1]) or ``"pt"`` (NCHW floats in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``fn(pipe, step_index, timestep, callback_kwargs)`` after each step;
                it may return a dict with a replacement ``"latents"``.
            callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs``.
        """
        # 1. check inputs
        if isinstance(strength, torch.Tensor) and strength.ndim == 0 and strength.is_floating_point():
            strength = strength.item()  # a 0-d tensor, as diffusers' img2img pipelines take
        if not isinstance(strength, numbers.Real) or isinstance(strength, bool) or not 0.0 <= strength <= 1.0:
            raise ValueError(
                "strength must be a number in [0, 1] (0 keeps the image, 1 ignores it), got"
                f" {strength!r} ({type(strength).__name__})."
            )
        check_count("num_inference_steps", num_inference_steps)
        self._check_output_type(output_type)
        self._check_scheduler()
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        images = self._images_to_tensor(image)
        batch_size = images.shape[0]
        labels = self._check_class_labels(batch_size, class_labels, guidance_scale)
        device = self._execution_device
        if labels is not None:
            labels = labels.to(device)

        # 2. the part of the schedule that runs: its last int(N * strength) steps (as diffusers' img2img pipelines)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        num_steps = min(int(num_inference_steps * strength), num_inference_steps)
        if num_steps == 0:
            return self._output(images, output_type, return_dict)
        order = getattr(self.scheduler, "order", 1)
        start = (num_inference_steps - num_steps) * order
        timesteps = self.scheduler.timesteps[start:]
        if hasattr(self.scheduler, "set_begin_index"):
            self.scheduler.set_begin_index(start)

        # 3. x_t0 ~ q(x_t0 | x_0), eq. (4) of https://arxiv.org/abs/2006.11239 (Sec. 3 of SDEdit); at strength 1,
        #    pure noise x_T as in sampling, so the result does not depend on the image
        noise = self._initial_noise(batch_size, generator, device, self.unet.dtype)
        if num_steps == num_inference_steps:
            latents = noise * self.scheduler.init_noise_sigma
        else:
            original = self._encode((images * 2 - 1).to(device=device))  # a latent model's latents
            latents = self.scheduler.add_noise(original, noise, timesteps[:1].repeat(batch_size))

        # 4. reverse process from t0 (Algorithm 1 of SDEdit with the scheduler's solver)
        step_kwargs = self._step_kwargs(generator, eta)
        for i, t in enumerate(self.progress_bar(timesteps)):
            model_output = self._model_output(latents, t, labels, guidance_scale)
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

            latents = self._step_end(callback_on_step_end, i, t, latents, callback_on_step_end_tensor_inputs)

        # 5. a latent model decodes; then [-1, 1] -> [0, 1]
        result = self._decode(latents)
        return self._output((result / 2 + 0.5).clamp(0, 1).float(), output_type, return_dict)
