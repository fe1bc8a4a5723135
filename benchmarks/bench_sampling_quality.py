"""Sampling quality against model evaluations (NFE): FD-digits of a trained pipeline for several samplers.

For every scheduler and NFE budget, generates ``--num-images`` samples (balanced labels for class-conditional
pipelines) and scores them with ``hfddpm.evaluation.digit_metrics``. NFE is counted (UNet calls per image batch),
so second-order samplers (heun: 2 per step) are compared at equal compute. Writes a table, a json and a PNG plot.

    python benchmarks/bench_sampling_quality.py hfddpm-mnist                        # DDPM/DDIM/DPM++/UniPC
    python benchmarks/bench_sampling_quality.py hfddpm-mnist --schedulers ddim,heun --nfe 10,20 --num-images 200
"""

import argparse

import torch
from common import environment, markdown_table, plot_fd_curves, write_json

import hfddpm
from hfddpm.evaluation import balanced_labels, digit_metrics, generate_samples, make_scheduler
from hfddpm.evaluation.sampling import SCHEDULERS, num_classes


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pipeline", help="a trained pipeline folder (training output_dir)")
    parser.add_argument("--schedulers", default="ddpm,ddim,dpmsolver++,unipc", help=f"from {sorted(SCHEDULERS)}")
    parser.add_argument("--nfe", default="5,10,20,50,100", help="model evaluations per sample")
    parser.add_argument(
        "--reference",
        default="ddpm:1000",
        help="SCHEDULER:NFE evaluated once as the quality reference (dashed line; '' for none)",
    )
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="sampling_quality_vs_nfe", help="file stem under benchmarks/results/")
    args = parser.parse_args(argv)
    # every name and number is checked here, before minutes of sampling
    args.scheduler_names = [s.strip() for s in args.schedulers.split(",") if s.strip()]
    args.budgets = _numbers(parser, "--nfe", args.nfe.split(","))
    args.reference_run = None
    if args.reference:
        name, _, nfe = args.reference.partition(":")
        (number,) = _numbers(parser, "--reference", [nfe], f"SCHEDULER:NFE such as ddpm:1000, got {args.reference!r}")
        args.reference_run = (name, number)
    unknown = [n for n in [*args.scheduler_names, *(args.reference_run or ())[:1]] if n not in SCHEDULERS]
    if unknown:
        parser.error(f"unknown scheduler(s) {unknown}; choose from {sorted(SCHEDULERS)}")
    return args


def _numbers(parser, flag: str, values: list[str], expected: str | None = None) -> list[int]:
    """``values`` as model-evaluation counts >= 1, else an argparse error naming ``flag``."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        numbers = []
    if not numbers or min(numbers) < 1:
        parser.error(f"{flag}: expected {expected or f'comma-separated whole numbers >= 1, got {values}'}")
    return numbers


def steps_for_nfe(scheduler, nfe: int) -> tuple[int, int]:
    """The largest ``num_inference_steps`` whose UNet calls stay <= ``nfe``, and that count.

    The pipeline calls the UNet once per entry of ``scheduler.timesteps`` (heun lists 2 per step, PNDM adds its
    warm-up), so the length of that list after ``set_timesteps`` is the NFE.
    """
    for steps in range(nfe, 0, -1):
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= nfe:
            return steps, len(scheduler.timesteps)
    raise ValueError(f"{type(scheduler).__name__} needs more than {nfe} model evaluations for a single step.")


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    schedulers, budgets = args.scheduler_names, args.budgets
    pipe = hfddpm.HFDDPMPipeline.from_pretrained(args.pipeline).to(device)
    saved_config = pipe.scheduler.config
    classes = num_classes(pipe)
    labels = balanced_labels(args.num_images, classes) if classes else None

    def evaluate(name: str, nfe: int) -> dict:
        pipe.scheduler = make_scheduler(name, saved_config)  # always from the saved scheduler's config
        steps, calls = steps_for_nfe(pipe.scheduler, nfe)
        images = generate_samples(
            pipe,
            args.num_images,
            batch_size=args.batch_size,
            num_inference_steps=steps,
            class_labels=labels,
            guidance_scale=args.guidance_scale,
            seed=args.seed,
            progress=False,
        )
        metrics = digit_metrics(images, labels)
        print(f"{name:>14s} NFE {nfe:5d} ({steps} steps): fd_digits {metrics['fd_digits']:.3f}", flush=True)
        return {"scheduler": name, "nfe_budget": nfe, "num_inference_steps": steps, "nfe": calls, **metrics}

    references = {}
    reference_fd = None
    if args.reference_run:
        ref_name, ref_nfe = args.reference_run
        reference = evaluate(ref_name, ref_nfe)
        reference_fd = reference["fd_digits"]
        references[f"{ref_name}, {reference['nfe']} NFE"] = reference_fd

    rows, records = [], []
    for name in schedulers:
        for nfe in budgets:
            record = evaluate(name, nfe)
            if reference_fd:
                record["fd_vs_reference"] = record["fd_digits"] / reference_fd
            records.append(record)
            row = [name, nfe, record["num_inference_steps"], record["fd_digits"], record["confident_share"]]
            if labels is not None:
                row.append(record["label_accuracy"])
            if reference_fd:
                row.append(f"{record['fd_vs_reference']:.2f}x")
            rows.append(row)

    headers = ["scheduler", "NFE", "steps", "FD-digits", "confident share"]
    if labels is not None:
        headers.append("label accuracy")
    if reference_fd:
        headers.append(f"FD vs {args.reference}")
    print(
        f"\nSampling quality vs NFE, {args.pipeline}, {args.num_images} images, guidance {args.guidance_scale},"
        f" device {device}\n"
    )
    print(markdown_table(headers, rows))

    series = {name: [(r["nfe"], r["fd_digits"]) for r in records if r["scheduler"] == name] for name in schedulers}
    png = plot_fd_curves(
        series,
        xlabel="model evaluations per sample (NFE)",
        title=f"Sampling quality vs NFE ({args.num_images} samples)",
        out=args.out,
        logx=True,
        references=references,
    )
    payload = {
        "args": vars(args),
        "environment": environment(),
        "reference_fd_digits": reference_fd,
        "results": records,
    }
    path = write_json(f"{args.out}.json", payload)
    print(f"\nWrote {path} and {png}")


if __name__ == "__main__":
    main(parse_args())
