"""hfddpm command line: sample grids, edit images, evaluate pipelines, push them to the Hugging Face Hub.

Examples:
    hfddpm sample outputs/mnist --num-images 64 --num-inference-steps 20 --scheduler dpmsolver++ --out grid.png
    hfddpm sample outputs/mnist-cond --class-labels 0,1,2,3,4,5,6,7,8,9 --guidance-scale 3 --out digits.png
    hfddpm sample outputs/spoken-digits --num-images 10 --out sounds/   # audio: WAV files + spectrograms.png
    hfddpm evaluate outputs/mnist --num-images 1000 --num-inference-steps 50 --scheduler ddim --out metrics.json
    hfddpm evaluate outputs/mnist --metrics digits,fid,kid --fid-fallback digits
    hfddpm inpaint outputs/mnist-cond --image in.png --mask mask.png --class-label 3 --out out.png
    hfddpm img2img outputs/mnist-cond --image a.png b.png --strength 0.6 --class-label 8 --out grid.png
    hfddpm evaluate outputs/mnist --metrics digits,pr_digits,memorization
    hfddpm evaluate --compare outputs/run-a outputs/run-b
    hfddpm push outputs/mnist --repo-id user/hfddpm-mnist --private
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
from pathlib import Path

import torch

from hfddpm.files import write_file
from hfddpm.pipelines.pipeline_hfddpm import PIPELINE_FILES, is_repo_id


def _integer(low: int, high: int | None = None):
    """An argparse type: an integer in [low, high]."""
    bounds = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {value}") from None
        if number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"must be an integer {bounds}, got {value}")
        return number

    return parse


def _number(low: float, high: float | None = None, meaning: str = ""):
    """An argparse type: a finite float in [low, high] (nan and inf are refused)."""
    bounds = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"

    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < low or (high is not None and number > high):
            raise argparse.ArgumentTypeError(f"must be a finite number {bounds}{meaning}, got {value}")
        return number

    return parse


_positive_int = _integer(1)


def _add_sampling_args(
    parser: argparse.ArgumentParser, *, num_images: int, min_images: int = 1, pipeline_optional: bool = False
):
    parser.add_argument(
        "pipeline",
        nargs="?" if pipeline_optional else None,
        help="a saved pipeline folder (training output_dir) or a Hub repo id",
    )
    parser.add_argument("--num-images", type=_integer(min_images), default=num_images)
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="images per pipeline call")
    parser.add_argument("--num-inference-steps", type=_positive_int, default=50)
    parser.add_argument(
        "--scheduler",
        default=None,
        help="sampler short name (ddpm, ddim, dpmsolver++, unipc, euler, heun, ...);"
        " default: the pipeline's saved scheduler",
    )
    parser.add_argument(
        "--guidance-scale",
        type=_number(0.0, meaning=" (1 = no guidance, 0 = unconditional)"),
        default=1.0,
        help="classifier-free guidance (1 = off)",
    )
    parser.add_argument(
        "--eta", type=_number(0.0, 1.0), default=0.0, help="DDIM noise for schedulers that take it (0 to 1)"
    )
    parser.add_argument("--seed", type=_integer(0, 2**63 - 1), default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")


def _add_edit_args(parser: argparse.ArgumentParser, *, num_inference_steps: int):
    parser.add_argument("pipeline", help="a saved pipeline folder (training output_dir) or a Hub repo id")
    parser.add_argument(
        "--image", nargs="+", required=True, type=Path, help="input image file(s), of the model's size"
    )
    parser.add_argument(
        "--class-label",
        "--class-labels",
        dest="class_labels",
        nargs="+",
        default=None,
        help="class-conditional models: one label for all images or one per image (e.g. 3, or 3,8)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=_number(0.0, meaning=" (1 = no guidance, 0 = unconditional)"),
        default=1.0,
        help="classifier-free guidance (1 = off)",
    )
    parser.add_argument("--num-inference-steps", type=_positive_int, default=num_inference_steps)
    parser.add_argument(
        "--scheduler", default=None, help="sampler short name (default: the pipeline's saved scheduler)"
    )
    parser.add_argument("--seed", type=_integer(0, 2**63 - 1), default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument(
        "--out", type=Path, default=Path("edited.png"), help="the result (.png, .jpg, ...); a grid for several images"
    )


def build_parser() -> argparse.ArgumentParser:
    from hfddpm.evaluation import DEFAULT_FAD_MODEL, FID_FALLBACKS, METRIC_REGISTRY, METRICS, SCHEDULERS
    from hfddpm.evaluation.features import FEATURE_EXTRACTORS

    parser = argparse.ArgumentParser(
        prog="hfddpm",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    subparsers = parser.add_subparsers(dest="command", required=True)

    sample = subparsers.add_parser("sample", help="write a grid of samples")
    _add_sampling_args(sample, num_images=64)
    sample.add_argument(
        "--class-labels",
        nargs="+",
        default=None,
        help="labels for a class-conditional model, e.g. 0,1,2 or 0 1 2, repeated to --num-images"
        " (default: 0, 1, ..., n-1 repeated)",
    )
    sample.add_argument("--columns", type=_positive_int, default=None, help="images per grid row")
    sample.add_argument(
        "--out",
        type=Path,
        default=None,
        help="the grid image (.png, .jpg, .webp, ...; default grid.png); for an audio pipeline a folder (default"
        " sounds/) that gets one WAV file per sample and spectrograms.png",
    )
    sample.set_defaults(func=cmd_sample)

    evaluate = subparsers.add_parser("evaluate", help="generate samples and compute metrics")
    # the metrics need a covariance: at least 2 samples
    _add_sampling_args(evaluate, num_images=1000, min_images=2, pipeline_optional=True)
    computes = {choice: [m.name for m in METRIC_REGISTRY.values() if m.choice == choice] for choice in METRICS}
    evaluate.add_argument(
        "--metrics",
        default="digits",
        help=f"comma-separated subset of {','.join(METRICS)} (default: digits); they compute "
        + "; ".join(f"{choice}: {', '.join(names)}" for choice, names in computes.items()),
    )
    evaluate.add_argument(
        "--reference",
        default="mnist_5k",
        help="real images for fid/kid/dinov2: mnist_5k (its 1000 held-out digits) or a folder of images",
    )
    evaluate.add_argument(
        "--reference-audio",
        default=None,
        help="real clips for fad: an audio folder, a local dataset folder or a cached Hub dataset id (default: the"
        " training source in PIPELINE/training_config.json)",
    )
    evaluate.add_argument(
        "--fid-fallback",
        choices=FID_FALLBACKS,
        default="none",
        help="when Inception-v3 (torch-fidelity + weights) is unavailable: none = stop with an error, digits ="
        " FID/KID on digit-classifier features, skip = leave FID/KID out",
    )
    evaluate.add_argument("--inception-weights", default=None, help="path to pt_inception-2015-12-05-6726825d.pth")
    evaluate.add_argument("--dinov2-model", default=None, help="local DINOv2 folder or cached Hub id")
    evaluate.add_argument(
        "--fad-model", default=None, help=f"local CLAP or AST folder or cached Hub id (default {DEFAULT_FAD_MODEL})"
    )
    evaluate.add_argument("--cache-dir", default=None, help="reference-statistics cache (default ~/.cache/hfddpm)")
    # a str: Path("dir/") would drop the slash that says --out names a folder
    evaluate.add_argument("--out", default=None, help="metrics JSON (default: PIPELINE/metrics.json)")
    evaluate.add_argument(
        "--no-update-card", action="store_true", help="do not write the metrics into PIPELINE/README.md"
    )
    evaluate.add_argument(
        "--compare",
        nargs=2,
        metavar=("A", "B"),
        default=None,
        help="instead of evaluating: compare two results (metrics.json files, or pipeline folders holding one) and"
        " say per metric whether they differ beyond the noise of their 95%% intervals",
    )
    memorization = evaluate.add_argument_group(
        "memorization", "the training images the memorization metric searches (default: the training source in"
        " PIPELINE/training_config.json, else the embedded MNIST-5k)"
    )  # fmt: skip
    memorization.add_argument("--dataset-name", default=None, help="a Hub dataset id or local dataset folder")
    memorization.add_argument("--dataset-config-name", default=None)
    memorization.add_argument("--dataset-split", default=None, help="default: the run's, else train")
    memorization.add_argument("--train-data-dir", default=None, help="a folder of training images (imagefolder)")
    memorization.add_argument("--image-column", default=None, help="default: the run's, else image")
    memorization.add_argument(
        "--heldout-dir",
        default=None,
        help="real images not trained on, for the threshold (default: training images held out one at a time)",
    )
    memorization.add_argument(
        "--max-train-images", type=_positive_int, default=None, help="search at most this many training images"
    )
    memorization.add_argument(
        "--feature-extractor",
        choices=FEATURE_EXTRACTORS,
        default="digits",
        help="the feature space of the memorization check (besides pixels)",
    )
    evaluate.set_defaults(func=cmd_evaluate)

    inpaint = subparsers.add_parser(
        "inpaint",
        help="repaint the masked part of images (RePaint)",
        description="Repaint where the mask is white (RePaint with resampling jumps, HFDDPMInpaintPipeline); black"
        " pixels keep the input. Several images: a grid of inputs, masks and results.",
    )
    _add_edit_args(inpaint, num_inference_steps=50)
    inpaint.add_argument(
        "--mask", nargs="+", required=True, type=Path, help="binary mask image(s): one for all, or one per --image"
    )
    inpaint.add_argument("--jump-length", type=_positive_int, default=10, help="steps per resampling jump")
    inpaint.add_argument(
        "--jump-n-sample", type=_positive_int, default=10, help="resampling passes per jump (1 = no resampling)"
    )
    inpaint.set_defaults(func=cmd_inpaint)

    img2img = subparsers.add_parser(
        "img2img",
        help="edit images (SDEdit), e.g. towards another class label",
        description="Noise images to --strength, then denoise them (SDEdit, HFDDPMImg2ImgPipeline), towards"
        " --class-label on a class-conditional model. Several images: a grid of inputs and results.",
    )
    _add_edit_args(img2img, num_inference_steps=50)
    img2img.add_argument(
        "--strength",
        type=_number(0.0, 1.0, meaning=" (0 keeps the image, 1 ignores it)"),
        default=0.6,
        help="how far the images are noised (0 to 1)",
    )
    img2img.add_argument(
        "--eta", type=_number(0.0, 1.0), default=0.0, help="DDIM noise for schedulers that take it (0 to 1)"
    )
    img2img.set_defaults(func=cmd_img2img)

    push = subparsers.add_parser(
        "push",
        help="upload a trained pipeline folder to the Hugging Face Hub",
        description=f"Upload the pipeline files ({', '.join(PIPELINE_FILES)}), README.md and the sample grid of a"
        " training output folder; checkpoints and logs stay local.",
    )
    push.add_argument("output_dir", help="the training output_dir / saved pipeline folder")
    push.add_argument("--repo-id", required=True, help="namespace/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    push.add_argument(
        "--token",
        default=None,
        help="refused: a token on the command line is shown by `ps` and kept in the shell history. The push uses"
        " HF_TOKEN or the login saved by `hf auth login`",
    )
    push.add_argument("--commit-message", default=None)
    push.set_defaults(func=cmd_push)
    parser.epilog += f"\n\nSchedulers: {', '.join(SCHEDULERS)}"
    return parser


def load_pipeline(path: str, device: str | None = None):
    """Load a saved pipeline folder (or a Hub repo id) with ``HFDDPMPipeline.from_pretrained``."""
    from hfddpm import HFDDPMPipeline

    if not os.path.isdir(path):
        if not is_repo_id(path):
            raise FileNotFoundError(
                f"Pipeline folder {path!r} does not exist (expected a folder with model_index.json)."
            )
        try:
            pipe = HFDDPMPipeline.from_pretrained(path)
        except Exception as err:  # noqa: BLE001 (the Hub client raises many types)
            raise FileNotFoundError(
                f"{path!r} is not a local pipeline folder and could not be loaded as a Hub repo id"
                f" ({type(err).__name__}: {err})."
            ) from None
    else:
        pipe = HFDDPMPipeline.from_pretrained(path)
    return pipe.to(check_device(device))


def check_device(device: str | None) -> torch.device:
    """``--device`` as a torch device (default: cuda when available, else cpu); ``ValueError`` for a name torch does
    not know or a device this machine does not have.

    Example:
        >>> check_device("cpu")
        device(type='cpu')
        >>> check_device("gpu")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --device 'gpu' is not a torch device; use cpu, cuda, cuda:N or mps.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps.") from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available() and (parsed.index or 0) < torch.cuda.device_count(),
        "mps": torch.backends.mps.is_available(),
    }
    if not available.get(parsed.type, False):
        raise ValueError(f"--device {device!r} is not available on this machine (torch {torch.__version__}); use cpu.")
    return parsed


