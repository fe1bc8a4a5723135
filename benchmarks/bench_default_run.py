"""The default run, measured: wall time of `accelerate launch training/train.py` (no flags), its images/s, and the
digit metrics of the resulting pipeline (FD-digits, confident share, label accuracy).

    python benchmarks/bench_default_run.py                        # trains into ./hfddpm-mnist (about 9 minutes)
    python benchmarks/bench_default_run.py --skip-training --output-dir hfddpm-mnist   # only evaluate a finished run
    python benchmarks/bench_default_run.py --out default_run_fp32 --mixed_precision no  # other flags go to train.py

An --output-dir that holds an earlier run is refused by train.py, as any run is; add --overwrite_output_dir (a flag
of train.py) to replace it.

Writes benchmarks/results/default_run.json and copies the final sample grid to benchmarks/results/default_run.png and
the curve of the evaluations during training to benchmarks/results/default_run_eval_curve.png.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from common import REPO, RESULTS_DIR, environment, markdown_table, write_json

import hfddpm
from hfddpm.evaluation import evaluate_pipeline
from hfddpm.evaluation.sampling import SCHEDULERS

DIGIT_KEYS = ("fd_digits", "confident_share", "label_accuracy", "classes_covered")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="hfddpm-mnist", help="train.py's default --output_dir")
    parser.add_argument("--skip-training", action="store_true", help="evaluate an existing output folder")
    parser.add_argument("--num-images", type=int, default=1000, help="samples for the digit metrics")
    parser.add_argument("--num-inference-steps", type=int, default=20)
    parser.add_argument("--scheduler", default="dpmsolver++", choices=sorted(SCHEDULERS))
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--out", default="default_run", help="file stem under benchmarks/results/")
    args, args.train_args = parser.parse_known_args(argv)
    return args


def main(args):
    output_dir = Path(args.output_dir)
    wall = None
    if not args.skip_training:
        # `accelerate launch` of this interpreter (an `accelerate` on PATH may belong to another Python)
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        command = [*launch, str(REPO / "training" / "train.py"), "--output_dir", str(output_dir)]
        command += args.train_args
        start = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - start
    train = json.loads((output_dir / "train_metrics.json").read_text())
    pipe = hfddpm.HFDDPMPipeline.from_pretrained(output_dir).to("cuda" if torch.cuda.is_available() else "cpu")
    metrics = evaluate_pipeline(
        pipe,
        num_images=args.num_images,
        num_inference_steps=args.num_inference_steps,
        scheduler=args.scheduler,
        guidance_scale=args.guidance_scale,
    )
    results = {
        "command_wall_time_s": wall,
        "train_wall_time_s": train["wall_time_s"],
        "run_time_s": train.get("run_time_s"),  # train.py's own time, the time budget's: start-up to saved pipeline
        "steps": train["steps"],
        "max_train_minutes": train.get("max_train_minutes"),
        "mixed_precision": train["training_config"].get("mixed_precision"),
        "images_seen": train["images_seen"],
        "train_images_per_second": train["train_images_per_second"],
        "final_loss": train["final_loss"],
        "eval_seconds": train.get("eval_seconds"),  # evaluation during training, inside the budget
        "eval_points": [
            {k: e.get(k) for k in ("step", "fd_digits", "eval_seconds", "sampling_seconds", "metrics_seconds")}
            | {"fd_digits_ci95": (e.get("details") or {}).get("fd_digits", {}).get("ci95")}
            for e in train.get("evaluations", [])
        ],
        **{k: metrics[k] for k in DIGIT_KEYS if k in metrics},
        "sampler": f"{args.scheduler}, {args.num_inference_steps} steps, guidance {args.guidance_scale}",
        "num_samples": args.num_images,
    }
    rows = [[key, value] for key, value in results.items()]
    print(f"\nDefault run ({output_dir})\n")
    print(markdown_table(["measure", "value"], rows))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(output_dir / "samples" / "final.png", RESULTS_DIR / f"{args.out}.png")
    if (output_dir / "eval_curve.png").is_file():
        shutil.copy(output_dir / "eval_curve.png", RESULTS_DIR / f"{args.out}_eval_curve.png")
    path = write_json(f"{args.out}.json", {"args": vars(args), "environment": environment(), "results": results})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    sys.exit(main(parse_args()))
