"""Did the model copy its training images? Each sample's nearest training image, in pixels and in a feature space,
against a threshold calibrated on real images held out from the search.

1. The threshold: for real images that are not in the searched pool, how close does their nearest training image
   typically come? Held-out images given by the caller are searched against the whole training set; without them,
   ``num_calibration`` distinct training images are held out one at a time (leave-one-out: each one's nearest
   *other* distinct training image; an image that appears twice in the training set would otherwise find its own
   copy at distance 0). The ``quantile`` (default 5%) of those distances is the threshold, in each space.
2. A sample is counted as a copy when its nearest training image is as close as the threshold (up to round-off) in
   pixels *and* in features: a fresh real image is that close with probability at most ``quantile``, so a share
   well above it says the model reproduces training images (a share near 1: it returns them).
3. ``pairs_picture`` draws the closest samples next to their nearest training images.

Pixel distances are root-mean-square differences of [0, 1] pixels; feature distances are Euclidean in the
extractor's space (``features.extract_features``).

Example (a "model" that returns training images is flagged; held-out digits are not):
    >>> from hfddpm.evaluation import load_mnist_5k
    >>> train, heldout = load_mnist_5k("train")[0][:800], load_mnist_5k("heldout")[0]
    >>> memorization_check(train[:100], train, heldout=heldout[:200])["memorization_share"]
    1.0
    >>> memorization_check(heldout[200:300], train, heldout=heldout[:200])["memorization_share"] < 0.2
    True
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from hfddpm.files import write_file

from .features import extract_features
from .uncertainty import bootstrap_interval, details

QUANTILE = 0.05
NUM_CALIBRATION = 1000
MAX_TRAIN_IMAGES = 20000
PAIRS_FILE = "memorization_pairs.png"
NUM_PAIRS = 16
# Relative round-off allowed when comparing a distance with a threshold (torch.cdist of equal rows is not exactly 0).
TOLERANCE = 1e-6


def nearest(queries: torch.Tensor, pool: torch.Tensor, exclude: torch.Tensor | None = None, chunk: int = 512):
    """``(distance, index)`` of each query's nearest row of ``pool`` (both ``[n, D]``, Euclidean); ``exclude[i]``,
    when given, is a pool row query ``i`` may not pick (itself, for leave-one-out)."""
    pool = pool.double()
    distances, indices = [], []
    for start in range(0, len(queries), chunk):
        d = torch.cdist(queries[start : start + chunk].double(), pool)
        if exclude is not None:
            rows = torch.arange(len(d))
            d[rows, exclude[start : start + chunk]] = torch.inf
        best = d.min(dim=1)
        distances.append(best.values)
        indices.append(best.indices)
    return torch.cat(distances), torch.cat(indices)


def within(distance, threshold: float):
    """Whether ``distance`` (a number or a tensor) is as close as ``threshold``, up to ``TOLERANCE`` of round-off."""
    return distance <= threshold * (1 + TOLERANCE) + TOLERANCE


def _first_of_each(rows: torch.Tensor) -> torch.Tensor:
    """Indices of the distinct rows of ``rows`` ``[n, D]`` (the first of each group of exact duplicates), sorted."""
    _, inverse = torch.unique(rows, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(rows), dtype=torch.long)
    first.scatter_reduce_(0, inverse, torch.arange(len(rows)), reduce="amin")
    return first.sort().values


def memorization_check(
    samples: torch.Tensor,
    train: torch.Tensor,
    *,
    heldout: torch.Tensor | None = None,
    extractor: str = "digits",
    quantile: float = QUANTILE,
    num_calibration: int = NUM_CALIBRATION,
    seed: int = 0,
    extractor_options: dict | None = None,
) -> dict:
    """The share of ``samples`` closer to a training image than held-out real images typically are.

    Args:
        samples: generated images, float ``[N, C, H, W]`` in [0, 1].
        train: the training images, same shape per image.
        heldout: real images not in ``train`` for the threshold; default: leave-one-out on ``num_calibration``
            distinct training images picked with ``seed``.
        extractor: the feature space (``features.FEATURE_EXTRACTORS``), with ``extractor_options``.
        quantile: the share of held-out images closer than the threshold.

    Returns:
        ``memorization_share`` (closer in pixels and features), ``memorization_share_pixels``,
        ``memorization_share_features``, ``details`` (their intervals, counts, thresholds) and ``memorization_pairs``
        (sample index, training index and distances of the :data:`NUM_PAIRS` closest samples, closest first).
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile={quantile} must be in (0, 1).")
    if samples.shape[1:] != train.shape[1:]:
        raise ValueError(
            f"samples {tuple(samples.shape[1:])} and training images {tuple(train.shape[1:])} differ in shape;"
            " load the training images at the samples' resolution and channels."
        )
    options = extractor_options or {}
    spaces = {"pixels": (samples.flatten(1), train.flatten(1))}
    feature_samples, name = extract_features(extractor, samples, **options)
    feature_train, _ = extract_features(extractor, train, **options)
    spaces["features"] = (torch.from_numpy(feature_samples), torch.from_numpy(feature_train))
    scale = {"pixels": samples[0].numel() ** 0.5, "features": 1.0}  # pixels: root-mean-square distance

    # 1. thresholds from real images held out of the searched pool
    if heldout is not None:
        calibration = {"pixels": heldout.flatten(1)}
        calibration["features"] = torch.from_numpy(extract_features(extractor, heldout, **options)[0])
        exclude, how = None, f"{len(heldout)} held-out images against the training set"
    else:
        # leave-one-out among the distinct training images: exact duplicates would be each other's nearest image
        distinct = _first_of_each(spaces["pixels"][1])
        if len(distinct) < 2:
            raise ValueError(
                f"The training set holds {len(distinct)} distinct image(s); the leave-one-out threshold needs at least"
                " 2: pass held-out real images (heldout=...)."
            )
        generator = torch.Generator().manual_seed(seed)
        exclude = torch.randperm(len(distinct), generator=generator)[: min(num_calibration, len(distinct))]
        calibration = {space: pool[distinct][exclude] for space, (_, pool) in spaces.items()}
        how = f"{len(exclude)} distinct training images held out one at a time (leave-one-out)"
    thresholds, closer, nearest_found = {}, {}, {}
    for space, (queries, pool) in spaces.items():
        searched = pool if heldout is not None else pool[distinct]
        reference_distances, _ = nearest(calibration[space], searched, exclude)
        thresholds[space] = float(torch.quantile(reference_distances, quantile)) / scale[space]
        # 2. each sample's nearest training image, and whether it is as close as the threshold
        distances, indices = nearest(queries, pool)
        nearest_found[space] = (distances / scale[space], indices)
        closer[space] = within(distances / scale[space], thresholds[space]).double().numpy()
    flagged = closer["pixels"] * closer["features"]
    shares = {
        "memorization_share": flagged,
        "memorization_share_pixels": closer["pixels"],
        "memorization_share_features": closer["features"],
    }
    n = len(samples)
    info = {"train_images": len(train), "quantile": quantile, "calibration": how}
    results = {key: float(values.mean()) for key, values in shares.items()}
    results["details"] = {
        key: {
            **details(
                bootstrap_interval(lambda idx, v=values: v[idx].mean(), n, results[key], seed=seed, bounds=(0, 1)),
                n,
                {"memorization_share_pixels": "pixels (RMS)"}.get(key, name),
                None,
                seed,
            ),
            **info,
            "threshold_pixels": thresholds["pixels"],
            "threshold_features": thresholds["features"],
        }
        for key, values in shares.items()
    }
    # 3. the closest pairs (in pixels), closest first
    distances, indices = nearest_found["pixels"]
    order = torch.argsort(distances)[: min(NUM_PAIRS, n)]
    results["memorization_pairs"] = [
        {
            "sample": int(i),
            "train": int(indices[i]),
            "pixel_distance": round(float(distances[i]), 5),
            "feature_distance": round(float(torch.cdist(spaces["features"][0][i : i + 1],
                                                        spaces["features"][1][indices[i] : indices[i] + 1])), 5),
        }
        for i in order.tolist()
    ]  # fmt: skip
    return results