def check_json_out(path: str | Path, flag: str = "--out") -> Path:
    """``path`` as a ``Path``; ``ValueError`` unless it can become a JSON file: not a folder (nor a name ending in
    a slash), and no file where a folder of its path would be. Checked before the work whose result it holds."""
    folder = str(path).endswith(("/", os.sep))
    path = Path(path)
    _check_parents(path, flag)
    if folder or path.is_dir():
        raise ValueError(f"{flag} {str(path)!r} is a folder; pass a file path, e.g. {str(path / 'metrics.json')!r}.")
    return path


def _check_parents(path: Path, flag: str) -> None:
    blocking = next((parent for parent in path.parents if parent.is_file()), None)
    if blocking is not None:
        raise ValueError(f"{flag} {str(path)!r}: {str(blocking)!r} is a file, not a folder; pass another path.")


def image_extensions() -> list[str]:
    """The file extensions PIL writes grayscale and RGB images in (``.png``, ``.jpg``, ``.webp``, ...), sorted."""
    return sorted(ext for ext in _save_formats() if _writes_images(ext))


def check_image_out(path: Path, flag: str = "--out") -> None:
    """Raise ``ValueError`` unless PIL can write the images hfddpm makes (grayscale or RGB) to ``path``: checked
    before sampling, so that no samples are lost to a bad file name.

    Example:
        >>> check_image_out(Path("grid.png"))
        >>> check_image_out(Path("grid.xyz"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --out 'grid.xyz' ends in '.xyz', which PIL cannot write; give a file name ending in .png, .jpg, ...
    """
    _check_parents(path, flag)
    if path.is_dir():
        reason = "is a folder, and an image pipeline writes one image file"
    elif not path.suffix:
        reason = "has no file extension (an image pipeline writes one image file, not a folder)"
    elif not _writes_images(path.suffix.lower()):
        reason = f"ends in {path.suffix!r}, which PIL cannot write"
    else:
        return
    common = [ext for ext in (".png", ".jpg", ".webp") if _writes_images(ext)]
    others = [ext for ext in image_extensions() if ext not in common]
    raise ValueError(
        f"{flag} {str(path)!r} {reason}; give a file name ending in {', '.join(common)} (or {', '.join(others)})."
    )


