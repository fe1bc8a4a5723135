"""HFDDPMScheduler pinned against closed forms and against diffusers' own schedulers."""

import json
import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.training_utils import compute_snr

from hfddpm import HFDDPMScheduler
from hfddpm.schedulers.scheduling_hfddpm import NOISE_SCHEDULES, logsnr_cosine

N = 1000
SOLVERS = [DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler]
SCHEDULE_KWARGS = {
    "linear": {},
    "cosine": {},
    "sigmoid": {},
    "shifted_cosine": {"image_size": 28},
    "interpolated_shifted_cosine": {"image_size": 128, "interpolation_low_resolution": 32},
    "scaled_linear": {},
    "sigmoid_betas": {},
}


def make(noise_schedule="cosine", **kwargs):
    return HFDDPMScheduler(noise_schedule=noise_schedule, **{**SCHEDULE_KWARGS[noise_schedule], **kwargs})


def logsnr_of(scheduler):
    ab = scheduler.alphas_cumprod.double()
    return torch.log(ab / (1 - ab))


# --- schedules: closed forms ---------------------------------------------------------------------------------------
def test_linear_matches_ddpm_closed_form_and_diffusers():
    s = make("linear")
    betas = torch.linspace(1e-4, 0.02, N, dtype=torch.float64)
    closed = torch.cumprod(1 - betas, 0)
    assert torch.allclose(s.alphas_cumprod.double(), closed, atol=1e-6, rtol=0)
    assert torch.allclose(s.alphas_cumprod, DDPMScheduler(beta_schedule="linear").alphas_cumprod, atol=1e-6, rtol=0)
    assert s.alphas_cumprod[-1].item() == pytest.approx(4.036e-05, rel=1e-3)


def test_cosine_matches_nichol_dhariwal_and_squaredcos_cap_v2():
    s = make("cosine")
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731, eq. (17) of arXiv:2102.09672
    closed = torch.tensor([f((i + 1) / N) / f(0) for i in range(N)], dtype=torch.float64)
    # the last betas are capped at 0.999 (eq. 17-18), so compare the uncapped part against the closed form
    assert torch.allclose(s.alphas_cumprod.double()[:990], closed[:990], atol=1e-6, rtol=0)
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    assert torch.allclose(s.alphas_cumprod, ref, atol=1e-6, rtol=0)


def test_sigmoid_matches_jabri_gamma():
    s = make("sigmoid")
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    gamma = lambda t: (sig(3) - sig(6 * t - 3)) / (sig(3) - sig(-3))  # noqa: E731, Jabri et al. 2022 (start=-3, end=3)
    closed = torch.tensor([gamma((i + 1) / N) for i in range(N)], dtype=torch.float64)
    assert torch.allclose(s.alphas_cumprod.double()[:-1], closed[:-1], atol=1e-6, rtol=0)
    assert logsnr_of(s)[-1].item() == pytest.approx(-15.0, abs=1e-2)  # gamma(1) = 0 is clipped to logsnr_min


def test_shifted_cosine_is_cosine_logsnr_plus_resolution_shift():
    t = torch.arange(1, N + 1, dtype=torch.float64) / N
    mid = slice(50, 950)
    plain = make("shifted_cosine", image_size=64)  # image_size == base_resolution: no shift
    # -2 log tan(pi t / 2) with t mapped onto [atan(exp(-15/2)), atan(exp(15/2))] (eq. 4 of arXiv:2301.11093)
    t_min, t_max = math.atan(math.exp(-7.5)), math.atan(math.exp(7.5))
    closed = -2 * torch.log(torch.tan(t_min + t * (t_max - t_min)))
    assert torch.allclose(logsnr_of(plain)[mid], closed[mid], atol=2e-3)
    shifted = make("shifted_cosine", image_size=28)
    shift = 2 * math.log(64 / 28)
    assert torch.allclose(
        logsnr_of(shifted)[mid] - logsnr_of(plain)[mid], torch.full((900,), shift, dtype=torch.float64), atol=2e-3
    )


def test_interpolated_shifted_cosine_interpolates_between_shifts():
    s = make("interpolated_shifted_cosine")
    t = torch.arange(1, N + 1, dtype=torch.float64) / N
    base = logsnr_cosine(t)
    expected = base + t * 2 * math.log(64 / 128) + (1 - t) * 2 * math.log(64 / 32)
    assert torch.allclose(logsnr_of(s)[50:950], expected[50:950], atol=2e-3)


