# Copyright 2026 The hfddpm authors. Apache-2.0.
"""A DDPM/DDIM scheduler whose noise schedule is defined by its log-SNR.

This file is copied verbatim next to every saved pipeline (``scheduler/scheduling_hfddpm.py``) so that the folder
loads with plain diffusers and ``trust_remote_code=True``: it imports nothing from hfddpm.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

NOISE_SCHEDULES = ("linear", "cosine", "sigmoid", "shifted_cosine", "interpolated_shifted_cosine")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# Config keys that diffusers' own schedulers understand and must inherit through `OtherScheduler.from_config`.
SHARED_CONFIG_KEYS = (
    "num_train_timesteps",
    "trained_betas",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
    "steps_offset",
    "timestep_spacing",
    "rescale_betas_zero_snr",
)


@dataclass
class HFDDPMSchedulerOutput(BaseOutput):
    """
    Args:
        prev_sample (`torch.Tensor`): the sample at the previous timestep, input of the next denoising step.
        pred_original_sample (`torch.Tensor`): the predicted denoised sample x_0.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


def logsnr_cosine(t: torch.Tensor, logsnr_min: float = -15.0, logsnr_max: float = 15.0) -> torch.Tensor:
    """Cosine log-SNR, ``-2 log tan(pi t / 2)``, with t rescaled so the result lies in [logsnr_min, logsnr_max].

    Eq. (4) of Hoogeboom et al. 2023, "simple diffusion", https://arxiv.org/abs/2301.11093.
    """
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    return -2.0 * torch.log(torch.tan(t_min + t * (t_max - t_min)))


def logsnr_shifted_cosine(
    t: torch.Tensor, image_size: int, base_resolution: int, logsnr_min: float = -15.0, logsnr_max: float = 15.0
) -> torch.Tensor:
    """Resolution-shifted cosine log-SNR, ``logsnr_cosine(t) + 2 log(base_resolution / image_size)``.

    Sec. 3.1 of Hoogeboom et al. 2023, https://arxiv.org/abs/2301.11093.
    """
    return logsnr_cosine(t, logsnr_min, logsnr_max) + 2.0 * math.log(base_resolution / image_size)


def logsnr_interpolated_shifted_cosine(
    t: torch.Tensor,
    image_size: int,
    base_resolution: int,
    low_resolution: int,
    logsnr_min: float = -15.0,
    logsnr_max: float = 15.0,
) -> torch.Tensor:
    """``t * shifted(t, image_size) + (1 - t) * shifted(t, low_resolution)``: the interpolated schedule of
    Sec. 3.1 of Hoogeboom et al. 2023 (global structure at the high-resolution shift, details at the low one)."""
    high = logsnr_shifted_cosine(t, image_size, base_resolution, logsnr_min, logsnr_max)
    low = logsnr_shifted_cosine(t, low_resolution, base_resolution, logsnr_min, logsnr_max)
    return t * high + (1.0 - t) * low


def alpha_bar_sigmoid(t: torch.Tensor, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Sigmoid schedule ``gamma(t)`` (= alpha_bar) of Jabri et al. 2022, Algorithm 3 / Appendix of
    "Scalable Adaptive Computation for Iterative Generation", https://arxiv.org/abs/2212.11972."""
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=t.dtype))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=t.dtype))
    out = torch.sigmoid((t * (end - start) + start) / tau)
    return (v_end - out) / (v_end - v_start)


def alpha_bar_cosine(t: torch.Tensor, s: float = 0.008) -> torch.Tensor:
    """``cos^2((t + s) / (1 + s) * pi / 2)``, eq. (17) of Nichol & Dhariwal 2021, https://arxiv.org/abs/2102.09672
    (log-SNR ``-2 log tan((t + s) / (1 + s) * pi / 2)``); diffusers' ``squaredcos_cap_v2``."""
    return torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2