def _save_formats() -> dict[str, str]:
    from PIL import Image

    Image.init()
    return {ext: fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


@functools.lru_cache(maxsize=None)
def _writes_images(ext: str) -> bool:
    """Whether PIL saves 1×1 grayscale and RGB images as ``ext`` (some formats are read-only stubs or take other
    modes)."""
    import io

    from PIL import Image

    fmt = _save_formats().get(ext)
    if fmt is None:
        return False
    try:
        for mode in ("L", "RGB"):
            Image.new(mode, (1, 1)).save(io.BytesIO(), format=fmt)
    except (OSError, ValueError, KeyError):
        return False
    return True


def parse_class_labels(values: list[str] | None, num_images: int, num_classes: int) -> torch.Tensor | None:
    """``["0,1", "2"]`` -> labels ``0, 1, 2`` repeated to ``num_images``; ``None`` -> ``0..num_classes-1`` repeated
    (class-conditional) or ``None`` (unconditional)."""
    from hfddpm.evaluation import balanced_labels

    if values is None:
        return balanced_labels(num_images, num_classes) if num_classes else None
    if not num_classes:
        raise ValueError(
            "--class-labels were given but the pipeline's UNet is unconditional (num_class_embeds is None)."
        )
    items = _label_items(values)
    try:
        labels = torch.tensor([int(item) for item in items])
    except ValueError:
        raise ValueError(f"--class-labels must be integers, got {' '.join(values)!r}.") from None
    bad = sorted({int(x) for x in labels if not 0 <= x < num_classes})
    if bad or labels.numel() == 0:
        raise ValueError(f"--class-labels must be in [0, {num_classes - 1}] for this pipeline, got {bad or values}.")
    return labels[torch.arange(num_images) % labels.numel()]


def _label_items(values: list[str]) -> list[str]:
    """The labels of ``--class-labels`` values, each value a label or a comma-separated list: ``["0,1", "2"]``."""
    return [item for value in values for item in value.split(",") if item.strip()]


def cmd_sample(args) -> int:
    from diffusers.utils import make_image_grid

    from hfddpm.evaluation import generate_samples, grid_shape, set_scheduler
    from hfddpm.evaluation.sampling import num_classes

    rows, cols = grid_shape(args.num_images, args.columns)
    pipe = set_scheduler(load_pipeline(args.pipeline, args.device), args.scheduler)
    labels = parse_class_labels(args.class_labels, args.num_images, num_classes(pipe))
    if hasattr(pipe, "mel"):
        folder = args.out if args.out is not None else Path("sounds")
        if folder.suffix.lower() == ".png":
            raise ValueError(
                f"--out {str(folder)!r}: an audio pipeline writes a folder of WAV files and spectrograms.png; pass"
                " --out FOLDER."
            )
    else:
        out = args.out if args.out is not None else Path("grid.png")
        check_image_out(out)
    images = generate_samples(
        pipe,
        args.num_images,
        batch_size=args.batch_size,
        num_inference_steps=args.num_inference_steps,
        class_labels=labels,
        guidance_scale=args.guidance_scale,
        eta=args.eta,
        seed=args.seed,
    )
    pil_images = pipe.numpy_to_pil(images.permute(0, 2, 3, 1).numpy())
    grid = make_image_grid(pil_images, rows=rows, cols=cols)
    if hasattr(pipe, "mel"):  # an audio pipeline: the spectrograms back to sound, one WAV each
        from hfddpm.audio import write_wav

        folder.mkdir(parents=True, exist_ok=True)
        audios = pipe.mel.spectrogram_to_audio(images[:, 0].numpy())
        for i, audio in enumerate(audios):
            label = "" if labels is None else f"_label{int(labels[i])}"
            write_wav(folder / f"sample_{i:03d}{label}.wav", audio, pipe.mel.config.sample_rate)
        grid.save(folder / "spectrograms.png")
        print(
            f"Wrote {args.num_images} WAV files ({pipe.mel.config.sample_rate} Hz, {pipe.mel.audio_seconds:.2f} s)"
            f" and their spectrograms ({rows}x{cols} grid, {type(pipe.scheduler).__name__}) to {folder}"
        )
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"Wrote {args.num_images} samples ({rows}x{cols} grid, {type(pipe.scheduler).__name__}) to {out}")
    return 0