def test_scaled_linear_and_sigmoid_betas_match_their_closed_forms_and_diffusers():
    sqrt_betas = torch.linspace(0.00085**0.5, 0.012**0.5, N, dtype=torch.float64)  # latent diffusion's betas
    s = make("scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.allclose(s.betas.double(), sqrt_betas**2, atol=1e-9, rtol=0)
    ref = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)

    sig = torch.tensor(
        [1 / (1 + math.exp(-x)) for x in torch.linspace(-6, 6, N, dtype=torch.float64).tolist()], dtype=torch.float64
    )
    s = make("sigmoid_betas")
    assert torch.allclose(s.betas.double(), 1e-4 + (0.02 - 1e-4) * sig, atol=1e-9, rtol=0)  # GeoDiff's betas
    ref = DDPMScheduler(beta_schedule="sigmoid")
    assert torch.allclose(s.alphas_cumprod, ref.alphas_cumprod, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "beta_schedule,noise_schedule",
    [
        ("linear", "linear"),
        ("scaled_linear", "scaled_linear"),
        ("squaredcos_cap_v2", "cosine"),
        ("sigmoid", "sigmoid_betas"),
    ],
)
def test_beta_schedule_names_the_noise_schedule(beta_schedule, noise_schedule):
    s = HFDDPMScheduler(beta_schedule=beta_schedule)
    assert s.config.noise_schedule == noise_schedule and s.config.beta_schedule == beta_schedule
    same = HFDDPMScheduler(beta_schedule=beta_schedule, noise_schedule=noise_schedule)
    assert torch.equal(same.alphas_cumprod, s.alphas_cumprod)
    assert torch.equal(make(noise_schedule).alphas_cumprod, s.alphas_cumprod)
    assert HFDDPMScheduler().config.noise_schedule == "cosine"  # neither given


def test_dynamic_thresholding_closed_form():
    s = HFDDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.5, sample_max_value=3.0)
    # per sample: s = median |x_0| limited to [1, 3]; x_0 -> clip(x_0, -s, s) / s
    x0 = torch.tensor([[0.5, -4.0, 2.0, -2.0], [0.1, 0.2, -0.3, 0.9], [10.0, -10.0, 8.0, 9.0]]).reshape(3, 1, 2, 2)
    expected = torch.tensor([[0.25, -1.0, 1.0, -1.0], [0.1, 0.2, -0.3, 0.9], [1.0, -1.0, 1.0, 1.0]]).reshape(
        3, 1, 2, 2
    )
    assert torch.allclose(s._dynamic_threshold(x0), expected)


@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
def test_schedules_are_monotone_and_valid(schedule):
    ab = make(schedule).alphas_cumprod
    assert ab.dtype == torch.float32 and ab.shape == (N,)
    assert torch.all(ab[1:] < ab[:-1]) and 0 < ab[-1] < ab[0] < 1


def test_zero_terminal_snr():
    s = make("cosine", rescale_betas_zero_snr=True)
    ref = make("linear", rescale_betas_zero_snr=True)
    assert s.alphas_cumprod[-1].item() == 0.0 and ref.alphas_cumprod[-1].item() == 0.0
    assert s.alphas_cumprod[0].item() == pytest.approx(make("cosine").alphas_cumprod[0].item(), abs=1e-6)
    ddpm = DDPMScheduler(beta_schedule="linear", rescale_betas_zero_snr=True)
    assert torch.allclose(ref.alphas_cumprod, ddpm.alphas_cumprod, atol=1e-6, rtol=0)
    t = torch.tensor([N - 1])
    assert s.snr(t).item() == 0.0
    assert s.loss_weights(t, snr_gamma=5.0).item() == 1.0


