"""What a validation grid costs at each guidance scale: ``TrainingEngine.sample_grid`` of a class-conditional run (one
row per class, ``--validation_images_per_class`` images each, DPM-Solver++ ``--validation_inference_steps``) of a
``TrainingEngine`` of the preset (float32 weights, no autocast: as a run samples its grids), timed at guidance 1 (off)
and at the others, interleaved round by round.

    python benchmarks/bench_validation_grid.py                                  # mnist preset, 10 x 8, 20 steps
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/bench_validation_grid.py \
        --out validation_grid_avx2.json                                         # float32 with AVX2 kernels only
    python benchmarks/bench_validation_grid.py --preset tiny --images-per-class 2 --rounds 2 --guidance 1.0 1.5

Reports seconds per grid (median) and the time ratio against guidance 1. Writes
benchmarks/results/validation_grid.json.
"""

import argparse

import torch
from accelerate import Accelerator
from common import environment, markdown_table, median, timed, write_json

import hfddpm
from hfddpm.training import TrainConfig, TrainingEngine, build_scheduler


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--images-per-class", type=int, default=TrainConfig.validation_images_per_class)
    parser.add_argument("--inference-steps", type=int, default=TrainConfig.validation_inference_steps)
    parser.add_argument(
        "--guidance", type=float, nargs="+", default=[1.0, TrainConfig.validation_guidance_scale],
        help="guidance scales to time; 1 (the baseline) is added when missing",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="validation_grid.json", help="file name under benchmarks/results/")
    return parser.parse_args(argv)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    scales = [1.0] + [g for g in dict.fromkeys(args.guidance) if g != 1.0]
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    config = TrainConfig(
        preset=args.preset,
        resolution=args.resolution,
        validation_images_per_class=args.images_per_class,
        validation_inference_steps=args.inference_steps,
        max_train_steps=1,
    ).validate()
    torch.manual_seed(0)
    classes = args.num_classes + 1  # + the null class of classifier-free guidance
    unet = hfddpm.build_unet(
        args.preset, in_channels=1, out_channels=1, sample_size=args.resolution, num_class_embeds=classes
    )
    engine = TrainingEngine(
        config, unet, build_scheduler(config), accelerator, max_train_steps=1, class_conditional=True
    )

    def grid(guidance: float):
        engine.config.validation_guidance_scale = guidance  # what sample_grid reads
        return engine.sample_grid(num_classes=args.num_classes)

    for g in scales:  # warm-up
        grid(g)
    seconds = {g: [] for g in scales}
    for r in range(args.rounds):
        for g in scales if r % 2 == 0 else scales[::-1]:
            seconds[g].append(timed(lambda g=g: grid(g), accelerator.device))
    results = {
        str(g): {
            "seconds_per_grid": median(values),
            "ratio_vs_guidance_1": median([a / b for a, b in zip(values, seconds[1.0], strict=True)]),
            "seconds_per_round": values,
        }
        for g, values in seconds.items()
    }
    print(
        f"\nValidation grid, preset {args.preset} ({args.resolution}px), {args.num_classes} x {args.images_per_class}"
        f" images, DPM-Solver++ "
        f"{args.inference_steps} steps, {args.rounds} interleaved rounds, device {accelerator.device}\n"
    )
    rows = [[g, r["seconds_per_grid"], f"{r['ratio_vs_guidance_1']:.3f}"] for g, r in results.items()]
    print(markdown_table(["guidance", "s / grid (median)", "time ratio vs guidance 1"], rows))
    path = write_json(args.out, {"args": vars(args), "environment": environment(), **results})
    print(f"\nWrote {path}")


if __name__ == "__main__":
    main(parse_args())
