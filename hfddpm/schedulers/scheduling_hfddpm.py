# Copyright 2026 The hfddpm authors. Apache-2.0.
"""A DDPM/DDIM scheduler whose noise schedule is defined by its log-SNR.

This file is copied verbatim next to every saved pipeline (``scheduler/scheduling_hfddpm.py``) so that the folder
loads with plain diffusers and ``trust_remote_code=True``: it imports nothing from hfddpm.
"""

import inspect
import math
import numbers
from dataclasses import dataclass

import diffusers
import numpy as np
import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import FrozenDict, register_to_config
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput, logging
from diffusers.utils.torch_utils import randn_tensor

logger = logging.get_logger(__name__)

# Named schedules may be added, never removed or changed: saved models depend on them.
NOISE_SCHEDULES = (
    "linear",
    "cosine",
    "sigmoid",
    "shifted_cosine",
    "interpolated_shifted_cosine",
    "scaled_linear",
    "sigmoid_betas",
)
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# diffusers' `beta_schedule` values and the noise schedule each one is (DDPMScheduler's meaning).
BETA_SCHEDULES = {
    "linear": "linear",
    "scaled_linear": "scaled_linear",
    "squaredcos_cap_v2": "cosine",
    "sigmoid": "sigmoid_betas",
}
# DDPMScheduler's variance types; the `_log` ones name how diffusers computes the same standard deviation.
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")


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