# --- training helpers ------------------------------------------------------------------------------------------
def test_add_noise_and_velocity_match_diffusers():
    s = make("linear", prediction_type="v_prediction")
    ref = DDPMScheduler(beta_schedule="linear")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(s.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-6)
    assert torch.allclose(s.get_velocity(x0, noise, t), ref.get_velocity(x0, noise, t), atol=1e-6)
    ab = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(s.add_noise(x0, noise, t), ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_target_and_conversion_round_trip(prediction_type):
    s = make("cosine", prediction_type=prediction_type)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(1, 2, 4, 4, generator=g), torch.randn(1, 2, 4, 4, generator=g)
    expected = {"epsilon": noise, "sample": x0, "v_prediction": s.get_velocity(x0, noise, torch.tensor([300]))}
    for t in (1, 300, 900):
        tt = torch.tensor([t])
        x_t = s.add_noise(x0, noise, tt)
        target = s.get_target(x0, noise, tt)
        if t == 300:
            assert torch.equal(target, expected[prediction_type])
        pred_x0, pred_eps = s.predict_start_and_noise(target, t, x_t)
        assert torch.allclose(pred_x0, x0, atol=2e-4) and torch.allclose(pred_eps, noise, atol=2e-4)


def test_snr_matches_compute_snr_and_closed_form():
    s = make("cosine")
    t = torch.tensor([0, 1, 250, 500, 998])
    assert torch.allclose(s.snr(t), compute_snr(s, t), rtol=1e-5)
    ab = s.alphas_cumprod[t]
    assert torch.allclose(s.snr(t), ab / (1 - ab))


@pytest.mark.parametrize(
    "prediction_type,weight",
    [
        ("epsilon", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g)) / snr),
        ("sample", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g))),
        ("v_prediction", lambda snr, g: torch.minimum(snr, torch.full_like(snr, g)) / (snr + 1)),
    ],
)
def test_min_snr_weights(prediction_type, weight):
    s = make("cosine", prediction_type=prediction_type)
    t = torch.tensor([0, 100, 400, 700, 999])
    snr = s.snr(t)
    assert torch.allclose(s.loss_weights(t, 5.0), weight(snr, 5.0))
    assert torch.equal(s.loss_weights(t, None), torch.ones(5))
    # at high SNR (t=0) the epsilon weight is gamma / snr, at low SNR it is 1
    if prediction_type == "epsilon":
        assert s.loss_weights(t, 5.0)[0].item() == pytest.approx(5.0 / snr[0].item(), rel=1e-5)
        assert s.loss_weights(t, 5.0)[-1].item() == 1.0
    with pytest.raises(ValueError, match="snr_gamma"):
        s.loss_weights(t, 0.0)


# --- sampling --------------------------------------------------------------------------------------------------
def dummy_model(x, t):
    return 0.3 * x + 0.01 * (int(t) / N)


def run_loop(scheduler, steps, seed=0, **step_kwargs):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 4, 4, generator=g)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(dummy_model(x, t), t, x, generator=g, **step_kwargs).prev_sample
    return x


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [10, 50])
def test_timestep_spacing_matches_ddim(spacing, steps):
    s = make("cosine", timestep_spacing=spacing)
    ref = DDIMScheduler.from_config(s.config)
    s.set_timesteps(steps)
    ref.set_timesteps(steps)
    assert torch.equal(s.timesteps, ref.timesteps)


@pytest.mark.parametrize("clip_sample", [False, True])
@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_eta0_loop_equals_diffusers_ddim(prediction_type, clip_sample):
    s = make("cosine", prediction_type=prediction_type, clip_sample=clip_sample)
    ref = DDIMScheduler.from_config(s.config)
    assert ref.config.clip_sample == clip_sample
    assert torch.allclose(run_loop(s, 20, eta=0.0), run_loop(ref, 20), atol=1e-5)


def test_eta1_full_loop_equals_diffusers_ddpm_ancestral():
    s = make("linear", prediction_type="epsilon", clip_sample=False)
    ref = DDPMScheduler.from_config(s.config)
    assert not ref.config.clip_sample
    ours, theirs = run_loop(s, N, eta=1.0), run_loop(ref, N)
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_full_loop_pinned_sums():
    ddim = run_loop(make("cosine"), 50, eta=0.0)
    ddpm = run_loop(make("cosine"), 50)  # no eta: the config's, 1.0
    assert torch.equal(ddpm, run_loop(make("cosine"), 50, eta=1.0))
    assert ddim.sum().item() == pytest.approx(-0.056212, abs=1e-4)
    assert ddim.abs().mean().item() == pytest.approx(0.514430, abs=1e-5)
    assert ddpm.sum().item() == pytest.approx(4.280189, abs=1e-4)
    assert ddpm.abs().mean().item() == pytest.approx(0.451837, abs=1e-5)