def pairs_picture(samples: torch.Tensor, train: torch.Tensor, pairs: list[dict], path, threshold: float | None = None):
    """Draw ``pairs`` (``memorization_check``'s ``memorization_pairs``) as columns: each sample above its nearest
    training image, with the pixel distance (red when within ``threshold``); saves a PNG at ``path`` (a link there is
    replaced, never written through)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(pairs), figsize=(1.2 * len(pairs) + 0.8, 3.0), squeeze=False)
    for column, pair in enumerate(pairs):
        for row, image in enumerate((samples[pair["sample"]], train[pair["train"]])):
            ax = axes[row][column]
            array = image.permute(1, 2, 0).clamp(0, 1).numpy()
            ax.imshow(array[..., 0] if array.shape[-1] == 1 else array, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        close = threshold is not None and within(pair["pixel_distance"], threshold)
        axes[1][column].set_xlabel(f"{pair['pixel_distance']:.3f}", color="red" if close else "black", fontsize=8)
    axes[0][0].set_ylabel("sample", fontsize=8)
    axes[1][0].set_ylabel("nearest\ntraining", fontsize=8)
    title = "Closest samples and their nearest training images (RMS pixel distance"
    fig.suptitle(
        title + (f"; red: under the threshold {threshold:.3f})" if threshold is not None else ")"), fontsize=9
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    return write_file(path, png.getvalue())  # a link at path is replaced, never written through


def training_images(
    settings: dict,
    resolution: int,
    channels: int,
    *,
    max_images: int = MAX_TRAIN_IMAGES,
    seed: int = 0,
    flags: dict[str, str] | None = None,
) -> torch.Tensor:
    """The training images of a run as float ``[N, channels, resolution, resolution]`` in [0, 1], read like
    training reads them (``hfddpm.data.load_train_dataset``; centre crop, no flip).

    ``settings`` are training settings by name (``training_config.json``): ``dataset_name``,
    ``dataset_config_name``, ``train_data_dir``, ``dataset_split``, ``image_column``, ``cache_dir``,
    ``streaming``; neither a dataset nor a folder means the embedded MNIST-5k. At most ``max_images`` are read (a
    seeded random subset of a larger dataset; the first ones of a streamed one). ``flags`` are the caller's flags by
    setting name (``{"dataset_name": "--dataset-name", ...}``), for errors that name train.py's (``--dataset_name``).
    """
    from hfddpm.data import DECODE_ERRORS, ImageTransform, load_training_source, resolve_columns, sample_column, to_pil

    try:
        dataset = load_training_source(settings)
        column = resolve_columns(dataset, settings.get("image_column") or "image").image_column
    except (ValueError, FileNotFoundError) as err:
        if not flags:
            raise
        # hfddpm.data words its errors with train.py's flags: name the caller's instead
        message = str(err)
        for setting, flag in flags.items():
            message = message.replace(f"--{setting}", flag)
        raise (ValueError if isinstance(err, ValueError) else FileNotFoundError)(message) from err
    rows = sample_column(dataset, column, max_images, seed, name="training set of the memorisation check")
    transform = ImageTransform(resolution, channels, center_crop=True)
    images = []
    for value in rows:
        try:
            images.append(transform(to_pil(value)))
        except DECODE_ERRORS:
            continue  # training skips broken images too
    if not images:
        raise ValueError("No training image could be read for the memorisation check.")
    return (torch.stack(images) + 1) / 2
