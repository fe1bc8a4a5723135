"""Spectrogram diffusion: the mel conversion and Griffin-Lim, audio data (resampling, stereo, broken clips), a tiny
training run from an audio folder, the audio pipeline saved and loaded three ways, WAV output. All audio is generated
here (tones and chirps), so no system package is needed; the espeak-ng demo script is tested where it is installed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap

import datasets
import librosa
import numpy as np
import pytest
import soundfile
import torch
from audio_helpers import SR, TINY_MEL, tone
from train_helpers import ROOT, run_train

from hfddpm import HFDDPMAudioPipeline, HFDDPMMel, HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.audio import (
    AudioDecodeError,
    SpectrogramConverter,
    clip_key,
    decode_audio,
    is_audio_folder,
    load_audio_folder,
    resolve_audio_column,
    spectrogram_dataset,
    write_wav,
)
from hfddpm.training import TrainConfig
from hfddpm.training.engine import build_mel

MEL = dict(sample_rate=SR, n_fft=1024, hop_length=256, n_mels=64, num_frames=64)


def dominant_frequency(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform * np.hanning(len(waveform))))
    return float(np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()])


def mel_row(freq: float, mel: HFDDPMMel) -> int:
    """The image row of the mel band centred nearest ``freq`` (lowest band in the last row)."""
    c = mel.config
    centres = librosa.mel_frequencies(n_mels=c.n_mels + 2, fmax=c.sample_rate / 2)[1:-1]
    return c.n_mels - 1 - int(np.abs(centres - freq).argmin())


# ---------------------------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_griffin_lim_round_trip_keeps_the_pitch_of_a_tone(freq):
    mel = HFDDPMMel(**MEL)
    image = mel.audio_to_spectrogram(tone(freq, 1.0))
    assert image.shape == (64, 64) and image.dtype == np.float32 and image.max() == 1.0 and image.min() >= 0
    # the loudest row is the mel band of the tone (closed form of the Slaney mel scale)
    assert abs(int(image[:, 32].argmax()) - mel_row(freq, mel)) <= 1
    audio = mel.spectrogram_to_audio(image[None])[0]
    assert audio.shape == (mel.num_samples,) and np.abs(audio).max() == pytest.approx(0.9, rel=1e-5)
    # within half a mel band of the tone (the resolution of the spectrogram)
    centres = librosa.mel_frequencies(n_mels=66, fmax=SR / 2)
    band = float(np.diff(centres)[np.abs(centres[:-1] - freq).argmin()])
    assert abs(dominant_frequency(audio[2048:-2048], SR) - freq) < band / 2
    # deterministic, and the reconstruction's loudest band is still the tone's, in every frame
    np.testing.assert_array_equal(mel.spectrogram_to_audio(image[None])[0], audio)
    assert (np.abs(mel.audio_to_spectrogram(audio)[:, 4:-4].argmax(axis=0) - mel_row(freq, mel)) <= 1).all()


def test_a_rising_chirp_rises_in_the_image_and_lengths_are_fitted():
    mel = HFDDPMMel(**MEL)
    t = np.arange(mel.num_samples) / SR
    chirp = np.sin(2 * np.pi * (200 * t + (4000 - 200) / (2 * t[-1]) * t**2))  # 200 Hz -> 4 kHz
    rows = mel.audio_to_spectrogram(chirp).argmax(axis=0)
    assert rows[2] > rows[32] > rows[-3]  # higher frequency = nearer the top row
    assert mel.fit_length(np.ones(10)).shape == (mel.num_samples,) and mel.fit_length(np.ones(10))[10] == 0
    assert mel.fit_length(np.arange(10**5)).tolist()[-1] == mel.num_samples - 1  # cut: the beginning is kept
    assert mel.audio_seconds == pytest.approx(63 * 256 / SR)
    np.testing.assert_array_equal(mel.audio_to_spectrogram(np.zeros(100)), np.zeros((64, 64)))  # silence


def test_mel_arguments_are_checked():
    with pytest.raises(ValueError, match=r"n_mels=600 is more than the 513 frequency bins of n_fft=1024"):
        HFDDPMMel(n_mels=600)
    with pytest.raises(ValueError, match="hop_length must be an integer >= 1"):
        HFDDPMMel(hop_length=0)
    with pytest.raises(ValueError, match=r"must be \[\.\.\., 64, 64\]"):
        HFDDPMMel(**MEL).spectrogram_to_audio(np.zeros((2, 32, 32)))


# ---------------------------------------------------------------------------------------------------------------------
# Audio data
# ---------------------------------------------------------------------------------------------------------------------
def test_stereo_is_mixed_down_and_other_rates_resampled(tmp_path):
    left, right = tone(440, 0.5, 22050), tone(440, 0.5, 22050, amplitude=0.1)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    waveform, info = decode_audio({"bytes": None, "path": str(tmp_path / "stereo.wav")}, SR)
    assert info == {"mixed_down": 2, "resampled_from": 22050}
    assert len(waveform) == pytest.approx(0.5 * SR, abs=2)
    assert abs(dominant_frequency(waveform, SR) - 440) < 4  # same pitch at the new rate
    assert np.abs(waveform).max() == pytest.approx(0.3, rel=0.02)  # the mean of the channels
    same, info = decode_audio({"array": tone(440, 0.1), "sampling_rate": SR}, SR)  # decoded values too
    assert info == {} and len(same) == 1600
    with pytest.raises(AudioDecodeError, match="not readable as audio"):
        decode_audio({"bytes": b"RIFF not really", "path": None}, SR)


def _tone_folder(root, *, broken: int = 0, rate: int = 8000):
    """Three classes of tones (3 clips each; one stereo, one at 22.05 kHz) and ``broken`` broken files."""
    for label, freq in (("high", 1800), ("low", 300), ("mid", 900)):
        (root / label).mkdir(parents=True)
        soundfile.write(root / label / "a.wav", tone(freq, 0.2, rate), rate)
        soundfile.write(root / label / "b.flac", np.stack([tone(freq, 0.1, rate)] * 2, axis=1), rate)
        soundfile.write(root / label / "c.wav", tone(freq, 0.15, 22050), 22050)
    for i in range(broken):
        (root / "low" / f"broken{i}.wav").write_bytes(b"RIFF\x00\x00 nothing")
    (root / "low" / "empty.wav").write_bytes(b"") if broken else None
    return root


def test_audio_folder_gives_labels_and_spectrograms_with_counted_problems(tmp_path, caplog):
    folder = _tone_folder(tmp_path / "tones", broken=1)
    assert is_audio_folder(folder) and not is_audio_folder(ROOT / "hfddpm")
    dataset = load_audio_folder(folder)
    assert dataset.features["label"].names == ["high", "low", "mid"] and len(dataset) == 11
    assert resolve_audio_column(dataset, None) == "audio"
    mel = HFDDPMMel(**TINY_MEL)
    with pytest.raises(ValueError, match=r"2 of the 11 audio clips could not be read .*broken0\.wav.*empty\.wav"):
        spectrogram_dataset(dataset, "audio", mel, "label", max_bad_fraction=0.1)
    with caplog.at_level("INFO", logger="hfddpm.audio"):
        images = spectrogram_dataset(dataset, "audio", mel, "label", max_bad_fraction=0.2)
    assert len(images) == 9 and images.features["label"].names == ["high", "low", "mid"]
    assert "Resampled 3 of 11 clips to 8000 Hz (3 at 22050 Hz)" in caplog.text
    assert "Mixed 3 of 11 clips down to mono (3 with 2 channels)" in caplog.text
    assert "Skipped 2 of 11 audio clips" in caplog.text
    # 16-bit images whose loudest row is the tone's band
    first = images[0]["image"]
    assert first.mode == "I;16" and first.size == (16, 16)
    rows = {label: np.asarray(images[i]["image"])[:, 4].argmax() for i, label in enumerate(images["label"])}
    assert rows[0] < rows[2] < rows[1]  # high (1800 Hz) above mid (900 Hz) above low (300 Hz)


def test_a_stream_converter_counts_each_clip_once_however_often_it_is_read(tmp_path):
    write_wav(tmp_path / "a.wav", tone(440, 0.2, 8000), 8000)
    with open(tmp_path / "a.wav", "rb") as f:
        wav = f.read()
    clips = [
        str(tmp_path / "a.wav"),  # a path
        {"bytes": wav, "path": "a.wav"},  # undecoded bytes, as streamed from parquet
        {"bytes": wav, "path": "b.wav"},  # the same bytes as another file: another clip
        {"bytes": wav[:-2] + b"\x00\x01", "path": "a.wav"},  # other bytes at the same path: another clip
        {"array": tone(440, 0.2, 22050), "sampling_rate": 22050},  # decoded samples
        {"array": tone(440, 0.2, 22050).tolist(), "sampling_rate": 16000},  # the same samples at another rate
        {"bytes": b"not audio", "path": None},  # broken
    ]
    assert len({clip_key(c) for c in clips}) == len(clips)
    convert = SpectrogramConverter(HFDDPMMel(**TINY_MEL))
    first = [convert(c) for c in clips]
    again = [convert(c) for c in reversed(clips)]  # a second pass, in another order: converted, not counted
    assert [a is None for a in first] == [a is None for a in reversed(again)] == [False] * 6 + [True]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first[:-1], again[::-1][:-1], strict=True))
    assert (convert.num_read, convert.num_bad, convert.resampled) == (7, 1, {22050: 1, 16000: 1})
    assert re.fullmatch(
        r"Skipped 1 of 7 audio clips that could not be read: clip 7 \(bytes\): not readable as audio [^;]*\.",
        convert.summary()[-1],
    )  # named once
    # what tells clips apart is their content: identical bytes without a path are one clip
    assert clip_key({"bytes": wav, "path": None}) == clip_key({"bytes": bytes(wav), "path": None})


def test_audio_columns_are_found_or_named(tmp_path):
    dataset = load_audio_folder(_tone_folder(tmp_path / "tones"))
    with pytest.raises(ValueError, match=r"Audio column 'sound' not found.*Audio columns: \['audio'\]"):
        resolve_audio_column(dataset, "sound")
    two = dataset.add_column("other", dataset["audio"]).cast_column("other", datasets.Audio(decode=False))
    with pytest.raises(ValueError, match=r"several audio columns \['audio', 'other'\]; choose one with"):
        resolve_audio_column(two, None)
    with pytest.raises(ValueError, match=r"Label column 'digit' not found"):
        spectrogram_dataset(dataset, "audio", HFDDPMMel(**TINY_MEL), "digit")


def test_a_column_that_is_not_audio_is_refused_naming_its_feature(tmp_path):
    dataset = load_audio_folder(_tone_folder(tmp_path / "tones"))
    # the audiofolder's integer labels once reached soundfile, which read label 0 as stdin (file descriptor 0)
    with pytest.raises(
        ValueError,
        match=r"^Column 'label' is not audio: its feature is ClassLabel \(integer class labels of \['high', 'low',"
        r" 'mid'\]\)\. An audio column has a datasets.Audio feature or holds undecoded audio .* Audio columns:"
        r" \['audio'\]\. Pass the right one with --audio_column\.$",
    ):
        resolve_audio_column(dataset, "label")
    numbers = datasets.Dataset.from_dict({"digit": [3, 7], "pixels": [[0.5, 0.1], [0.2, 0.9]]})
    with pytest.raises(ValueError, match=r"Column 'digit' is not audio: its feature is Value\('int64'\)\..*No column"):
        resolve_audio_column(numbers, "digit")
    with pytest.raises(ValueError, match=r"Column 'pixels' is not audio: its feature is List\(Value\('float64'\)\)"):
        resolve_audio_column(numbers, "pixels")
    # undecoded audio without a datasets.Audio feature: path strings, {bytes, path} or {array, sampling_rate} dicts
    paths = [str(p) for p in sorted((tmp_path / "tones").rglob("*.wav"))][:2]
    clips = [{"array": tone(440, 0.1), "sampling_rate": SR}] * 2
    undecoded = datasets.Dataset.from_dict(
        {"path": paths, "clip": clips, "file": [{"bytes": None, "path": p} for p in paths]}
    )
    assert [resolve_audio_column(undecoded, c) for c in ("path", "clip", "file")] == ["path", "clip", "file"]
    assert resolve_audio_column(undecoded, None) is None  # found by name only


def test_a_column_of_words_or_urls_is_refused_before_any_clip_is_read(tmp_path):
    paths = [str(p) for p in sorted(_tone_folder(tmp_path / "tones").rglob("*.wav"))][:3]
    words = datasets.Dataset.from_dict({"path": paths, "word": ["yes", "no", "up"], "label": [0, 1, 2]})
    assert resolve_audio_column(words, "path") == "path"
    assert resolve_audio_column(words.to_iterable_dataset(), "path") == "path"
    message = (
        r"^Column 'word' holds strings that are not paths of audio files: its value in row 0, 'yes', is no existing"
        r" file\. An audio column has a datasets\.Audio feature or holds undecoded audio .* paths of audio files\)\."
        r" No column has a datasets\.Audio feature\. Pass the right one with --audio_column\.$"
    )
    with pytest.raises(ValueError, match=message):
        resolve_audio_column(words, "word")
    with pytest.raises(ValueError, match=message):
        resolve_audio_column(words.to_iterable_dataset(), "word")
    # one path of the first few missing, or a URL (never downloaded), is refused too
    missing = words.map(lambda row, i: {"path": row["path"] if i != 2 else "gone.wav"}, with_indices=True)
    with pytest.raises(ValueError, match=r"its value in row 2, 'gone\.wav', is no existing file\. An audio column"):
        resolve_audio_column(missing, "path")
    urls = datasets.Dataset.from_dict({"url": ["https://example.org/a.wav"]})
    with pytest.raises(
        ValueError, match=r"'https://example\.org/a\.wav', is no existing file \(URLs are not downloaded"
    ):
        resolve_audio_column(urls, "url")


@pytest.mark.parametrize(
    "value, match",
    [
        (0, r"^not audio: 0 \(int\); a clip is a path, bytes, or a dict with 'bytes', 'path' or 'array'"),
        (2, r"^not audio: 2 \(int\)"),
        ({"bytes": None, "path": 1}, r"^not audio: 1 \(int\)"),
        ({"bytes": 5, "path": "a.wav"}, r"^not audio: 5 \(int\)"),
        ([0.1, 0.2], r"^not audio: \[0.1, 0.2\] \(list\)"),
        (None, r"^an empty audio value"),
        ({"bytes": None, "path": None}, r"^an empty audio value"),
    ],
)
def test_decode_audio_refuses_values_that_are_not_clips(value, match):
    # never handed to soundfile, which takes an int for a file descriptor: it would read and close stdin (0)
    with pytest.raises(AudioDecodeError, match=match):
        decode_audio(value, SR)
    os.fstat(0)  # still open


@pytest.mark.parametrize(
    "flags, match",
    [
        (dict(n_mels=32), r"--n_mels 32 makes spectrograms 32 bands high, but the UNet takes 64 x 64 images"),
        (
            dict(audio_seconds=2.0, hop_length=256),
            r"--audio_seconds 2.0 at 16000 Hz with --hop_length 256 gives 126 spectrogram frames, but the UNet"
            r" takes 64; use --hop_length 508",
        ),
    ],
)
def test_spectrogram_sizes_the_unet_cannot_take_are_refused(flags, match):
    with pytest.raises(ValueError, match=match):
        build_mel(TrainConfig(preset="mel64", **flags), 64)


def test_audio_settings_resolve_to_the_unet_size():
    mel = build_mel(TrainConfig(preset="mel64", audio_seconds=0.63), 64)
    assert (mel.config.hop_length, mel.config.n_mels, mel.config.num_frames, mel.config.sample_rate) == (
        160,
        64,
        64,
        SR,
    )
    assert (
        build_mel(TrainConfig(), 256).config.hop_length == 256 and build_mel(TrainConfig(), 256).num_samples == 65280
    )


# ---------------------------------------------------------------------------------------------------------------------
# Training, saving, loading, sampling to WAV
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audio_run")
    folder = _tone_folder(tmp / "tones")
    out = tmp / "out"
    args = ["--train_data_dir", str(folder), "--label_column", "label", "--resolution", "16",
            "--sample_rate", "8000", "--n_fft", "256", "--hop_length", "64", "--max_train_steps", "3",
            "--validation_steps", "0", "--checkpointing_steps", "0", "--mixed_precision", "no",
            "--output_dir", str(out)]  # fmt: skip
    result = run_train(args, tmp)
    return out, result


def test_tiny_audio_model_trains_from_an_audio_folder(trained):
    out, result = trained
    assert "Resampled 3 of 9 clips to 8000 Hz" in result.stderr and "Mixed 3 of 9 clips down to mono" in result.stderr
    files = sorted(os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs)
    for name in ("pipeline_hfddpm.py", "pipeline_hfddpm_audio.py", "mel/mel_config.json", "mel/mel_hfddpm.py"):
        assert name in files
    mel_config = json.loads((out / "mel" / "mel_config.json").read_text())
    assert {k: mel_config[k] for k in TINY_MEL} == TINY_MEL
    resolved = json.loads((out / "training_config.json").read_text())["resolved"]
    assert resolved["mel"]["hop_length"] == 64 and resolved["class_names"] == ["high", "low", "mid"]
    assert resolved["in_channels"] == 1  # the tiny preset (3 channels) takes spectrograms with 1


def test_the_model_card_of_an_audio_run_says_it_makes_sound(trained):
    out, _ = trained
    card = (out / "README.md").read_text()
    # 16 frames of hop 64 at 8000 Hz: (16 - 1) * 64 / 8000 = 0.12 s
    assert "# Spectrogram DDPM" in card and "It generates sound: the images are 16×16 log-mel spectrograms" in card
    assert "into 0.12 s clips at\n8000 Hz" in card and "`.audios`" in card


def test_audio_pipeline_loads_three_ways_and_samples_the_same_sound(trained, tmp_path):
    out, _ = trained
    pipe = HFDDPMPipeline.from_pretrained(out)  # the class model_index.json names, from the allowlist
    assert type(pipe) is HFDDPMAudioPipeline and type(pipe.mel) is HFDDPMMel
    pipe.set_progress_bar_config(disable=True)
    sample = dict(batch_size=2, class_labels=[0, 2], guidance_scale=2.0, num_inference_steps=2)
    expected = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **sample)
    assert expected.audios.shape == (2, 960) and expected.sample_rate == 8000
    assert expected.images.shape == (2, 16, 16, 1)
    assert type(HFDDPMAudioPipeline.from_pretrained(out)) is HFDDPMAudioPipeline
    for hide in ("", 'sys.modules["hfddpm"] = None  # as if hfddpm were not installed'):
        code = f"""
            import sys
            {hide}
            import numpy as np, torch
            from diffusers import DiffusionPipeline
            pipe = DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)
            assert "hfddpm" not in sys.modules or sys.modules["hfddpm"] is None
            assert type(pipe).__name__ == "HFDDPMAudioPipeline" and type(pipe.mel).__name__ == "HFDDPMMel"
            pipe.set_progress_bar_config(disable=True)
            out = pipe(generator=torch.Generator().manual_seed(0), output_type="np", **{sample!r})
            np.save({str(tmp_path / "audios.npy")!r}, out.audios)
            pipe.save_pretrained({str(tmp_path / "resaved")!r})
            """
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        np.testing.assert_allclose(np.load(tmp_path / "audios.npy"), expected.audios, atol=1e-3)
        for name in ("pipeline_hfddpm.py", "pipeline_hfddpm_audio.py", "mel/mel_hfddpm.py"):
            assert (tmp_path / "resaved" / name).read_text() == (out / name).read_text()


def test_copied_audio_files_import_nothing_from_hfddpm():
    import hfddpm.pipelines.mel_hfddpm as mel_module
    import hfddpm.pipelines.pipeline_hfddpm_audio as pipeline_module

    for module in (mel_module, pipeline_module):
        source = open(module.__file__).read()
        assert not re.search(r"^\s*(import|from)\s+hfddpm", source, flags=re.MULTILINE)


def test_the_allowlist_refuses_a_foreign_mel_component(trained, tmp_path):
    out, _ = trained
    folder = tmp_path / "copy"
    shutil.copytree(out, folder, ignore=shutil.ignore_patterns("checkpoints", "samples", "logs"))
    index = json.loads((folder / "model_index.json").read_text())
    index["mel"] = ["my_vocoder", "Vocoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "my_vocoder.py").write_text("raise SystemExit('executed')\n")
    with pytest.raises(ValueError, match=r"'mel' is \[\"my_vocoder\", \"Vocoder\"\], a component outside"):
        HFDDPMPipeline.from_pretrained(folder)
    del index["mel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"has no 'mel' entry; a pipeline needs \['unet', 'scheduler', 'mel'\]"):
        HFDDPMPipeline.from_pretrained(folder)


@pytest.fixture
def image_pipeline_folder(tmp_path):
    """A saved image pipeline (no mel component) of a tiny one-channel UNet."""
    unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
    HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(tmp_path / "image")
    return tmp_path / "image"


def test_an_image_pipeline_loaded_as_audio_names_the_mel_entry_that_works(image_pipeline_folder):
    with pytest.raises(ValueError) as error:
        HFDDPMAudioPipeline.from_pretrained(image_pipeline_folder)
    assert str(error.value) == (
        f"{image_pipeline_folder / 'model_index.json'} has no 'mel' entry; a pipeline needs ['unet', 'scheduler',"
        ' \'mel\'], each given as [library, class name], e.g. "mel": ["mel_hfddpm", "HFDDPMMel"].'
    )


def test_the_mel_entry_the_error_names_loads(image_pipeline_folder):
    folder = image_pipeline_folder
    HFDDPMMel(**TINY_MEL).save_pretrained(folder / "mel")
    index = json.loads((folder / "model_index.json").read_text())
    index["mel"] = ["mel_hfddpm", "HFDDPMMel"]
    (folder / "model_index.json").write_text(json.dumps(index))
    pipe = HFDDPMAudioPipeline.from_pretrained(folder)
    assert isinstance(pipe, HFDDPMAudioPipeline) and pipe.mel.config.n_mels == TINY_MEL["n_mels"]


def test_hfddpm_sample_writes_wav_files_and_a_spectrogram_grid(trained, tmp_path, capsys):
    from hfddpm.cli import main

    out, _ = trained
    sounds = tmp_path / "sounds"
    args = [str(out), "--num-images", "4", "--num-inference-steps", "2", "--device", "cpu", "--out", str(sounds)]
    assert main(["sample", *args]) == 0
    names = sorted(p.name for p in sounds.iterdir())
    assert names == [f"sample_00{i}_label{i % 3}.wav" for i in range(4)] + ["spectrograms.png"]
    audio, rate = soundfile.read(sounds / names[0])
    assert rate == 8000 and audio.shape == (960,) and 0 < np.abs(audio).max() <= 1
    assert "Wrote 4 WAV files (8000 Hz, 0.12 s)" in capsys.readouterr().out
    assert main(["sample", *args[:-1], str(tmp_path / "grid.png")]) == 2
    assert "an audio pipeline writes a folder of WAV files" in capsys.readouterr().err


def test_write_wav_round_trip(tmp_path):
    write_wav(tmp_path / "a.wav", np.array([0.0, 0.5, -2.0]), 8000)
    audio, rate = soundfile.read(tmp_path / "a.wav")
    assert rate == 8000 and soundfile.info(tmp_path / "a.wav").subtype == "PCM_16"
    np.testing.assert_allclose(audio, [0.0, 0.5, -1.0], atol=1 / 32767)


def test_an_rgb_unet_config_is_refused_for_spectrograms(tmp_path):
    from hfddpm.training.engine import setup

    config = dict(build_unet("tiny", sample_size=16).config)
    (tmp_path / "unet.json").write_text(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))
    folder = _tone_folder(tmp_path / "tones")
    flags = dict(train_data_dir=str(folder), unet_config=str(tmp_path / "unet.json"), sample_rate=8000, n_fft=256)
    with pytest.raises(ValueError, match=r"Spectrograms are 1 x 16 x 16 .* but the UNet takes 3 x 16 x 16 images"):
        setup(TrainConfig(**flags))
    with pytest.raises(ValueError, match="--random_flip would play spectrograms backwards"):
        setup(TrainConfig(**flags, random_flip=True))


# ---------------------------------------------------------------------------------------------------------------------
# The espeak-ng demo data
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_spoken_digit_script_writes_a_labelled_audio_folder(tmp_path):
    script = ROOT / "training" / "make_spoken_digits.py"
    args = ["--output_dir", str(tmp_path / "digits"), "--accents", "en-us", "--voices", "m3", "f2", "--settings", "1"]
    proc = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    dataset = load_audio_folder(tmp_path / "digits")
    assert dataset.features["label"].names == [f"{i}_{w}" for i, w in enumerate(["zero", "one", "two", "three",
                                                "four", "five", "six", "seven", "eight", "nine"])]  # fmt: skip
    assert len(dataset) == 20 and sorted(set(dataset["label"])) == list(range(10))
    for row in dataset.select(range(0, 20, 7)):
        info = soundfile.info(row["audio"]["path"])
        assert info.samplerate == 22050 and info.channels == 1 and 0.15 < info.duration < 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: the spoken-digit classifier shipped in the package
# ---------------------------------------------------------------------------------------------------------------------
def test_shipped_spoken_digit_classifier_and_its_settings():
    from hfddpm.evaluation import METRIC_REGISTRY, SPOKEN_DIGIT_MEL, spoken_digit_classifier_info

    info = spoken_digit_classifier_info()
    assert info["spectrogram"] == SPOKEN_DIGIT_MEL and info["heldout_accent"] == "en-029"
    assert info["heldout_accuracy"] >= 0.9 and info["num_heldout"] == 90
    # the mel64 defaults of train.py make exactly the spectrograms it was trained on
    assert {k: build_mel(TrainConfig(preset="mel64"), 64).config[k] for k in SPOKEN_DIGIT_MEL} == SPOKEN_DIGIT_MEL
    assert METRIC_REGISTRY["spoken_digit_accuracy"].needs == ("spectrogram", "labels")


def test_spoken_digit_metrics_refuse_other_spectrograms(trained):
    from hfddpm.evaluation import evaluate_pipeline, spoken_digit_metrics

    with pytest.raises(ValueError, match=r"need spectrograms shaped \[N, 1, 64, 64\]"):
        spoken_digit_metrics(torch.rand(4, 1, 16, 16))
    out, _ = trained
    with pytest.raises(ValueError, match=r"but this pipeline's mel component has \{'sample_rate': 8000"):
        evaluate_pipeline(HFDDPMPipeline.from_pretrained(out), num_images=2, metrics="spoken_digits")
    image_pipe = HFDDPMPipeline(
        unet=build_unet("tiny", sample_size=16), scheduler=HFDDPMAudioPipeline.from_pretrained(out).scheduler
    )
    with pytest.raises(ValueError, match="score an audio pipeline's spectrograms; this pipeline makes images"):
        evaluate_pipeline(image_pipe, num_images=2, metrics="spoken_digits")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_spoken_digit_classifier_hears_a_held_out_accent(tmp_path):
    from hfddpm.evaluation import SPOKEN_DIGIT_MEL, spoken_digit_metrics

    script = ROOT / "training" / "make_spoken_digits.py"
    args = ["--output_dir", str(tmp_path / "d"), "--accents", "en-029", "--voices", "m3", "f2", "--settings", "2"]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    dataset = load_audio_folder(tmp_path / "d")
    images = spectrogram_dataset(dataset, "audio", HFDDPMMel(**SPOKEN_DIGIT_MEL), "label")
    spectrograms = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32) / 65535) for im in images["image"]])
    real = spoken_digit_metrics(spectrograms[:, None], torch.tensor(images["label"]))
    assert real["spoken_digit_accuracy"] >= 0.8 and real["spoken_classes_covered"] == 10
    noise = spoken_digit_metrics(torch.rand(40, 1, 64, 64), torch.tensor(images["label"]))
    assert real["fd_spoken_digits"] < noise["fd_spoken_digits"] / 2


def test_evaluation_during_training_takes_the_metrics_of_its_data():
    from hfddpm.evaluation import SPOKEN_DIGIT_MEL
    from hfddpm.training.loop import _check_audio_metrics

    config = TrainConfig(eval_steps=10, eval_metrics="digits")
    with pytest.raises(ValueError, match="--eval_metrics digits scores MNIST-like images, not spectrograms"):
        _check_audio_metrics(config, HFDDPMMel(**SPOKEN_DIGIT_MEL))
    config = TrainConfig(eval_steps=10, eval_metrics="spoken_digits")
    with pytest.raises(ValueError, match=r"this pipeline's mel component has \{'sample_rate': 8000"):
        _check_audio_metrics(config, HFDDPMMel(**TINY_MEL))
    with pytest.raises(ValueError, match="this run trains on images"):
        _check_audio_metrics(config, None)
    _check_audio_metrics(config, HFDDPMMel(**SPOKEN_DIGIT_MEL))  # the demo's settings: accepted


def test_without_the_audio_extra_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "librosa", None)  # as if librosa were not installed
    with pytest.raises(ImportError, match=r"pip install 'hfddpm\[audio\]'"):
        decode_audio({"array": tone(440, 0.1), "sampling_rate": SR}, SR)
    with pytest.raises(ImportError, match=r"pip install 'hfddpm\[audio\]'"):
        HFDDPMMel(**TINY_MEL).audio_to_spectrogram(tone(440, 0.1))


def test_a_dataset_with_an_audio_column_is_detected(tmp_path, monkeypatch):
    """A parquet dataset (as on the Hub) whose datasets.Audio column holds WAV bytes: audio mode without flags."""
    import io

    import pyarrow as pa

    from hfddpm.training.engine import setup

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    clips = []
    for freq in (300, 1800, 300, 1800):
        buffer = io.BytesIO()
        soundfile.write(buffer, tone(freq, 0.2, 8000), 8000, format="WAV")
        clips.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"speech": datasets.Audio(), "label": datasets.ClassLabel(names=["low", "high"])})
    table = pa.table({"speech": pa.array(clips, type=datasets.Audio().pa_type), "label": [0, 1, 0, 1]})
    dataset = datasets.Dataset(table.cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))
    (tmp_path / "data").mkdir()
    dataset.to_parquet(tmp_path / "data" / "train.parquet")
    flags = dict(preset="tiny", resolution=16, sample_rate=8000, n_fft=256, hop_length=64, label_column="label")
    run = setup(TrainConfig(dataset_name=str(tmp_path / "data"), **flags))
    assert run.mel is not None and run.mel.config.num_frames == 16 and run.columns.class_names == ["low", "high"]
    assert run.columns.image_column == "image" and run.unet.config.in_channels == 1 and len(run.dataset) == 4
    with pytest.raises(ValueError, match=r"Audio column 'audio' not found.*Audio columns: \['speech'\]"):
        setup(TrainConfig(dataset_name=str(tmp_path / "data"), audio_column="audio", **flags))
    with pytest.raises(ValueError, match=r"Column 'label' is not audio: its feature is ClassLabel.*\['speech'\]"):
        setup(TrainConfig(dataset_name=str(tmp_path / "data"), audio_column="label", **flags))
