"""HFDDPMScheduler against the contract diffusers' own scheduler tests check, and against DDPMScheduler and
DDIMScheduler themselves: live, and through the reference sums diffusers publishes for its full loops.

Issue #13: a user who drops HFDDPMScheduler into diffusers code, or loads a DDPM config into it, gets DDPMScheduler's
behaviour unless they ask for more.
"""

import inspect
import json

import diffusers
import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

from hfddpm import HFDDPMScheduler

N = 1000
# The configurations diffusers' DDPM and DDIM scheduler tests run with (their published sums below depend on them).
DDPM_CONFIG = {"beta_schedule": "linear", "variance_type": "fixed_small", "clip_sample": True}
DDIM_CONFIG = {"beta_schedule": "linear", "clip_sample": True}
# diffusers' compatible schedulers that can be built here (DPMSolverSDE needs torchsde)
COMPATIBLES = [
    name
    for name in HFDDPMScheduler._compatibles
    if issubclass(getattr(diffusers, name), diffusers.SchedulerMixin) and name != "EDMEulerScheduler"
]
# config keys of a scheduler saved by hfddpm before issue #13
PRE_13_KEYS = (
    "num_train_timesteps",
    "noise_schedule",
    "beta_start",
    "beta_end",
    "trained_betas",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "set_alpha_to_one",
    "steps_offset",
    "timestep_spacing",
    "rescale_betas_zero_snr",
    "image_size",
    "base_resolution",
    "interpolation_low_resolution",
    "sigmoid_start",
    "sigmoid_end",
    "sigmoid_tau",
    "logsnr_min",
    "logsnr_max",
)


def ramp_sample():
    """A deterministic 4x3x8x8 ramp in [0, 1), laid out as in diffusers' scheduler tests."""
    n = 4 * 3 * 8 * 8
    return (torch.arange(n) / n).reshape(3, 8, 8, 4).permute(3, 0, 1, 2)


def ramp_model(sample, t):
    """The dummy model of diffusers' scheduler tests: ``sample * t / (t + 1)``."""
    t = torch.as_tensor(t, dtype=sample.dtype)
    return sample * t / (t + 1)


def training_chain(scheduler, **step_kwargs):
    """diffusers' DDPM full loop: every training timestep, no set_timesteps, ``torch.manual_seed(0)``."""
    x, generator = ramp_sample(), torch.manual_seed(0)
    for t in reversed(range(len(scheduler))):
        x = scheduler.step(ramp_model(x, t), t, x, generator=generator, **step_kwargs).prev_sample
    return x


def inference_loop(scheduler, steps, *step_args, scale=1.0, learned=None, seed=0, **step_kwargs):
    """``steps`` steps from ``scale`` times the ramp; ``learned`` is appended to the output as its variance."""
    x, generator = scale * ramp_sample(), torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = ramp_model(x, t)
        if learned is not None:
            out = torch.cat([out, torch.full_like(out, learned)], dim=1)
        x = scheduler.step(out, t, x, *step_args, generator=generator, **step_kwargs).prev_sample
    return x


def init_config(scheduler, cls=None):
    """The config values ``cls.__init__`` (default: the scheduler's class) takes; hidden keys of others left out."""
    keys = inspect.signature(cls or type(scheduler)).parameters
    return {k: v for k, v in scheduler.config.items() if k in keys}


# --- config: save/load and from_config both ways ------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"beta_schedule": "scaled_linear", "prediction_type": "epsilon", "eta": 0.0},
        {"noise_schedule": "shifted_cosine", "image_size": 28, "variance_type": "learned_range"},
        {"noise_schedule": "sigmoid", "thresholding": True, "sample_max_value": 2.0, "rescale_betas_zero_snr": True},
    ],
)
def test_save_load_round_trip(tmp_path, kwargs):
    s = HFDDPMScheduler(**kwargs)
    s.save_pretrained(tmp_path)
    loaded = HFDDPMScheduler.from_pretrained(tmp_path)
    assert dict(loaded.config) == dict(s.config)  # no `_use_default_values: []` gained on the way
    assert "_use_default_values" not in loaded.config and "_use_default_values" not in s.config
    assert torch.equal(loaded.alphas_cumprod, s.alphas_cumprod)
    learned = 0.2 if kwargs.get("variance_type") == "learned_range" else None
    assert torch.equal(inference_loop(loaded, 10, learned=learned), inference_loop(s, 10, learned=learned))


