"""Quality per compute: FD-digits reached by hfddpm's recipe and by the diffusers tutorial recipe for the same
training time on MNIST 5k (same UNet, same batch size, unconditional).

The time budget is split into ``--eval-points`` chunks; the two loops train chunk by chunk, interleaved (the order
alternates), and after every chunk both are sampled with the same sampler (default DPM-Solver++, 20 steps, built
from each model's own training schedule; hfddpm samples its EMA weights, as train.py saves them) and scored with
FD-digits. Evaluation time is not counted as training time.

    python benchmarks/bench_quality_per_compute.py --budget-seconds 600             # 10 minutes per recipe
    python benchmarks/bench_quality_per_compute.py --preset tiny --budget-seconds 6 --eval-points 2 --num-images 16
"""

import argparse

import torch
from accelerate import Accelerator
from common import (
    DiffusersTutorialLoop,
    HFDDPMTrainLoop,
    environment,
    markdown_table,
    mnist_train_images,
    plot_fd_curves,
    tutorial_precision,
    unet_config,
    write_json,
)

from hfddpm.evaluation import digit_metrics, generate_samples, set_scheduler
from hfddpm.training.budget import device_clock


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-seconds", type=float, required=True, help="training time per recipe")
    parser.add_argument("--eval-points", type=int, default=5, help="evaluations along the budget")
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-images", type=int, default=500, help="samples per FD-digits evaluation")
    parser.add_argument("--sample-scheduler", default="dpmsolver++")
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--diffusers-learning-rate", type=float, default=1e-4, help="the tutorial's value")
    parser.add_argument("--diffusers-warmup-steps", type=int, default=500, help="the tutorial's value")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="quality_per_compute", help="file stem under benchmarks/results/")
    return parser.parse_args(argv)


def make_loops(args, config, data, max_steps: int) -> dict:
    return {
        "diffusers": DiffusersTutorialLoop(
            config,
            data,
            args.batch_size,
            max_steps=max_steps,
            seed=args.seed,
            learning_rate=args.diffusers_learning_rate,
            lr_warmup_steps=args.diffusers_warmup_steps,
            mixed_precision=tutorial_precision(Accelerator().device),  # its config's fp16 on a GPU, float32 on a CPU
        ),
        "hfddpm": HFDDPMTrainLoop(config, data, args.batch_size, max_steps=max_steps, seed=args.seed),
    }


def train_for(loop, seconds: float, device) -> float:
    """Step ``loop`` until ``seconds`` of wall time passed (checked after every step, so the two loops overshoot
    their budget by at most one step each); returns the time taken."""
    clock = device_clock(device)
    start = clock()
    while True:
        loop.step()
        elapsed = clock() - start
        if elapsed >= seconds:
            return elapsed


def estimate_steps(args, config, data) -> int:
    """Training steps that fit the budget for the slower loop (sets the recipes' LR schedule length)."""
    rates = []
    for loop in make_loops(args, config, data, max_steps=1000).values():
        loop.step()
        clock = device_clock(loop.accelerator.device)
        start = clock()
        for _ in range(3):
            loop.step()
        rates.append(3 / (clock() - start))
    return max(1, int(max(rates) * args.budget_seconds))


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    config = unet_config(args.preset)
    data = mnist_train_images()
    max_steps = estimate_steps(args, config, data)
    loops = make_loops(args, config, data, max_steps)
    device = loops["hfddpm"].device
    names = {"diffusers": DiffusersTutorialLoop.name, "hfddpm": HFDDPMTrainLoop.name}
    chunk = args.budget_seconds / args.eval_points

    records, trained = [], {key: 0.0 for key in loops}
    for point in range(args.eval_points):
        order = list(loops) if point % 2 == 0 else list(loops)[::-1]
        for key in order:
            trained[key] += train_for(loops[key], chunk, device)
        for key in loops:
            pipe = set_scheduler(loops[key].pipeline().to(device), args.sample_scheduler)
            images = generate_samples(
                pipe, args.num_images, num_inference_steps=args.sample_steps, seed=args.seed, progress=False
            )
            metrics = digit_metrics(images)
            record = {
                "loop": key,
                "train_seconds": trained[key],
                "steps": loops[key].global_step,
                "images_seen": loops[key].global_step * args.batch_size,
                **metrics,
            }
            records.append(record)
            print(
                f"{key:>9s}: {trained[key]:7.1f} s, {record['steps']:6d} steps, fd_digits {metrics['fd_digits']:.3f}",
                flush=True,
            )

    rows = [
        [names[r["loop"]], r["train_seconds"], r["steps"], r["images_seen"], r["fd_digits"], r["confident_share"]]
        for r in records
    ]
    print(
        f"\nQuality per compute, preset {args.preset}, batch {args.batch_size}, budget {args.budget_seconds:g} s per"
        f" recipe, {args.num_images} samples ({args.sample_scheduler}, {args.sample_steps} steps), device {device}\n"
    )
    print(markdown_table(["recipe", "train s", "steps", "images seen", "FD-digits", "confident share"], rows))

    series = {names[key]: [(r["train_seconds"], r["fd_digits"]) for r in records if r["loop"] == key] for key in loops}
    png = plot_fd_curves(
        series,
        xlabel="training time (s)",
        title=f"Quality per compute ({args.preset}, batch {args.batch_size})",
        out=args.out,
    )
    payload = {"args": vars(args), "max_steps": max_steps, "environment": environment(), "results": records}
    path = write_json(f"{args.out}.json", payload)
    print(f"\nWrote {path} and {png}")


if __name__ == "__main__":
    main(parse_args())
