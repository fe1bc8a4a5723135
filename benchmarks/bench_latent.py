r"""Pixel vs latent diffusion at the same image resolution: training images/s and the one-off encoding time.

Both rows run hfddpm's own training step (``TrainingEngine``, as ``training/train.py`` does) in this process,
interleaved round by round, on in-memory batches: the pixel UNet on the digits at ``--resolution``, the latent UNet on
the latents of the same digits that ``hfddpm.latents.encode_dataset`` (the product's encode-once cache) computes with
``--vae``. The encoding is timed once, into a fresh cache folder, over ``--encode-images`` digits.

    python benchmarks/bench_latent.py --vae /work/models/digit_vae          # 32 px: mnist preset vs latent8
    python benchmarks/bench_latent.py --batch-size 8 --rounds 1 --steps-per-round 1 --warmup-steps 1 \
        --encode-images 64 --out latent_smoke.json                             # smoke configuration (tests)

Without ``--vae`` an untrained autoencoder of ``training/train_vae.py``'s default shape is used: the speed does not
depend on its weights.
"""

import argparse
import tempfile

import torch
from accelerate import Accelerator
from common import (
    HFDDPMTrainLoop,
    environment,
    markdown_table,
    median,
    mnist_train_images,
    timed,
    unet_config,
    write_json,
)

from hfddpm.data import load_mnist_5k, resolve_columns
from hfddpm.latents import check_vae_resolution, encode_dataset, load_vae, scale_shift
from hfddpm.training import default_mixed_precision
from hfddpm.training.vae import VAETrainConfig, build_vae


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", default=None, help="autoencoder folder (default: untrained, train_vae.py's shape)")
    parser.add_argument("--resolution", type=int, default=32, help="image size of both rows")
    parser.add_argument("--pixel-preset", default="mnist")
    parser.add_argument("--latent-preset", default="latent8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=10)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--encode-images", type=int, default=5000, help="digits encoded for the timing (max 5000)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default="latent_throughput.json", help="file name under benchmarks/results/")
    return parser.parse_args(argv)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = Accelerator().device
    precision = default_mixed_precision(device)
    vae = load_vae(args.vae) if args.vae else build_vae(VAETrainConfig(resolution=args.resolution))
    latent_size = check_vae_resolution(args.resolution, vae)

    # 1. the one-off encoding, by the product's cache builder into an empty folder
    dataset = load_mnist_5k().select(range(min(args.encode_images, 5000)))
    columns = resolve_columns(dataset, "image", "label")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    with tempfile.TemporaryDirectory() as cache:
        encoded = None

        def encode():
            nonlocal encoded
            encoded = encode_dataset(
                dataset, columns, vae, resolution=args.resolution, cache_dir=cache, device=device, dtype=dtype
            )

        encode_seconds = timed(encode, device)
    scale, shift = scale_shift(vae)
    latents = (encoded.latents[:, 0] - shift) * scale

    # 2. training throughput, pixel and latent rows interleaved
    max_steps = args.warmup_steps + args.rounds * args.steps_per_round
    pixel_config = unet_config(args.pixel_preset, args.resolution, vae.config.in_channels)
    latent_config = unet_config(args.latent_preset, latent_size, vae.config.latent_channels)
    loops = {
        "pixel": HFDDPMTrainLoop(pixel_config, mnist_train_images(args.resolution), args.batch_size,
                                 max_steps=max_steps, mixed_precision=precision),
        "latent": HFDDPMTrainLoop(latent_config, latents, args.batch_size, max_steps=max_steps,
                                  mixed_precision=precision),
    }  # fmt: skip

    def run(loop, steps):
        for _ in range(steps):
            loop.step()

    for loop in loops.values():
        timed(lambda loop=loop: run(loop, args.warmup_steps), device)
    seconds = {key: [] for key in loops}
    order = list(loops)
    for r in range(args.rounds):
        for key in order if r % 2 == 0 else order[::-1]:
            seconds[key].append(timed(lambda key=key: run(loops[key], args.steps_per_round), device))
    images = args.steps_per_round * args.batch_size
    per_round = {key: [images / s for s in values] for key, values in seconds.items()}
    rows = {
        "pixel": f"`{args.pixel_preset}` on {args.resolution}x{args.resolution}x{vae.config.in_channels} pixels",
        "latent": f"`{args.latent_preset}` on {vae.config.latent_channels}x{latent_size}x{latent_size} latents",
    }
    results = {
        key: {
            "row": rows[key],
            "images_per_second": median(per_round[key]),
            "images_per_second_per_round": per_round[key],
            "parameters": loops[key].engine.num_parameters,
        }
        for key in loops
    }
    speedup = median([a / b for a, b in zip(per_round["latent"], per_round["pixel"], strict=True)])
    payload = {
        "environment": environment(),
        "mixed_precision": precision,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "vae": args.vae or "untrained (training/train_vae.py defaults)",
        "encode": {"images": len(dataset), "seconds": encode_seconds, "images_per_s": len(dataset) / encode_seconds},
        "latent_speedup": speedup,
        "results": results,
    }  # fmt: skip
    print(
        markdown_table(
            ["training step (hfddpm)", "parameters", "images/s"],
            [[r["row"], f"{r['parameters'] / 1e6:.2f}M", f"{r['images_per_second']:.0f}"] for r in results.values()],
        )
    )
    print(
        f"latent / pixel images/s: {speedup:.2f}x; one-off encoding of {len(dataset)} images:"
        f" {encode_seconds:.1f} s ({len(dataset) / encode_seconds:.0f} images/s, {precision})"
    )
    print(f"wrote {write_json(args.out, payload)}")


if __name__ == "__main__":
    main(parse_args())
