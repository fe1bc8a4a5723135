"""Sampling overhead: HFDDPMPipeline against diffusers' DDPMPipeline on the same UNet, scheduler and step count.

Both pipelines share one UNet and run the same DDPMScheduler configuration, so the time ratio is the pipeline's own
overhead (input checks, scheduler keyword inspection, output conversion). A third row runs HFDDPMPipeline with its
HFDDPMScheduler (eta=1, ancestral DDPM) for reference. Calls are interleaved round by round.

    python benchmarks/bench_sampling_overhead.py                       # mnist preset, batch 16, 50 steps
    python benchmarks/bench_sampling_overhead.py --preset tiny --steps 5 --rounds 2
"""

import argparse

import torch
from common import environment, markdown_table, median, timed, write_json
from diffusers import DDPMPipeline, DDPMScheduler

import hfddpm


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist", choices=list(hfddpm.UNET_PRESETS))
    parser.add_argument("--resolution", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50, help="num_inference_steps for every pipeline")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="sampling_overhead.json", help="file name under benchmarks/results/")
    return parser.parse_args(argv)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    unet = hfddpm.build_unet(args.preset, sample_size=args.resolution, in_channels=1, out_channels=1)
    unet = unet.to(device).eval()
    ddpm = DDPMScheduler(num_train_timesteps=1000)
    pipes = {
        "diffusers": DDPMPipeline(unet=unet, scheduler=ddpm),
        "hfddpm": hfddpm.HFDDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_config(ddpm.config)),
        "hfddpm_own_scheduler": hfddpm.HFDDPMPipeline(unet=unet, scheduler=hfddpm.HFDDPMScheduler()),
    }
    names = {
        "diffusers": "diffusers DDPMPipeline + DDPMScheduler",
        "hfddpm": "HFDDPMPipeline + DDPMScheduler",
        "hfddpm_own_scheduler": "HFDDPMPipeline + HFDDPMScheduler (eta=1)",
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)

    def call(key):
        generator = torch.Generator().manual_seed(0)
        kwargs = {"eta": 1.0} if key == "hfddpm_own_scheduler" else {}
        pipes[key](
            batch_size=args.batch_size,
            num_inference_steps=args.steps,
            generator=generator,
            output_type="np",
            **kwargs,
        )

    for key in pipes:  # warm-up
        call(key)
    seconds = {key: [] for key in pipes}
    order = list(pipes)
    for r in range(args.rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            seconds[key].append(timed(lambda key=key: call(key), device))

    results = {
        key: {
            "seconds_per_call": median(values),
            "ratio_vs_diffusers": median([a / b for a, b in zip(values, seconds["diffusers"], strict=True)]),
            "seconds_per_round": values,
        }
        for key, values in seconds.items()
    }
    print(
        f"\nSampling time, preset {args.preset} ({args.resolution}px), batch {args.batch_size}, {args.steps} steps,"
        f" {args.rounds} interleaved rounds, device {device}\n"
    )
    rows = [
        [names[key], results[key]["seconds_per_call"], f"{results[key]['ratio_vs_diffusers']:.3f}"] for key in pipes
    ]
    print(markdown_table(["pipeline", "s / call (median)", "time ratio vs diffusers"], rows))
    path = write_json(args.out, {"args": vars(args), "device": str(device), "environment": environment(), **results})
    print(f"\nWrote {path}")


if __name__ == "__main__":
    main(parse_args())
