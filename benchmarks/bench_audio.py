"""What audio adds to the UNet's work, measured side by side with that work, at the mel64 and mel256 sizes.

- Generation: ``HFDDPMAudioPipeline`` (sampling, then Griffin-Lim on every clip) against ``HFDDPMPipeline`` with the
  same UNet, scheduler, steps and seed (the spectrograms alone), calls interleaved; the ratio is what sound costs on
  top of the spectrograms.
- Training data: clip -> log-mel spectrogram (``HFDDPMMel.audio_to_spectrogram``, once per clip, before training)
  against one training step per image of the preset (``TrainingEngine``, as train.py runs it).

The UNets have random weights (the cost does not depend on them); clips are sine tones of random pitch.

python benchmarks/bench_audio.py                # mel64: prints a markdown table, writes benchmarks/results/audio.json
python benchmarks/bench_audio.py --sizes 256 --clips 4 --batch-size 1 --inference-steps 10 --rounds 2 \
    --train-steps 1 --train-batch-size 2 --out audio_mel256.json   # mel256: minutes on a 2-core CPU
python benchmarks/bench_audio.py --sizes 64 --clips 2 --n-iter 2 --batch-size 1 --inference-steps 1 --rounds 1 \
    --train-steps 1 --train-batch-size 2 --out smoke.json          # smoke run
"""

import argparse
import time

import numpy as np
import torch
from common import HFDDPMTrainLoop, environment, markdown_table, median, timed, unet_config, write_json

from hfddpm import HFDDPMAudioPipeline, HFDDPMMel, HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.evaluation.sampling import SCHEDULERS, make_scheduler

# mel64: ~1 s at 16 kHz (the spoken-digit demo); mel256: ~5.9 s at 22.05 kHz, hop 512 (the former audio-diffusion)
SETTINGS = {
    64: {"sample_rate": 16000, "n_fft": 1024, "hop_length": 256, "n_mels": 64, "num_frames": 64},
    256: {"sample_rate": 22050, "n_fft": 2048, "hop_length": 512, "n_mels": 256, "num_frames": 256},
}


def measure(size: int, args) -> dict:
    mel = HFDDPMMel(**SETTINGS[size], n_iter=args.n_iter)
    rng = np.random.default_rng(0)
    t = np.arange(mel.num_samples) / mel.sample_rate
    clips = [np.sin(2 * np.pi * rng.uniform(100, 2000) * t).astype(np.float32) for _ in range(args.clips)]

    # 1. training data: every clip converted once (librosa's first call compiles and caches, so it is untimed)
    mel.audio_to_spectrogram(clips[0])
    start = time.perf_counter()
    spectrograms = np.stack([mel.audio_to_spectrogram(clip) for clip in clips])
    to_image = (time.perf_counter() - start) / args.clips
    mel.spectrogram_to_audio(spectrograms[:1])  # the first call builds librosa's filter bank and caches
    start = time.perf_counter()
    mel.spectrogram_to_audio(spectrograms)
    griffin_lim = (time.perf_counter() - start) / args.clips

    # 2. one training step of the preset per image, on the converted spectrograms
    data = torch.from_numpy(spectrograms)[:, None] * 2 - 1
    loop = HFDDPMTrainLoop(
        unet_config(f"mel{size}", resolution=size), data, args.train_batch_size, max_steps=10**6, use_ema=True
    )
    loop.step()  # warm-up
    train_times = []
    for _ in range(args.rounds):
        train_times.append(timed(lambda: [loop.step() for _ in range(args.train_steps)], loop.device))
    train_per_image = median(train_times) / (args.train_steps * args.train_batch_size)

    # 3. generation: the same UNet, scheduler and seed with and without the sound, interleaved
    torch.manual_seed(0)
    unet = build_unet(f"mel{size}").eval()
    scheduler = make_scheduler(args.scheduler, HFDDPMScheduler().config)
    image_pipe = HFDDPMPipeline(unet=unet, scheduler=scheduler)
    audio_pipe = HFDDPMAudioPipeline(unet=unet, scheduler=scheduler, mel=mel)
    calls = {"spectrograms": image_pipe, "sound": audio_pipe}
    seconds = {name: [] for name in calls}
    for pipe in calls.values():
        pipe.set_progress_bar_config(disable=True)
    kwargs = {"batch_size": args.batch_size, "num_inference_steps": args.inference_steps, "output_type": "pt"}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, pipe in calls.items():
            generator = torch.Generator().manual_seed(round_)
            elapsed = timed(lambda p=pipe, g=generator: p(**kwargs, generator=g), torch.device("cpu"))
            if round_:
                seconds[name].append(elapsed)
    spectro, sound = median(seconds["spectrograms"]), median(seconds["sound"])
    return {
        "size": f"{size}x{size}",
        "preset": f"mel{size}",
        "audio_seconds": round(mel.audio_seconds, 3),
        "sample_rate": mel.sample_rate,
        "clip_to_spectrogram_ms": round(1000 * to_image, 2),
        "train_step_per_image_ms": round(1000 * train_per_image, 2),
        "conversion_vs_train_step": round(to_image / train_per_image, 4),
        "griffin_lim_ms": round(1000 * griffin_lim, 2),
        "griffin_lim_iterations": args.n_iter,
        "spectrogram_call_s": round(spectro, 4),
        "sound_call_s": round(sound, 4),
        "sound_vs_spectrograms": round(sound / spectro, 4),
        "calls": seconds,
        "batch_size": args.batch_size,
        "inference_steps": args.inference_steps,
        "scheduler": args.scheduler,
        "train_batch_size": args.train_batch_size,
        "train_times_s": train_times,
        "mixed_precision": loop.mixed_precision,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64], choices=sorted(SETTINGS))
    parser.add_argument("--clips", type=int, default=20, help="clips converted (and the training data)")
    parser.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations (HFDDPMMel's default: 32)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per pipeline call")
    parser.add_argument("--inference-steps", type=int, default=20)
    parser.add_argument("--scheduler", default="dpmsolver++", choices=sorted(SCHEDULERS))
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each call (after a warm-up round)")
    parser.add_argument("--train-steps", type=int, default=2, help="training steps per timed round")
    parser.add_argument("--train-batch-size", type=int, default=16, help="16: the spoken-digit demo's batch")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default="audio.json", help="file name under benchmarks/results/ (or a path)")
    args = parser.parse_args(argv)
    if args.clips < args.train_batch_size:
        parser.error(f"--clips {args.clips} must be at least --train-batch-size {args.train_batch_size}")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [measure(size, args) for size in args.sizes]
    headers = ["spectrogram", "clip", "clip -> spectrogram", "training step per image", "ratio",
               "spectrograms, s/call", "with sound, s/call", "ratio", "Griffin-Lim per clip"]  # fmt: skip
    table = [
        [r["size"], f"{r['audio_seconds']} s at {r['sample_rate']} Hz", f"{r['clip_to_spectrogram_ms']:.1f} ms",
         f"{r['train_step_per_image_ms']:.1f} ms", f"{r['conversion_vs_train_step']:.3f}x",
         f"{r['spectrogram_call_s']:.3f}", f"{r['sound_call_s']:.3f}", f"{r['sound_vs_spectrograms']:.3f}x",
         f"{r['griffin_lim_ms']:.1f} ms ({r['griffin_lim_iterations']})"]
        for r in rows
    ]  # fmt: skip
    print(markdown_table(headers, table))
    path = write_json(args.out, {"environment": environment(), "args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
