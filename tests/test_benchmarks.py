"""The benchmark scripts run (smoke configurations) and compare what they say they compare."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hfddpm.training import default_mixed_precision
from hfddpm.training.precision import train_cuda_math

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
THROUGHPUT_SMOKE = ["--preset", "tiny", "--batch-size", "8", "--rounds", "2", "--steps-per-round", "2",
                    "--warmup-steps", "1"]  # fmt: skip


def _bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _benchmark_module(name: str):
    """A module of benchmarks/ (not a package), imported as the scripts import each other."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def common():
    return _benchmark_module("common")


def test_batch_stream_keeps_the_epoch_order_where_the_data_is(common):
    data = torch.arange(10.0) * 10
    stream = common.BatchStream(data, batch_size=4, seed=0)
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randperm(10, generator=generator), torch.randperm(10, generator=generator)
    batches = [next(stream) for _ in range(3)]  # 4 + 4, then a new epoch: fewer than 4 were left
    assert stream.order.device == data.device
    expected = [data[first[:4]], data[first[4:8]], data[second[:4]]]
    assert all(torch.equal(b, e) for b, e in zip(batches, expected, strict=True))


def test_autocast_is_what_accelerate_applies(common):
    cpu = torch.device("cpu")
    with common.autocast(cpu, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with common.autocast(cpu, "no"):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match=r"'fp16' needs a CUDA device, not 'cpu'; use 'bf16' or 'no'"):
        common.autocast(cpu, "fp16")
    with pytest.raises(ValueError, match=r"mixed_precision='fp8'; valid: 'no', 'bf16', 'fp16'"):
        common.autocast(cpu, "fp8")
    assert common.tutorial_precision(cpu) == "no" and common.tutorial_precision(torch.device("cuda")) == "fp16"


def test_train_throughput_smoke_compares_the_four_loops_on_cpu(tmp_path):
    out = tmp_path / "train_throughput_mnist.json"  # the name gpu_check.sh gives it
    result = _bench("bench_train_throughput.py", *THROUGHPUT_SMOKE, "--out", str(out))
    data = json.loads(out.read_text())
    loops = {key: data[key] for key in ("diffusers", "diffusers_bf16", "hfddpm", "hfddpm_fp32")}
    assert "diffusers_fp32" not in data  # on a CPU the tutorial's own config already trains float32
    assert {key: loop["mixed_precision"] for key, loop in loops.items()} == {
        "diffusers": "no", "diffusers_bf16": "bf16", "hfddpm": default_mixed_precision("cpu"), "hfddpm_fp32": "no"
    }  # fmt: skip
    assert loops["diffusers"]["ratio_vs_diffusers"] == 1.0 and loops["diffusers"]["ratio_ci95"] == [1.0, 1.0]
    for loop in loops.values():
        assert len(loop["images_per_second_per_round"]) == 2 and loop["images_per_second"] > 0
        low, high = loop["ratio_ci95"]  # resampled over the 2 rounds: the median ratio lies inside
        assert low <= loop["ratio_vs_diffusers"] <= high
    assert "as configured (float32 here): the baseline" in result.stdout
    assert "| ratio vs diffusers (95% interval) |" in result.stdout
    # hfddpm's row trains as train.py would here: on a CPU, the rule of its precision and the contiguous format
    rule = {"bf16": "bf16 autocast: this CPU computes bf16 natively", "no": "float32: this CPU has no native bf16"}
    assert data["step_format"] == {
        "label": {"bf16": "bf16", "no": "float32"}[default_mixed_precision("cpu")],
        "reason": rule[default_mixed_precision("cpu")],
    }
    assert "hfddpm's step format, as train.py chooses it: " + rule[default_mixed_precision("cpu")] in result.stdout
    # each loop steps with its own CUDA math: train.py's (TF32, cuDNN autotuner) for hfddpm, torch's for the tutorial
    assert loops["hfddpm"]["cuda_math"] == loops["hfddpm_fp32"]["cuda_math"] == train_cuda_math()
    torch_default = {"matmul_tf32": False, "cudnn_tf32": True, "cudnn_benchmark": False}
    assert loops["diffusers"]["cuda_math"] == loops["diffusers_bf16"]["cuda_math"] == torch_default
    _check_gpu_summary(tmp_path, data)
    # rows can be left out; one round has no interval
    args = [*THROUGHPUT_SMOKE, "--rounds", "1", "--skip-row", "diffusers_bf16", "--skip-row", "hfddpm_fp32"]
    _bench("bench_train_throughput.py", *args, "--out", str(out))
    data = json.loads(out.read_text())
    assert {"diffusers", "hfddpm"} <= data.keys() and not {"diffusers_bf16", "hfddpm_fp32"} & data.keys()
    assert data["hfddpm"]["ratio_ci95"] is None