def _open_images(paths: list[Path], flag: str) -> list:
    from PIL import Image

    images = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file.")
        try:
            with Image.open(path) as image:
                image.load()
                images.append(image.copy())
        except (OSError, SyntaxError) as err:
            raise ValueError(f"{flag} {path} is not an image file ({err}).") from None
    return images


def _edit_pipeline(args, pipeline_cls):
    """``pipeline_cls`` on the weights of ``args.pipeline`` (``from_pipe``), with ``--scheduler`` swapped in."""
    from hfddpm.evaluation import set_scheduler

    pipe = pipeline_cls.from_pipe(set_scheduler(load_pipeline(args.pipeline, args.device), args.scheduler))
    pipe.set_progress_bar_config(desc=args.command)
    return pipe


def _edit_labels(args, pipe, num_images: int):
    """The class label of each edited image: one for all, or one per image (never cycled)."""
    if args.class_labels is None:
        return None
    given = len(_label_items(args.class_labels))
    if given not in (1, num_images):
        raise ValueError(
            f"--class-label got {given} labels for {num_images} image(s); give one label for all images or one per"
            " image."
        )
    return parse_class_labels(args.class_labels, num_images, pipe.num_classes)


def _save_edit(args, rows: list[list], results: list) -> str:
    """The result alone for one image; for several, a grid with one row per entry of ``rows`` and the results."""
    from diffusers.utils import make_image_grid

    args.out.parent.mkdir(parents=True, exist_ok=True)
    if len(results) == 1:
        results[0].save(args.out)
        return "the result"
    size = results[0].size
    cells = [image.convert(results[0].mode).resize(size) for row in rows for image in row] + list(results)
    make_image_grid(cells, rows=len(rows) + 1, cols=len(results)).save(args.out)
    return f"a grid of {len(results)} images: {' and '.join(['inputs', 'masks'][: len(rows)])} above the results"


