"""Can a streamed audio dataset feed training? Clips per second delivered as training batches by the product's own
data path (hfddpm.data.make_train_dataloader), for an audio folder of WAV files at 22.05 kHz (resampled to 16 kHz,
mel64 spectrograms):

- map-style: every clip converted once up front (hfddpm.audio.spectrogram_dataset; its time is reported), then the
  batches of the converted 16-bit images;
- streamed (``--streaming``): each clip read, resampled and converted inside the DataLoader as it is read
  (hfddpm.audio.spectrogram_stream), with 0 and more DataLoader workers.

Compare the streamed clips/s with the images/s of training (bench_train_throughput.py): while it is higher, the
stream is not the bottleneck.

python benchmarks/bench_audio_stream.py                          # 200 clips of 1 s, batches of 16, workers 0 and 2
python benchmarks/bench_audio_stream.py --clips 16 --batches 2 --workers 0   # smoke run
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile
import torch

from hfddpm import HFDDPMMel
from hfddpm.audio import load_audio_folder, spectrogram_dataset, spectrogram_stream
from hfddpm.data import load_train_dataset, make_train_dataloader, resolve_columns

# the spoken-digit demo's conversion (mel64): 16 kHz, n_fft 1024, hop 256, 64 x 64
MEL = {"sample_rate": 16000, "n_fft": 1024, "hop_length": 256, "n_mels": 64, "num_frames": 64}
CLIP_RATE = 22050


def write_clips(folder: Path, num_clips: int, seconds: float) -> None:
    """``num_clips`` tones of ``seconds`` at 22.05 kHz, in two class sub-folders."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * CLIP_RATE)) / CLIP_RATE
    for i in range(num_clips):
        label = folder / f"class{i % 2}"
        label.mkdir(parents=True, exist_ok=True)
        soundfile.write(label / f"{i:05d}.wav", 0.5 * np.sin(2 * np.pi * rng.uniform(100, 3000) * t), CLIP_RATE)


def clips_per_second(loader, num_batches: int) -> float:
    it = iter(loader)
    next(it)  # workers started, first shuffle buffer filled
    start, clips = time.perf_counter(), 0
    for _ in range(num_batches):
        clips += int(next(it)["num_read_images"])
    return clips / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "audio_stream.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    mel = HFDDPMMel(**MEL)
    kwargs = dict(resolution=mel.config.n_mels, channels=1, batch_size=args.batch_size, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "clips"
        write_clips(folder, args.clips, args.seconds)
        start = time.perf_counter()
        images = spectrogram_dataset(load_audio_folder(folder), "audio", mel, "label")
        up_front = time.perf_counter() - start
        loader = make_train_dataloader(images, resolve_columns(images, "image", "label"), **kwargs)
        rows.append(
            {
                "path": "map-style",
                "workers": 0,
                "conversion_up_front_s": round(up_front, 2),
                "clips_per_second": round(clips_per_second(loader, args.batches), 1),
            }
        )
        for workers in args.workers:
            stream = load_train_dataset(train_data_dir=str(folder), streaming=True)
            stream, columns, convert = spectrogram_stream(stream, "audio", mel, "label")
            loader = make_train_dataloader(stream, columns, decode=convert, num_workers=workers, **kwargs)
            rows.append(
                {
                    "path": "streamed",
                    "workers": workers,
                    "conversion_up_front_s": 0.0,
                    "clips_per_second": round(clips_per_second(loader, args.batches), 1),
                }
            )
    for row in rows:
        row.update(
            clips=args.clips, clip_seconds=args.seconds, clip_rate=CLIP_RATE, torch_threads=torch.get_num_threads()
        )
    print(f"{args.clips} clips of {args.seconds:g} s at {CLIP_RATE} Hz -> 64x64 spectrograms at 16 kHz")
    print("| path | DataLoader workers | converted up front | clips/s as batches |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['path']} | {r['workers']} | {r['conversion_up_front_s']:.2f} s | {r['clips_per_second']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
