"""What audio costs besides the UNet: clip -> log-mel spectrogram (training data, once per clip) and spectrogram ->
waveform by Griffin-Lim (every generated clip), with the product's own HFDDPMMel, at the mel64 and mel256 sizes.

python benchmarks/bench_audio.py                   # prints a markdown table, writes benchmarks/results/audio.json
python benchmarks/bench_audio.py --clips 2 --n-iter 4 --sizes 64   # smoke run
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hfddpm import HFDDPMMel

# mel64: ~1 s at 16 kHz (the spoken-digit demo); mel256: ~5.9 s at 22.05 kHz, hop 512 (the former audio-diffusion)
SETTINGS = {
    64: {"sample_rate": 16000, "n_fft": 1024, "hop_length": 256, "n_mels": 64, "num_frames": 64},
    256: {"sample_rate": 22050, "n_fft": 2048, "hop_length": 512, "n_mels": 256, "num_frames": 256},
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=20)
    parser.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations (HFDDPMMel's default: 32)")
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(SETTINGS), choices=sorted(SETTINGS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audio.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    for size in args.sizes:
        mel = HFDDPMMel(**SETTINGS[size], n_iter=args.n_iter)
        t = np.arange(mel.num_samples) / mel.sample_rate
        clips = [np.sin(2 * np.pi * rng.uniform(100, 2000) * t).astype(np.float32) for _ in range(args.clips)]
        mel.audio_to_spectrogram(clips[0])  # librosa's first call compiles and caches
        start = time.perf_counter()
        images = np.stack([mel.audio_to_spectrogram(clip) for clip in clips])
        to_image = (time.perf_counter() - start) / args.clips
        start = time.perf_counter()
        mel.spectrogram_to_audio(images)
        to_audio = (time.perf_counter() - start) / args.clips
        rows.append(
            {
                "size": f"{size}x{size}",
                "audio_seconds": round(mel.audio_seconds, 3),
                "sample_rate": mel.sample_rate,
                "clip_to_spectrogram_ms": round(1000 * to_image, 2),
                "griffin_lim_ms": round(1000 * to_audio, 2),
                "griffin_lim_iterations": args.n_iter,
                "torch_threads": torch.get_num_threads(),
            }
        )
    print("| spectrogram | clip | clip -> spectrogram | Griffin-Lim (n_iter) |")
    print("|---|---|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']} | {r['audio_seconds']} s at {r['sample_rate']} Hz | {r['clip_to_spectrogram_ms']:.1f} ms"
            f" | {r['griffin_lim_ms']:.1f} ms ({r['griffin_lim_iterations']}) |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