def _check_inpaint_scheduler(args, class_name: str | None) -> None:
    """``ValueError`` in the CLI's words (the valid ``--scheduler`` names) unless RePaint runs with the scheduler class
    ``class_name``: the one ``--scheduler`` names (checked before loading), or the pipeline's saved one."""
    from hfddpm.evaluation import SCHEDULERS
    from hfddpm.pipelines.pipeline_hfddpm_inpaint import REPAINT_SCHEDULERS

    if class_name is None or class_name in REPAINT_SCHEDULERS:
        return
    valid = " or ".join(f"--scheduler {name}" for name, (cls, _) in SCHEDULERS.items() if cls in REPAINT_SCHEDULERS)
    given = f"--scheduler {args.scheduler} ({class_name})" if args.scheduler else f"the saved scheduler {class_name}"
    raise ValueError(
        f"inpaint runs RePaint, which needs the ancestral DDPM step and re-noising between steps; {given} has"
        f" neither. Use {valid}."
    )


def cmd_inpaint(args) -> int:
    from hfddpm import HFDDPMInpaintPipeline
    from hfddpm.evaluation import SCHEDULERS

    check_image_out(args.out)
    if args.scheduler is not None:
        _check_inpaint_scheduler(args, SCHEDULERS.get(args.scheduler.lower(), (None, {}))[0])
    images = _open_images(args.image, "--image")
    masks = _open_images(args.mask, "--mask")
    if len(masks) not in (1, len(images)):
        raise ValueError(f"Got {len(masks)} --mask files for {len(images)} --image files; give one or one per image.")
    pipe = _edit_pipeline(args, HFDDPMInpaintPipeline)
    _check_inpaint_scheduler(args, type(pipe.scheduler).__name__)
    results = pipe(
        images,
        masks,
        num_inference_steps=args.num_inference_steps,
        jump_length=args.jump_length,
        jump_n_sample=args.jump_n_sample,
        generator=torch.Generator().manual_seed(args.seed),
        class_labels=_edit_labels(args, pipe, len(images)),
        guidance_scale=args.guidance_scale,
    ).images
    shown = [images, masks * len(images) if len(masks) == 1 else masks]
    print(f"Wrote {_save_edit(args, shown, results)} ({type(pipe.scheduler).__name__}) to {args.out}")
    return 0


