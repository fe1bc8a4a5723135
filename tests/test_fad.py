"""FAD (``hfddpm.evaluation.fad``) on stand-in networks: tiny randomly initialised CLAP and AST models saved with their
feature extractors into a folder and loaded the way real weights are (``local_files_only``). No network, no real
pretrained weights: the numbers pinned are the Fréchet distance of the stand-in's own embeddings, computed here by
calling it directly."""

import json

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from audio_helpers import build_audio_pipeline

from hfddpm import HFDDPMAudioPipeline, HFDDPMPipeline, HFDDPMScheduler, build_unet
from hfddpm.cli import main
from hfddpm.evaluation import MetricUnavailableError, compute_metrics, evaluate_pipeline, feature_statistics
from hfddpm.evaluation.fad import DEFAULT_FAD_MODEL, audio_embeddings, fad, fad_with_details, load_fad_model
from hfddpm.evaluation.frechet import frechet_distance

RATE = 16000  # the stand-ins' sample rate


def tones(freqs, seconds: float = 0.5, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """One sine per frequency, random phase and amplitude in [0.3, 0.8]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return np.stack(
        [rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def clap_folder(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    folder = tmp_path_factory.mktemp("clap") / "tiny-clap"
    audio = dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4, patch_stride=[4, 4], depths=[1, 1],
                 num_attention_heads=[1, 2], patch_embeds_hidden_size=8, hidden_size=16)  # fmt: skip
    text = dict(vocab_size=64, hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                max_position_embeddings=16)  # fmt: skip
    torch.manual_seed(0)
    ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=16)).save_pretrained(folder)
    # 1 s windows at 16 kHz, 16 mel bands, 101 frames (the real one: 10 s at 48 kHz, 64 bands)
    extractor = ClapFeatureExtractor(feature_size=16, sampling_rate=RATE, hop_length=160, max_length_s=1,
                                     fft_window_size=512, frequency_max=8000, truncation="rand_trunc")  # fmt: skip
    extractor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ast_folder(tmp_path_factory):
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    folder = tmp_path_factory.mktemp("ast") / "tiny-ast"
    torch.manual_seed(0)
    config = ASTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                       max_length=64, num_mel_bins=32, frequency_stride=16, time_stride=16)  # fmt: skip
    ASTModel(config).save_pretrained(folder)
    ASTFeatureExtractor(num_mel_bins=32, max_length=64, sampling_rate=RATE).save_pretrained(folder)
    return folder


def direct_clap_embeddings(folder, clips: np.ndarray) -> np.ndarray:
    """The stand-in CLAP called by hand: its extractor, ``get_audio_features``, unit norm."""
    from transformers import ClapFeatureExtractor, ClapModel

    model, extractor = ClapModel.from_pretrained(folder).eval(), ClapFeatureExtractor.from_pretrained(folder)
    with torch.no_grad():
        out = model.get_audio_features(**extractor(list(clips), sampling_rate=RATE, return_tensors="pt"))
    return F.normalize(out.pooler_output, dim=-1).double().numpy()


def test_fad_is_the_frechet_distance_of_the_network_embeddings(clap_folder):
    embedding = load_fad_model(clap_folder)
    assert embedding.sample_rate == RATE and embedding.name == f"fad {clap_folder} audio_embeds"
    fake, real = tones(np.linspace(300, 3000, 12), seed=1), tones(np.linspace(400, 2000, 10), seed=2)
    expected = frechet_distance(
        *feature_statistics(direct_clap_embeddings(clap_folder, fake)),
        *feature_statistics(direct_clap_embeddings(clap_folder, real)),
    )
    value, info = fad_with_details(fake, real, RATE, embedding, batch_size=5, seed=3, reference_name="tones")
    assert value == pytest.approx(expected, rel=1e-5) and value > 1e-3
    assert fad(fake, real, RATE, embedding) == pytest.approx(value, rel=1e-6)  # batching changes nothing
    # the details every metric carries
    assert info["num_samples"] == 12 and info["feature_extractor"] == f"fad {clap_folder} audio_embeds"
    assert info["reference"]["name"] == "tones" and info["reference"]["count"] == 10
    assert len(info["reference"]["sha256"]) == 16 and "seed 3" in info["interval"]
    low, high = info["ci95"]
    assert low < high
    # a set against itself
    assert fad(real, real, RATE, embedding) == pytest.approx(0.0, abs=1e-6)


def test_other_pitches_are_farther_than_a_second_draw_of_the_same_ones(clap_folder):
    embedding = load_fad_model(clap_folder)
    rng = np.random.default_rng(0)
    low = tones(rng.uniform(300, 500, 40), seed=1)
    low_again = tones(rng.uniform(300, 500, 40), seed=2)
    high = tones(rng.uniform(2500, 3500, 40), seed=3)
    same, other = fad(low_again, low, RATE, embedding), fad(high, low, RATE, embedding)
    assert other > 5 * same, (same, other)


def test_a_22050_hz_clip_is_resampled_to_the_network_rate(clap_folder):
    embedding = load_fad_model(clap_folder)
    freqs = [440.0, 1000.0, 2500.0]
    native = audio_embeddings(tones(freqs, rate=RATE), RATE, embedding)
    resampled = audio_embeddings(tones(freqs, rate=22050), 22050, embedding)
    taken_as_16k = audio_embeddings(tones(freqs, rate=22050), RATE, embedding)  # the rate ignored: pitch drops
    near, far = (resampled - native).norm(dim=1), (taken_as_16k - native).norm(dim=1)
    assert bool((near < far / 5).all()), (near, far)
    assert float(near.max()) < 0.05


def test_clips_longer_than_the_window_are_cut_to_their_start(clap_folder):
    embedding = load_fad_model(clap_folder)
    long = tones([440.0, 880.0], seconds=2.5)
    once, twice = audio_embeddings(long, RATE, embedding), audio_embeddings(long, RATE, embedding)
    torch.testing.assert_close(once, twice)  # the extractor's random crop never runs
    torch.testing.assert_close(once, audio_embeddings(long[:, :RATE], RATE, embedding))


def test_an_ast_folder_embeds_with_its_pooled_output(ast_folder):
    from transformers import ASTFeatureExtractor, ASTModel

    embedding = load_fad_model(ast_folder)
    assert embedding.name == f"fad {ast_folder} pooler_output"
    fake, real = tones(np.linspace(300, 3000, 8), seed=1), tones(np.linspace(400, 2000, 6), seed=2)
    model, extractor = ASTModel.from_pretrained(ast_folder).eval(), ASTFeatureExtractor.from_pretrained(ast_folder)
    with torch.no_grad():
        stats = [
            feature_statistics(model(**extractor(list(x), sampling_rate=RATE, return_tensors="pt")).pooler_output)
            for x in (fake, real)
        ]
    assert fad(fake, real, RATE, embedding) == pytest.approx(frechet_distance(*stats[0], *stats[1]), rel=1e-5)
    assert fad(real, real, RATE, embedding) == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Missing weights, wrong models, bad input
# ---------------------------------------------------------------------------------------------------------------------
def test_missing_weights_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MetricUnavailableError) as err:
        load_fad_model(tmp_path / "no-such-folder")
    assert str(tmp_path / "no-such-folder") in str(err.value) and "--fad-model PATH" in str(err.value)
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(DEFAULT_FAD_MODEL, "config.json"), str):
        pytest.skip(f"{DEFAULT_FAD_MODEL} is in this machine's Hugging Face cache")
    with pytest.raises(MetricUnavailableError) as err:
        load_fad_model()
    message = str(err.value)
    assert f"FAD weights '{DEFAULT_FAD_MODEL}' are not on disk" in message
    assert f"`hf download {DEFAULT_FAD_MODEL}`" in message and "--fad-model PATH" in message
    assert "rerun without fad in --metrics" in message
    assert "--fad-model" in err.value.options and "--fad-model" not in err.value.reason  # what is missing, what to do


def test_without_transformers_the_message_says_what_to_install(hide_package):
    hide_package("transformers")
    with pytest.raises(MetricUnavailableError, match=r"FAD needs the transformers package.*without fad in --metrics"):
        load_fad_model()


def test_a_folder_of_another_model_is_refused(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path / "vit")
    with pytest.raises(ValueError, match=r"FAD embeds audio with \['audio-spectrogram-transformer', 'clap'\].*'vit'"):
        load_fad_model(tmp_path / "vit")


def test_fad_needs_sound_and_real_clips(clap_folder):
    images = torch.rand(4, 1, 16, 16)
    with pytest.raises(ValueError, match="The fad metric needs real clips"):
        compute_metrics(images, metrics="fad", fad_model=clap_folder, audios=tones([440] * 4), sample_rate=RATE)
    with pytest.raises(ValueError, match="The fad metric scores sound: pass audios"):
        compute_metrics(images, metrics="fad", fad_model=clap_folder, reference_audios=tones([440] * 4))
    with pytest.raises(ValueError, match="at least 2 generated and 2 real clips"):
        fad(tones([440]), tones([440, 880]), RATE, load_fad_model(clap_folder))


# ---------------------------------------------------------------------------------------------------------------------
# hfddpm evaluate
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_model(tmp_path_factory):
    """A tiny untrained audio pipeline folder (8 kHz, 0.12 s clips) and a folder of real tones."""
    from hfddpm.training import TrainConfig
    from hfddpm.training.config import write_config

    root = tmp_path_factory.mktemp("fad_eval")
    clips = root / "tones"
    for label, freq in (("low", 300), ("high", 1800)):
        (clips / label).mkdir(parents=True)
        for i, clip in enumerate(tones([freq] * 3, seconds=0.2, rate=8000, seed=len(label))):
            soundfile.write(clips / label / f"{i}.wav", clip, 8000)
    build_audio_pipeline(root / "model")
    # the run's training source, as training_config.json records it
    write_config(root / "model" / "training_config.json", TrainConfig(train_data_dir=str(clips)), {})
    return root / "model", clips


def test_hfddpm_evaluate_writes_fad_with_its_details(audio_model, clap_folder, tmp_path):
    from hfddpm.hub import write_model_card

    model, clips = audio_model
    write_model_card(model)
    out = tmp_path / "metrics.json"
    args = ["evaluate", str(model), "--metrics", "fad", "--fad-model", str(clap_folder), "--num-images", "4",
            "--batch-size", "2", "--num-inference-steps", "2", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    results = json.loads(out.read_text())
    info = results["details"]["fad"]
    assert results["fad"] > 0 and info["ci95"][0] < info["ci95"][1] and info["num_samples"] == 4
    assert info["feature_extractor"] == f"fad {clap_folder} audio_embeds"
    # the real clips default to the run's training folder: all 6, cut or padded to the model's 0.12 s
    assert info["reference"]["name"] == f"training clips ({clips})" and info["reference"]["count"] == 6
    assert info["reference"]["sample_rate"] == 8000 and results["reference_audio"] == f"training clips ({clips})"
    # the model card takes the value, its interval and where it came from, as for every registered metric
    card = (model / "README.md").read_text()
    assert "| Fréchet Audio Distance (CLAP or AST embeddings of the sound) (`fad`) |" in card
    assert f"reference training clips ({clips}) (6 clips at 8000 Hz, sha256 {info['reference']['sha256']})" in card
    # the same clips named by --reference-audio: the same value, the reference named by the folder
    assert main([*args, "--reference-audio", str(clips), "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["fad"] == pytest.approx(results["fad"], rel=1e-9)
    assert again["details"]["fad"]["reference"] == {**info["reference"], "name": str(clips)}


def test_the_sound_scored_is_the_sound_the_pipeline_makes(audio_model):
    from hfddpm.evaluation import generate_samples
    from hfddpm.evaluation.sampling import batch_seed

    model, _ = audio_model
    pipe = HFDDPMAudioPipeline.from_pretrained(model)
    images, audios = generate_samples(pipe, 3, batch_size=2, num_inference_steps=2, seed=5, return_audios=True)
    assert images.shape == (3, 1, 16, 16) and audios.shape == (3, 960) and audios.dtype == np.float32
    direct = pipe(
        batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(batch_seed(5, 0))
    ).audios
    np.testing.assert_array_equal(audios[:2], direct)
    torch.testing.assert_close(images, generate_samples(pipe, 3, batch_size=2, num_inference_steps=2, seed=5))


def test_fad_of_an_image_model_names_the_metrics_for_images(audio_model, clap_folder, tmp_path):
    model, _ = audio_model
    image_pipe = HFDDPMPipeline(unet=build_unet("tiny", sample_size=16), scheduler=HFDDPMScheduler())
    with pytest.raises(ValueError, match="The fad metrics score an audio pipeline's sound; this pipeline makes") as e:
        evaluate_pipeline(image_pipe, num_images=2, metrics="fad", fad_model=clap_folder)
    assert "Metrics for image models: ['digits', 'fid', 'kid', 'dinov2'," in str(e.value)
    assert "spoken_digits'" not in str(e.value) and "'fad'" not in str(e.value)
    image_pipe.save_pretrained(tmp_path / "images")
    assert main(["evaluate", str(tmp_path / "images"), "--metrics", "fad", "--fad-model", str(clap_folder)]) == 2


def test_an_audio_model_without_a_training_source_asks_for_real_clips(audio_model, clap_folder, tmp_path):
    model, _ = audio_model
    pipe = HFDDPMAudioPipeline.from_pretrained(model)
    pipe.save_pretrained(tmp_path / "copy")  # no training_config.json
    with pytest.raises(
        ValueError, match="FAD needs real clips: pass an audio folder or dataset with --reference-audio"
    ):
        from hfddpm.cli import build_parser, fad_inputs

        fad_inputs(build_parser().parse_args(["evaluate", str(tmp_path / "copy")]), pipe)


def test_fad_is_not_computed_during_training():
    from hfddpm.training import TrainConfig

    # refused with the flags, before the data is converted or anything is written
    with pytest.raises(ValueError, match="--eval_metrics fad is not computed during training"):
        TrainConfig(eval_steps=10, eval_metrics="fad").validate()


def test_real_clips_from_a_dataset_folder_are_read_as_training_reads_them(tmp_path, monkeypatch):
    """A parquet dataset (as on the Hub) with a datasets.Audio column of 22.05 kHz WAV bytes of two lengths."""
    import io

    import datasets
    import pyarrow as pa

    from hfddpm.audio import decode_audio
    from hfddpm.evaluation.fad import reference_clips

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    waveforms = [*tones([300, 600, 900], seconds=0.05, rate=22050), *tones([1200, 1500], seconds=0.3, rate=22050)]
    clips = []
    for waveform in waveforms:
        buffer = io.BytesIO()
        soundfile.write(buffer, waveform, 22050, format="WAV")
        clips.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"speech": datasets.Audio()})
    table = pa.table({"speech": pa.array(clips, type=datasets.Audio().pa_type)}).cast(features.arrow_schema)
    (tmp_path / "data").mkdir()
    datasets.Dataset(table, info=datasets.DatasetInfo(features=features)).to_parquet(tmp_path / "data" / "a.parquet")
    settings = {"dataset_name": str(tmp_path / "data")}
    real = reference_clips(settings, 8000, 960)  # the audio model's rate and clip length (0.12 s)
    assert real.shape == (5, 960) and real.dtype == np.float32
    first, _ = decode_audio(clips[0], 8000)  # 0.05 s: padded with zeros; 0.3 s: cut to its start
    np.testing.assert_array_equal(real[0, : len(first)], first)
    assert not real[0, len(first) :].any()
    np.testing.assert_array_equal(real[4], decode_audio(clips[4], 8000)[0][:960])
    subset = reference_clips(settings, 8000, 960, max_clips=3, seed=1)  # a seeded subset, in dataset order
    assert subset.shape == (3, 960) and all(any(np.array_equal(s, r) for r in real) for s in subset)
    from PIL import Image

    (tmp_path / "images").mkdir()
    for i in range(2):
        Image.new("L", (8, 8), 40 * i).save(tmp_path / "images" / f"{i}.png")
    with pytest.raises(ValueError, match=r"The FAD reference '.*images' has no audio column \(columns \['image'\]\)"):
        reference_clips({"train_data_dir": str(tmp_path / "images")}, 8000, 960)