class HFDDPMScheduler(SchedulerMixin, ConfigMixin):
    """DDPM (ancestral, ``eta=1``) and DDIM (``eta=0``) sampling with a noise schedule chosen by its log-SNR.

    The discretised betas are recorded in the config as ``trained_betas``, so diffusers' own solvers run the exact
    same schedule: ``DPMSolverMultistepScheduler.from_config(scheduler.config)``.

    Example:
        >>> from hfddpm import HFDDPMScheduler
        >>> scheduler = HFDDPMScheduler(noise_schedule="cosine", prediction_type="v_prediction")
        >>> scheduler.set_timesteps(20)
        >>> int(scheduler.timesteps[0]), len(scheduler.timesteps)
        (999, 20)

    Args:
        num_train_timesteps: number of diffusion steps used to train the model.
        noise_schedule: one of `linear` (DDPM betas ``beta_start..beta_end``), `cosine` (Nichol & Dhariwal),
            `sigmoid` (Jabri et al.), `shifted_cosine` and `interpolated_shifted_cosine` (Hoogeboom et al.).
        beta_start, beta_end: the betas of the `linear` schedule.
        trained_betas: explicit betas; when given they define the schedule (this is how a saved config reloads).
        prediction_type: what the model predicts: `epsilon`, `sample` (x_0) or `v_prediction`.
        clip_sample, clip_sample_range: clip the predicted x_0 to ``[-range, range]`` while sampling. Off by default:
            on the default MNIST model clipping raised FD-digits of DDIM from 3.4 to 7.1 (50 steps) and of
            ancestral DDPM from 1.6 to 2.0 (20 steps), as DDIM keeps the unclipped noise estimate.
        set_alpha_to_one: use alpha_bar = 1 after the last step (as diffusers' DDIM).
        steps_offset: offset added to `leading` inference timesteps.
        timestep_spacing: `leading`, `trailing` (default; starts at the last training step) or `linspace`.
        rescale_betas_zero_snr: rescale to zero terminal SNR, Alg. 1 of Lin et al. 2023
            (https://arxiv.org/abs/2305.08891); use with `v_prediction`.
        image_size, base_resolution, interpolation_low_resolution: resolutions of the shifted cosine schedules.
        sigmoid_start, sigmoid_end, sigmoid_tau: parameters of the sigmoid schedule.
        logsnr_min, logsnr_max: log-SNR range of the continuous schedules.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        noise_schedule: str = "cosine",
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        trained_betas: list | None = None,
        prediction_type: str = "v_prediction",
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        set_alpha_to_one: bool = True,
        steps_offset: int = 0,
        timestep_spacing: str = "trailing",
        rescale_betas_zero_snr: bool = False,
        image_size: int | None = None,
        base_resolution: int = 64,
        interpolation_low_resolution: int | None = None,
        sigmoid_start: float = -3.0,
        sigmoid_end: float = 3.0,
        sigmoid_tau: float = 1.0,
        logsnr_min: float = -15.0,
        logsnr_max: float = 15.0,
    ):
        if noise_schedule not in NOISE_SCHEDULES:
            raise ValueError(f"noise_schedule={noise_schedule!r} is not supported; choose one of {NOISE_SCHEDULES}.")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type={prediction_type!r} is not supported; choose one of {PREDICTION_TYPES}."
            )
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing={timestep_spacing!r} is not supported; choose one of {TIMESTEP_SPACINGS}."
            )

        if trained_betas is not None:
            if len(trained_betas) != num_train_timesteps:
                raise ValueError(
                    f"trained_betas has {len(trained_betas)} values but num_train_timesteps={num_train_timesteps};"
                    " pass trained_betas=None to rebuild the schedule from noise_schedule."
                )
            betas = torch.tensor(trained_betas, dtype=torch.float64)
        else:
            betas = self._betas_from_schedule()
        if rescale_betas_zero_snr:
            betas = rescale_zero_terminal_snr(betas)

        self.betas = betas.to(torch.float32)
        self.alphas = 1.0 - self.betas
        # float32 cumprod of the float32 betas: bit-identical to what diffusers' schedulers build from `trained_betas`.
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        if rescale_betas_zero_snr:
            self.alphas_cumprod[-1] = 0.0
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0

        # Record the discretised schedule so that any diffusers scheduler built with `from_config` runs it exactly,
        # and mark the settings other schedulers share as explicit (diffusers drops defaults in `from_config`).
        defaults = [k for k in self.config.get("_use_default_values", []) if k not in SHARED_CONFIG_KEYS]
        self.register_to_config(trained_betas=self.betas.tolist(), _use_default_values=defaults)

        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self._previous = {}

    def _betas_from_schedule(self) -> torch.Tensor:
        """Discretise the configured schedule into float64 betas over ``num_train_timesteps``."""
        c = self.config
        n = c.num_train_timesteps
        if c.noise_schedule == "linear":
            # Eq. (4) of Ho et al. 2020 (https://arxiv.org/abs/2006.11239): betas linear in t.
            return torch.linspace(c.beta_start, c.beta_end, n, dtype=torch.float64)

        t = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        if c.noise_schedule == "cosine":
            alpha_bar = alpha_bar_cosine(t)
        else:
            if c.noise_schedule == "sigmoid":
                alpha_bar = alpha_bar_sigmoid(t, c.sigmoid_start, c.sigmoid_end, c.sigmoid_tau).clamp(0.0, 1.0)
                # gamma(0) = 1 and gamma(1) = 0 have infinite log-SNR: clip to [logsnr_min, logsnr_max]
                logsnr = (torch.log(alpha_bar) - torch.log1p(-alpha_bar)).clamp(c.logsnr_min, c.logsnr_max)
            else:
                if c.image_size is None:
                    raise ValueError(
                        f"noise_schedule={c.noise_schedule!r} needs image_size (the training resolution in pixels);"
                        " the shift is 2 * log(base_resolution / image_size) with"
                        f" base_resolution={c.base_resolution}."
                    )
                if c.noise_schedule == "shifted_cosine":
                    logsnr = logsnr_shifted_cosine(t, c.image_size, c.base_resolution, c.logsnr_min, c.logsnr_max)
                else:
                    low = c.interpolation_low_resolution or c.base_resolution
                    logsnr = logsnr_interpolated_shifted_cosine(
                        t, c.image_size, c.base_resolution, low, c.logsnr_min, c.logsnr_max
                    )
            # the shifted schedules clip the cosine part and then shift it (Sec. 3.1 of Hoogeboom et al. 2023)
            alpha_bar = torch.sigmoid(logsnr)
        # beta_i = 1 - alpha_bar(t_{i+1}) / alpha_bar(t_i), capped at 0.999: eq. (17)-(18) of Nichol & Dhariwal 2021.
        return (1.0 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # ----------------------------------------------------------------------------------------------------------
    # Training helpers
    # ----------------------------------------------------------------------------------------------------------
    def _gather(self, values: torch.Tensor, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values[timesteps]`` on ``like``'s device and dtype, shaped to broadcast against ``like``."""
        timesteps = torch.as_tensor(timesteps, device=values.device).long().flatten()
        out = values[timesteps].to(device=like.device, dtype=like.dtype)
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``, eq. (4) of Ho et al. 2020."""
        alpha_bar = self._gather(self.alphas_cumprod, timesteps, original_samples)
        return alpha_bar.sqrt() * original_samples + (1.0 - alpha_bar).sqrt() * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0``, Sec. 4 of Salimans & Ho 2022
        (https://arxiv.org/abs/2202.00512)."""
        alpha_bar = self._gather(self.alphas_cumprod, timesteps, sample)
        return alpha_bar.sqrt() * noise - (1.0 - alpha_bar).sqrt() * sample

    def get_target(self, sample: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The regression target of the configured ``prediction_type`` for clean ``sample`` and ``noise``."""
        if self.config.prediction_type == "epsilon":
            return noise
        if self.config.prediction_type == "sample":
            return sample
        return self.get_velocity(sample, noise, timesteps)

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio ``alpha_bar_t / (1 - alpha_bar_t)`` per timestep (float32, on timesteps' device)."""
        timesteps = torch.as_tensor(timesteps)
        alpha_bar = self.alphas_cumprod.to(timesteps.device)[timesteps.long()]
        return alpha_bar / (1.0 - alpha_bar)

    def loss_weights(self, timesteps: torch.Tensor, snr_gamma: float | None = None) -> torch.Tensor:
        """Min-SNR-gamma loss weights (Hang et al. 2023, https://arxiv.org/abs/2303.09556, eq. (9)-(10)).

        The weight of the x_0 loss is ``min(snr, gamma)``; expressed on the configured target it becomes
        ``min(snr, gamma) / snr`` for epsilon, ``min(snr, gamma)`` for sample and ``min(snr, gamma) / (snr + 1)`` for
        v-prediction. Timesteps with zero SNR (zero terminal SNR schedules) get weight 1; ``snr_gamma=None``: ones.
        """
        timesteps = torch.as_tensor(timesteps)
        if snr_gamma is None:
            return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
        if snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be > 0 (5.0 is the paper's choice), got {snr_gamma}.")
        snr = self.snr(timesteps)
        clipped = snr.clamp(max=snr_gamma)
        if self.config.prediction_type == "epsilon":
            weights = clipped / snr
        elif self.config.prediction_type == "sample":
            weights = clipped
        else:
            weights = clipped / (snr + 1.0)
        return torch.where(snr == 0, torch.ones_like(weights), weights)

    # ----------------------------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """DDPM needs no input scaling; present for interchangeability with other schedulers."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None):
        """Choose ``num_inference_steps`` timesteps by ``timestep_spacing`` (Table 2 of Lin et al. 2023)."""
        n_train = self.config.num_train_timesteps
        if not 1 <= num_inference_steps <= n_train:
            raise ValueError(
                f"num_inference_steps={num_inference_steps} must be between 1 and num_train_timesteps={n_train}."
            )
        self.num_inference_steps = num_inference_steps
        spacing = self.config.timestep_spacing
        if spacing == "linspace":
            timesteps = np.linspace(0, n_train - 1, num_inference_steps).round()[::-1]
        elif spacing == "leading":
            step_ratio = n_train // num_inference_steps
            timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1] + self.config.steps_offset
        else:
            timesteps = np.round(np.arange(n_train, 0, -n_train / num_inference_steps)) - 1
        timesteps = timesteps.astype(np.int64)
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device)
        self._previous = dict(zip(timesteps.tolist(), timesteps[1:].tolist() + [-1], strict=True))

    def previous_timestep(self, timestep: int) -> int:
        """The timestep the sampler moves to from ``timestep`` (-1 after the last one)."""
        timestep = int(timestep)
        if timestep in self._previous:
            return self._previous[timestep]
        return timestep - self.config.num_train_timesteps // (
            self.num_inference_steps or self.config.num_train_timesteps
        )

    def predict_start_and_noise(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a model output of the configured type into (x_0, eps) at ``timestep``.

        eq. (15) of Ho et al. 2020 for epsilon; Sec. 4 of Salimans & Ho 2022 for v.
        """
        alpha_bar = self.alphas_cumprod[int(timestep)].to(sample.device)
        a, s = alpha_bar.sqrt(), (1.0 - alpha_bar).sqrt()
        if self.config.prediction_type == "epsilon":
            return (sample - s * model_output) / a, model_output
        if self.config.prediction_type == "sample":
            return model_output, (sample - a * model_output) / s
        return a * sample - s * model_output, a * model_output + s * sample

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> HFDDPMSchedulerOutput | tuple:
        """One reverse step ``x_t -> x_prev``: DDIM (``eta=0``) or ancestral DDPM (``eta=1``) and in between.

        Example:
            >>> import torch
            >>> from hfddpm import HFDDPMScheduler
            >>> scheduler = HFDDPMScheduler()
            >>> scheduler.set_timesteps(10)
            >>> x = torch.randn(1, 1, 4, 4, generator=torch.manual_seed(0))
            >>> for t in scheduler.timesteps:
            ...     x = scheduler.step(torch.zeros_like(x), t, x).prev_sample
            >>> tuple(x.shape)
            (1, 1, 4, 4)
        """
        if self.num_inference_steps is None:
            raise ValueError("num_inference_steps is not set: call `set_timesteps(num_inference_steps)` first.")
        if eta < 0:
            raise ValueError(f"eta must be >= 0 (0 = DDIM, 1 = ancestral DDPM), got {eta}.")
        t = int(timestep)
        prev_t = self.previous_timestep(t)
        alpha_bar = self.alphas_cumprod[t]
        alpha_bar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod

        # 1. predicted x_0 and eps from the model output, eq. (15) of https://arxiv.org/abs/2006.11239
        pred_original_sample, pred_epsilon = self.predict_start_and_noise(model_output, t, sample)

        # 2. clip x_0 (as DDPM/DDIM in diffusers; eps stays the model's)
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-r, r)

        # 3. sigma_t(eta), eq. (16) of https://arxiv.org/abs/2010.02502; eta=1 is the DDPM posterior variance
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        std_dev = eta * variance.clamp(min=0).sqrt().item()

        # 4. x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - sigma^2) eps + sigma z, eq. (12) of DDIM
        direction = (1 - alpha_bar_prev - std_dev**2).clamp(min=0).sqrt().item() * pred_epsilon
        prev_sample = alpha_bar_prev.sqrt().item() * pred_original_sample + direction
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + std_dev * variance_noise

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return HFDDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