def cmd_img2img(args) -> int:
    from hfddpm import HFDDPMImg2ImgPipeline

    check_image_out(args.out)
    images = _open_images(args.image, "--image")
    pipe = _edit_pipeline(args, HFDDPMImg2ImgPipeline)
    results = pipe(
        images,
        strength=args.strength,
        num_inference_steps=args.num_inference_steps,
        generator=torch.Generator().manual_seed(args.seed),
        class_labels=_edit_labels(args, pipe, len(images)),
        guidance_scale=args.guidance_scale,
        eta=args.eta,
    ).images
    print(f"Wrote {_save_edit(args, [images], results)} ({type(pipe.scheduler).__name__}) to {args.out}")
    return 0


def cmd_compare(args) -> int:
    from hfddpm.evaluation.compare import compare_results, format_comparison, read_results

    name_a, name_b = args.compare
    out = check_json_out(args.out) if args.out is not None else None
    rows = compare_results(read_results(name_a), read_results(name_b))
    print(format_comparison(rows, name_a, name_b))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_file(out, json.dumps({"a": name_a, "b": name_b, "metrics": rows}, indent=2) + "\n")
        print(f"Wrote {out}")
    return 0


def memorization_inputs(args, pipe) -> dict:
    """The training images (and held-out images) of ``hfddpm evaluate --metrics memorization``: the run's training
    source from ``PIPELINE/training_config.json``, overridden by the command's flags."""
    from hfddpm.evaluation import load_reference
    from hfddpm.evaluation.memorization import MAX_TRAIN_IMAGES, training_images
    from hfddpm.hub.card import read_training_settings

    settings = read_training_settings(args.pipeline) if os.path.isdir(args.pipeline) else {}
    overrides = {
        "dataset_name": args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "dataset_split": args.dataset_split,
        "train_data_dir": args.train_data_dir,
        "image_column": args.image_column,
    }
    if args.dataset_name is not None or args.train_data_dir is not None:  # another source: none of the run's
        settings = {k: v for k, v in settings.items() if k not in ("dataset_name", "train_data_dir")}
    settings.update({k: v for k, v in overrides.items() if v is not None})
    config = pipe.unet.config
    size = config.sample_size if isinstance(config.sample_size, int) else config.sample_size[0]
    heldout = None
    if args.heldout_dir:  # read first: a bad folder is found before the training images are
        heldout = load_reference(args.heldout_dir, size, config.in_channels, name="--heldout-dir")
    train = training_images(
        settings,
        size,
        config.in_channels,
        max_images=args.max_train_images or MAX_TRAIN_IMAGES,
        seed=args.seed,
        flags={setting: "--" + setting.replace("_", "-") for setting in overrides},
    )
    return {"train_images": train, "heldout_images": heldout, "feature_extractor": args.feature_extractor}


