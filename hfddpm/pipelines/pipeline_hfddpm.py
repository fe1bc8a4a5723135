# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Unconditional and class-conditional diffusion sampling with classifier-free guidance, in pixel space or in the
latent space of a diffusers autoencoder.

This file is copied verbatim into every saved pipeline folder (``pipeline_hfddpm.py``), so that
``DiffusionPipeline.from_pretrained(folder_or_repo, trust_remote_code=True)`` works with plain diffusers: it imports
nothing from hfddpm. ``HFDDPMPipelineMixin`` holds what every hfddpm pipeline shares (class labels and guidance, image
inputs, outputs, the save format and the loader); the editing pipelines (``pipeline_hfddpm_inpaint.py``,
``pipeline_hfddpm_img2img.py``, saved next to this file) import it from here.
"""

import functools
import importlib
import inspect
import json
import logging
import math
import numbers
import os
import re
import sys
import tempfile
from typing import Callable

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderTiny,
    DiffusionPipeline,
    ImagePipelineOutput,
    ModelMixin,
    SchedulerMixin,
    UNet2DModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
from diffusers.utils.torch_utils import randn_tensor

logger = logging.getLogger(__name__)

OUTPUT_TYPES = ("pil", "np", "pt")
# Component classes that live outside diffusers and ship as code next to the weights, by the file that holds them.
# The module paths are public API: saved folders record the file names, hfddpm maps them back to its classes.
LOCAL_MODULES = {
    "scheduling_hfddpm": "hfddpm.schedulers.scheduling_hfddpm",
    "mel_hfddpm": "hfddpm.pipelines.mel_hfddpm",
}
# The base classes each component of model_index.json must have when HFDDPMPipeline.from_pretrained loads it, and
# an example of a valid [library, class name] entry. The autoencoder of a latent model is optional ([null, null] or
# absent: pixel space).
COMPONENTS = {
    "unet": ((ModelMixin,), ["diffusers", "UNet2DModel"]),
    "scheduler": ((SchedulerMixin,), ["diffusers", "DDPMScheduler"]),
    "vae": ((AutoencoderKL, AutoencoderTiny), ["diffusers", "AutoencoderKL"]),
}
OPTIONAL_COMPONENTS = ("vae",)
# The Hub arguments from_pretrained passes on to huggingface_hub.snapshot_download.
HUB_ARGUMENTS = ("revision", "cache_dir", "token", "local_files_only")
# The pipeline code of a saved folder, one file per pipeline, by module name (file stem): sampling, and the editing
# pipelines that run on the same weights. Every save writes all of them, so a folder or Hub repository runs any of
# them with plain diffusers (``custom_pipeline="pipeline_hfddpm_inpaint"``). Module names are public API.
PIPELINE_MODULES = ("pipeline_hfddpm", "pipeline_hfddpm_audio", "pipeline_hfddpm_img2img", "pipeline_hfddpm_inpaint")
# hfddpm's pipeline classes by the file that holds them: from_pretrained gives the one model_index.json names when it
# is a subclass of the class it was called on (an audio folder loaded with HFDDPMPipeline gives HFDDPMAudioPipeline).
LOCAL_PIPELINES = {stem: f"hfddpm.pipelines.{stem}" for stem in PIPELINE_MODULES}
# Components of some pipelines only: the spectrogram converter of the audio pipeline.
EXTRA_COMPONENTS = ("mel",)
# The files of a saved pipeline folder, as Hub allow-patterns: what from_pretrained downloads and push_to_hub uploads
# (with the model card), and nothing else of an output folder (checkpoints, logs).
PIPELINE_FILES = (
    "model_index.json",
    *(f"{m}.py" for m in PIPELINE_MODULES),
    *(f"{name}/*" for name in (*COMPONENTS, *EXTRA_COMPONENTS)),
)
# A Hub repository id: namespace/name of letters, digits, "_", "-" and ".", each starting and ending with a letter or
# digit (a path such as ./x, ../x or ~/x is not one).
_REPO_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?/[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?")


def is_repo_id(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a Hub repository id (``"namespace/name"``) rather than a local path: nothing exists at
    ``path`` and it has the form of a repository id.

    Example:
        >>> is_repo_id("google/ddpm-cifar10-32"), is_repo_id("outputs/mnist/unet"), is_repo_id("./mnist")
        (True, False, False)
    """
    path = str(path)
    return not os.path.exists(path) and _REPO_ID.fullmatch(path) is not None and ".." not in path and "--" not in path