@pytest.mark.parametrize("name", COMPATIBLES)
def test_from_config_to_each_compatible_scheduler_and_back(name):
    s = HFDDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", eta=0.0, thresholding=True)
    other = getattr(diffusers, name).from_config(s.config)
    assert torch.equal(other.alphas_cumprod, s.alphas_cumprod)
    back = HFDDPMScheduler.from_config(other.config)
    assert init_config(back) == init_config(s)
    assert torch.equal(back.alphas_cumprod, s.alphas_cumprod)


@pytest.mark.parametrize(
    "ref,eta",
    [
        (DDPMScheduler(), 1.0),
        (
            DDPMScheduler(
                beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", variance_type="fixed_large"
            ),
            1.0,
        ),
        (DDPMScheduler(beta_schedule="sigmoid", thresholding=True, timestep_spacing="trailing"), 1.0),
        (DDIMScheduler(), 0.0),
        # Stable Diffusion's scheduler settings
        (
            DDIMScheduler(
                beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                set_alpha_to_one=False, steps_offset=1,
            ),
            0.0,
        ),
    ],
    ids=["ddpm", "ddpm-cosine-v-large", "ddpm-sigmoid-threshold", "ddim", "ddim-stable-diffusion"],
)  # fmt: skip
def test_stock_config_keeps_its_schedulers_meaning(ref, eta):
    s = HFDDPMScheduler.from_config(ref.config)
    for key, value in init_config(ref).items():
        assert s.config[key] == value or (key == "trained_betas" and value is None), key
    assert s.config.eta == eta  # DDPM samples ancestrally; DDIM's step defaults to eta=0
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)
    assert "_use_default_values" not in s.config
    # and the other way round: the stock scheduler built from ours is the one we started from
    assert init_config(type(ref).from_config(s.config)) == init_config(ref) | {"trained_betas": s.config.trained_betas}


def test_issue_13_snippet_from_config():
    ref = DDPMScheduler(beta_schedule="linear", prediction_type="epsilon")
    s = HFDDPMScheduler.from_config(ref.config)
    assert s.config.noise_schedule == "linear"
    assert s.alphas_cumprod[500].item() == pytest.approx(ref.alphas_cumprod[500].item(), abs=1e-7)  # 0.0778
    assert HFDDPMScheduler(beta_schedule="linear").config.noise_schedule == "linear"


def test_from_pretrained_on_a_folder_diffusers_saved(tmp_path):
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2", clip_sample_range=2.0)
    ref.save_pretrained(tmp_path)
    s = HFDDPMScheduler.from_pretrained(tmp_path)
    assert s.config.noise_schedule == "cosine" and s.config.clip_sample_range == 2.0
    assert (s.config.prediction_type, s.config.timestep_spacing, s.config.clip_sample) == ("epsilon", "leading", True)
    assert torch.allclose(inference_loop(s, 25), inference_loop(ref, 25), atol=1e-5)


