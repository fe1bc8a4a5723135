import json

import numpy as np
import pytest
import torch
from scipy import linalg
from torch import nn

import hfddpm
from hfddpm.evaluation import (
    METRIC_REGISTRY,
    METRICS,
    SCHEDULERS,
    MetricUnavailableError,
    classify_digits,
    compute_metrics,
    digit_classifier_info,
    digit_metrics,
    feature_statistics,
    fid_kid,
    find_inception_weights,
    frechet_distance,
    generate_samples,
    grid_shape,
    load_digit_classifier,
    load_dinov2,
    load_mnist_5k,
    load_reference,
    make_scheduler,
    parse_metrics,
)
from hfddpm.evaluation.digits import DIGIT_CLASSIFIER_WEIGHTS


@pytest.fixture(scope="module", autouse=True)
def _cache_in_tmp(tmp_path_factory):
    # reference statistics are computed once for the module, never in the user's ~/.cache
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("HFDDPM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def heldout():
    return load_mnist_5k("heldout")


class StandInFeatures(nn.Module):
    """A small fixed random network in place of Inception-v3."""

    num_features = 6

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 5 * 5, self.num_features)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=generator) * 0.3

    def forward(self, images):
        return self.fc(torch.tanh(self.conv(images)).flatten(1))


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real))


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance, FID / KID code path
# ---------------------------------------------------------------------------------------------------------------------
def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # diagonal covariances: sum over dimensions
    mu1, mu2 = np.array([0.0, 1.0]), np.array([1.0, 1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([4.0, 16.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(1.0 + (1 - 2) ** 2 + (2 - 4) ** 2)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-10)
    with pytest.raises(ValueError, match="differ in shape"):
        frechet_distance(mu1, s1, [0.0], [[1.0]])


def test_frechet_distance_of_rank_deficient_covariances():
    x = np.random.default_rng(0).normal(size=(5, 20))  # 5 samples in 20 dims: singular covariance
    stats = feature_statistics(x)
    assert frechet_distance(*stats, *stats) == pytest.approx(0.0, abs=1e-5)
    assert frechet_distance(*stats, stats[0] + 1.0, stats[1]) == pytest.approx(20.0, rel=1e-6)


def test_fid_with_stand_in_network_matches_scipy():
    generator = torch.Generator().manual_seed(0)
    real = torch.rand(60, 1, 12, 12, generator=generator)
    fake = (torch.rand(50, 1, 12, 12, generator=generator) * 0.8 + 0.1) ** 2
    net = StandInFeatures()
    with torch.no_grad():
        expected = scipy_frechet(net(fake).double().numpy(), net(real).double().numpy())

    fid = fid_kid(fake, real, feature=net, metrics=("fid",), batch_size=16)["fid"]
    assert fid == pytest.approx(expected, rel=1e-6)
    assert fid > 0.01

    # the same number as torchmetrics fed the images and the network directly
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=net)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    assert fid == pytest.approx(float(metric.compute()), rel=1e-6)


def test_kid_with_stand_in_network_matches_unbiased_mmd():
    generator = torch.Generator().manual_seed(1)
    real = torch.rand(40, 1, 12, 12, generator=generator)
    fake = torch.rand(40, 1, 12, 12, generator=generator).sqrt()
    net = StandInFeatures()
    scores = fid_kid(fake, real, feature=net, metrics=("kid",), kid_subsets=1, kid_subset_size=40)
    with torch.no_grad():
        x, y = net(real).double(), net(fake).double()
    d, m = x.shape[1], x.shape[0]

    def k(a, b):  # the polynomial kernel of Binkowski et al. 2018
        return (a @ b.T / d + 1) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = (kxx.sum() - kxx.trace()) / (m * (m - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean()
    assert scores["kid"] == pytest.approx(float(mmd), rel=1e-6)
    assert scores["kid_std"] == pytest.approx(0.0, abs=1e-12)


def test_inception_unavailable_message_names_weights_and_options(tmp_path, hide_package):
    hide_package("torch_fidelity")
    with pytest.raises(MetricUnavailableError) as err:
        find_inception_weights(tmp_path / "missing.pth")
    message = str(err.value)
    assert "pt_inception-2015-12-05-6726825d.pth" in message
    assert "--fid-fallback digits" in message and "--fid-fallback skip" in message
    assert "torch-fidelity" in message


def test_compute_metrics_fid_fallbacks(heldout, hide_package):
    hide_package("torch_fidelity")
    images = heldout[0][::20]  # 50 real digits
    with pytest.raises(MetricUnavailableError, match="torch-fidelity"):
        compute_metrics(images, metrics="fid")

    skipped = compute_metrics(images, metrics="digits,fid,kid", fid_fallback="skip")
    assert not {"fid", "kid", "fid_digits"} & set(skipped) and "fd_digits" in skipped
    assert "torch-fidelity" in skipped["notes"][0]
    # skip leaving no metric at all is refused, not an empty result
    with pytest.raises(ValueError, match=r"nothing left to compute: --fid-fallback skip leaves out \['fid', 'kid'\]"):
        compute_metrics(images, metrics="fid,kid", fid_fallback="skip")

    digits = compute_metrics(images, metrics="digits,fid,kid", fid_fallback="digits")
    assert {"fd_digits", "fid_digits", "kid_digits", "kid_digits_std"} <= set(digits)
    # same features, same reference: torchmetrics' FID equals our scipy FD-digits
    assert digits["fid_digits"] == pytest.approx(digits["fd_digits"], rel=1e-3)


def test_parse_metrics():
    assert parse_metrics("digits, FID,digits") == ("digits", "fid")
    # the --metrics choices, read from the registry
    assert METRICS == (
        *("digits", "fid", "kid", "dinov2", "pr_digits", "pr", "pr_dinov2", "memorization", "spoken_digits", "fad"),
    )
    with pytest.raises(ValueError, match=r"\['digits', 'fid', 'kid', 'dinov2', 'pr_digits', 'pr', 'pr_dinov2',"):
        parse_metrics("digits,is")
    with pytest.raises(FileNotFoundError, match="mnist_5k"):
        load_reference("/nonexistent/folder", 28, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Digit classifier and digit metrics
# ---------------------------------------------------------------------------------------------------------------------
def test_mnist_5k_split():
    train_images, train_labels = load_mnist_5k("train")
    images, labels = load_mnist_5k("heldout")
    assert images.shape == (1000, 1, 28, 28) and train_images.shape == (4000, 1, 28, 28)
    assert torch.bincount(labels).tolist() == [100] * 10
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    with pytest.raises(ValueError, match="'train', 'heldout'"):
        load_mnist_5k("test")


def test_shipped_classifier_is_small_and_matches_its_json(heldout):
    assert DIGIT_CLASSIFIER_WEIGHTS.stat().st_size < 1_000_000
    info = digit_classifier_info()
    assert info["num_heldout"] == 1000 and info["heldout_accuracy"] > 0.95
    _, probs = classify_digits(heldout[0], load_digit_classifier())
    accuracy = float((probs.argmax(-1) == heldout[1]).float().mean())
    assert accuracy == pytest.approx(info["heldout_accuracy"], abs=0.003)


def test_digit_metrics_on_real_heldout_digits(heldout):
    images, labels = heldout
    metrics = digit_metrics(images, labels)
    info = digit_classifier_info()
    # the reference set itself: distance ~0
    assert metrics["fd_digits"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["label_accuracy"] == pytest.approx(info["heldout_accuracy"], abs=0.003)
    assert metrics["confident_share"] > 0.9
    assert metrics["classes_covered"] == 10 and sum(metrics["class_histogram"]) == 1000
    assert all(85 <= count <= 115 for count in metrics["class_histogram"])

    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    assert digit_metrics(images, shuffled)["label_accuracy"] == pytest.approx(0.1, abs=0.04)


def test_fd_digits_grows_with_noise(heldout):
    images = heldout[0]
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    distances = [digit_metrics((images + sigma * noise).clamp(0, 1))["fd_digits"] for sigma in (0.0, 0.15, 0.3, 0.6)]
    assert distances == sorted(distances) and distances[0] < 1e-4 < distances[1]
    # other real digits (the training split) are closer than heavily corrupted held-out digits
    train = load_mnist_5k("train")[0][::8]
    assert digit_metrics(train)["fd_digits"] < distances[2]


def test_digit_metrics_other_resolution_and_reference_cache(heldout, tmp_path):
    images32 = torch.nn.functional.interpolate(heldout[0], size=32, mode="bilinear", antialias=True).clamp(0, 1)
    metrics = digit_metrics(images32, cache_dir=tmp_path)
    assert metrics["fd_digits"] == pytest.approx(0.0, abs=1e-4)  # the reference goes through the same resize
    (cached,) = (tmp_path / "digits").glob("mnist_5k-heldout-32px-*.npz")
    assert digit_metrics(images32, cache_dir=tmp_path) == metrics
    assert np.load(cached)["mu"].shape == (128,)


def test_digit_metrics_bad_inputs(heldout):
    images = heldout[0][:10]
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        digit_metrics(images.expand(-1, 3, -1, -1))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        digit_metrics(images * 2 - 1)
    with pytest.raises(ValueError, match="3 labels for 10 images"):
        digit_metrics(images, torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------------------------------------------------------------
# FD-DINOv2
# ---------------------------------------------------------------------------------------------------------------------
def test_dinov2_without_transformers_says_so(hide_package):
    hide_package("transformers")  # it is in the dev extra
    with pytest.raises(MetricUnavailableError, match="transformers"):
        load_dinov2()


def test_fd_dinov2_with_a_tiny_local_model(tmp_path, heldout):
    from transformers import Dinov2Config, Dinov2Model

    from hfddpm.evaluation import fd_dinov2

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    Dinov2Model(config).save_pretrained(tmp_path / "dinov2")
    model = load_dinov2(tmp_path / "dinov2")
    images = heldout[0][::25]
    assert fd_dinov2(images, images, model) == pytest.approx(0.0, abs=1e-4)
    assert fd_dinov2((images + 0.3 * torch.rand_like(images)).clamp(0, 1), images, model) > 1e-3
    with pytest.raises(MetricUnavailableError, match="--dinov2-model"):
        load_dinov2(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------------
# Sampling helpers and the model card
# ---------------------------------------------------------------------------------------------------------------------
def test_make_scheduler_keeps_the_schedule_and_rejects_unknown_names():
    base = hfddpm.HFDDPMScheduler(noise_schedule="cosine", prediction_type="v_prediction")
    for name in ("ddpm", "ddim", "dpmsolver++", "unipc", "euler", "heun", "hfddpm"):
        scheduler = make_scheduler(name, base.config)
        torch.testing.assert_close(scheduler.alphas_cumprod, base.alphas_cumprod)
        assert scheduler.config.prediction_type == "v_prediction"
    assert make_scheduler("DPMSolver++", base.config).config.algorithm_type == "dpmsolver++"
    with pytest.raises(ValueError, match="Unknown scheduler 'dpm'.*'dpmsolver\\+\\+'") as err:
        make_scheduler("dpm", base.config)
    assert all(name in str(err.value) for name in SCHEDULERS)


def test_grid_shape():
    assert grid_shape(64) == (8, 8) and grid_shape(12) == (3, 4) and grid_shape(7) == (1, 7)
    assert grid_shape(20, columns=10) == (2, 10)
    with pytest.raises(ValueError, match="multiple of columns=3"):
        grid_shape(10, columns=3)


def test_generate_samples_is_reproducible_and_in_range():
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16, num_class_embeds=11)
    pipe = hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler())
    labels = torch.arange(5) % 10
    first = generate_samples(pipe, 5, batch_size=2, num_inference_steps=2, class_labels=labels, progress=False)
    again = generate_samples(pipe, 5, batch_size=2, num_inference_steps=2, class_labels=labels, progress=False)
    assert first.shape == (5, 1, 16, 16) and 0.0 <= float(first.min()) and float(first.max()) <= 1.0
    torch.testing.assert_close(first, again)
    with pytest.raises(ValueError, match="3 class_labels for num_images=5"):
        generate_samples(pipe, 5, class_labels=[1, 2, 3], progress=False)
    # with a seed per image, an image is the same whatever the batch size or the split between processes
    seeded = dict(num_inference_steps=2, progress=False)
    whole = generate_samples(pipe, 5, batch_size=5, class_labels=labels, image_seeds=[7, 8, 9, 10, 11], **seeded)
    even = generate_samples(pipe, 3, batch_size=2, class_labels=labels[0::2], image_seeds=[7, 9, 11], **seeded)
    odd = generate_samples(pipe, 2, batch_size=1, class_labels=labels[1::2], image_seeds=[8, 10], **seeded)
    torch.testing.assert_close(whole[0::2], even, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole[1::2], odd, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2 image_seeds for num_images=5"):
        generate_samples(pipe, 5, image_seeds=[1, 2], progress=False)


def test_metric_registry():
    # every metric that compute_metrics returns is registered with a label and a direction
    names = ["fd_digits", "confident_share", "classes_covered", "label_accuracy", "fid", "kid", "kid_std"]
    names += ["fid_digits", "kid_digits", "kid_digits_std", "fd_dinov2", "inception_score"]
    names += ["precision_digits", "recall_digits", "precision", "recall", "precision_dinov2", "recall_dinov2"]
    names += ["memorization_share", "memorization_share_pixels", "memorization_share_features"]
    names += ["fd_spoken_digits", "spoken_classes_covered", "spoken_digit_accuracy", "fad"]
    assert set(METRIC_REGISTRY) == set(names)
    assert METRIC_REGISTRY["fd_digits"].direction == "lower is better" and METRIC_REGISTRY["kid_std"].direction == ""
    assert METRIC_REGISTRY["label_accuracy"].higher_is_better and "labels" in METRIC_REGISTRY["label_accuracy"].needs
    for metric in METRIC_REGISTRY.values():
        assert (metric.choice is None) == (metric.compute is None), metric.name
    # evaluation writes no cards itself: the old name is hfddpm.hub's function
    import hfddpm.evaluation
    import hfddpm.hub

    assert hfddpm.evaluation.update_model_card is hfddpm.hub.update_model_card


@pytest.mark.slow
def test_train_digit_classifier_script_writes_weights_and_json(tmp_path):
    import sys

    from safetensors.torch import load_file

    sys.path.insert(0, str(DIGIT_CLASSIFIER_WEIGHTS.parents[2] / "training"))
    try:
        import train_digit_classifier
    finally:
        sys.path.pop(0)
    args = train_digit_classifier.parse_args(["--output_dir", str(tmp_path), "--epochs", "1"])
    train_digit_classifier.main(args)
    info = json.loads((tmp_path / "digit_classifier.json").read_text())
    assert info["num_heldout"] == 1000 and 0.1 < info["heldout_accuracy"] <= 1.0
    model = load_digit_classifier(tmp_path / "digit_classifier.safetensors")
    assert set(load_file(str(tmp_path / "digit_classifier.safetensors"))) == set(model.state_dict())


def test_classifier_weights_load_frozen_and_a_missing_file_names_the_fix(tmp_path):
    from safetensors.torch import save_file

    from hfddpm.evaluation import DigitClassifier, load_spoken_digit_classifier
    from hfddpm.evaluation.small_cnn import load_weights

    trained = DigitClassifier()
    torch.nn.init.normal_(trained.fc2.weight, generator=torch.Generator().manual_seed(0))
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    for model in (
        load_digit_classifier(tmp_path / "w.safetensors"),
        load_weights(DigitClassifier(), tmp_path / "w.safetensors", "x", "y"),
    ):
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        loaded, expected = model.state_dict(), trained.state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected)
    with pytest.raises(FileNotFoundError) as digits:
        load_digit_classifier(tmp_path / "missing.safetensors")
    assert str(digits.value) == (
        f"Digit classifier weights not found at {tmp_path / 'missing.safetensors'}; train them with `python"
        " training/train_digit_classifier.py` (writes hfddpm/evaluation/digit_classifier.safetensors)."
    )
    with pytest.raises(FileNotFoundError, match="Spoken-digit classifier weights not found at .*nope.*train_spoken"):
        load_spoken_digit_classifier(tmp_path / "nope.safetensors")


def test_small_cnn_fit_learns_a_separable_task_and_keeps_the_shipped_layouts():
    from hfddpm.evaluation import DigitClassifier, SpokenDigitClassifier
    from hfddpm.evaluation.small_cnn import SmallCNN, accuracy, fit

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 1, 16, 16, generator=generator) * 0.2
    labels = torch.arange(64) % 2
    images[labels == 1, :, 4:12, 4:12] += 0.8  # class 1: a bright square
    torch.manual_seed(0)
    model = fit(
        SmallCNN(4, 2, mean=0.5, std=0.5),
        images,
        labels,
        epochs=8,
        batch_size=16,
        learning_rate=1e-2,
        weight_decay=0.0,
        generator=generator,
    )
    assert not model.training and accuracy(model, images, labels) == 1.0
    # the shipped weights load into the shared network (same parameter names and shapes)
    assert DigitClassifier().num_features == 128 and SpokenDigitClassifier().num_features == 64


def test_grey_metrics_of_a_colour_pipeline_fail_before_sampling(monkeypatch):
    from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
    from hfddpm.evaluation import evaluate as evaluate_module

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before the metrics were checked")

    monkeypatch.setattr(evaluate_module, "generate_samples", no_sampling)
    pipe = HFDDPMPipeline(unet=build_unet("tiny", in_channels=3, out_channels=3), scheduler=HFDDPMScheduler())
    with pytest.raises(
        ValueError, match=r"The digits metrics score grey \(1-channel\) images; this pipeline makes 3-channel images"
    ):
        evaluate_module.evaluate_pipeline(pipe, num_images=1000, metrics="digits")


def test_sampling_progress_counts_the_denoising_steps_of_every_batch(capsys):
    from diffusers import HeunDiscreteScheduler

    from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
    from hfddpm.evaluation.sampling import generate_samples

    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    pipe = HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler())
    generate_samples(pipe, 3, batch_size=2, num_inference_steps=4)
    assert "8/8 [" in capsys.readouterr().err.split("\r")[-1]  # 2 batches x 4 steps
    pipe.scheduler = HeunDiscreteScheduler.from_config(pipe.scheduler.config)
    generate_samples(pipe, 3, batch_size=2, num_inference_steps=4)
    last = capsys.readouterr().err.split("\r")[-1]
    assert "14/14 [" in last and "3/3 images" in last  # Heun: 2 x 4 - 1 model steps per batch


FID_ON_RANK_0 = """
import os, sys, time, torch, torch.distributed as dist
from torch import nn
from hfddpm.evaluation.inception import fid_kid

class Flat(nn.Module):
    num_features = 16
    def forward(self, x):
        return x.flatten(1)[:, :16]

rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:" + sys.argv[2], rank=rank, world_size=2)
if rank == 0:  # training gathers the samples and evaluates on the main process only
    g = torch.Generator().manual_seed(0)
    fake, real = torch.rand(12, 1, 4, 4, generator=g), torch.rand(12, 1, 4, 4, generator=g)
    results = fid_kid(fake, real, feature=Flat(), kid_subsets=2, kid_subset_size=6)
    open(sys.argv[3], "w").write(repr(round(results["fid"], 6)))
else:
    deadline = time.monotonic() + 60
    while not os.path.exists(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.1)
"""


def test_fid_kid_on_one_of_two_processes_does_not_wait_for_the_other(tmp_path):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    script, done = tmp_path / "fid.py", tmp_path / "done.txt"
    script.write_text(FID_ON_RANK_0)
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, str(done)]) for r in (0, 1)]
    try:
        assert procs[0].wait(timeout=120) == 0  # torchmetrics' default sync_on_compute waited here forever
    finally:
        for proc in procs:
            proc.kill()
    assert float(done.read_text()) > 0


@pytest.mark.parametrize("metric", ["digits", "fid", "kid", "pr_digits", "memorization"])
def test_every_metric_refuses_nan_and_out_of_range_images(heldout, hide_package, metric):
    hide_package("torch_fidelity")
    images = heldout[0][:20].clone()
    options = {"metrics": metric, "fid_fallback": "digits", "train_images": heldout[0][100:300], "log_notes": False}
    images[[3, 7]] = float("nan")
    images[9, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="^3 of the 20 samples hold NaN or inf values: the model diverged"):
        compute_metrics(images, **options)
    for scaled, shown in ((heldout[0][:20] * 2 - 1, r"\[-1, 1\]"), (heldout[0][:20] * 255, r"\[0, 255\]")):
        with pytest.raises(ValueError, match=rf"score samples as floats in \[0, 1\]; got values in {shown}"):
            compute_metrics(scaled, **options)
    if metric == "memorization":  # the training images too
        with pytest.raises(ValueError, match=r"score training images as floats in \[0, 1\]"):
            compute_metrics(heldout[0][:20], **{**options, "train_images": heldout[0][100:300] * 2 - 1})


def test_frechet_distances_and_their_intervals_are_never_negative(heldout, hide_package):
    hide_package("torch_fidelity")
    # equal sets: the formula gives round-off around 0, reported as 0
    features = np.random.default_rng(0).standard_normal((30, 40))  # fewer samples than dimensions
    stats = feature_statistics(features)
    assert frechet_distance(*stats, *stats) == 0.0
    # the reference itself: FID and FD-digits are 0 and their intervals start at 0 (not below)
    results = compute_metrics(heldout[0], metrics="digits,fid", fid_fallback="digits", log_notes=False)
    for key in ("fd_digits", "fid_digits"):
        low, high = results["details"][key]["ci95"]
        assert results[key] >= 0.0 and low == 0.0 and high >= 0.0, (key, results[key], low, high)


def test_neighbouring_seeds_share_no_batch():
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    pipe = hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler())
    options = dict(batch_size=2, num_inference_steps=1, progress=False)
    first, second = (generate_samples(pipe, 6, seed=seed, **options) for seed in (0, 1))
    assert not any(torch.allclose(a, b) for a in first for b in second)  # seed + i shared 4 of 6 images
    torch.testing.assert_close(first, generate_samples(pipe, 6, seed=0, **options))


def test_memorization_feature_extractor_is_checked_before_sampling(tmp_path, hide_package):
    from hfddpm.evaluation import check_metrics_available

    hide_package("torch_fidelity", "transformers")
    with pytest.raises(MetricUnavailableError) as err:
        check_metrics_available(("memorization",), feature_extractor="inception", fid_fallback="digits")
    message = str(err.value)
    assert message.startswith("--feature-extractor inception (the memorization check's feature space)")
    assert "('digits', 'inception', 'dinov2')" in message and "--fid-fallback" not in message
    with pytest.raises(MetricUnavailableError, match="^--feature-extractor dinov2 .*--feature-extractor of"):
        check_metrics_available(("memorization",), feature_extractor="dinov2", dinov2_model=tmp_path)
    with pytest.raises(ValueError, match=r"--feature-extractor 'clip' is unknown; choose one of \('digits'"):
        check_metrics_available(("memorization",), feature_extractor="clip")
    assert check_metrics_available(("memorization",), feature_extractor="digits") == []
