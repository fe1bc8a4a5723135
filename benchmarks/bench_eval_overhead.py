"""What evaluation during training costs: the same run (default recipe, explicit --max_train_steps, so both train the
same steps) without and with evaluations, and whether training slows by more than the evaluations' own time.

    python benchmarks/bench_eval_overhead.py                          # 400 steps, 4 evaluations of 200 samples
    python benchmarks/bench_eval_overhead.py --max-train-steps 200 --evaluations 2 --mixed_precision no

Other flags go to train.py. Reports, per run: the training loop's wall time (``wall_time_s``, evaluations inside
the loop included), training images/s (evaluations left out) and, with evaluations, their time (sampling, metrics).
``excess_s`` = (wall time with - evaluation time inside the loop) - wall time without: how much the evaluations slowed
the training itself (target: about 0, within run-to-run noise). Writes benchmarks/results/eval_overhead.json.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, environment, markdown_table, write_json


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-train-steps", type=int, default=400)
    parser.add_argument("--evaluations", type=int, default=4, help="evaluations in the run with evaluations")
    parser.add_argument("--eval-num-images", type=int, default=200)
    parser.add_argument("--eval-inference-steps", type=int, default=20)
    parser.add_argument("--out", default="eval_overhead.json", help="file name under benchmarks/results/")
    args, args.train_args = parser.parse_known_args(argv)
    return args


def run(output_dir: Path, steps: int, extra: list[str]) -> dict:
    command = [sys.executable, str(REPO / "training" / "train.py"), "--output_dir", str(output_dir)]
    command += ["--max_train_steps", str(steps), "--checkpointing_steps", "0", *extra]
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads((output_dir / "train_metrics.json").read_text())


def main(args):
    every = max(1, args.max_train_steps // args.evaluations)
    eval_flags = ["--eval_steps", str(every), "--eval_num_images", str(args.eval_num_images)]
    eval_flags += ["--eval_inference_steps", str(args.eval_inference_steps)]
    with tempfile.TemporaryDirectory() as tmp:
        without = run(Path(tmp) / "without", args.max_train_steps, args.train_args)
        with_eval = run(Path(tmp) / "with", args.max_train_steps, [*args.train_args, *eval_flags])
    points = with_eval["evaluations"]
    in_loop = with_eval["eval_seconds_in_loop"]  # the loop's own count: evaluations, their history and plot
    results = {
        "steps": args.max_train_steps,
        "evaluations": len(points),
        "eval_num_images": args.eval_num_images,
        "eval_inference_steps": args.eval_inference_steps,
        "wall_time_without_s": without["wall_time_s"],
        "wall_time_with_s": with_eval["wall_time_s"],
        "train_images_per_second_without": without["train_images_per_second"],
        "train_images_per_second_with": with_eval["train_images_per_second"],
        "eval_seconds_total": with_eval["eval_seconds"],
        "eval_seconds_in_loop": in_loop,
        "sampling_seconds_total": sum(p["sampling_seconds"] for p in points),
        "metrics_seconds_total": sum(p["metrics_seconds"] for p in points),
        "excess_s": with_eval["wall_time_s"] - in_loop - without["wall_time_s"],
    }
    print("\nEvaluation during training: cost\n")
    print(markdown_table(["measure", "value"], [[k, v] for k, v in results.items()]))
    path = write_json(args.out, {"args": vars(args), "environment": environment(), "results": results})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