def test_old_diffusers_config_gets_its_writers_defaults(tmp_path):
    # a DDPM config as diffusers 0.1.1 wrote it: no prediction_type, timestep_spacing, thresholding, ...
    config = {
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.1.1",
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "clip_sample": True,
        "num_train_timesteps": 1000,
        "trained_betas": None,
        "variance_type": "fixed_large",
    }
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))
    s = HFDDPMScheduler.from_pretrained(tmp_path)
    ref = DDPMScheduler.from_pretrained(tmp_path)
    assert (s.config.prediction_type, s.config.timestep_spacing, s.config.variance_type) == (
        "epsilon",
        "leading",
        "fixed_large",
    )
    assert torch.allclose(inference_loop(s, 20), inference_loop(ref, 20), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_schedule": "cosine"},
        {"noise_schedule": "linear", "prediction_type": "epsilon", "clip_sample": True},
        {"noise_schedule": "shifted_cosine", "image_size": 28, "timestep_spacing": "leading"},
        {"noise_schedule": "sigmoid", "rescale_betas_zero_snr": True},
    ],
)
def test_configs_saved_before_issue_13_load_unchanged(tmp_path, kwargs):
    # what an earlier hfddpm wrote: the named schedule and its betas, none of the DDPM/DDIM keys added since
    s = HFDDPMScheduler(**kwargs)
    old = {k: v for k, v in s.config.items() if k in PRE_13_KEYS}
    old["trained_betas"] = [b * 1.001 for b in old["trained_betas"][:-1]] + old["trained_betas"][-1:]
    old |= {"_class_name": "HFDDPMScheduler", "_diffusers_version": "0.42.1"}
    (tmp_path / "scheduler_config.json").write_text(json.dumps(old))
    loaded = HFDDPMScheduler.from_pretrained(tmp_path)
    assert all(loaded.config[k] == v for k, v in old.items() if not k.startswith("_") and k != "trained_betas")
    # the recorded betas define the schedule, as before
    expected = torch.tensor(old["trained_betas"], dtype=torch.float32)
    if kwargs.get("rescale_betas_zero_snr"):
        expected = HFDDPMScheduler(trained_betas=old["trained_betas"], rescale_betas_zero_snr=True).betas
    assert torch.equal(loaded.betas, expected)
    assert (loaded.config.variance_type, loaded.config.thresholding, loaded.config.eta) == ("fixed_small", False, 1.0)


# --- step: shapes, dtypes, randomness, timesteps ------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize(
    "options",
    [{}, {"clip_sample": True}, {"thresholding": True, "sample_max_value": 1.5}, {"variance_type": "learned_range"}],
)
def test_step_keeps_shape_and_dtype(dtype, eta, options):
    s = HFDDPMScheduler(prediction_type="epsilon", **options)
    s.set_timesteps(10)
    x = (3 * ramp_sample()).to(dtype)
    out = ramp_model(x, 500)
    if options.get("variance_type") == "learned_range":
        out = torch.cat([out, torch.zeros_like(out)], dim=1)
    # the same noise in both steps: torch < 2.13 draws another stream for a float16/bf16 generator call
    noise = torch.randn(x.shape, generator=torch.manual_seed(0))
    result = s.step(out, s.timesteps[2], x, eta=eta, variance_noise=noise.to(dtype))
    assert result.prev_sample.shape == x.shape and result.pred_original_sample.shape == x.shape
    assert result.prev_sample.dtype == dtype and result.pred_original_sample.dtype == dtype
    full = s.step(out.float(), s.timesteps[2], x.float(), eta=eta, variance_noise=noise).prev_sample
    assert torch.allclose(result.prev_sample.float(), full, atol=0.1 if dtype == torch.bfloat16 else 0.02)


def test_step_before_set_timesteps_is_ddpms_training_chain():
    s, ref = HFDDPMScheduler.from_config(DDPMScheduler().config), DDPMScheduler()
    x = ramp_sample()
    for t in (999, 500, 1, 0):
        assert s.previous_timestep(t) == ref.previous_timestep(t) == t - 1
        ours = s.step(ramp_model(x, t), t, x, generator=torch.manual_seed(0)).prev_sample
        theirs = ref.step(ramp_model(x, t), t, x, generator=torch.manual_seed(0)).prev_sample
        # 1e-4: near t=0 DDPM's float32 beta_t = 1 - a_t / a_prev is off by 1e-4 relative; ours is float64
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_generator_reproducibility_and_variance_noise():
    s = HFDDPMScheduler()
    assert torch.equal(inference_loop(s, 10, seed=3), inference_loop(s, 10, seed=3))
    assert not torch.equal(inference_loop(s, 10, seed=3), inference_loop(s, 10, seed=4))
    assert torch.equal(inference_loop(s, 10, eta=0.0, seed=3), inference_loop(s, 10, eta=0.0, seed=4))
    s.set_timesteps(10)
    x, t = ramp_sample(), s.timesteps[4]
    noise = torch.randn(x.shape, generator=torch.manual_seed(7))
    drawn = s.step(ramp_model(x, t), t, x, generator=torch.manual_seed(7)).prev_sample
    given = s.step(ramp_model(x, t), t, x, variance_noise=noise).prev_sample
    assert torch.equal(drawn, given)
    assert torch.equal(s.step(ramp_model(x, t), t, x, generator=torch.manual_seed(7), return_dict=False)[0], drawn)