def _check_gpu_summary(folder, throughput):
    """gpu_summary.py on a gpu_check.sh folder: benchmark 1's rows as written, the default run against 1382 images/s
    and the files missing."""
    run = {"train_images_per_second": 6910.0, "command_wall_time_s": 58.4, "train_wall_time_s": 31.2, "steps": 225,
           "mixed_precision": "bf16", "fd_digits": 1.234, "confident_share": 0.9, "label_accuracy": 0.95,
           "num_samples": 1000, "sampler": "dpmsolver++, 20 steps, guidance 1.0"}  # fmt: skip
    (folder / "default_run.json").write_text(json.dumps({"results": run}))
    text = _bench("gpu_summary.py", str(folder)).stdout.splitlines()
    assert text[0] == (
        "default run (images/s >= 5x 1382 and wall < 60 s): 6910 images/s = 5.00x 1382; command wall 58 s (training"
        " 31 s); 225 steps, bf16"
    )
    assert text[1].split() == "FD-digits 1.23, confident share 0.90, label accuracy 0.95 (1000 samples,".split() + [
        "dpmsolver++,", "20", "steps,", "guidance", "1.0)"
    ]  # fmt: skip
    assert text[2:4] == [
        "train_throughput_cifar10: no train_throughput_cifar10.json",
        "train_throughput_cifar10_compiled: no train_throughput_cifar10_compiled.json",
    ]
    assert text[4] == "train_throughput_mnist: preset tiny, batch 8, cpu"
    assert text[5] == f"  hfddpm's step format: {throughput['step_format']['reason']}"
    rows = {line.split()[0]: line.split() for line in text[6:]}
    assert rows.keys() == {"diffusers", "diffusers_bf16", "hfddpm", "hfddpm_fp32"}
    for key, words in rows.items():
        assert words[1] == f"{throughput[key]['images_per_second']:.1f}"
        assert words[3] == f"{throughput[key]['ratio_vs_diffusers']:.2f}x"


def test_quality_per_compute_smoke_trains_both_recipes_for_the_same_time(tmp_path):
    args = ["--preset", "tiny", "--budget-seconds", "4", "--eval-points", "2", "--num-images", "8",
            "--sample-steps", "2", "--batch-size", "8", "--out", str(tmp_path / "qpc")]  # fmt: skip
    _bench("bench_quality_per_compute.py", *args)
    results = json.loads((tmp_path / "qpc.json").read_text())["results"]
    assert [r["loop"] for r in results] == ["diffusers", "hfddpm"] * 2
    for r in results:
        assert r["num_images"] == 8 and r["steps"] > 0 and r["fd_digits"] > 0
    # the two recipes get the same wall-clock budget (checked after every step), and more time means more steps
    for first, second in zip(results[0::2], results[1::2], strict=True):
        assert abs(first["train_seconds"] - second["train_seconds"]) < 0.5 * first["train_seconds"]
    assert results[2]["steps"] > results[0]["steps"] and results[3]["steps"] > results[1]["steps"]
    assert (tmp_path / "qpc.png").stat().st_size > 0


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet

    torch.manual_seed(0)
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=28, num_class_embeds=11)
    folder = tmp_path_factory.mktemp("tiny") / "pipeline"
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler(prediction_type="v_prediction")).save_pretrained(folder)
    return folder


def test_sampling_quality_smoke_counts_model_evaluations(tiny_pipeline, tmp_path):
    result = _bench("bench_sampling_quality.py", str(tiny_pipeline), "--schedulers", "ddim,heun", "--nfe", "2,5",
                    "--reference", "ddpm:6", "--num-images", "10", "--out", str(tmp_path / "sq"))  # fmt: skip
    data = json.loads((tmp_path / "sq.json").read_text())
    got = {(r["scheduler"], r["nfe_budget"]): (r["num_inference_steps"], r["nfe"]) for r in data["results"]}
    # heun evaluates the UNet twice per step except the last: 2 NFE buy 1 step, 5 NFE buy 3 steps
    assert got == {("ddim", 2): (2, 2), ("ddim", 5): (5, 5), ("heun", 2): (1, 1), ("heun", 5): (3, 5)}
    for r in data["results"]:
        assert r["fd_vs_reference"] == pytest.approx(r["fd_digits"] / data["reference_fd_digits"])
        assert r["num_images"] == 10 and sum(r["class_histogram"]) == 10
    assert "will be ignored" not in result.stderr  # schedulers are built from the saved config, nothing dropped
    assert (tmp_path / "sq.png").stat().st_size > 0