def betas_scaled_linear(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``linspace(sqrt(beta_start), sqrt(beta_end), n) ** 2`` (float64): the betas of latent diffusion (Rombach et al.
    2022, https://arxiv.org/abs/2112.10752); diffusers' ``scaled_linear``."""
    return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2


def betas_sigmoid(n: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """``beta_start + (beta_end - beta_start) * sigmoid(linspace(-6, 6, n))`` (float64): the sigmoid betas of GeoDiff
    (Xu et al. 2022, https://arxiv.org/abs/2203.02923); diffusers' ``sigmoid`` beta schedule."""
    return beta_start + (beta_end - beta_start) * torch.sigmoid(torch.linspace(-6.0, 6.0, n, dtype=torch.float64))


def _check(ok: bool, key: str, value, valid: str):
    """Raise the ValueError of a config value that is not ``valid``."""
    if not ok:
        raise ValueError(f"{key}={value!r} is not valid: {valid}.")


def _is_number(*values) -> bool:
    """Whether every value is a real number (not a bool, not a string): the check before comparing them."""
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def _check_eta(eta):
    """The ValueError of an ``eta`` (config or ``step``) that is not a number >= 0."""
    _check(_is_number(eta) and eta >= 0, "eta", eta, "a number >= 0 (0 = DDIM, 1 = ancestral DDPM)")


def read_predict_epsilon(config_dict: dict) -> dict:
    """``config_dict`` with the ``predict_epsilon`` of diffusers before 0.10 read as ``prediction_type`` (true:
    ``epsilon``, false: ``sample``, as diffusers read it while deprecating it) and removed, with a warning. A
    ``prediction_type`` already there (and not one of ``_use_default_values``) is kept. diffusers 0.42 no longer knows
    the key: its DDPMScheduler ignores it and loads a ``predict_epsilon: false`` model as an ``epsilon`` one.

    Example:
        >>> read_predict_epsilon({"beta_schedule": "linear", "predict_epsilon": False})
        {'beta_schedule': 'linear', 'prediction_type': 'sample'}
    """
    if "predict_epsilon" not in config_dict:
        return config_dict
    value = config_dict["predict_epsilon"]
    _check(isinstance(value, bool), "predict_epsilon", value, "true (prediction_type epsilon) or false (sample)")
    read = "epsilon" if value else "sample"
    defaulted = config_dict.get("_use_default_values", [])
    config = {k: v for k, v in config_dict.items() if k != "predict_epsilon"}
    if "prediction_type" in config and "prediction_type" not in defaulted:
        if config["prediction_type"] != read:
            logger.warning(
                f"predict_epsilon={value!r} (diffusers before 0.10) is ignored: the config's"
                f" prediction_type={config['prediction_type']!r} replaces it."
            )
        return config
    config["prediction_type"] = read
    if defaulted:
        config["_use_default_values"] = [k for k in defaulted if k != "prediction_type"]
    logger.warning(f"predict_epsilon={value!r} (diffusers before 0.10) is read as prediction_type={read!r}.")
    return config


class HFDDPMScheduler(SchedulerMixin, ConfigMixin):
    """Ancestral DDPM (``eta=1``, the default) and DDIM (``eta=0``) sampling with a noise schedule chosen by its
    log-SNR; a drop-in for diffusers' ``DDPMScheduler`` (its ``step`` arguments, in its order) that also takes
    ``DDIMScheduler``'s options (``eta``, ``use_clipped_model_output``, ``variance_noise``: by keyword).

    The discretised betas are recorded in the config as ``trained_betas``, so diffusers' own solvers run the exact
    same schedule: ``DPMSolverMultistepScheduler.from_config(scheduler.config)``.

    What equals what (float32 rounding apart; pinned in ``tests/test_scheduler_conformance.py``):

    - Config: every ``DDPMScheduler`` and ``DDIMScheduler`` key has their meaning; ``beta_schedule`` picks the noise
      schedule (``linear``, ``scaled_linear``, ``squaredcos_cap_v2`` -> ``cosine``, ``sigmoid`` -> ``sigmoid_betas``).
      A config written by another diffusers scheduler (its ``_class_name``, or for a live ``.config`` the scheduler
      whose keys it has) takes that scheduler's defaults for the keys it lacks: ``from_config`` / ``from_pretrained``
      of a DDPM config is DDPM's schedule, prediction type, spacing and clipping, and a DDIM config also gets DDIM's
      default ``eta=0``. A value this scheduler cannot honour (``beta_schedule="laplace"``) is a ValueError.
    - ``eta=1`` is ``DDPMScheduler.step`` for every ``variance_type``, with clipping or dynamic thresholding: the
      posterior mean of the clipped x_0 and x_t (eq. 7 of Ho et al. 2020) plus DDPM's noise, none at ``t=0``.
      DDPM ends at alpha_bar = 1, as ``set_alpha_to_one=True`` (the default) does.
    - Any other ``eta`` is ``DDIMScheduler.step`` with that ``eta`` wherever both step to the same previous timestep.
      DDIM always steps back ``num_train_timesteps // num_inference_steps``; this scheduler steps to the next entry of
      ``timesteps``, as DDPMScheduler does. The two coincide for ``leading`` spacing and for ``trailing`` spacing when
      ``num_inference_steps`` divides ``num_train_timesteps``; for ``linspace`` spacing, other step counts and custom
      timesteps DDIM lands between the timesteps it then evaluates the model at, this scheduler does not.
    - At ``eta=1`` with clipping, ``DDIMScheduler`` keeps the unclipped noise estimate unless
      ``use_clipped_model_output=True``; here that option defaults to on at ``eta=1`` (it is what makes the step
      DDPM's) and off otherwise, as in DDIM. Without clipping or thresholding it changes nothing.

    Example:
        >>> from hfddpm import HFDDPMScheduler
        >>> scheduler = HFDDPMScheduler(noise_schedule="cosine", prediction_type="v_prediction")
        >>> scheduler.set_timesteps(20)
        >>> int(scheduler.timesteps[0]), len(scheduler.timesteps)
        (999, 20)
        >>> from diffusers import DDPMScheduler
        >>> c = HFDDPMScheduler.from_config(DDPMScheduler().config).config
        >>> c.noise_schedule, c.prediction_type, c.timestep_spacing, c.clip_sample, c.eta
        ('linear', 'epsilon', 'leading', True, 1.0)

    Args:
        num_train_timesteps: number of diffusion steps used to train the model.
        noise_schedule: one of `linear` (DDPM betas ``beta_start..beta_end``), `cosine` (Nichol & Dhariwal),
            `sigmoid` (Jabri et al.), `shifted_cosine` and `interpolated_shifted_cosine` (Hoogeboom et al.),
            `scaled_linear` (latent diffusion) and `sigmoid_betas` (GeoDiff). Default: from `beta_schedule` when that
            is given, else `cosine`.
        beta_start, beta_end: the betas of the `linear`, `scaled_linear` and `sigmoid_betas` schedules.
        trained_betas: explicit betas; when given they define the schedule (this is how a saved config reloads).
        prediction_type: what the model predicts: `epsilon`, `sample` (x_0) or `v_prediction`.
        clip_sample, clip_sample_range: clip the predicted x_0 to ``[-range, range]`` while sampling. Off by default:
            on the default MNIST model clipping raised FD-digits of DDIM from 3.4 to 7.1 (50 steps), as DDIM keeps
            the unclipped noise estimate, and of ancestral DDPM from 1.6 to 2.0 (20 steps, measured while ``eta=1``
            also kept it; it now takes DDPM's posterior mean of the clipped x_0).
        set_alpha_to_one: use alpha_bar = 1 after the last step (as diffusers' DDIM and DDPM).
        steps_offset: offset added to `leading` inference timesteps.
        timestep_spacing: `leading`, `trailing` (default; starts at the last training step) or `linspace`.
        rescale_betas_zero_snr: rescale to zero terminal SNR, Alg. 1 of Lin et al. 2023
            (https://arxiv.org/abs/2305.08891); use with `v_prediction`.
        image_size, base_resolution, interpolation_low_resolution: resolutions of the shifted cosine schedules.
        sigmoid_start, sigmoid_end, sigmoid_tau: parameters of the sigmoid schedule.
        logsnr_min, logsnr_max: log-SNR range of the continuous schedules.
        beta_schedule: diffusers' name of the schedule (`linear`, `scaled_linear`, `squaredcos_cap_v2`, `sigmoid`);
            sets `noise_schedule`, and must agree with it when both are given.
        variance_type: the noise of the ancestral step, as DDPMScheduler: `fixed_small` (posterior variance
            beta~_t), `fixed_large` (beta_t), Sec. 3.2 of Ho et al. 2020; `learned` (the model's second half of
            channels is the variance, as in diffusers) or `learned_range` (it interpolates log beta~_t..log beta_t,
            eq. 15 of Nichol & Dhariwal 2021). `fixed_small_log` and `fixed_large_log` are the same standard
            deviations (DDPMScheduler's `fixed_large_log` step returns NaN). For ``0 < eta < 1`` the noise is `eta`
            times that standard deviation; `eta=0` adds none.
        thresholding, dynamic_thresholding_ratio, sample_max_value: dynamic thresholding of x_0 (Saharia et al. 2022,
            https://arxiv.org/abs/2205.11487); replaces `clip_sample` when on, as in diffusers.
        eta: the `eta` of `step` when the caller passes none: 1.0 ancestral DDPM, 0.0 DDIM.
    """

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        noise_schedule: str | None = None,
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
        beta_schedule: str | None = None,
        variance_type: str | None = "fixed_small",
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        eta: float = 1.0,
    ):
        noise_schedule = self._resolve_noise_schedule(noise_schedule, beta_schedule)
        variance_type = variance_type or "fixed_small"  # None: DPMSolver's "the model does not predict it"
        self._check_settings(noise_schedule, variance_type)

        if trained_betas is not None:
            betas = self._checked_betas(trained_betas)
        else:
            betas = self._betas_from_schedule(noise_schedule)
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
        # DDPMScheduler's attributes, for code written against it
        self.one = torch.tensor(1.0)
        self.variance_type = variance_type

        # Record the resolved settings and the discretised schedule, so that any diffusers scheduler built with
        # `from_config` runs it exactly. Drop `_use_default_values`: diffusers' `from_config` would give the keys
        # listed there the other scheduler's defaults instead of this scheduler's values.
        self.register_to_config(
            noise_schedule=noise_schedule, variance_type=variance_type, trained_betas=self.betas.tolist()
        )
        self._internal_dict = FrozenDict({k: v for k, v in self.config.items() if k != "_use_default_values"})

        self.num_inference_steps = None
        self.custom_timesteps = False
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy())
        self._previous = {}

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' matching of config keys to ``__init__`` arguments (``from_config`` and ``from_pretrained`` call
        it), after an older diffusers' ``predict_epsilon`` is read as ``prediction_type``
        (:func:`read_predict_epsilon`) and a config written by another diffusers scheduler gets that scheduler's
        defaults for the keys it lacks, including the default ``eta`` of its ``step`` (DDIM: 0).

        The writer is the config's ``_class_name``, or for a live ``scheduler.config`` (which has none) the scheduler
        whose ``__init__`` takes exactly its keys. Keys listed in ``_use_default_values`` already hold the writer's
        defaults: they are kept, where diffusers would replace them by this scheduler's defaults.
        """
        config_dict = read_predict_epsilon(config_dict)
        config_dict = {k: v for k, v in config_dict.items() if k != "_use_default_values"}
        writer = cls._config_writer(config_dict)
        if writer is not None:
            ours = inspect.signature(cls.__init__).parameters
            empty = inspect.Parameter.empty
            defaults = {
                k: p.default
                for k, p in inspect.signature(writer.__init__).parameters.items()
                if k in ours and p.default is not empty
            }
            step_eta = inspect.signature(writer.step).parameters.get("eta")
            if step_eta is not None and step_eta.default is not empty:
                defaults["eta"] = step_eta.default
            config_dict = {**defaults, **config_dict}
        return super().extract_init_dict(config_dict, **kwargs)

    @classmethod
    def _config_writer(cls, config_dict) -> type | None:
        """The diffusers scheduler class that wrote ``config_dict``, None for this class or an unknown one."""
        name = config_dict.get("_class_name")
        if name is None:
            keys = {k for k in config_dict if not k.startswith("_")}
            names = [c for c in cls._compatibles if keys == set(inspect.signature(getattr(diffusers, c)).parameters)]
            name = names[0] if len(names) == 1 else None
        writer = getattr(diffusers, name, None) if isinstance(name, str) and name != cls.__name__ else None
        return writer if isinstance(writer, type) and issubclass(writer, SchedulerMixin) else None

    # ----------------------------------------------------------------------------------------------------------
    # Config
    # ----------------------------------------------------------------------------------------------------------
    @staticmethod
    def _resolve_noise_schedule(noise_schedule: str | None, beta_schedule: str | None) -> str:
        """The noise schedule named by ``noise_schedule`` or by diffusers' ``beta_schedule`` (default `cosine`)."""
        if beta_schedule is None:
            return noise_schedule or "cosine"
        _check(
            beta_schedule in BETA_SCHEDULES, "beta_schedule", beta_schedule, f"choose one of {tuple(BETA_SCHEDULES)}"
        )
        mapped = BETA_SCHEDULES[beta_schedule]
        if noise_schedule is not None and noise_schedule != mapped:
            raise ValueError(
                f"noise_schedule={noise_schedule!r} contradicts beta_schedule={beta_schedule!r} (noise_schedule"
                f" {mapped!r}); pass one of them."
            )
        return mapped

    def _check_settings(self, noise_schedule: str, variance_type: str):
        """ValueError for a setting outside its valid range, naming the key, the value and what is valid."""
        c = self.config
        n = c.num_train_timesteps
        _check(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) and n > 0,
            "num_train_timesteps",
            n,
            "a positive integer (e.g. 1000)",
        )
        _check(noise_schedule in NOISE_SCHEDULES, "noise_schedule", noise_schedule, f"choose one of {NOISE_SCHEDULES}")
        _check(
            c.prediction_type in PREDICTION_TYPES, "prediction_type", c.prediction_type, f"one of {PREDICTION_TYPES}"
        )
        _check(
            c.timestep_spacing in TIMESTEP_SPACINGS,
            "timestep_spacing",
            c.timestep_spacing,
            f"choose one of {TIMESTEP_SPACINGS}",
        )
        _check(variance_type in VARIANCE_TYPES, "variance_type", variance_type, f"choose one of {VARIANCE_TYPES}")
        _check(
            _is_number(c.clip_sample_range) and c.clip_sample_range > 0,
            "clip_sample_range",
            c.clip_sample_range,
            "> 0",
        )
        _check(
            _is_number(c.dynamic_thresholding_ratio) and 0 < c.dynamic_thresholding_ratio <= 1,
            "dynamic_thresholding_ratio",
            c.dynamic_thresholding_ratio,
            "a quantile in (0, 1]",
        )
        _check(
            _is_number(c.sample_max_value) and c.sample_max_value > 0, "sample_max_value", c.sample_max_value, "> 0"
        )
        _check(
            isinstance(c.steps_offset, numbers.Integral) and c.steps_offset >= 0,
            "steps_offset",
            c.steps_offset,
            "an integer >= 0",
        )
        _check_eta(c.eta)

    def _checked_betas(self, trained_betas) -> torch.Tensor:
        """``trained_betas`` as float64, after checking their count and that each lies in (0, 1)."""
        n = self.config.num_train_timesteps
        betas = torch.as_tensor(np.asarray(trained_betas, dtype=np.float64))
        if betas.shape != (n,):
            raise ValueError(
                f"trained_betas has {betas.numel()} values but num_train_timesteps={n};"
                " pass trained_betas=None to rebuild the schedule from noise_schedule."
            )
        # every beta in (0, 1); the last may be 1 (zero terminal SNR, as `rescale_betas_zero_snr` makes it)
        ok = torch.isfinite(betas) & (betas > 0) & (betas < 1)
        ok[-1] |= betas[-1] == 1
        if not ok.all():
            bad = torch.nonzero(~ok).flatten().tolist()
            shown = ", ".join(f"[{i}]={betas[i].item()!r}" for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise ValueError(
                f"trained_betas must be finite and in (0, 1) (the last may be 1 for zero terminal SNR);"
                f" {len(bad)} are not: {shown}."
            )
        return betas

    def _betas_from_schedule(self, noise_schedule: str) -> torch.Tensor:
        """Discretise the configured schedule into float64 betas over ``num_train_timesteps``."""
        c = self.config
        n = c.num_train_timesteps
        if noise_schedule in ("linear", "scaled_linear", "sigmoid_betas"):
            _check(
                _is_number(c.beta_start, c.beta_end) and 0 < c.beta_start < c.beta_end < 1,
                "beta_start, beta_end",
                (c.beta_start, c.beta_end),
                "0 < beta_start < beta_end < 1",
            )
            if noise_schedule == "scaled_linear":
                return betas_scaled_linear(n, c.beta_start, c.beta_end)
            if noise_schedule == "sigmoid_betas":
                return betas_sigmoid(n, c.beta_start, c.beta_end)
            # Eq. (4) of Ho et al. 2020 (https://arxiv.org/abs/2006.11239): betas linear in t.
            return torch.linspace(c.beta_start, c.beta_end, n, dtype=torch.float64)

        t = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
        if noise_schedule == "cosine":
            alpha_bar = alpha_bar_cosine(t)
        else:
            _check(
                _is_number(c.logsnr_min, c.logsnr_max) and c.logsnr_min < c.logsnr_max,
                "logsnr_min, logsnr_max",
                (c.logsnr_min, c.logsnr_max),
                "min < max",
            )
            if noise_schedule == "sigmoid":
                _check(
                    _is_number(c.sigmoid_start, c.sigmoid_end, c.sigmoid_tau)
                    and c.sigmoid_start < c.sigmoid_end
                    and c.sigmoid_tau > 0,
                    "sigmoid_start, sigmoid_end, sigmoid_tau",
                    (c.sigmoid_start, c.sigmoid_end, c.sigmoid_tau),
                    "start < end and tau > 0",
                )
                alpha_bar = alpha_bar_sigmoid(t, c.sigmoid_start, c.sigmoid_end, c.sigmoid_tau).clamp(0.0, 1.0)
                # gamma(0) = 1 and gamma(1) = 0 have infinite log-SNR: clip to [logsnr_min, logsnr_max]
                logsnr = (torch.log(alpha_bar) - torch.log1p(-alpha_bar)).clamp(c.logsnr_min, c.logsnr_max)
            else:
                if c.image_size is None:
                    raise ValueError(
                        f"noise_schedule={noise_schedule!r} needs image_size (the training resolution in pixels);"
                        " the shift is 2 * log(base_resolution / image_size) with"
                        f" base_resolution={c.base_resolution}."
                    )
                sizes = {"image_size": c.image_size, "base_resolution": c.base_resolution}
                if noise_schedule == "interpolated_shifted_cosine" and c.interpolation_low_resolution is not None:
                    sizes["interpolation_low_resolution"] = c.interpolation_low_resolution
                for key, size in sizes.items():
                    _check(isinstance(size, numbers.Integral) and size > 0, key, size, "a positive number of pixels")
                if noise_schedule == "shifted_cosine":
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
        timesteps = torch.as_tensor(timesteps, device=like.device).long().flatten()
        out = values.to(like.device)[timesteps].to(like.dtype)
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
        if not (_is_number(snr_gamma) and snr_gamma > 0):  # NaN fails too
            raise ValueError(f"snr_gamma must be a number > 0 (5.0 is the paper's choice), got {snr_gamma!r}.")
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

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ):
        """Choose ``num_inference_steps`` timesteps by ``timestep_spacing`` (Table 2 of Lin et al. 2023), or take
        custom ``timesteps`` (descending, each in ``[0, num_train_timesteps)``, as diffusers' ``retrieve_timesteps``
        passes them).

        Example:
            >>> from hfddpm import HFDDPMScheduler
            >>> scheduler = HFDDPMScheduler()
            >>> scheduler.set_timesteps(timesteps=[999, 500, 100])
            >>> scheduler.timesteps.tolist(), int(scheduler.previous_timestep(500))
            ([999, 500, 100], 100)
        """
        n_train = self.config.num_train_timesteps
        if (num_inference_steps is None) == (timesteps is None):
            raise ValueError(
                "Pass one of num_inference_steps (spaced by timestep_spacing) or timesteps (custom, descending)."
            )
        if timesteps is not None:
            timesteps = np.array([int(t) for t in timesteps], dtype=np.int64)
            if len(timesteps) == 0 or np.any(np.diff(timesteps) >= 0) or timesteps[0] >= n_train or timesteps[-1] < 0:
                raise ValueError(
                    f"timesteps must be strictly descending integers in [0, {n_train - 1}]"
                    f" (num_train_timesteps={n_train}), got {timesteps.tolist()}."
                )
            self.custom_timesteps = True
            num_inference_steps = len(timesteps)
        else:
            if not 1 <= num_inference_steps <= n_train:
                raise ValueError(
                    f"num_inference_steps={num_inference_steps} must be between 1 and num_train_timesteps={n_train}."
                )
            self.custom_timesteps = False
            spacing = self.config.timestep_spacing
            if spacing == "linspace":
                timesteps = np.linspace(0, n_train - 1, num_inference_steps).round()[::-1]
            elif spacing == "leading":
                step_ratio = n_train // num_inference_steps
                timesteps = (np.arange(0, num_inference_steps) * step_ratio).round()[::-1] + self.config.steps_offset
            else:
                timesteps = np.round(np.arange(n_train, 0, -n_train / num_inference_steps)) - 1
            timesteps = timesteps.astype(np.int64)
        self.num_inference_steps = num_inference_steps
        self.timesteps = torch.from_numpy(timesteps.copy()).to(device)
        self._previous = dict(zip(timesteps.tolist(), timesteps[1:].tolist() + [-1], strict=True))

    def previous_timestep(self, timestep: int | torch.Tensor) -> int | torch.Tensor:
        """The timestep the sampler moves to from ``timestep``, as DDPMScheduler: ``timestep - 1`` before
        ``set_timesteps`` (the training chain), else the next entry of ``timesteps`` as a tensor (-1 after the last).
        A timestep outside ``timesteps`` steps back ``num_train_timesteps // num_inference_steps``, as DDIM does."""
        if self.num_inference_steps is None:
            return timestep - 1
        t = int(timestep)
        prev = self._previous.get(t, t - self.config.num_train_timesteps // self.num_inference_steps)
        return torch.tensor(prev)

    def predict_start_and_noise(
        self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Convert a model output of the configured type into (x_0, eps) at ``timestep``.

        eq. (15) of Ho et al. 2020 for epsilon; Sec. 4 of Salimans & Ho 2022 for v.
        """
        alpha_bar = self.alphas_cumprod[int(timestep)].item()
        a, s = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
        if self.config.prediction_type == "epsilon":
            return (sample - s * model_output) / a, model_output
        if self.config.prediction_type == "sample":
            return model_output, (sample - a * model_output) / s
        return a * sample - s * model_output, a * model_output + s * sample

    def _dynamic_threshold(self, x0: torch.Tensor) -> torch.Tensor:
        """Dynamic thresholding, Sec. 2.3 of Saharia et al. 2022 (https://arxiv.org/abs/2205.11487): per sample, s is
        the ``dynamic_thresholding_ratio`` quantile of |x_0|, limited to ``[1, sample_max_value]``; x_0 is clipped to
        ``[-s, s]`` and divided by s. Computed in float32 for half-precision inputs (as diffusers)."""
        flat = x0.reshape(x0.shape[0], -1)
        if flat.dtype not in (torch.float32, torch.float64):
            flat = flat.float()
        s = torch.quantile(flat.abs(), self.config.dynamic_thresholding_ratio, dim=1, keepdim=True)
        s = s.clamp(min=1.0, max=self.config.sample_max_value)
        return (torch.clamp(flat, -s, s) / s).reshape(x0.shape).to(x0.dtype)

    def _alphas(self, timestep: int) -> tuple[float, float, float, float]:
        """``(alpha_bar_t, alpha_bar_prev, beta_t, posterior variance beta~_t)`` of the step from ``timestep`` to
        :meth:`previous_timestep` (alpha_bar_prev = ``final_alpha_cumprod`` after the last), eq. (6)-(7) of Ho et al.
        2020."""
        t = int(timestep)
        prev_t = int(self.previous_timestep(t))
        alpha_bar = self.alphas_cumprod[t].item()
        alpha_bar_prev = (self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod).item()
        beta_t = 1 - alpha_bar / alpha_bar_prev
        return alpha_bar, alpha_bar_prev, beta_t, (1 - alpha_bar_prev) / (1 - alpha_bar) * beta_t

    def _get_variance(
        self, t: int, predicted_variance: torch.Tensor | None = None, variance_type: str | None = None
    ) -> torch.Tensor:
        """DDPMScheduler's ``_get_variance``, for code written against it: the ancestral step's variance at ``t`` in
        the form DDPMScheduler gives it for ``variance_type`` (default: the config's). `fixed_small`: beta~_t
        (at least 1e-20); `fixed_small_log`: its square root; `fixed_large`: beta_t; `fixed_large_log`: log beta_t;
        `learned`: ``predicted_variance``; `learned_range`: the log variance of eq. (15) of Nichol & Dhariwal 2021.
        :meth:`step` draws its noise from the same variances (``eta`` times the standard deviation).

        Example:
            >>> from hfddpm import HFDDPMScheduler
            >>> scheduler = HFDDPMScheduler(noise_schedule="linear")
            >>> round(float(scheduler._get_variance(999, variance_type="fixed_large")), 6)  # beta_999
            0.02
        """
        variance_type = self.config.variance_type if variance_type is None else variance_type
        _check(variance_type in VARIANCE_TYPES, "variance_type", variance_type, f"choose one of {VARIANCE_TYPES}")
        if variance_type.startswith("learned") and predicted_variance is None:
            raise ValueError(f"variance_type={variance_type!r} needs the model's predicted_variance.")
        if variance_type == "learned":
            return predicted_variance
        # the step's own standard deviation (_noise_std), in the form DDPMScheduler gives for this variance_type
        _, _, beta_t, posterior_variance = self._alphas(t)
        std = torch.as_tensor(self._noise_std(beta_t, posterior_variance, predicted_variance, variance_type))
        if variance_type == "fixed_small_log":
            return std
        if variance_type in ("fixed_large_log", "learned_range"):
            return 2 * torch.log(std)
        return std**2

    def _noise_std(
        self,
        beta_t: float,
        posterior_variance: float,
        predicted_variance: torch.Tensor | None,
        variance_type: str | None = None,
    ):
        """Standard deviation of the ancestral step's noise for ``variance_type`` (default: the config's), as
        DDPMScheduler."""
        variance_type = self.config.variance_type if variance_type is None else variance_type
        small = max(posterior_variance, 1e-20)
        if variance_type in ("fixed_small", "fixed_small_log"):
            return small**0.5  # beta~_t, eq. (7) of Ho et al. 2020
        if variance_type in ("fixed_large", "fixed_large_log"):
            return beta_t**0.5  # beta_t, Sec. 3.2 of Ho et al. 2020
        if predicted_variance is None:
            raise ValueError(
                f"variance_type={variance_type!r} needs the model's variance: a model output with twice the sample's"
                " channels (prediction, then variance)."
            )
        if variance_type == "learned":
            return predicted_variance.sqrt()
        # eq. (15) of Nichol & Dhariwal 2021: exp(v log beta_t + (1 - v) log beta~_t), v = (output + 1) / 2
        frac = (predicted_variance + 1) / 2
        return torch.exp(0.5 * (frac * math.log(beta_t) + (1 - frac) * math.log(small)))

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
        return_dict: bool = True,
        *,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        variance_noise: torch.Tensor | None = None,
    ) -> HFDDPMSchedulerOutput | tuple:
        """One reverse step ``x_t -> x_prev``: ancestral DDPM (``eta=1``), DDIM (``eta=0``) and in between.

        The arguments are ``DDPMScheduler.step``'s, in its order (``step(model_output, timestep, sample, generator)``),
        and DDIMScheduler's options by keyword only (``eta=0.0``).

        Args:
            model_output: the model's prediction; with a learned ``variance_type``, prediction and variance stacked on
                the channel axis.
            timestep: the current timestep t (works before ``set_timesteps``: then the training chain, t -> t - 1).
            sample: x_t.
            generator: the random generator (or list of them, one per sample) for the noise.
            return_dict: return an ``HFDDPMSchedulerOutput`` rather than a tuple.
            eta: noise weight of eq. (16) of DDIM (https://arxiv.org/abs/2010.02502); None takes ``config.eta``.
            use_clipped_model_output: recompute the noise estimate from the clipped or thresholded x_0, as
                DDIMScheduler's option. None: on at ``eta=1`` (DDPM's step), off otherwise (DDIM's default).
            variance_noise: the noise itself, instead of drawing it with ``generator`` (not both).

        Example:
            >>> import torch
            >>> from hfddpm import HFDDPMScheduler
            >>> scheduler = HFDDPMScheduler()
            >>> scheduler.set_timesteps(10)
            >>> x = torch.randn(1, 1, 4, 4, generator=torch.manual_seed(0))
            >>> for t in scheduler.timesteps:
            ...     x = scheduler.step(torch.zeros_like(x), t, x, generator=torch.manual_seed(1)).prev_sample
            >>> tuple(x.shape)
            (1, 1, 4, 4)
        """
        eta = self.config.eta if eta is None else eta
        _check_eta(eta)
        if not (generator is None or isinstance(generator, (torch.Generator, list))):
            raise ValueError(
                f"generator={generator!r} is not a torch.Generator: step() takes DDPMScheduler's arguments in its"
                " order (model_output, timestep, sample, generator, return_dict) and DDIMScheduler's eta,"
                " use_clipped_model_output and variance_noise by keyword only, e.g. step(model_output, t, sample,"
                " eta=0.0)."
            )
        if generator is not None and variance_noise is not None:
            raise ValueError("Pass either generator or variance_noise to step(), not both.")
        if use_clipped_model_output is None:
            use_clipped_model_output = eta == 1
        t = int(timestep)
        alpha_bar, alpha_bar_prev, beta_t, posterior_variance = self._alphas(t)

        # 0. a model that learns its variance outputs [prediction, variance] (Sec. 3.1 of Nichol & Dhariwal 2021)
        predicted_variance = None
        if self.config.variance_type in ("learned", "learned_range") and model_output.shape[1] == 2 * sample.shape[1]:
            model_output, predicted_variance = model_output.split(sample.shape[1], dim=1)

        # 1. predicted x_0 and eps from the model output, eq. (15) of https://arxiv.org/abs/2006.11239
        pred_original_sample, pred_epsilon = self.predict_start_and_noise(model_output, t, sample)

        # 2. dynamic thresholding (Saharia et al. 2022) or clipping of x_0, as DDPM/DDIM in diffusers
        if self.config.thresholding:
            pred_original_sample = self._dynamic_threshold(pred_original_sample)
        elif self.config.clip_sample:
            r = self.config.clip_sample_range
            pred_original_sample = pred_original_sample.clamp(-r, r)

        # 3. eps consistent with the clipped x_0: at eta=1 this turns step 5 into the posterior mean of x_0 and x_t,
        #    mu~_t of eq. (7) of https://arxiv.org/abs/2006.11239, which is what DDPM samples around
        if use_clipped_model_output:
            pred_epsilon = (sample - alpha_bar**0.5 * pred_original_sample) / (1 - alpha_bar) ** 0.5

        # 4. sigma_t(eta), eq. (16) of https://arxiv.org/abs/2010.02502; eta=1 is the DDPM posterior variance
        sigma = eta * max(posterior_variance, 0.0) ** 0.5

        # 5. x_prev = sqrt(a_prev) x_0 + sqrt(1 - a_prev - sigma^2) eps (+ noise), eq. (12) of DDIM
        direction = max(1 - alpha_bar_prev - sigma**2, 0.0) ** 0.5
        prev_sample = alpha_bar_prev**0.5 * pred_original_sample + direction * pred_epsilon

        # 6. noise of the variance_type's standard deviation, none at t=0 (Algorithm 2 of Ho et al. 2020)
        if eta > 0 and t > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(
                    model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
                )
            prev_sample = prev_sample + eta * self._noise_std(beta_t, posterior_variance, predicted_variance) * (
                variance_noise
            )

        if not return_dict:
            return (prev_sample, pred_original_sample)
        return HFDDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=pred_original_sample)