def test_same_generator_same_samples():
    assert torch.equal(run_loop(make("cosine"), 20, eta=1.0, seed=3), run_loop(make("cosine"), 20, eta=1.0, seed=3))
    assert not torch.equal(
        run_loop(make("cosine"), 20, eta=1.0, seed=3), run_loop(make("cosine"), 20, eta=1.0, seed=4)
    )


def test_return_dict_equivalence():
    s = make("cosine")
    s.set_timesteps(10)
    x = torch.randn(1, 1, 4, 4, generator=torch.manual_seed(0))
    t = s.timesteps[3]
    out = s.step(dummy_model(x, t), t, x, generator=torch.manual_seed(1))
    tup = s.step(dummy_model(x, t), t, x, generator=torch.manual_seed(1), return_dict=False)
    assert torch.equal(out.prev_sample, tup[0]) and torch.equal(out.pred_original_sample, tup[1])


def test_scheduler_contract():
    s = make("cosine")
    x = torch.randn(1, 1, 2, 2)
    assert len(s) == N and s.order == 1 and s.init_noise_sigma == 1.0
    assert s.scale_model_input(x, 5) is x
    assert "DDIMScheduler" in s._compatibles and "DPMSolverMultistepScheduler" in s._compatibles


# --- interop with diffusers' solvers -------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", NOISE_SCHEDULES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_diffusers_solvers_from_config_share_the_exact_schedule(schedule, solver):
    s = make(schedule)
    other = solver.from_config(s.config)
    assert torch.equal(other.alphas_cumprod, s.alphas_cumprod)
    assert other.config.prediction_type == s.config.prediction_type
    assert other.config.timestep_spacing == s.config.timestep_spacing


@pytest.mark.parametrize("solver", SOLVERS)
def test_zero_snr_schedule_reaches_diffusers_solvers(solver):
    s = make("cosine", rescale_betas_zero_snr=True)
    other = solver.from_config(s.config)
    # Euler replaces the exact zero at the end by 2**-24 to keep sigma finite
    assert torch.allclose(other.alphas_cumprod[:-1], s.alphas_cumprod[:-1], atol=1e-6, rtol=0)
    assert other.alphas_cumprod[-1] <= 2**-24


@pytest.mark.parametrize("solver", SOLVERS)
def test_round_trip_through_diffusers_config(solver):
    s = make("sigmoid", prediction_type="epsilon")
    back = HFDDPMScheduler.from_config(solver.from_config(s.config).config)
    assert torch.equal(back.alphas_cumprod, s.alphas_cumprod)
    assert back.config.prediction_type == "epsilon"


def test_save_load_round_trip(tmp_path):
    s = make("shifted_cosine", image_size=28, prediction_type="sample")
    s.save_pretrained(tmp_path)
    loaded = HFDDPMScheduler.from_pretrained(tmp_path)
    assert loaded.config.noise_schedule == "shifted_cosine" and loaded.config.image_size == 28
    assert torch.equal(loaded.alphas_cumprod, s.alphas_cumprod)
    assert torch.equal(run_loop(loaded, 10, eta=1.0), run_loop(s, 10, eta=1.0))
    # the json file is what diffusers' solvers read
    assert torch.equal(DPMSolverMultistepScheduler.from_pretrained(tmp_path).alphas_cumprod, s.alphas_cumprod)


# an older diffusers' DDPM/DDIM config (before 0.10: predict_epsilon, no prediction_type) -> the prediction_type read
PREDICT_EPSILON = [
    ({"predict_epsilon": False}, "sample"),
    ({"predict_epsilon": True}, "epsilon"),
    ({"predict_epsilon": False, "prediction_type": "v_prediction"}, "v_prediction"),
    ({"predict_epsilon": True, "prediction_type": "sample"}, "sample"),
]


def _old_diffusers_config(folder, writer, **keys):
    """``writer``'s scheduler config saved in ``folder`` as diffusers 0.8 wrote it: ``keys`` instead of its
    prediction_type."""
    writer(beta_schedule="squaredcos_cap_v2").save_pretrained(folder)
    path = folder / "scheduler_config.json"
    config = {k: v for k, v in json.loads(path.read_text()).items() if k != "prediction_type"}
    path.write_text(json.dumps({**config, **keys, "tensor_format": "pt", "_diffusers_version": "0.8.0"}))
    return folder


