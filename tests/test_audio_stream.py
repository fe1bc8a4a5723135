"""Streamed audio (``--streaming`` with an audio dataset): clips converted one by one, in the DataLoader, into the
spectrograms the map-style path makes; broken clips judged as they come; a streamed run that trains, resumes where it
stopped and saves a pipeline that makes sound. All audio is generated here (tones and chirps written as WAV files).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import soundfile
import torch
from audio_helpers import SR, tone
from safetensors.torch import load_file
from train_helpers import ROOT, run_train

from hfddpm import HFDDPMAudioPipeline, HFDDPMMel, HFDDPMPipeline
from hfddpm.audio import (
    SpectrogramConverter,
    load_audio_folder,
    resolve_audio_column,
    spectrogram_dataset,
    spectrogram_stream,
)
from hfddpm.data import load_train_dataset, make_train_dataloader, resolve_columns
from hfddpm.training import TrainConfig
from hfddpm.training.engine import setup

# 16 bands x 16 frames of 16 kHz audio: (16 - 1) * 64 / 16000 = 0.06 s
MEL = dict(sample_rate=SR, n_fft=256, hop_length=64, n_mels=16, num_frames=16)
FLAGS = ["--resolution", "16", "--sample_rate", "16000", "--n_fft", "256", "--hop_length", "64"]


def chirp(low: float, high: float, seconds: float, rate: int = SR) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * (low * t + (high - low) / (2 * seconds) * t**2))).astype(np.float32)


def audio_folder(root, *, broken: int = 0):
    """Three classes; per class a tone (0.1 s, cut), a stereo chirp (0.04 s, padded) and a 22.05 kHz tone; then
    ``broken`` files that are not audio, in class ``low``."""
    for label, freq in (("high", 3000), ("low", 400), ("mid", 1200)):
        (root / label).mkdir(parents=True)
        soundfile.write(root / label / "a.wav", tone(freq, 0.1), SR)
        soundfile.write(root / label / "b.wav", np.stack([chirp(freq, 2 * freq, 0.04)] * 2, axis=1), SR)
        soundfile.write(root / label / "c.wav", tone(freq, 0.08, 22050), 22050)
    for i in range(broken):
        (root / "low" / f"broken{i}.wav").write_bytes(b"RIFF\x00\x00 not audio")
    return root


def _batches(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_streamed_spectrograms_are_the_map_style_ones(tmp_path):
    folder = audio_folder(tmp_path / "clips")
    mel = HFDDPMMel(**MEL)
    images = spectrogram_dataset(load_audio_folder(folder), "audio", mel, "label")
    stream, columns, convert = spectrogram_stream(
        load_train_dataset(train_data_dir=str(folder), streaming=True), "audio", mel, "label"
    )
    assert columns.image_column == "audio" and columns.class_names == ["high", "low", "mid"]
    rows = list(stream)
    assert len(rows) == len(images) == 9
    for i, row in enumerate(rows):  # the same clips in the same order: pixel for pixel the same 16-bit image
        assert row["label"] == images[i]["label"]
        streamed = convert(row["audio"])
        assert streamed.mode == images[i]["image"].mode == "I;16"
        np.testing.assert_array_equal(np.asarray(streamed), np.asarray(images[i]["image"]))
    # and the same training batches, through the image machinery of either path
    kwargs = dict(resolution=16, channels=1, batch_size=4, seed=0, shuffle=False)
    mapped = _batches(make_train_dataloader(images, resolve_columns(images, "image", "label"), **kwargs), 2)
    streamed = _batches(make_train_dataloader(stream, columns, decode=convert, **kwargs), 2)
    for a, b in zip(mapped, streamed, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["class_labels"], b["class_labels"])
    assert streamed[0]["pixel_values"].amin() >= -1 and streamed[0]["pixel_values"].amax() == 1


def test_dataloader_workers_give_the_batches_of_one_reader(tmp_path):
    folder = audio_folder(tmp_path / "clips", broken=1)
    dataset = load_train_dataset(train_data_dir=str(folder), streaming=True)
    kwargs = dict(resolution=16, channels=1, batch_size=4, seed=1, shuffle_buffer_size=8)
    loaders = {}
    for workers in (0, 2):
        stream, columns, convert = spectrogram_stream(
            dataset, "audio", HFDDPMMel(**MEL), "label", max_bad_fraction=0.5
        )
        loaders[workers] = _batches(
            make_train_dataloader(stream, columns, decode=convert, num_workers=workers, **kwargs), 6
        )
    for a, b in zip(loaders[0], loaders[2], strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["class_labels"], b["class_labels"])
        assert torch.equal(a["position"], b["position"]) and int(a["num_bad_images"]) == int(b["num_bad_images"])
    assert [b["position"].tolist() for b in loaders[0]] == [[0, 4], [0, 8], [0, 10], [1, 4], [1, 8], [1, 10]]
    # the broken clip, read in both epochs, is counted and named once
    assert sum(int(b["num_bad_images"]) for b in loaders[0]) == 1
    assert [e for b in loaders[2] for e in b["bad_examples"]] == [e for b in loaders[0] for e in b["bad_examples"]]
    assert re.fullmatch(r"example \d+ .* \(.*broken0\.wav\)", *[e for b in loaders[0] for e in b["bad_examples"]])


def test_a_22050_hz_clip_in_a_16000_hz_stream_is_resampled_and_logged_once(tmp_path, caplog):
    folder = audio_folder(tmp_path / "clips")
    stream, columns, _ = spectrogram_stream(
        load_train_dataset(train_data_dir=str(folder), streaming=True), "audio", HFDDPMMel(**MEL), "label"
    )
    convert = SpectrogramConverter(HFDDPMMel(**MEL), summary_every=9)
    loader = make_train_dataloader(stream, columns, resolution=16, channels=1, batch_size=3, seed=0, decode=convert)
    with caplog.at_level("INFO", logger="hfddpm.audio"):
        _batches(loader, 9)  # three passes over the 9 clips, counted once
    records = [r for r in caplog.records if r.name == "hfddpm.audio"]
    assert convert.num_read == 9 and convert.resampled == {22050: 3} and convert.mixed == {2: 3}
    assert (convert.cut, convert.padded) == (6, 3)  # 0.1 and 0.08 s tones cut, 0.04 s chirps padded to 0.06 s
    first = [r for r in records if r.message.startswith("Resampling")]
    assert len(first) == 1 and first[0].levelname == "WARNING"
    assert re.fullmatch(
        r"Resampling clips from 22050 Hz to 16000 Hz \(the first: clip \d \(.*c\.wav\)\)\.", first[0].message
    )
    assert sum(r.message.startswith("Mixing clips with 2 channels down to mono") for r in records) == 1
    # a summary every 9 distinct clips, not a line per clip (nor one per pass)
    assert [r.message for r in records if r.message.startswith("Resampled")] == [
        "Resampled 3 of 9 clips to 16000 Hz (3 at 22050 Hz)."
    ]
    assert len(records) == 4 + 3  # 4 first-of-a-kind lines (resampled, mixed, cut, padded), 1 summary of 3


def test_a_broken_clip_read_in_two_passes_is_counted_once(tmp_path, caplog):
    folder = audio_folder(tmp_path / "clips", broken=1)  # 10 clips, one broken
    stream, columns, _ = spectrogram_stream(
        load_train_dataset(train_data_dir=str(folder), streaming=True), "audio", HFDDPMMel(**MEL), "label"
    )
    convert = SpectrogramConverter(HFDDPMMel(**MEL), summary_every=10)
    loader = make_train_dataloader(stream, columns, resolution=16, channels=1, batch_size=5, seed=0, decode=convert)
    with caplog.at_level("INFO", logger="hfddpm.audio"):
        batches = _batches(loader, 4)
    assert [b["position"].tolist() for b in batches] == [[0, 5], [0, 10], [1, 5], [1, 10]]  # two passes
    assert (convert.num_bad, convert.num_read) == (1, 10)  # as the batches count: distinct clips
    assert sum(int(b["num_bad_images"]) for b in batches) == 1 and len(convert.bad) == 1
    skipped = [r.message for r in caplog.records if r.message.startswith("Skipped")]
    assert len(skipped) == 1 and skipped == [convert.summary()[-1]]
    assert re.fullmatch(
        r"Skipped 1 of 10 audio clips that could not be read: clip \d+ \(.*broken0\.wav\): not readable as audio"
        r" \(.*\)\.",
        skipped[0],
    )


def test_a_stream_with_too_many_broken_clips_stops_naming_them(tmp_path):
    folder = audio_folder(tmp_path / "clips", broken=4)  # 4 of 13 clips broken: 30.8 %
    dataset = load_train_dataset(train_data_dir=str(folder), streaming=True)
    mel = HFDDPMMel(**MEL)
    stream, columns, convert = spectrogram_stream(dataset, "audio", mel, "label", max_bad_fraction=0.35)
    kwargs = dict(resolution=16, channels=1, batch_size=4, seed=0)
    batches = _batches(make_train_dataloader(stream, columns, decode=convert, **kwargs), 60)  # 240 clips: allowed
    # the batches and the converter count distinct clips: those of the first pass, not again in the 17 after it
    assert (
        sum(int(b["num_bad_images"]) for b in batches) == 4 and sum(int(b["num_read_images"]) for b in batches) == 13
    )
    assert (convert.num_bad, convert.num_read) == (4, 13) and convert.seen and len(convert.seen) == 13
    # judged once min_clips distinct clips were read: 13 clips read 18 times never make 14
    convert = SpectrogramConverter(mel, max_bad_fraction=0.25, min_clips=14)
    _batches(make_train_dataloader(stream, columns, decode=convert, **kwargs), 60)
    convert = SpectrogramConverter(mel, max_bad_fraction=0.25, min_clips=13)
    with pytest.raises(ValueError) as error:
        _batches(make_train_dataloader(stream, columns, decode=convert, **kwargs), 4)  # the 13th: end of the 1st pass
    message = str(error.value)
    assert re.match(r"4 of the 13 audio clips could not be read \(30\.8% > --max_bad_image_fraction 0.25\):"
                    r" clip \d+ \(.*broken\d\.wav\): not readable as audio", message)  # fmt: skip
    assert len(set(re.findall(r"broken\d\.wav", message))) == 3  # the first three, each once
    assert message.endswith("; .... Remove or repair them, or raise --max_bad_image_fraction to skip them.")


def test_stream_columns_and_settings_are_checked(tmp_path):
    folder = audio_folder(tmp_path / "clips")
    base = dict(train_data_dir=str(folder), streaming=True, preset="tiny", resolution=16, sample_rate=SR, n_fft=256)
    with pytest.raises(
        ValueError, match=r"Label column 'digit' not found; the dataset has columns \['audio', 'label'"
    ):
        setup(TrainConfig(**base, label_column="digit"))
    with pytest.raises(ValueError, match="--num_epochs needs the dataset size.*--max_train_steps"):
        setup(TrainConfig(**base, num_epochs=2))
    with pytest.raises(ValueError, match=r"Audio column 'sound' not found.*Audio columns: \['audio'\]"):
        setup(TrainConfig(**base, audio_column="sound"))
    run = setup(TrainConfig(**base, label_column="label"))
    assert run.columns.class_names == ["high", "low", "mid"] and run.unet.config.num_class_embeds == 4
    assert isinstance(run.decode, SpectrogramConverter) and run.mel.config.num_frames == 16
    unlabelled = setup(TrainConfig(**base))
    assert unlabelled.columns.label_column is None and unlabelled.unet.config.num_class_embeds is None
    with pytest.raises(ValueError, match="decode= applies to streams"):
        make_train_dataloader(load_audio_folder(folder), run.columns, resolution=16, channels=1, batch_size=2, seed=0,
                              decode=run.decode)  # fmt: skip
    with pytest.raises(ValueError, match="spectrogram_stream converts a datasets.IterableDataset"):
        spectrogram_stream(load_audio_folder(folder), "audio", run.mel)


def _weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def test_streamed_audio_run_trains_resumes_and_saves_a_pipeline_that_makes_sound(tmp_path):
    folder = audio_folder(tmp_path / "clips", broken=1)
    out = tmp_path / "out"
    args = ["--train_data_dir", str(folder), "--streaming", "--label_column", "label", *FLAGS,
            "--train_batch_size", "4", "--max_bad_image_fraction", "0.5", "--mixed_precision", "no",
            "--validation_steps", "0", "--checkpointing_steps", "3", "--max_train_steps", "6"]  # fmt: skip
    result = run_train([*args, "--output_dir", str(out)], tmp_path)
    assert result.stderr.count("Resampling clips from 22050 Hz to 16000 Hz") == 1
    state = json.loads((out / "checkpoints" / "checkpoint-6" / "training_state.json").read_text())
    # 10 clips an epoch (one broken: skipped, counted once), batches of 4: two epochs in 6 steps
    assert state["data_positions"] == [[1, 10]] and state["num_read_images"] == 10 and state["num_bad_images"] == 1
    resolved = json.loads((out / "training_config.json").read_text())["resolved"]
    assert resolved["class_names"] == ["high", "low", "mid"] and resolved["mel"]["sample_rate"] == SR

    # resumed from checkpoint-3, the stream continues where it stopped: the same weights as the uninterrupted run
    resumed = tmp_path / "resumed"
    shutil.copytree(out / "checkpoints" / "checkpoint-3", resumed / "checkpoints" / "checkpoint-3")
    result = run_train([*args, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"], tmp_path)
    assert "Resuming from" in result.stderr and "checkpoint-3" in result.stderr
    again = json.loads((resumed / "checkpoints" / "checkpoint-6" / "training_state.json").read_text())
    assert again["data_positions"] == [[1, 10]] and again["num_read_images"] == 10
    for sub in ("unet", "unet_ema"):
        a, b = (
            _weights(out / "checkpoints" / "checkpoint-6" / sub),
            _weights(resumed / "checkpoints" / "checkpoint-6" / sub),
        )
        assert all(torch.equal(a[k], b[k]) for k in a)

    pipe = HFDDPMPipeline.from_pretrained(out)
    assert type(pipe) is HFDDPMAudioPipeline and pipe.mel.config.sample_rate == SR
    pipe.set_progress_bar_config(disable=True)
    sound = pipe(batch_size=3, class_labels=[0, 1, 2], num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert sound.audios.shape == (3, 960) and sound.sample_rate == SR and np.isfinite(sound.audios).all()


def test_bench_audio_stream_smoke(tmp_path):
    out = tmp_path / "audio_stream.json"
    args = ["--clips", "8", "--seconds", "0.3", "--batch-size", "4", "--batches", "3", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    bench = ROOT / "benchmarks" / "bench_audio_stream.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [(r["path"], r["workers"]) for r in rows] == [("map-style", 0), ("streamed", 0)]
    assert rows[0]["conversion_up_front_s"] > 0 and all(r["clips_per_second"] > 0 for r in rows)
    # no DataLoader workers: a warm-up of one batch; then 3 batches of 4 timed, two of them from the second pass
    # (num_read_images, which counts distinct clips, would have given 4)
    assert all((r["warmup_batches"], r["timed_batches"], r["timed_clips"]) == (1, 3, 12) for r in rows)
    assert all(r["first_batch_s"] >= 0 for r in rows)
    assert "| streamed | 0 | 0.00 s |" in result.stdout and "after a warm-up of 1 (" in result.stdout
    assert re.search(r"\| map-style \| 0 \| [\d.]+ s \| [\d.]+ s \| [\d.]+ \| 1\.00x \|", result.stdout)


def test_a_stream_of_unknown_features_trains_on_the_audio_column_named(tmp_path):
    folder = audio_folder(tmp_path / "clips")
    paths = sorted(str(p) for p in folder.rglob("*.wav"))

    def rows():  # e.g. a json stream of file paths: no datasets.Audio feature to find
        yield from ({"sound": path, "note": "x"} for path in paths)

    stream = datasets.IterableDataset.from_generator(rows)
    assert stream.features is None and resolve_audio_column(stream, None) is None
    with pytest.raises(
        ValueError, match=r"Audio column 'audio' not found; the dataset has columns \['sound', 'note'\]"
    ):
        resolve_audio_column(stream, "audio")
    assert resolve_audio_column(stream, "sound") == "sound"
    numbered = datasets.IterableDataset.from_generator(lambda: ({"sound": p, "take": i} for i, p in enumerate(paths)))
    with pytest.raises(
        ValueError,
        match=r"^Column 'take' is not audio: its feature is unknown; its first value is 0 \(int\)\. .* No column has",
    ):
        resolve_audio_column(numbered, "take")  # judged by its first value
    with pytest.raises(ValueError, match=r"Label column 'note' has label '.*' in example 0 of the stream; .* cast it"):
        spectrogram_stream(stream, "sound", HFDDPMMel(**MEL), "note")
    stream, columns, convert = spectrogram_stream(stream, "sound", HFDDPMMel(**MEL))
    batch = next(
        iter(make_train_dataloader(stream, columns, resolution=16, channels=1, batch_size=9, seed=0, decode=convert))
    )
    assert batch["pixel_values"].shape == (9, 1, 16, 16) and "class_labels" not in batch
    assert convert.num_read == 9 and convert.resampled == {22050: 3}


def test_a_streamed_parquet_dataset_with_wav_bytes_as_on_the_hub(tmp_path, monkeypatch):
    import io

    import pyarrow as pa

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    clips = []
    for i in range(6):
        buffer = io.BytesIO()
        # six distinct clips: the converter tells clips apart by their bytes when they have no path
        soundfile.write(buffer, tone(400 * (1 + i % 2) + 10 * i, 0.05, 22050), 22050, format="WAV")
        clips.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"speech": datasets.Audio(), "label": datasets.ClassLabel(names=["low", "high"])})
    table = pa.table({"speech": pa.array(clips, type=datasets.Audio().pa_type), "label": [0, 1] * 3})
    (tmp_path / "data").mkdir()
    datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features)).to_parquet(
        tmp_path / "data" / "train.parquet"
    )
    stream = load_train_dataset(str(tmp_path / "data"), streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and resolve_audio_column(stream, None) == "speech"
    stream, columns, convert = spectrogram_stream(stream, "speech", HFDDPMMel(**MEL), "label")
    assert columns.class_names == ["low", "high"]
    loader = make_train_dataloader(stream, columns, resolution=16, channels=1, batch_size=6, seed=0, decode=convert)
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (6, 1, 16, 16) and sorted(batch["class_labels"].tolist()) == [
        0,
        0,
        0,
        1,
        1,
        1,
    ]
    assert convert.resampled == {22050: 6} and convert.padded == 6 and convert.num_bad == 0