def test_sampling_overhead_smoke(tmp_path):
    out = tmp_path / "overhead.json"
    _bench("bench_sampling_overhead.py", "--preset", "tiny", "--batch-size", "2", "--steps", "3", "--rounds", "2",
           "--out", str(out))  # fmt: skip
    data = json.loads(out.read_text())
    assert data["diffusers"]["ratio_vs_diffusers"] == 1.0
    for key in ("diffusers", "hfddpm", "hfddpm_own_scheduler"):
        assert len(data[key]["seconds_per_round"]) == 2 and data[key]["seconds_per_call"] > 0


def test_validation_grid_smoke(tmp_path):
    out = tmp_path / "grid.json"
    result = _bench("bench_validation_grid.py", "--preset", "tiny", "--resolution", "16", "--num-classes", "3",
                    "--images-per-class", "2", "--inference-steps", "2", "--rounds", "2", "--guidance", "2.0",
                    "--out", str(out))  # fmt: skip
    data = json.loads(out.read_text())
    assert list(data)[-2:] == ["1.0", "2.0"]  # guidance 1, the baseline, is added
    assert data["1.0"]["ratio_vs_guidance_1"] == 1.0
    assert len(data["2.0"]["seconds_per_round"]) == 2 and data["2.0"]["seconds_per_grid"] > 0
    assert "3 x 2 images" in result.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_throughput_on_a_gpu_uses_the_tutorials_fp16_as_baseline(tmp_path):
    out = tmp_path / "throughput.json"
    _bench("bench_train_throughput.py", *THROUGHPUT_SMOKE, "--out", str(out))
    data = json.loads(out.read_text())
    assert data["diffusers"]["mixed_precision"] == "fp16" and data["diffusers_fp32"]["mixed_precision"] == "no"
    # hfddpm's row trains in the format train.py measures fastest on this GPU for this UNet and batch
    assert "measured fastest of float32" in data["step_format"]["reason"]
    assert (
        data["step_format"]["label"].split()[0] == {"no": "float32", "bf16": "bf16"}[data["hfddpm"]["mixed_precision"]]
    )
    assert data["device"].startswith("cuda")