@pytest.mark.parametrize("writer", [DDPMScheduler, DDIMScheduler])
@pytest.mark.parametrize("keys, prediction_type", PREDICT_EPSILON)
def test_predict_epsilon_of_older_diffusers_is_read_as_prediction_type(keys, prediction_type, writer, tmp_path):
    folder = _old_diffusers_config(tmp_path / "old", writer, **keys)
    loaded = HFDDPMScheduler.from_pretrained(folder)
    configured = HFDDPMScheduler.from_config(HFDDPMScheduler.load_config(folder))
    # a diffusers scheduler loaded from it keeps predict_epsilon aside and takes its default prediction_type
    live = HFDDPMScheduler.from_config(writer.from_pretrained(folder).config)
    for scheduler in (loaded, configured, live):
        assert scheduler.config.prediction_type == prediction_type
        assert scheduler.config.noise_schedule == "cosine"  # the rest of the config as the writer's
        assert scheduler.config.eta == (0.0 if writer is DDIMScheduler else 1.0)
        assert "predict_epsilon" not in scheduler.config  # read, so not saved again
    loaded.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "scheduler_config.json").read_text())
    assert saved["prediction_type"] == prediction_type and "predict_epsilon" not in saved


def test_predict_epsilon_is_said_and_must_be_true_or_false(tmp_path, caplog):
    folder = _old_diffusers_config(tmp_path / "old", DDPMScheduler, predict_epsilon=False)
    HFDDPMScheduler.from_pretrained(folder)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict_epsilon")]
    assert said == ["predict_epsilon=False (diffusers before 0.10) is read as prediction_type='sample'."]
    folder = _old_diffusers_config(tmp_path / "bad", DDPMScheduler, predict_epsilon=0)
    with pytest.raises(ValueError, match=r"^predict_epsilon=0 is not valid: true \(prediction_type epsilon\) or"):
        HFDDPMScheduler.from_pretrained(folder)


# --- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"noise_schedule": "quadratic"}, "noise_schedule='quadratic'.*'linear', 'cosine'"),
        ({"prediction_type": "x0"}, "prediction_type='x0'.*'epsilon', 'sample', 'v_prediction'"),
        ({"timestep_spacing": "even"}, "timestep_spacing='even'.*'leading', 'trailing', 'linspace'"),
        ({"noise_schedule": "shifted_cosine"}, "needs image_size"),
        ({"trained_betas": [0.1] * 5}, "trained_betas has 5 values but num_train_timesteps=1000"),
        ({"beta_schedule": "laplace"}, "beta_schedule='laplace' is not valid: choose one of .*'squaredcos_cap_v2'"),
        ({"beta_schedule": "linear", "noise_schedule": "cosine"}, "noise_schedule='cosine' contradicts beta_schedule"),
        (
            {"variance_type": "learned_log"},
            "variance_type='learned_log' is not valid: choose one of .*'learned_range'",
        ),
        ({"noise_schedule": "linear", "beta_start": 0.02, "beta_end": 0.01}, r"beta_start, beta_end=\(0.02, 0.01\)"),
        ({"noise_schedule": "linear", "beta_end": 2.0}, r"beta_end=\(0.0001, 2.0\) is not valid: 0 < beta_start"),
        ({"beta_schedule": "sigmoid", "beta_start": 0.0}, "0 < beta_start < beta_end < 1"),
        (
            {"noise_schedule": "sigmoid", "logsnr_min": 5.0, "logsnr_max": -5.0},
            r"logsnr_min, logsnr_max=\(5.0, -5.0\) is not valid: min < max",
        ),
        ({"noise_schedule": "sigmoid", "sigmoid_tau": 0.0}, "sigmoid_start, sigmoid_end, sigmoid_tau=.*tau > 0"),
        ({"noise_schedule": "shifted_cosine", "image_size": -28}, "image_size=-28 is not valid: a positive number"),
        ({"clip_sample_range": 0.0}, "clip_sample_range=0.0 is not valid: > 0"),
        ({"dynamic_thresholding_ratio": 1.5}, r"dynamic_thresholding_ratio=1.5 is not valid: a quantile in \(0, 1\]"),
        ({"steps_offset": -1}, "steps_offset=-1 is not valid: an integer >= 0"),
        ({"eta": -0.5}, r"eta=-0.5 is not valid: a number >= 0 \(0 = DDIM, 1 = ancestral DDPM\)"),
        # strings (e.g. from a hand-edited config) are named, not compared
        ({"eta": "1"}, r"^eta='1' is not valid: a number >= 0 \(0 = DDIM, 1 = ancestral DDPM\)\.$"),
        ({"eta": float("nan")}, r"eta=nan is not valid: a number >= 0"),
        ({"clip_sample_range": "1"}, "clip_sample_range='1' is not valid: > 0"),
        ({"sample_max_value": None}, "sample_max_value=None is not valid: > 0"),
        ({"noise_schedule": "linear", "beta_end": "0.02"}, r"beta_start, beta_end=\(0.0001, '0.02'\) is not valid"),
        ({"noise_schedule": "sigmoid", "logsnr_max": "15"}, r"logsnr_min, logsnr_max=\(-15.0, '15'\) is not valid"),
    ],
)
def test_bad_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HFDDPMScheduler(**kwargs)