# --- DDPMScheduler's step() arguments, attributes and _get_variance -----------------------------------------------
def test_step_takes_ddpms_positional_arguments():
    # stock DDPM code passes the generator 4th and return_dict 5th: scheduler.step(out, t, x, generator)
    ref = DDPMScheduler()
    s = HFDDPMScheduler.from_config(ref.config)

    def positional_loop(scheduler):
        x, generator = 3 * ramp_sample(), torch.Generator().manual_seed(0)
        scheduler.set_timesteps(20)
        for t in scheduler.timesteps:
            x = scheduler.step(ramp_model(x, t), t, x, generator).prev_sample
        return x

    ours = positional_loop(s)
    assert torch.allclose(ours, positional_loop(ref), atol=1e-5)
    assert torch.equal(ours, inference_loop(s, 20, scale=3.0))  # the same as by keyword
    x, t = ramp_sample(), s.timesteps[3]
    mine = s.step(ramp_model(x, t), t, x, torch.manual_seed(1), False)
    theirs = ref.step(ramp_model(x, t), t, x, torch.manual_seed(1), False)
    assert isinstance(mine, tuple) and torch.allclose(mine[0], theirs[0], atol=1e-5)


def test_ddims_options_are_keyword_only_and_a_positional_eta_is_named():
    s = HFDDPMScheduler()
    s.set_timesteps(10)
    x, t = ramp_sample(), s.timesteps[2]
    with pytest.raises(
        ValueError,
        match=r"^generator=0.0 is not a torch.Generator: step\(\) takes DDPMScheduler's arguments in its order"
        r" \(model_output, timestep, sample, generator, return_dict\) and DDIMScheduler's eta,"
        r" use_clipped_model_output and variance_noise by keyword only, e.g. step\(model_output, t, sample,"
        r" eta=0.0\)\.$",
    ):
        s.step(ramp_model(x, t), t, x, 0.0)
    with pytest.raises(TypeError, match="positional"):
        s.step(ramp_model(x, t), t, x, None, True, 0.0)
    generators = [torch.manual_seed(0), torch.manual_seed(1), torch.manual_seed(2), torch.manual_seed(3)]
    assert s.step(ramp_model(x, t), t, x, generators).prev_sample.shape == x.shape  # one generator per sample


def test_ddpms_attributes():
    for variance_type in ("fixed_small", "learned_range"):
        ref = DDPMScheduler(variance_type=variance_type)
        s = HFDDPMScheduler.from_config(ref.config)
        assert s.variance_type == ref.variance_type == variance_type
        assert torch.equal(s.one, ref.one)


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range"]
)
@pytest.mark.parametrize("steps", [None, 10])
def test_get_variance_equals_ddpms(variance_type, steps):
    ref = DDPMScheduler(variance_type=variance_type)
    s = HFDDPMScheduler.from_config(ref.config)
    timesteps = [999, 500, 2, 1, 0]
    if steps is not None:
        s.set_timesteps(steps)
        ref.set_timesteps(steps)
        timesteps = ref.timesteps.tolist()
    predicted = torch.linspace(-0.9, 0.9, 6).reshape(1, 6, 1, 1)  # the model's variance channels
    for t in timesteps:
        ours, theirs = s._get_variance(t, predicted), ref._get_variance(t, predicted)
        assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == theirs.shape
        # near t=0 DDPM's float32 beta_t = 1 - a_t / a_prev is off by up to 2e-4 relative; ours is float64
        assert torch.allclose(ours, theirs, rtol=5e-4, atol=0), (t, ours, theirs)
        large = s._get_variance(t, variance_type="fixed_large")  # another type than the config's
        assert torch.allclose(large, ref._get_variance(t, variance_type="fixed_large"), rtol=5e-4, atol=0)


