"""Numbers that can be compared: bootstrap intervals, the noise rule, precision / recall, the memorisation check."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from hfddpm.evaluation import compute_metrics, feature_statistics, frechet_distance, load_mnist_5k
from hfddpm.evaluation.compare import compare_results, format_comparison
from hfddpm.evaluation.frechet import FrechetToReference
from hfddpm.evaluation.inception import KernelMMD
from hfddpm.evaluation.memorization import memorization_check
from hfddpm.evaluation.precision_recall import knn_radii, pairwise_distances, precision_recall
from hfddpm.evaluation.uncertainty import bootstrap_interval, differs_beyond_noise, fingerprint, improves


@pytest.fixture(scope="module")
def digits():
    return load_mnist_5k("train")[0], load_mnist_5k("heldout")[0]


# ---------------------------------------------------------------------------------------------------------------------
# The bootstrap and the noise rule
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d", [(300, 6), (40, 64)])  # more samples than dimensions, and fewer
def test_fast_frechet_matches_the_scipy_formula_on_every_resample(n, d):
    rng = np.random.default_rng(1)
    fake, real = rng.standard_normal((n, d)), 1.5 * rng.standard_normal((500, d)) + 0.2
    fast = FrechetToReference(fake, *feature_statistics(real))
    for index in (None, rng.integers(0, n, n)):
        picked = fake if index is None else fake[index]
        exact = frechet_distance(*feature_statistics(picked), *feature_statistics(real))
        assert fast(index) == pytest.approx(exact, rel=1e-8)


def test_kernel_mmd_matches_the_unbiased_estimator_written_out():
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3)) + 0.5

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / 42
    yy = sum(k(y[i], y[j]) for i in range(9) for j in range(9) if i != j) / 72
    xy = sum(k(a, b) for a in x for b in y) / 63
    assert KernelMMD(x, y)() == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_interval_of_a_mean_has_the_normal_width():
    x = np.random.default_rng(3).standard_normal(2000)
    low, high = bootstrap_interval(lambda idx: x[idx].mean(), len(x), float(x.mean()), num_resamples=1000)
    assert high - low == pytest.approx(2 * 1.96 / math.sqrt(2000), rel=0.1)
    assert low < x.mean() < high
    # the same seed gives the same interval; a share stays inside its bounds
    assert bootstrap_interval(lambda idx: x[idx].mean(), 2000, float(x.mean()), num_resamples=1000) == [low, high]
    ones = np.ones(50)
    assert bootstrap_interval(lambda idx: ones[idx].mean(), 50, 1.0, bounds=(0.0, 1.0)) == [1.0, 1.0]
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        bootstrap_interval(lambda idx: 0.0, 1, 0.0)


def test_noise_rule_on_numbers():
    # asymmetric intervals: the half-widths on the facing sides count (A's upper 3, B's lower 1)
    assert differs_beyond_noise(10.0, [9.0, 13.0], 14.0, [13.0, 20.0]) == (True, 4.0, math.hypot(3.0, 1.0))
    assert differs_beyond_noise(10.0, [9.0, 13.0], 13.0, [12.0, 20.0])[0] is False  # 3 < sqrt(10)
    assert differs_beyond_noise(14.0, [13.0, 20.0], 10.0, [9.0, 13.0]) == (True, -4.0, math.hypot(1.0, 3.0))
    # --keep_best: better by more than the noise, in the metric's direction
    assert improves(7.0, [6.5, 7.5], 8.0, [7.5, 8.5], higher_is_better=False)  # 1 > sqrt(0.5)
    assert not improves(7.5, [7.0, 8.0], 8.0, [7.5, 8.5], higher_is_better=False)  # 0.5 < sqrt(0.5)
    assert not improves(9.0, [8.5, 9.5], 8.0, [7.5, 8.5], higher_is_better=False)  # worse
    assert improves(0.9, [0.85, 0.95], 0.8, [0.75, 0.85], higher_is_better=True)
    assert improves(7.9, None, 8.0, [7.5, 8.5], higher_is_better=False)  # no interval: any improvement


def test_intervals_cover_at_about_the_stated_rate():
    """On a fixed generator (8-d Gaussian features against a fixed reference), 95% intervals of FD from 100-sample
    draws cover the FD's expected value at that sample count about 95% of the time, and a second draw's value falls
    inside the first draw's interval about 83% of the time (two independent draws: P(|Z| < 1.96 / sqrt(2)))."""
    rng = np.random.default_rng(4)
    d, n = 8, 100
    reference = feature_statistics(rng.standard_normal((2000, d)))

    def draw():
        return 0.3 + rng.standard_normal((n, d)) @ np.diag(np.linspace(0.8, 1.2, d))

    expected = np.mean([FrechetToReference(draw(), *reference)() for _ in range(2000)])
    intervals, values = [], []
    for trial in range(120):
        fd = FrechetToReference(draw(), *reference)
        values.append(fd())
        intervals.append(bootstrap_interval(fd, n, values[-1], seed=trial))
    covered = np.mean([low <= expected <= high for low, high in intervals])
    assert 0.88 <= covered <= 1.0, covered
    inside = np.mean([low <= values[i + 1] <= high for i, (low, high) in enumerate(intervals[:-1])])
    assert abs(inside - (2 * stats.norm.cdf(1.96 / math.sqrt(2)) - 1)) < 0.12, inside