def fad_inputs(args, pipe) -> dict:
    """The real clips of ``hfddpm evaluate --metrics fad``: ``--reference-audio``, else the run's training source from
    ``PIPELINE/training_config.json``, read at the pipeline's sample rate and clip length."""
    from hfddpm.audio import is_audio_folder
    from hfddpm.evaluation.fad import reference_clips
    from hfddpm.hub.card import read_training_settings

    if args.reference_audio is not None:
        folder = os.path.isdir(args.reference_audio) and is_audio_folder(args.reference_audio)
        settings = {"train_data_dir" if folder else "dataset_name": args.reference_audio}
        name = args.reference_audio
    else:
        settings = read_training_settings(args.pipeline) if os.path.isdir(args.pipeline) else {}
        name = f"training clips ({settings.get('dataset_name') or settings.get('train_data_dir')})"
    clips = reference_clips(settings, pipe.mel.sample_rate, pipe.mel.num_samples, seed=args.seed)
    return {"reference_audios": clips, "reference_audio_name": name}


def cmd_evaluate(args) -> int:
    from hfddpm.evaluation import (
        DEFAULT_DINOV2_MODEL,
        DEFAULT_FAD_MODEL,
        check_metrics_available,
        evaluate_pipeline,
        parse_metrics,
    )
    from hfddpm.hub import update_model_card
    from hfddpm.hub.card import check_card_link

    if args.compare is not None:
        return cmd_compare(args)
    if args.pipeline is None:
        raise ValueError("hfddpm evaluate needs a PIPELINE folder or Hub repo id (or --compare A B).")
    metrics = parse_metrics(args.metrics)
    networks = {
        "fid_fallback": args.fid_fallback,
        "inception_weights": args.inception_weights,
        "dinov2_model": args.dinov2_model or DEFAULT_DINOV2_MODEL,
        "fad_model": args.fad_model or DEFAULT_FAD_MODEL,
    }
    # before loading anything: the metrics' networks, the memorization check's features, a --fid-fallback that
    # leaves nothing to compute
    check_metrics_available(metrics, feature_extractor=args.feature_extractor, **networks)
    local = os.path.isdir(args.pipeline)
    out = args.out
    if out is None:
        out = Path(args.pipeline) / "metrics.json" if local else Path("metrics.json")
    out = check_json_out(out)
    card = Path(args.pipeline) / "README.md"
    updates_card = local and card.is_file() and not args.no_update_card
    if updates_card:
        check_card_link(card)  # a card that links out of the folder is refused before sampling
    pipe = load_pipeline(args.pipeline, args.device)
    extra = memorization_inputs(args, pipe) if "memorization" in metrics else {}
    if "fad" in metrics and hasattr(pipe, "mel"):  # an image pipeline: evaluate_pipeline says which metrics fit
        extra.update(fad_inputs(args, pipe))
    results = evaluate_pipeline(
        pipe,
        num_images=args.num_images,
        batch_size=args.batch_size,
        num_inference_steps=args.num_inference_steps,
        scheduler=args.scheduler,
        guidance_scale=args.guidance_scale,
        eta=args.eta,
        seed=args.seed,
        metrics=metrics,
        reference=args.reference,
        cache_dir=args.cache_dir,
        output_dir=card.parent if updates_card else out.parent,  # the pairs picture, beside the card that links it
        **networks,
        **extra,
    )
    results = {"pipeline": str(args.pipeline), **results}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, json.dumps(results, indent=2) + "\n")  # replaces a link there, never writes through it
    print(json.dumps(results, indent=2))
    print(f"Wrote {out}")
    if updates_card:
        try:
            update_model_card(card, results)
            print(f"Updated the evaluation in {card} (its earlier metrics replaced)")
        except ValueError as err:  # no metric computed (e.g. --fid-fallback skip): the card keeps what it has
            print(str(err))
    return 0


def cmd_push(args) -> int:
    from hfddpm.hub import PushToHubError, push_to_hub
    from hfddpm.hub.checks import token_flag_refused_message

    if args.token is not None:  # --token TOKEN and --token=TOKEN; the message never holds the token
        raise ValueError(token_flag_refused_message("--token"))
    try:
        url = push_to_hub(args.output_dir, args.repo_id, private=args.private, commit_message=args.commit_message)
    except PushToHubError as err:
        print(f"hfddpm push: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed {args.output_dir} to {url}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hfddpm`` console script; returns the exit status (2 for bad input)."""
    from hfddpm.evaluation import MetricUnavailableError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, MetricUnavailableError) as err:
        print(f"hfddpm {args.command}: error: {err}", file=sys.stderr)
        return 2 if isinstance(err, (ValueError, FileNotFoundError)) else 1


if __name__ == "__main__":
    sys.exit(main())