def test_step_errors():
    s = make("cosine")
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="num_inference_steps=0 must be between 1 and"):
        s.set_timesteps(0)
    with pytest.raises(ValueError, match="Pass one of num_inference_steps"):
        s.set_timesteps(5, timesteps=[10, 0])
    with pytest.raises(ValueError, match=r"strictly descending integers in \[0, 999\].*got \[10, 20\]"):
        s.set_timesteps(timesteps=[10, 20])
    with pytest.raises(ValueError, match=r"got \[1000, 5\]"):
        s.set_timesteps(timesteps=[1000, 5])
    s.set_timesteps(5)
    with pytest.raises(ValueError, match=r"eta=-1.0 is not valid: a number >= 0 \(0 = DDIM"):
        s.step(x, s.timesteps[0], x, eta=-1.0)
    with pytest.raises(ValueError, match=r"eta='0' is not valid: a number >= 0 \(0 = DDIM"):
        s.step(x, s.timesteps[0], x, eta="0")
    with pytest.raises(ValueError, match="either generator or variance_noise"):
        s.step(x, s.timesteps[0], x, generator=torch.manual_seed(0), variance_noise=x)
    learned = make("cosine", variance_type="learned_range")
    with pytest.raises(ValueError, match="variance_type='learned_range' needs the model's variance"):
        learned.step(x, 500, x)


@pytest.mark.parametrize("schedule", ["shifted_cosine", "interpolated_shifted_cosine"])
def test_large_positive_shift_keeps_every_beta_positive(schedule):
    # at 16 px the shift is +2 log 4 and the log-SNR leaves [-15, 15]: the clip applies before the shift
    s = HFDDPMScheduler(noise_schedule=schedule, image_size=16)
    assert torch.all(s.betas > 0) and s.alphas_cumprod[0] < 1


# --- hardening (issue #10) -----------------------------------------------------------------------------------------
def test_impossible_trained_betas_name_their_indices_and_values():
    betas = [0.01] * N
    betas[3], betas[7], betas[9] = 1.5, -0.1, float("nan")
    with pytest.raises(ValueError, match=r"finite and in \(0, 1\).*3 are not: \[3\]=1.5, \[7\]=-0.1, \[9\]=nan\."):
        HFDDPMScheduler(trained_betas=betas)
    betas = [0.01] * (N - 1) + [1.0]  # zero terminal SNR: the last beta may be 1
    assert HFDDPMScheduler(trained_betas=betas, prediction_type="v_prediction").alphas_cumprod[-1] == 0


@pytest.mark.parametrize("value", [-5, 0, "1000", 1.5, True])
def test_num_train_timesteps_must_be_a_positive_integer(value):
    with pytest.raises(
        ValueError, match=f"num_train_timesteps={value!r} is not valid: a positive integer \\(e.g. 1000\\)"
    ):
        HFDDPMScheduler(num_train_timesteps=value)


@pytest.mark.parametrize("gamma", [float("nan"), "5", 0.0])
def test_loss_weights_refuse_a_gamma_that_is_not_a_positive_number(gamma):
    with pytest.raises(ValueError, match=r"snr_gamma must be a number > 0 \(5.0 is the paper's choice\), got"):
        HFDDPMScheduler().loss_weights(torch.tensor([5]), gamma)