def test_get_variance_errors():
    s = HFDDPMScheduler(variance_type="learned_range")
    with pytest.raises(ValueError, match=r"variance_type='learned_range' needs the model's predicted_variance"):
        s._get_variance(500)
    with pytest.raises(ValueError, match=r"variance_type='small' is not valid: choose one of \('fixed_small',"):
        s._get_variance(500, variance_type="small")


DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_add_noise_on_any_device(device):
    s, ref = HFDDPMScheduler(beta_schedule="linear"), DDPMScheduler()
    x0, noise = ramp_sample(), torch.randn(4, 3, 8, 8, generator=torch.manual_seed(0))
    t = torch.tensor([0, 10, 500, 999])
    out = s.add_noise(x0.to(device), noise.to(device), t.to(device))
    assert out.device.type == device and out.shape == x0.shape and out.dtype == x0.dtype
    if device != "meta":
        assert torch.allclose(out.cpu(), ref.add_noise(x0, noise, t), atol=1e-6)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_previous_timestep_is_a_tensor_as_in_ddpm(spacing):
    s = HFDDPMScheduler(timestep_spacing=spacing)
    ref = DDPMScheduler.from_config(s.config)
    for scheduler in (s, ref):
        scheduler.set_timesteps(7)
    assert torch.equal(s.timesteps, ref.timesteps)
    for t in s.timesteps:
        ours, theirs = s.previous_timestep(t), ref.previous_timestep(t)
        assert isinstance(ours, torch.Tensor) and ours.ndim == 0 and int(ours) == int(theirs)


def test_custom_timesteps_equal_ddpm_and_work_with_retrieve_timesteps():
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps

    custom = [999, 800, 640, 300, 120, 30, 0]
    s = HFDDPMScheduler.from_config(DDPMScheduler().config)
    timesteps, n = retrieve_timesteps(s, timesteps=custom)
    assert timesteps.tolist() == custom and n == len(custom) and s.custom_timesteps
    ref = DDPMScheduler()
    ref.set_timesteps(timesteps=custom)
    x = {}
    for name, scheduler in (("ours", s), ("ref", ref)):
        x[name], generator = ramp_sample(), torch.manual_seed(0)
        for t in scheduler.timesteps:
            x[name] = scheduler.step(ramp_model(x[name], t), t, x[name], generator=generator).prev_sample
    assert torch.allclose(x["ours"], x["ref"], atol=1e-5)


# --- full loops against DDPMScheduler and DDIMScheduler -------------------------------------------------------------
@pytest.mark.parametrize(
    "prediction_type,result_sum,result_mean", [("epsilon", 258.9606, 0.3372), ("v_prediction", 202.0296, 0.2631)]
)
def test_ddpm_full_loop_published_sums(prediction_type, result_sum, result_mean):
    config = {**DDPM_CONFIG, "prediction_type": prediction_type}
    ours = training_chain(HFDDPMScheduler(**config))  # no eta: DDPM
    assert ours.abs().sum().item() == pytest.approx(result_sum, abs=1e-2)
    assert ours.abs().mean().item() == pytest.approx(result_mean, abs=1e-3)
    assert torch.allclose(ours, training_chain(DDPMScheduler(**config)), atol=1e-4)


