"""Can a streamed audio dataset feed training? Clips per second delivered as training batches by the product's own
data path (hfddpm.data.make_train_dataloader), for an audio folder of WAV files at 22.05 kHz (resampled to 16 kHz,
mel64 spectrograms):

- map-style: every clip converted once up front (hfddpm.audio.spectrogram_dataset; its time is reported), then the
  batches of the converted 16-bit images;
- streamed (``--streaming``): each clip read, resampled and converted inside the DataLoader as it is read
  (hfddpm.audio.spectrogram_stream), with 0 and more DataLoader workers.

Every configuration is timed alike: the clock starts after the same warm-up of batches, more than any of its
DataLoaders can prepare ahead (workers x prefetch_factor), and counts the clips of the next ``--batches`` batches (rows
delivered, every pass); the time to the first batch (workers started, shuffle buffer filled) is reported apart.
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


def warmup_batches(loaders) -> int:
    """The batches read before the clock starts, the same for every loader of a run: one more than the most that any
    of them holds prepared ahead (``num_workers * prefetch_factor``; none without workers).

    Up to that many batches can be decoded while the workers start and the first batch is awaited; timed, they would
    be counted without their cost (timing from the first batch on flattered the rate with workers). Past them, this
    consumer (which only counts) drains every batch as soon as it is ready, so the clock sees the workers' steady rate.
    """
    return 1 + max(loader.num_workers * (loader.prefetch_factor or 0) for loader in loaders)


def time_batches(loader, warmup: int, num_batches: int) -> dict:
    """``{"first_batch_s", "timed_clips", "clips_per_second"}``: seconds from the iterator's creation to the first
    batch (workers started, shuffle buffer filled), and the clips of the ``num_batches`` batches read after
    ``warmup``, per second. Clips are the rows delivered (``pixel_values``), in every pass: ``num_read_images``
    counts distinct examples, none after the first pass."""
    start = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(it)
    start, clips = time.perf_counter(), 0
    for _ in range(num_batches):
        clips += next(it)["pixel_values"].shape[0]
    seconds = time.perf_counter() - start
    return {"first_batch_s": round(first, 2), "timed_clips": clips, "clips_per_second": round(clips / seconds, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per configuration, after the warm-up")
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
        # every loader first (its workers start only when it is read): one warm-up for all of them
        mapped = make_train_dataloader(images, resolve_columns(images, "image", "label"), **kwargs)
        configs = [("map-style", 0, up_front, mapped)]
        for workers in args.workers:
            stream = load_train_dataset(train_data_dir=str(folder), streaming=True)
            stream, columns, convert = spectrogram_stream(stream, "audio", mel, "label")
            loader = make_train_dataloader(stream, columns, decode=convert, num_workers=workers, **kwargs)
            configs.append(("streamed", workers, 0.0, loader))
        warmup = warmup_batches([loader for *_, loader in configs])
        del mapped
        while configs:
            path, workers, converted, loader = configs.pop(0)
            row = {"path": path, "workers": workers, "conversion_up_front_s": round(converted, 2)}
            rows.append({**row, **time_batches(loader, warmup, args.batches)})
            del loader  # the last reference: its workers stop before the next configuration is timed
    for row in rows:
        row.update(
            clips=args.clips,
            clip_seconds=args.seconds,
            clip_rate=CLIP_RATE,
            warmup_batches=warmup,
            timed_batches=args.batches,
            batch_size=args.batch_size,
            torch_threads=torch.get_num_threads(),
        )
    print(f"{args.clips} clips of {args.seconds:g} s at {CLIP_RATE} Hz -> 64x64 spectrograms at 16 kHz, batches of"
          f" {args.batch_size}: clips/s over {args.batches} batches after a warm-up of {warmup} (more than any"
          " DataLoader here prepares ahead), every configuration alike")  # fmt: skip
    print("| path | DataLoader workers | converted up front | first batch | clips/s as batches | vs map-style |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['path']} | {r['workers']} | {r['conversion_up_front_s']:.2f} s | {r['first_batch_s']:.2f} s |"
            f" {r['clips_per_second']:.1f} | {r['clips_per_second'] / rows[0]['clips_per_second']:.2f}x |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