def test_editing_smoke_scores_against_the_baselines(tiny_pipeline, tmp_path):
    _bench("bench_editing.py", str(tiny_pipeline), "--num-images", "10", "--num-inference-steps", "2",
           "--jump-length", "1", "--img2img-images", "10", "--img2img-steps", "2", "--strengths", "0,1",
           "--guidance-scales", "1", "--out", str(tmp_path / "ed"))  # fmt: skip
    data = json.loads((tmp_path / "ed.json").read_text())
    inpaint = data["inpaint"]
    # 2 steps, jumps of 1 at position 2 (jump_n_sample 2): 3 model calls
    assert inpaint["num_images"] == 10 and inpaint["model_calls_per_image"] == 3
    assert inpaint["results"]["originals"]["fd_digits"] == pytest.approx(0.0, abs=1e-3)  # sqrtm of 10 samples
    strength_0 = data["img2img"]["results"][0]
    assert strength_0["strength"] == 0.0  # the input itself: the original label's share is the classifier's accuracy
    assert strength_0["original_label_share"] == data["img2img"]["original_accuracy"]
    for name in ("ed_inpaint.png", "ed_img2img.png", "ed_label_change.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_eval_overhead_smoke_compares_runs_without_and_with_evaluations(tmp_path):
    grey = {"sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
            "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
            "layers_per_block": 1, "norm_num_groups": 4}  # fmt: skip
    config = tmp_path / "grey.json"
    config.write_text(json.dumps(grey))
    out = tmp_path / "overhead.json"
    _bench("bench_eval_overhead.py", "--max-train-steps", "4", "--evaluations", "2", "--eval-num-images", "4",
           "--eval-inference-steps", "1", "--out", str(out), "--unet_config", str(config), "--train_batch_size", "8",
           "--validation_inference_steps", "1", "--validation_images_per_class", "1")  # fmt: skip
    results = json.loads(out.read_text())["results"]
    assert results["evaluations"] == 2 and results["sampling_seconds_total"] > 0
    assert results["eval_seconds_in_loop"] <= results["eval_seconds_total"]
    assert results["excess_s"] == pytest.approx(
        results["wall_time_with_s"] - results["eval_seconds_in_loop"] - results["wall_time_without_s"]
    )


def test_bench_audio_smoke(tmp_path):
    out = tmp_path / "audio.json"
    result = _bench("bench_audio.py", "--sizes", "64", "--clips", "2", "--n-iter", "2", "--batch-size", "1",
                    "--inference-steps", "1", "--rounds", "2", "--train-steps", "1", "--train-batch-size", "2",
                    "--out", str(out))  # fmt: skip
    [row] = json.loads(out.read_text())["rows"]
    assert row["size"] == "64x64" and row["preset"] == "mel64" and row["griffin_lim_ms"] > 0
    # the ratios are of the medians of the interleaved calls (2 rounds each) and of the training rounds
    assert [len(row["calls"][name]) for name in ("spectrograms", "sound")] == [2, 2] and len(row["train_times_s"]) == 2
    assert row["spectrogram_call_s"] == pytest.approx(sum(row["calls"]["spectrograms"]) / 2, abs=1e-4)
    assert row["sound_vs_spectrograms"] == pytest.approx(row["sound_call_s"] / row["spectrogram_call_s"], rel=1e-2)
    per_image_ms = 1000 * sum(row["train_times_s"]) / 2 / 2  # 1 step of 2 images per round
    assert row["train_step_per_image_ms"] == pytest.approx(per_image_ms, rel=1e-3)
    assert row["conversion_vs_train_step"] == pytest.approx(row["clip_to_spectrogram_ms"] / per_image_ms, rel=1e-2)
    assert "| 64x64 | 1.008 s at 16000 Hz |" in result.stdout


@pytest.fixture(scope="module")
def bench_audio_stream():
    return _benchmark_module("bench_audio_stream")


def test_bench_audio_stream_warms_up_past_the_prefetched_batches(bench_audio_stream):
    import datasets
    from PIL import Image

    from hfddpm.data import make_train_dataloader, resolve_columns

    images = datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))] * 4})
    columns = resolve_columns(images, "image")
    # never read: no worker starts
    loaders = [
        make_train_dataloader(images, columns, resolution=4, channels=1, batch_size=2, seed=0, num_workers=w)
        for w in (0, 2)
    ]
    prefetch = loaders[1].prefetch_factor
    assert prefetch >= 1 and bench_audio_stream.warmup_batches(loaders[:1]) == 1
    assert bench_audio_stream.warmup_batches(loaders) == 1 + 2 * prefetch  # the same for every configuration


def test_bench_audio_stream_times_the_batches_after_the_warm_up_counting_their_rows(bench_audio_stream):
    import time

    drawn = []

    def batches():  # slow warm-up batches, then quick ones; num_read_images as in a later pass: 0
        for i in range(100):
            drawn.append(i)
            time.sleep(0.2 if i < 4 else 0)
            yield {"pixel_values": torch.zeros(i % 3 + 1, 1, 2, 2), "num_read_images": torch.tensor(0)}

    result = bench_audio_stream.time_batches(batches(), warmup=4, num_batches=5)
    assert drawn == list(range(9)) and result["timed_clips"] == 2 + 3 + 1 + 2 + 3
    assert result["first_batch_s"] >= 0.2 and result["clips_per_second"] > 11 / 0.2  # the warm-up is not timed


def test_gpu_checks_test_step_runs_where_pytest_xdist_is_missing():
    """The GPU image has pytest but not pytest-xdist: gpu_check.sh's test step drops setup.cfg's ``-n`` and the suite's
    conftest must load without xdist's hooks."""
    script = (BENCHMARKS / "gpu_check.sh").read_text().replace("\\\n", " ")  # continuation lines joined
    step = next(line for line in script.splitlines() if "-m pytest" in line)
    assert "-o addopts= -m gpu" in step
    files = [word for word in step.split() if word.startswith("tests/")]
    assert files[-1] == "tests/test_engine.py" and len(files) == 5  # the compiling test last
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-o", "addopts=", "-m", "gpu",
         "--collect-only", "-q", *files],
        cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    collected = {line.split("::")[0] for line in result.stdout.splitlines() if "::" in line}
    assert collected == set(files) and " deselected" in result.stdout  # every file holds GPU tests