def check_count(name: str, value) -> None:
    """``ValueError`` unless ``value`` is an integer >= 1 (numpy integers too, not bools): batch sizes, steps.

    Example:
        >>> check_count("num_inference_steps", 2.5)
        Traceback (most recent call last):
        ...
        ValueError: num_inference_steps must be an integer >= 1, got 2.5.
    """
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def check_vae(unet, vae) -> None:
    """``ValueError`` unless ``vae`` can serve ``unet`` as the autoencoder of a latent model: ``None`` (pixel space) or
    one of the autoencoder classes of :data:`COMPONENTS` whose ``latent_channels`` are the UNet's ``in_channels``.
    Every hfddpm pipeline checks its ``vae`` here when it is built or loaded, before any sampling.

    Example:
        >>> from diffusers import AutoencoderTiny, UNet2DModel
        >>> blocks = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}
        >>> unet = UNet2DModel(in_channels=4, block_out_channels=(8, 8), norm_num_groups=4, **blocks)
        >>> check_vae(unet, AutoencoderTiny(latent_channels=8))
        Traceback (most recent call last):
        ...
        ValueError: The vae (AutoencoderTiny) has 8 latent channels but the UNet takes 4 input channels...
    """
    if vae is None:
        return
    accepted = COMPONENTS["vae"][0]
    if not isinstance(vae, accepted):
        raise ValueError(
            f"vae must be one of {', '.join(cls.__name__ for cls in accepted)} (or None for a pixel-space model), got"
            f" a {type(vae).__name__}."
        )
    latent_channels, in_channels = vae.config.latent_channels, unet.config.in_channels
    if latent_channels != in_channels:
        raise ValueError(
            f"The vae ({type(vae).__name__}) has {latent_channels} latent channels but the UNet takes {in_channels}"
            f" input channels (in_channels): a latent UNet works on the autoencoder's latents. Use the autoencoder"
            f" the UNet was trained with (latent_channels={in_channels})."
        )


def load_model(model_cls, path: str | os.PathLike, subfolder: str | None = None, **kwargs):
    """``model_cls.from_pretrained(path, subfolder=subfolder, **kwargs)`` from safetensors weights only.

    Pickled weights (``.bin``, ``.pt``, ``.ckpt``) can run code when they are loaded, so a folder or repository
    without ``diffusion_pytorch_model.safetensors`` is refused with a ``FileNotFoundError`` naming it; the pickle is
    never opened. Every hfddpm load of UNet or autoencoder weights goes through here.

    Example:
        >>> import tempfile
        >>> from diffusers import UNet2DModel
        >>> folder = tempfile.mkdtemp()
        >>> blocks = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}
        >>> UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, **blocks).save_pretrained(folder)
        >>> load_model(UNet2DModel, folder).config.sample_size
        8
    """
    try:
        return model_cls.from_pretrained(path, subfolder=subfolder, use_safetensors=True, **kwargs)
    except OSError as err:
        if ".safetensors" not in str(err):
            raise
        where = os.path.join(str(path), subfolder) if subfolder else str(path)
        weights = os.path.join(where, SAFETENSORS_WEIGHTS_NAME)
        if os.path.isfile(weights):  # there, but unreadable
            raise ValueError(
                f"{weights} cannot be read (truncated or not a safetensors file?): save or download it again."
            ) from None
        raise FileNotFoundError(
            f"{where} holds no safetensors weights ({SAFETENSORS_WEIGHTS_NAME}). hfddpm loads weights from"
            " safetensors only: pickled weights (.bin, .pt, .ckpt) can run code when loaded. To use pickled weights"
            f" you trust, convert them once with diffusers: {model_cls.__name__}.from_pretrained(folder)"
            ".save_pretrained(new_folder) writes safetensors."
        ) from None