def test_fingerprint_tells_reference_sets_apart(digits):
    _, heldout = digits
    assert fingerprint(heldout) == fingerprint(heldout.clone())
    assert fingerprint(heldout)["count"] == 1000 and fingerprint(heldout[1:]) != fingerprint(heldout[:-1])


def test_every_metric_carries_its_details(digits):
    train, heldout = digits
    images = heldout[::10]
    results = compute_metrics(images, metrics="digits,pr_digits,kid,memorization", fid_fallback="digits",
                              train_images=train[::8])  # fmt: skip
    names = ["fd_digits", "confident_share", "classes_covered", "kid_digits", "precision_digits", "recall_digits"]
    names += ["memorization_share", "memorization_share_pixels", "memorization_share_features"]
    for name in names:
        info = results["details"][name]
        assert info["num_samples"] == 100 and info["feature_extractor"], name
        low, high = info["ci95"]
        assert low <= results[name] <= high, name
    reference = results["details"]["fd_digits"]["reference"]
    assert reference == {"name": "mnist_5k heldout", **fingerprint(heldout)}
    assert results["details"]["kid_digits"]["reference"] == reference
    assert results["details"]["fd_digits"]["feature_extractor"].startswith("digit-classifier sha256:")
    json.dumps(results, allow_nan=False)  # metrics.json holds all of it