@pytest.mark.parametrize(
    "extra,result_sum,result_mean",
    [
        ({}, 172.0067, 0.223967),
        ({"prediction_type": "v_prediction"}, 52.5302, 0.0684),
        ({"set_alpha_to_one": True, "beta_start": 0.01}, 149.8295, 0.1951),
        ({"set_alpha_to_one": False, "beta_start": 0.01}, 149.0784, 0.1941),
    ],
)
def test_ddim_full_loop_published_sums(extra, result_sum, result_mean):
    ref = DDIMScheduler(**DDIM_CONFIG, **extra)
    ours = inference_loop(HFDDPMScheduler.from_config(ref.config), 10, eta=0.0)  # DDIM's options: keyword only
    assert ours.abs().sum().item() == pytest.approx(result_sum, abs=1e-2)
    assert ours.abs().mean().item() == pytest.approx(result_mean, abs=1e-3)
    assert torch.allclose(ours, inference_loop(ref, 10, 0.0), atol=1e-5)


@pytest.mark.parametrize(
    "variance_type", ["fixed_small", "fixed_small_log", "fixed_large", "learned", "learned_range"]
)
@pytest.mark.parametrize("x0_limit", [{}, {"clip_sample": False}, {"thresholding": True, "sample_max_value": 1.5}])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_eta1_equals_ddpm_step(variance_type, x0_limit, prediction_type):
    ref = DDPMScheduler(variance_type=variance_type, prediction_type=prediction_type, **x0_limit)
    s = HFDDPMScheduler.from_config(ref.config)
    learned = {"learned": 1e-3, "learned_range": 0.3}.get(variance_type)
    ours, theirs = (
        inference_loop(s, 50, scale=3.0, learned=learned),
        inference_loop(ref, 50, scale=3.0, learned=learned),
    )
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(ours, inference_loop(s, 50, eta=1.0, scale=3.0, learned=learned))


def test_fixed_large_log_is_fixed_large():
    # DDPMScheduler's own fixed_large_log step takes the square root of a log variance (NaN); the meaning is beta_t
    large = inference_loop(HFDDPMScheduler.from_config(DDPMScheduler(variance_type="fixed_large").config), 20)
    log = inference_loop(HFDDPMScheduler.from_config(DDPMScheduler(variance_type="fixed_large_log").config), 20)
    assert torch.allclose(large, log, atol=1e-6)


def test_issue_13_snippet_one_clipped_step():
    s, ref = HFDDPMScheduler.from_config(DDPMScheduler().config), DDPMScheduler()
    x = torch.randn(2, 3, 8, 8, generator=torch.manual_seed(0))
    eps = 2 * torch.randn(2, 3, 8, 8, generator=torch.manual_seed(1))
    ours = s.step(eps, 500, x, eta=1.0, generator=torch.manual_seed(2)).prev_sample
    theirs = ref.step(eps, 500, x, generator=torch.manual_seed(2)).prev_sample
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("use_clipped_model_output", [None, True])
@pytest.mark.parametrize("options", [{}, {"clip_sample": False}, {"thresholding": True, "sample_max_value": 1.5}])
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("trailing", 20), ("trailing", 1000)])
def test_eta_below_1_equals_ddim_step(eta, use_clipped_model_output, options, spacing, steps):
    ref = DDIMScheduler(timestep_spacing=spacing, **options)
    s = HFDDPMScheduler.from_config(ref.config)
    kwargs = {"eta": eta, "use_clipped_model_output": use_clipped_model_output}
    ours, theirs = inference_loop(s, steps, scale=3.0, **kwargs), inference_loop(ref, steps, scale=3.0, **kwargs)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_eta1_without_clipped_model_output_is_ddims_eta1():
    ref = DDIMScheduler()
    s = HFDDPMScheduler.from_config(ref.config)
    kwargs = {"eta": 1.0, "use_clipped_model_output": False}
    ours, theirs = inference_loop(s, 10, scale=3.0, **kwargs), inference_loop(ref, 10, scale=3.0, **kwargs)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # DDIM's eta=1 with clipping is not DDPM's step; ours by default is
    assert not torch.allclose(inference_loop(s, 10, scale=3.0, eta=1.0), inference_loop(ref, 10, scale=3.0, eta=1.0))