class HFDDPMPipelineMixin:
    """What every hfddpm pipeline shares: class labels and classifier-free guidance, image inputs and outputs, the
    save format (safetensors plus the code of every pipeline) and the allowlist loader.

    A pipeline is ``class XPipeline(HFDDPMPipelineMixin, DiffusionPipeline)`` with ``unet`` and ``scheduler``
    components. The mixin is not itself a ``DiffusionPipeline``, so a pipeline file that imports it still holds exactly
    one pipeline class, which diffusers needs to load it with ``custom_pipeline=``.
    """

    # The components from_pretrained loads, with the base classes each must have (subclasses add theirs).
    _components = COMPONENTS

    @property
    def num_classes(self) -> int:
        """Number of real classes of a class-conditional UNet (0 for an unconditional one)."""
        n = self.unet.config.num_class_embeds
        return n - 1 if n else 0

    def _check_class_labels(self, batch_size, class_labels, guidance_scale) -> torch.Tensor | None:
        """``class_labels`` as one label per image (the null class where none is given), or None for an
        unconditional UNet; ``ValueError`` for labels or a guidance scale the UNet cannot take."""
        if not math.isfinite(guidance_scale):
            raise ValueError(f"guidance_scale must be a finite number (1.0 disables guidance), got {guidance_scale}.")
        if self.num_classes == 0:
            if class_labels is not None:
                raise ValueError(
                    "class_labels were given but this UNet is unconditional (num_class_embeds is None);"
                    " pass class_labels=None."
                )
            if guidance_scale != 1.0:
                raise ValueError(
                    f"guidance_scale={guidance_scale} needs a class-conditional UNet; this one is unconditional,"
                    " use guidance_scale=1.0."
                )
            return None
        if class_labels is None:
            # Unconditional samples from a class-conditional model: every row gets the null class.
            if guidance_scale != 1.0:
                raise ValueError(f"guidance_scale={guidance_scale} needs class_labels to guide towards.")
            return torch.full((batch_size,), self.num_classes, dtype=torch.long)
        given = torch.as_tensor(class_labels).flatten()
        if given.is_floating_point() and not torch.equal(given, given.round()):
            raise ValueError(f"class_labels must be whole numbers (class indices), got {given.tolist()}.")
        labels = given.long()
        if labels.numel() == 1:
            labels = labels.expand(batch_size)
        if labels.numel() != batch_size:
            raise ValueError(
                f"Got {labels.numel()} class_labels for batch_size={batch_size}; give one label per image or a single"
                " label for all."
            )
        outside = (labels < 0) | (labels >= self.num_classes)
        if outside.any():
            raise ValueError(
                f"class_labels must be in [0, {self.num_classes - 1}] for this UNet ({self.num_classes} classes),"
                f" got {sorted(set(labels[outside].tolist()))}."
            )
        return labels

    @staticmethod
    def _check_output_type(output_type: str):
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r} is not supported; choose one of {OUTPUT_TYPES}.")

    def _check_callback_inputs(self, names: list[str]):
        bad = [k for k in names if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs {bad} are not supported;"
                f" choose from {self._callback_tensor_inputs}."
            )

    def _step_end(self, callback: Callable | None, i: int, t, latents: torch.Tensor, names: list[str]) -> torch.Tensor:
        """Call diffusers' ``callback_on_step_end(pipe, i, t, callback_kwargs)`` after a step with the tensors named
        in ``names`` (checked by ``_check_callback_inputs``); returns its replacement ``"latents"``, if any."""
        if callback is None:
            return latents
        outputs = callback(self, i, t, {name: latents for name in names}) or {}
        return outputs.get("latents", latents)

    def _model_output(self, sample, t, labels, guidance_scale):
        """The UNet's output at ``t`` for ``sample`` and ``labels``, with classifier-free guidance when
        ``guidance_scale != 1``: eq. (6) of Ho & Salimans 2022 (https://arxiv.org/abs/2207.12598),
        ``uncond + w * (cond - uncond)``, on the model's own parameterisation (linear in it)."""
        do_guidance = labels is not None and guidance_scale != 1.0
        if do_guidance:
            # one batched forward pass: conditional half, then the null-class half
            sample = torch.cat([sample, sample])
            labels = torch.cat([labels, torch.full_like(labels, self.num_classes)])
        model_input = self.scheduler.scale_model_input(sample, t)
        model_output = self.unet(model_input, t, class_labels=labels).sample
        if do_guidance:
            cond, uncond = model_output.chunk(2)
            model_output = uncond + guidance_scale * (cond - uncond)
        return model_output

    def _step_kwargs(self, generator, eta: float) -> dict:
        """The ``scheduler.step`` keywords this scheduler understands among ``eta`` and ``generator``."""
        step_params = inspect.signature(self.scheduler.step).parameters
        kwargs = {"eta": eta, "generator": generator}
        return {k: v for k, v in kwargs.items() if k in step_params}

    def _initial_noise(self, batch_size: int, generator, device, dtype) -> torch.Tensor:
        """x_T ~ N(0, I) for ``batch_size`` samples (one generator, or one per sample)."""
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"Got a list of {len(generator)} generators for {batch_size} images; pass one generator, or one per"
                " image."
            )
        return randn_tensor(self._sample_shape(batch_size), generator=generator, device=device, dtype=dtype)

    def _sample_shape(self, batch_size: int) -> tuple[int, ...]:
        """``(batch_size, channels, height, width)`` of the UNet's samples."""
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (batch_size, self.unet.config.in_channels, *size)

    def _images_to_tensor(self, images, name: str = "image", mask: bool = False) -> torch.Tensor:
        """PIL image(s), numpy (``HW``, ``HWC``, ``NHWC``) or torch (``HW``, ``CHW``, ``NCHW``) images with values in
        [0, 1] -> float ``[N, C, H, W]`` in [0, 1] (diffusers' ``VaeImageProcessor``, no resizing). PIL images are
        converted to the UNet's mode (grey ``L`` for one channel, ``RGB`` for three). Images must have the UNet's
        channels and size; a mask has one channel, its size is the caller's to check."""
        channels = 1 if mask else self._image_shape()[0]
        if isinstance(images, (list, tuple)) and not images:
            raise ValueError(f"{name}: no images given; pass a PIL image, an array, or a list of them.")
        # diffusers reads a 3-D numpy array for a grey model as N grey images; ours are HWC as documented
        if isinstance(images, np.ndarray) and images.ndim == 3 and images.shape[-1] in (3, 4) and channels == 1:
            raise ValueError(_channels_message(name, images.shape[-1], channels, mask))
        arrays = images if isinstance(images, (list, tuple)) else [images]
        for array in arrays:
            if isinstance(array, (torch.Tensor, np.ndarray)):
                array = torch.as_tensor(array)
                if array.is_floating_point() or array.dtype == torch.bool:
                    lo, hi = float(array.min()), float(array.max())
                    if not (0.0 <= lo and hi <= 1.0):
                        raise ValueError(
                            f"{name} values must be in [0, 1] (numpy and torch inputs), got [{lo:g}, {hi:g}]."
                        )
                else:
                    raise ValueError(
                        f"{name} as a numpy array or tensor must hold floats in [0, 1], got dtype {array.dtype}"
                        " (divide 8-bit pixels by 255)."
                    )
        processor = VaeImageProcessor(
            do_resize=False, do_normalize=False, do_convert_grayscale=channels == 1, do_convert_rgb=channels == 3
        )

        def as_nchw(array):  # torch HW and CHW as documented (diffusers would read a 3-D tensor as N grey images)
            array = array.float()
            return array[None, None] if array.ndim == 2 else array[None] if array.ndim == 3 else array

        try:
            if isinstance(images, torch.Tensor):
                images = as_nchw(images)
            elif isinstance(images, (list, tuple)):
                images = [as_nchw(a) if isinstance(a, torch.Tensor) else a for a in images]
                if images and all(isinstance(a, torch.Tensor) for a in images):
                    images = torch.cat(images)
            tensor = processor.preprocess(images)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{name} must be PIL images, numpy arrays (HW, HWC or NHWC) or torch tensors (HW, CHW or NCHW): {err}"
            ) from None
        tensor = tensor.float()
        expected = self._image_shape()
        if tensor.shape[1] != channels:
            raise ValueError(_channels_message(name, tensor.shape[1], channels, mask))
        if not mask and tuple(tensor.shape[1:]) != (channels, *expected[1:]):
            raise ValueError(
                f"{name} must be {channels}x{expected[1]}x{expected[2]} (channels x height x width, as this UNet's"
                f" samples); got images of shape {tuple(tensor.shape[1:])}. Resize or convert it first."
            )
        return tensor

    def _register_edit_components(self, unet, scheduler, vae):
        """Register an editing pipeline's ``unet``, ``scheduler`` and ``vae`` (``None`` for a pixel-space model;
        ``from_pipe`` of a pixel pipeline hands over its empty ``vae`` entry, which counts as none)."""
        vae = vae if isinstance(vae, torch.nn.Module) else None
        check_vae(unet, vae)
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    def _vae_scale_factor(self) -> int:
        """How many pixels one latent is wide: 2 ** (levels - 1) of the autoencoder (1 in pixel space)."""
        vae = getattr(self, "vae", None)
        if vae is None:
            return 1
        levels = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
        return 2 ** (len(levels) - 1)

    def _image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images: the UNet's samples, or what the autoencoder of a latent
        model decodes them to."""
        _, channels, height, width = self._sample_shape(1)
        vae = getattr(self, "vae", None)
        if vae is None:
            return (channels, height, width)
        factor = self._vae_scale_factor()
        return (vae.config.in_channels, height * factor, width * factor)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] as the UNet's clean samples: themselves in pixel space; for a latent model the scaled
        posterior mean z = (E(x) - shift_factor) * scaling_factor (the inverse of :meth:`_decode`)."""
        vae = getattr(self, "vae", None)
        if vae is None:
            return images
        encoded = vae.encode(images.to(vae.dtype))
        latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        latents = latents - (getattr(vae.config, "shift_factor", None) or 0.0)
        return (latents * vae.config.scaling_factor).to(self.unet.dtype)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """The UNet's final samples as images in [-1, 1]: themselves in pixel space; for a latent model decoded,
        x = D(z / scaling_factor + shift_factor), sec. 3 of https://arxiv.org/abs/2112.10752 (AutoencoderTiny has
        scaling_factor 1 and no shift)."""
        vae = getattr(self, "vae", None)
        if vae is None:
            return latents
        latents = latents.to(vae.dtype) / vae.config.scaling_factor
        latents = latents + (getattr(vae.config, "shift_factor", None) or 0.0)
        return vae.decode(latents).sample

    def _output(self, images: torch.Tensor, output_type: str, return_dict: bool):
        """``[N, C, H, W]`` images in [0, 1] as ``output_type`` (``pil``, ``np``: NHWC, ``pt``: NCHW)."""
        self.maybe_free_model_hooks()
        if output_type == "pt":
            out = images.cpu()
        else:
            out = images.cpu().permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                out = self.numpy_to_pil(out)
        if not return_dict:
            return (out,)
        return ImagePipelineOutput(images=out)

    # --------------------------------------------------------------------------------------------------------------
    # A save format that loads everywhere
    # --------------------------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, safe_serialization: bool = True, **kwargs):
        """Save weights (safetensors), configs and the code of every pipeline and non-diffusers component.

        The folder then loads with ``HFDDPMPipeline.from_pretrained(folder)`` (or any hfddpm pipeline class) and,
        without hfddpm, with ``DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`` (the saved class;
        ``custom_pipeline="pipeline_hfddpm_inpaint"`` for another one).
        """
        if not safe_serialization:
            raise ValueError("hfddpm saves safetensors only; use safe_serialization=True.")
        if kwargs.get("push_to_hub"):
            raise ValueError(
                "push_to_hub in save_pretrained would upload before the remote code is written; save first, then"
                " push with `hfddpm.hub.push_to_hub(folder, repo_id)` or `hfddpm push FOLDER --repo-id ...`."
            )
        super().save_pretrained(save_directory, safe_serialization=True, **kwargs)
        self._write_remote_code(save_directory)

    def push_to_hub(
        self, repo_id: str, commit_message: str | None = None, private: bool | None = None, token=None, **kwargs
    ):
        """Upload the pipeline with a generated model card: ``save_pretrained`` into a temporary folder, then
        ``hfddpm.hub.push_to_hub`` (diffusers' own would upload a placeholder card). Where hfddpm is not installed (a
        folder loaded with ``trust_remote_code``), diffusers' ``push_to_hub``."""
        try:  # by name: diffusers scans a remote-code file's import statements and imports what they name
            push_to_hub = importlib.import_module("hfddpm.hub").push_to_hub
        except ImportError:
            return super().push_to_hub(repo_id, commit_message=commit_message, private=private, token=token, **kwargs)
        if kwargs:
            raise ValueError(
                f"Unexpected arguments {sorted(kwargs)}; push_to_hub takes commit_message, private, token."
            )
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return push_to_hub(folder, repo_id, token=token, private=bool(private), commit_message=commit_message)

    def _write_remote_code(self, save_directory):
        """Copy the source of the pipelines and of custom components next to their configs (generated each save)."""
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)

        # every pipeline file found beside this pipeline's module: all of them in hfddpm; in a folder loaded by plain
        # diffusers, those its modules cache holds
        pipeline_module = sys.modules[type(self).__module__]
        code_dir = os.path.dirname(os.path.abspath(pipeline_module.__file__))
        for stem in PIPELINE_MODULES:
            path = os.path.join(code_dir, f"{stem}.py")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    _write_text(os.path.join(save_directory, f"{stem}.py"), f.read())
            else:
                logger.warning(
                    f"{stem}.py is not beside {pipeline_module.__file__}; the saved folder goes without it."
                )
        index["_class_name"] = [pipeline_module.__name__.rsplit(".", 1)[-1], type(self).__name__]

        for name in self._components:
            component = getattr(self, name, None)
            if component is None:
                continue
            module_name = type(component).__module__
            if module_name.split(".")[0] in ("diffusers", "transformers"):
                continue
            file_stem = module_name.rsplit(".", 1)[-1]
            source = inspect.getsource(sys.modules[module_name])
            _write_text(os.path.join(save_directory, name, f"{file_stem}.py"), source)
            index[name] = [file_stem, type(component).__name__]

        _write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a saved pipeline folder or Hub repository; hfddpm's own classes are used for its components.

        Any hfddpm pipeline class loads any saved hfddpm folder (``HFDDPMInpaintPipeline.from_pretrained(folder)``
        on a folder of sampling weights), whatever pipeline saved it.

        Keyword arguments: ``unet``/``scheduler``/``vae`` (use these instead of loading), ``dtype`` (or its older name
        ``torch_dtype``: one dtype, or a dict by component with a ``"default"``, as diffusers takes), and the Hub
        arguments ``revision``, ``cache_dir``, ``token``, ``local_files_only``.

        Runs no code from the folder: ``model_index.json`` may name diffusers classes and hfddpm's own, nothing else
        (``ValueError`` otherwise). Custom components load with ``DiffusionPipeline.from_pretrained(folder,
        trust_remote_code=True)``, after you have read their code.
        """
        path = str(pretrained_model_name_or_path)
        hub_kwargs = {k: kwargs.pop(k) for k in HUB_ARGUMENTS if k in kwargs}
        if os.path.isdir(path):
            folder = path
        elif not is_repo_id(path):
            raise FileNotFoundError(
                f"{path} is not a saved pipeline folder (expected a folder with model_index.json) nor a Hub"
                " repository id (namespace/name)."
            )
        else:
            from huggingface_hub import snapshot_download

            folder = snapshot_download(path, allow_patterns=list(PIPELINE_FILES), **hub_kwargs)
        index_path = os.path.join(folder, "model_index.json")
        if not os.path.isfile(index_path):
            raise FileNotFoundError(f"No model_index.json in {folder}: not a saved pipeline.")
        index = _read_index(index_path)
        cls = _pipeline_class(index, cls)

        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        if dtype is not None and torch_dtype is not None:
            raise ValueError("Pass dtype or torch_dtype (its older name), not both.")
        dtype = dtype if dtype is not None else torch_dtype
        for given in dtype.values() if isinstance(dtype, dict) else [dtype]:
            if given is not None and not isinstance(given, torch.dtype):
                raise ValueError(f"dtype must be a torch.dtype (e.g. torch.bfloat16) or a dict of those: {given!r}.")
        components = {}
        for name in cls._components:
            if name in kwargs:
                components[name] = kwargs.pop(name)
                continue
            if name in OPTIONAL_COMPONENTS and index.get(name, [None, None]) == [None, None]:
                continue  # a pixel-space model
            component_cls = _component_class(index_path, index, name, cls._components)
            is_model = name in ("unet", "vae")
            model_dtype = dtype.get(name, dtype.get("default")) if isinstance(dtype, dict) else dtype
            load_kwargs = {"torch_dtype": model_dtype} if is_model and model_dtype is not None else {}
            load = functools.partial(load_model, component_cls) if is_model else component_cls.from_pretrained
            components[name] = _load_component(load, index_path, index, name, component_cls, **load_kwargs)
        if kwargs:
            raise ValueError(
                f"Unexpected arguments {sorted(kwargs)}; {cls.__name__}.from_pretrained takes the components"
                f" {', '.join(cls._components)}, dtype (or torch_dtype) and {', '.join(HUB_ARGUMENTS)}."
            )
        return cls(**components)


class HFDDPMPipeline(HFDDPMPipelineMixin, DiffusionPipeline):
    """Sample images from a ``UNet2DModel`` with any diffusers scheduler, with optional classifier-free guidance.

    A class-conditional UNet has ``num_class_embeds = num_classes + 1``; its last class index is the null class
    (trained by label dropout) that guidance pushes away from. With a ``vae`` (``AutoencoderKL`` or
    ``AutoencoderTiny``) the UNet works on latents ``(z - shift_factor) * scaling_factor`` and the final latents are
    decoded, as in latent diffusion (Rombach et al. 2022, https://arxiv.org/abs/2112.10752).

    Example:
        >>> import torch
        >>> from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
        >>> pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
        >>> pipe.set_progress_bar_config(disable=True)
        >>> out = pipe(batch_size=2, class_labels=[3, 7], guidance_scale=2.0, num_inference_steps=2,
        ...            generator=torch.manual_seed(0), output_type="np")
        >>> out.images.shape
        (2, 16, 16, 1)
    """

    model_cpu_offload_seq = "unet->vae"
    _optional_components = list(OPTIONAL_COMPONENTS)
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: UNet2DModel, scheduler, vae: AutoencoderKL | AutoencoderTiny | None = None):
        super().__init__()
        check_vae(unet, vae)
        self.register_modules(unet=unet, scheduler=scheduler, vae=vae)

    def _check_inputs(self, batch_size, class_labels, guidance_scale, output_type, callback_on_step_end_tensor_inputs):
        self._check_output_type(output_type)
        check_count("batch_size", batch_size)
        self._check_callback_inputs(callback_on_step_end_tensor_inputs)
        return self._check_class_labels(batch_size, class_labels, guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
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
        """Generate ``batch_size`` images.

        Args:
            batch_size: number of images.
            num_inference_steps: denoising steps (model evaluations for first-order schedulers).
            generator: a ``torch.Generator`` (or one per image) for reproducible sampling.
            class_labels: one label per image or one for all (class-conditional UNets only).
            guidance_scale: classifier-free guidance weight w of ``uncond + w * (cond - uncond)``, eq. (6) of Ho &
                Salimans 2022 (https://arxiv.org/abs/2207.12598); 1.0 disables guidance.
            eta: DDIM noise (0 deterministic, 1 ancestral DDPM), passed to schedulers that accept it.
            output_type: ``"pil"``, ``"np"`` (NHWC floats in [0, 1]) or ``"pt"`` (NCHW floats in [0, 1]).
            return_dict: return an ``ImagePipelineOutput`` rather than a tuple.
            callback_on_step_end: called as ``fn(pipe, step_index, timestep, callback_kwargs)`` after each step;
                it may return a dict with a replacement ``"latents"``.
            callback_on_step_end_tensor_inputs: tensors passed in ``callback_kwargs``.
        """
        # 1. check inputs
        check_count("num_inference_steps", num_inference_steps)
        labels = self._check_inputs(
            batch_size, class_labels, guidance_scale, output_type, callback_on_step_end_tensor_inputs
        )
        device = self._execution_device
        if labels is not None:
            labels = labels.to(device)

        # 2. initial noise x_T ~ N(0, I), scaled for schedulers that work in sigma space
        latents = self._initial_noise(batch_size, generator, device, self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma

        # 3. timesteps, and the step() keywords this scheduler understands
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        step_kwargs = self._step_kwargs(generator, eta)

        # 4. denoising loop, Algorithm 2 of https://arxiv.org/abs/2006.11239
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self._model_output(latents, t, labels, guidance_scale)
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample

            latents = self._step_end(callback_on_step_end, i, t, latents, callback_on_step_end_tensor_inputs)

        # 5. a latent model decodes (HFDDPMPipelineMixin._decode); then [-1, 1] -> [0, 1]
        images = self._decode(latents)
        return self._output((images / 2 + 0.5).clamp(0, 1).float(), output_type, return_dict)


def _channels_message(name: str, got: int, channels: int, mask: bool) -> str:
    """Why an image (or mask) of ``got`` channels is refused where ``channels`` are needed, and how to convert it."""
    got_channels = f"{got} channel{'s' * (got != 1)}"
    if mask:
        what = f"{name} must have one channel (1 = repaint, 0 = keep), got {got_channels}"
    else:
        what = f"{name} has {got_channels}, but this model takes {channels}-channel images"
    if channels == 1:
        fix = (
            'convert it to grey first: image.convert("L") for a PIL image, the mean over the channel axis of an array'
            " (array.mean(axis=-1) for HWC, tensor.mean(dim=1, keepdim=True) for NCHW)"
        )
    elif channels == 3 and got == 4:
        fix = 'drop the alpha channel: image.convert("RGB") for a PIL image, array[..., :3] for HWC'
    elif channels == 3 and got == 1:
        fix = 'convert it to RGB first: image.convert("RGB") for a PIL image, np.repeat(array, 3, axis=-1) for HWC'
    else:
        fix = "convert it first"
    return f"{what}; {fix} (PIL images are converted to the model's mode)."


def _read_index(index_path: str) -> dict:
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{index_path} is not valid JSON ({e}); re-save the pipeline with save_pretrained.") from None
    if not isinstance(index, dict):
        raise ValueError(f"{index_path} holds a {type(index).__name__}, not a JSON object of components.")
    return index


def _pipeline_class(index: dict, cls: type) -> type:
    """The hfddpm pipeline class that ``model_index.json`` names (:data:`LOCAL_PIPELINES`) when it is ``cls`` or a
    subclass of it; else ``cls``."""
    entry = index.get("_class_name")
    if not (isinstance(entry, list) and len(entry) == 2 and entry[0] in LOCAL_PIPELINES):
        return cls
    found = getattr(importlib.import_module(LOCAL_PIPELINES[entry[0]]), str(entry[1]), None)
    return found if isinstance(found, type) and issubclass(found, cls) else cls


def _component_class(index_path: str, index: dict, name: str, components: dict = COMPONENTS) -> type:
    """The class that ``model_index.json`` names for component ``name``, resolved without importing the folder's code.

    Only diffusers classes (``["diffusers", "UNet2DModel"]``) and hfddpm's own (``["scheduling_hfddpm",
    "HFDDPMScheduler"]`` or the full module path) load: importing any other module named by the file would run code
    from wherever Python finds it, e.g. the folder itself when it is the working directory.
    """
    bases, example = components[name]
    if name not in index:
        required = [n for n in components if n not in OPTIONAL_COMPONENTS]
        raise ValueError(
            f"{index_path} has no {name!r} entry; a pipeline needs {required}, each given as"
            f' [library, class name], e.g. "{name}": {json.dumps(example)}.'
        )
    entry = index[name]
    if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
        raise ValueError(
            f"{index_path}: {name!r} is {json.dumps(entry)}, expected [library, class name] (two strings), e.g."
            f" {json.dumps(example)}."
        )
    library, class_name = entry
    if library == "diffusers":
        component_cls = getattr(diffusers, class_name, None)
    elif library in LOCAL_MODULES or library in LOCAL_MODULES.values():
        component_cls = getattr(importlib.import_module(LOCAL_MODULES.get(library, library)), class_name, None)
    else:
        raise ValueError(
            f"{index_path}: {name!r} is {json.dumps(entry)}, a component outside diffusers and hfddpm"
            f" (known: diffusers, {', '.join(sorted({*LOCAL_MODULES, *LOCAL_MODULES.values()}))}). HFDDPMPipeline does"
            " not import it, because importing runs its code. To load custom code, review it first, then use"
            " DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)."
        )
    if not (isinstance(component_cls, type) and issubclass(component_cls, bases)):
        kinds = " or ".join(base.__name__ for base in bases)
        raise ValueError(
            f"{index_path}: {name!r} is {json.dumps(entry)}, but {library} has no {kinds} subclass"
            f" {class_name!r}; the {name} must be a {kinds}, e.g. {example[1]}."
        )
    return component_cls


def _load_component(load: Callable, index_path: str, index: dict, name: str, component_cls: type, **kwargs):
    """``load(folder, subfolder=name, **kwargs)``, the component ``name`` that ``model_index.json`` lists; a
    ``FileNotFoundError`` naming the entry when its folder has no config, a ``ValueError`` when the config cannot be
    read (diffusers' own ``OSError`` names neither the entry nor the subfolder)."""
    folder = os.path.dirname(index_path)
    config_file = os.path.join(folder, name, component_cls.config_name)
    entry = json.dumps(index[name])
    fix = f' or set "{name}": [null, null] in model_index.json (no {name})' if name in OPTIONAL_COMPONENTS else ""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(
            f"{index_path} lists {name!r} as {entry}, but {config_file} does not exist. Save the pipeline again with"
            f" save_pretrained (it writes every component){fix}."
        )
    try:
        return load(folder, subfolder=name, **kwargs)
    except FileNotFoundError:
        raise  # load_model's own message (no safetensors weights) names the folder and the fix
    except OSError as err:
        raise ValueError(
            f"{index_path} lists {name!r} as {entry}, but {os.path.join(folder, name)} cannot be loaded ({err})."
            f" Save the pipeline again with save_pretrained{fix}."
        ) from None


def _write_text(path: str, text: str):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