def test_compare_names_a_file_that_is_not_evaluate_output(tmp_path):
    from hfddpm.evaluation.compare import read_results

    cases = {
        "config.json": (json.dumps({"seed": 0, "num_inference_steps": 20}), "it holds none of the metrics"),
        "list.json": ("[1, 2]", "it holds none of the metrics"),
        "README.md": ("# a card", "JSONDecodeError"),
        "weights.bin": (b"\xb2\x00\xff", "UnicodeDecodeError"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        with pytest.raises(ValueError, match=rf"{path} is not a metrics.json written by `hfddpm evaluate`.*{reason}"):
            read_results(path)
    (tmp_path / "ok.json").write_text(json.dumps({"fd_digits": 1.0}))
    assert read_results(tmp_path / "ok.json") == {"fd_digits": 1.0}


def test_compare_says_whether_two_results_differ_beyond_the_noise():
    def result(fd, ci, n=1000):
        info = {"ci95": ci, "num_samples": n, "feature_extractor": "f", "reference": {"sha256": "r"}}
        return {"fd_digits": fd, "confident_share": 0.5, "details": {"fd_digits": info}}

    rows = compare_results(result(10.0, [9.0, 11.0]), result(12.0, [11.0, 13.0]))
    fd = next(r for r in rows if r["metric"] == "fd_digits")
    assert fd["verdict"] == "A is better beyond the noise" and fd["difference"] == 2.0
    fd = next(r for r in compare_results(result(10.0, [9.0, 11.0]), result(11.0, [10.0, 12.0])))
    assert fd["verdict"] == "within the noise"
    fd = compare_results(result(10.0, [9.0, 11.0]), result(12.0, [11.0, 13.0], n=200))[0]
    assert fd["verdict"].endswith("(not comparable: num_samples differ)")
    # the same reference images under another path: the same fingerprint, comparable
    named = result(12.0, [11.0, 13.0])
    named["details"]["fd_digits"]["reference"] = {"name": "./ref/", "sha256": "r"}
    assert "not comparable" not in compare_results(result(10.0, [9.0, 11.0]), named)[0]["verdict"]
    named["details"]["fd_digits"]["reference"] = {"name": "./ref/", "sha256": "other"}
    assert compare_results(result(10.0, [9.0, 11.0]), named)[0]["verdict"].endswith(
        "(not comparable: reference differ)"
    )
    share = next(r for r in rows if r["metric"] == "confident_share")
    assert share["verdict"] == "no interval: evaluate both again"
    assert "A is better beyond the noise" in format_comparison(rows, "a.json", "b.json")


# ---------------------------------------------------------------------------------------------------------------------
# Precision and recall (Kynkäänniemi et al. 2019)
# ---------------------------------------------------------------------------------------------------------------------
def test_knn_radii_closed_form():
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    # k=1: nearest other point; k=2: second nearest
    assert knn_radii(pairwise_distances(points, points), 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(pairwise_distances(points, points), 2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_precision_recall_closed_forms():
    rng = np.random.default_rng(5)
    real = rng.standard_normal((200, 4))
    assert precision_recall(real, real)[:2] == (1.0, 1.0)  # identical sets
    # collapsed onto one mode: every sample looks real, almost nothing of the variety is covered
    collapsed = real[:1] + 0.01 * rng.standard_normal((100, 4))
    precision, recall, intervals = precision_recall(collapsed, real)
    assert precision == 1.0 and recall < 0.05 and intervals["recall"][1] < 0.1
    # far away: nothing looks real, nothing is covered
    assert precision_recall(real + 100.0, real)[:2] == (0.0, 0.0)
    # a 1-d case by hand: real at 0..9 (k=1 radii 1); samples at 0.5 and 0.6 (inside) and 20 (outside) -> precision
    # 2/3; the samples' k=1 radii are 0.1, 0.1 and 19.4: the ball [0.6, 39.4] covers the real 1..9, not 0 -> recall 0.9
    line = np.arange(10.0)[:, None]
    p, r, _ = precision_recall(np.array([[0.5], [20.0], [0.6]]), line, k=1)
    assert p == pytest.approx(2 / 3) and r == pytest.approx(0.9)
    with pytest.raises(ValueError, match="need more than 3 generated and real samples"):
        precision_recall(real[:3], real)


def test_precision_recall_metrics_on_digit_features(digits):
    train, heldout = digits
    same = compute_metrics(heldout[::5], metrics="pr_digits")
    assert same["precision_digits"] > 0.9 and same["recall_digits"] > 0.8
    ones = heldout[100:200:2]  # fifty 1s only: real-looking, one kind of digit
    one_kind = compute_metrics(ones, metrics="pr_digits")
    assert one_kind["precision_digits"] > 0.9 and one_kind["recall_digits"] < 0.3


# ---------------------------------------------------------------------------------------------------------------------
# Memorisation
# ---------------------------------------------------------------------------------------------------------------------
def test_a_model_that_returns_training_images_is_flagged_and_heldout_images_are_not(digits):
    train, heldout = digits
    pool = train[::4]  # 1000 training images
    picks = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:100]

    def copying_model(n):  # a fake "model": training images, lightly blurred by 8-bit rounding
        return (pool[picks[:n]] * 255).round() / 255

    copied = memorization_check(copying_model(100), pool)
    assert copied["memorization_share"] == 1.0 and copied["details"]["memorization_share"]["ci95"][0] > 0.9
    assert copied["memorization_pairs"][0]["pixel_distance"] < 1e-2
    assert [p["train"] for p in copied["memorization_pairs"]][:3] == [
        int(picks[p["sample"]]) for p in copied["memorization_pairs"][:3]
    ]
    fresh = memorization_check(heldout[::5], pool)  # 200 real digits never trained on
    assert fresh["memorization_share"] <= 0.1 and fresh["details"]["memorization_share"]["quantile"] == 0.05
    # a threshold from explicit held-out images says the same
    explicit = memorization_check(heldout[1::5], pool, heldout=heldout[2::5])
    assert explicit["memorization_share"] <= 0.1
    assert "200 held-out images" in explicit["details"]["memorization_share"]["calibration"]
    with pytest.raises(ValueError, match="differ in shape"):
        memorization_check(heldout[:4, :, :20], pool)
    with pytest.raises(ValueError, match="The memorization metric needs the training images"):
        compute_metrics(heldout[:4], metrics="memorization")


def test_exact_copies_are_flagged_when_the_training_set_holds_duplicates(digits):
    train = digits[0]
    base = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:900]]
    for pool in (base, torch.cat([base, base[:100]])):  # without and with 100 images twice
        for copies in (pool[:100], pool[200:300]):  # duplicated ones and single ones
            result = memorization_check(copies, pool)
            info = result["details"]["memorization_share"]
            assert result["memorization_share"] == 1.0, (len(pool), info)
            assert info["threshold_pixels"] > 0.01 and info["calibration"].startswith("900 distinct training images")
        assert memorization_check(digits[1][:100], pool)["memorization_share"] <= 0.1  # never trained on


# ---------------------------------------------------------------------------------------------------------------------
# The command line: metrics.json, the model card, --compare, the training source of the memorisation check
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture()
def tiny_pipeline(tmp_path, monkeypatch):
    import hfddpm

    monkeypatch.setenv("HFDDPM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    unet = hfddpm.build_unet("tiny", in_channels=1, out_channels=1, sample_size=28)
    path = tmp_path / "pipe"
    hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()).save_pretrained(path)
    return path


def test_evaluate_memorization_card_and_compare(tiny_pipeline, tmp_path, capsys):
    from huggingface_hub import ModelCard

    from hfddpm.cli import main
    from hfddpm.hub import write_model_card
    from hfddpm.training.config import TrainConfig, write_config

    # the run trained on an image folder: training_config.json says so, and the check searches that folder
    folder = tmp_path / "train_images"
    folder.mkdir()
    train, _ = load_mnist_5k("train")
    for i in range(30):
        array = (train[i * 100, 0] * 255).round().to(torch.uint8).numpy()
        Image.fromarray(array, mode="L").save(folder / f"{i:02d}.png")
    write_config(tiny_pipeline / "training_config.json", TrainConfig(train_data_dir=str(folder)), {})
    write_model_card(tiny_pipeline)
    args = ["evaluate", str(tiny_pipeline), "--num-images", "8", "--batch-size", "8", "--num-inference-steps", "2"]
    assert main([*args, "--metrics", "digits,memorization"]) == 0
    results = json.loads((tiny_pipeline / "metrics.json").read_text())
    info = results["details"]["memorization_share"]
    assert info["train_images"] == 30 and info["picture"] == "memorization_pairs.png"
    assert (tiny_pipeline / "memorization_pairs.png").stat().st_size > 1000
    assert 0.0 <= results["memorization_share"] <= 1.0 and len(results["memorization_pairs"]) == 8
    assert results["details"]["fd_digits"]["num_samples"] == 8
    card = ModelCard.load(tiny_pipeline / "README.md").text
    low, high = results["details"]["fd_digits"]["ci95"]
    assert "| 95% interval | Samples |" in card and f"{low:.4g} – {high:.4g}" in card
    assert "![closest samples and training images](memorization_pairs.png)" in card
    assert "reference mnist_5k heldout (1000 images, sha256" in card

    # the source can be overridden, and the search capped
    out = tmp_path / "embedded.json"
    assert main([*args, "--metrics", "memorization", "--train-data-dir", str(folder), "--max-train-images", "20",
                 "--out", str(out), "--no-update-card"]) == 0  # fmt: skip
    assert json.loads(out.read_text())["details"]["memorization_share"]["train_images"] == 20
    assert (tmp_path / "memorization_pairs.png").is_file()  # beside --out: the card (not updated) keeps its own
    # with the card updated and --out elsewhere, the picture goes beside the card that links it
    (tiny_pipeline / "memorization_pairs.png").unlink()
    assert main([*args, "--metrics", "memorization", "--out", str(tmp_path / "elsewhere" / "m.json")]) == 0
    assert (tiny_pipeline / "memorization_pairs.png").is_file()
    assert (
        "![closest samples and training images](memorization_pairs.png)" in (tiny_pipeline / "README.md").read_text()
    )

    # --compare: the same pipeline evaluated with another seed is within the noise on fd_digits
    other = tmp_path / "other.json"
    assert main([*args, "--seed", "1", "--out", str(other), "--no-update-card"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--compare", str(tiny_pipeline), str(other), "--out", str(tmp_path / "cmp.json")]) == 0
    printed = capsys.readouterr().out
    assert "fd_digits" in printed and "noise" in printed
    rows = json.loads((tmp_path / "cmp.json").read_text())["metrics"]
    fd = next(r for r in rows if r["metric"] == "fd_digits")
    assert fd["a"] == results["fd_digits"] and fd["noise"] > 0
    assert main(["evaluate", "--compare", str(tmp_path / "missing"), str(other)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate"]) == 2
    assert "needs a PIPELINE" in capsys.readouterr().err


def test_training_images_of_the_embedded_default_are_its_digits(digits):
    from hfddpm.data import mnist_5k_arrays
    from hfddpm.evaluation.memorization import training_images

    images = training_images({}, 28, 1, max_images=40, seed=3)  # no dataset, no folder: the embedded MNIST-5k
    picked = np.sort(np.random.default_rng(3).choice(5000, 40, replace=False))
    expected = torch.from_numpy(mnist_5k_arrays()[0][picked]).float().div(255).unsqueeze(1)
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)
    assert training_images({}, 32, 3, max_images=2).shape == (2, 3, 32, 32)  # as a 32 px RGB run reads them
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        training_images({"train_data_dir": "/nonexistent"}, 28, 1)


@pytest.mark.parametrize("streaming", [False, True])
def test_memorization_reads_a_dataset_by_name_as_training_does(tmp_path, streaming):
    # --dataset_name goes through datasets.load_dataset, the route of a Hub id (offline: its cache); local parquet here
    from hfddpm.data import load_mnist_5k as embedded_digits
    from hfddpm.evaluation.memorization import training_images

    digits = embedded_digits().select(range(0, 5000, 100)).flatten_indices()  # 50 digits, 5 of each class
    data = tmp_path / "parquet"
    data.mkdir()
    digits.to_parquet(str(data / "train-00000.parquet"))
    settings = {"dataset_name": str(data), "streaming": streaming}
    images = training_images(settings, 28, 1, max_images=50)
    assert images.shape == (50, 1, 28, 28)
    expected = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None] for im in digits["image"]])
    # the same images (in any order): compare them sorted by their pixel sums
    key = lambda x: x.flatten(1).sum(1)  # noqa: E731
    torch.testing.assert_close(images[key(images).argsort()], expected[key(expected).argsort()])


def test_the_memorization_picture_replaces_a_link_and_never_writes_through_it(tmp_path):
    from hfddpm.evaluation.memorization import pairs_picture

    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    (tmp_path / "pipe").mkdir()
    picture = tmp_path / "pipe" / "memorization_pairs.png"
    picture.symlink_to(target)
    images = torch.rand(2, 1, 8, 8)
    pairs = [{"sample": 0, "train": 1, "pixel_distance": 0.1}, {"sample": 1, "train": 0, "pixel_distance": 0.2}]
    assert pairs_picture(images, images, pairs, picture, threshold=0.15) == picture
    assert not picture.is_symlink() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.read_text() == "keep me\n"