def test_where_ddim_steps_elsewhere():
    # linspace spacing: the same timesteps, but DDIM steps back num_train_timesteps // num_inference_steps = 100 from
    # each one while this scheduler (as DDPM) steps to the next timestep it will evaluate, 111 back
    s = HFDDPMScheduler(timestep_spacing="linspace", prediction_type="epsilon", eta=0.0)
    ref = DDIMScheduler.from_config(s.config)
    s.set_timesteps(10)
    ref.set_timesteps(10)
    assert torch.equal(s.timesteps, ref.timesteps) and s.timesteps[:2].tolist() == [999, 888]
    assert int(s.previous_timestep(999)) == 888
    assert not torch.allclose(inference_loop(s, 10), inference_loop(ref, 10, 0.0), atol=1e-3)


# --- diffusers' stock pipelines -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=[8, 16],
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=["DownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "UpBlock2D"],
    )


def run_pipeline(pipe_class, unet, scheduler, **kwargs):
    pipe = pipe_class(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, pipe(batch_size=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs).images


@pytest.mark.parametrize(
    "ours,ref",
    [
        # the issue's snippet: no clipping on either side
        (
            lambda: HFDDPMScheduler(noise_schedule="linear", prediction_type="epsilon", timestep_spacing="leading"),
            lambda: DDPMScheduler(clip_sample=False),
        ),
        # DDPM's own defaults, clipping included
        (lambda: HFDDPMScheduler.from_config(DDPMScheduler().config), DDPMScheduler),
    ],
    ids=["issue-snippet", "ddpm-defaults"],
)
def test_stock_ddpm_pipeline_equals_it_with_ddpm_scheduler(tiny_unet, ours, ref):
    _, expected = run_pipeline(DDPMPipeline, tiny_unet, ref(), num_inference_steps=50)
    _, images = run_pipeline(DDPMPipeline, tiny_unet, ours(), num_inference_steps=50)
    np.testing.assert_allclose(images, expected, atol=1e-4)
    assert 0.05 < expected.std()  # not a saturated image


def test_stock_ddim_pipeline_runs_our_schedule(tiny_unet):
    ours = HFDDPMScheduler(prediction_type="epsilon", clip_sample=True)
    pipe, images = run_pipeline(DDIMPipeline, tiny_unet, ours, num_inference_steps=10)
    assert type(pipe.scheduler) is DDIMScheduler  # DDIMPipeline converts whatever it is given
    assert torch.equal(pipe.scheduler.alphas_cumprod, ours.alphas_cumprod)
    assert pipe.scheduler.config.timestep_spacing == "trailing" and pipe.scheduler.config.clip_sample
    # with ours put back after the conversion, DDIMPipeline's call (eta=0, use_clipped_model_output=None) is the same
    pipe.scheduler = ours
    again = pipe(batch_size=2, generator=torch.Generator().manual_seed(0), num_inference_steps=10, output_type="np")
    np.testing.assert_allclose(again.images, images, atol=1e-5)


def test_step_signature_is_ddpms_with_ddims_options_by_keyword():
    params = inspect.signature(HFDDPMScheduler.step).parameters
    ddpm = list(inspect.signature(DDPMScheduler.step).parameters)
    assert list(params)[: len(ddpm)] == ddpm  # stock DDPM code passes generator 4th: step(out, t, x, generator)
    keyword_only = {name for name, p in params.items() if p.kind is p.KEYWORD_ONLY}
    assert keyword_only == set(inspect.signature(DDIMScheduler.step).parameters) - set(ddpm)
    assert set(params) == set(ddpm) | keyword_only
    assert set(inspect.signature(DDPMScheduler.__init__).parameters) <= set(
        inspect.signature(HFDDPMScheduler.__init__).parameters
    )
    assert set(inspect.signature(DDIMScheduler.__init__).parameters) <= set(
        inspect.signature(HFDDPMScheduler.__init__).parameters
    )
