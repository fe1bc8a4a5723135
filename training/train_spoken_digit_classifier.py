"""Train the small spoken-digit classifier behind hfddpm's offline audio metrics (FD on its features, accuracy on
class-conditional samples), on the espeak-ng demo data.

Data: the folder written by `training/make_spoken_digits.py` (360 clips), turned into log-mel spectrograms with
`SPOKEN_DIGIT_MEL`; the `en-029` accent (90 clips) is held out, the other 270 clips train. Writes the weights, a json
with the held-out accuracy, and the feature statistics of all 360 clips (the reference of `fd_spoken_digits`):

    python training/make_spoken_digits.py --output_dir spoken_digits
    python training/train_spoken_digit_classifier.py --data_dir spoken_digits   # -> hfddpm/evaluation/spoken_digit_*
"""

import argparse
import json
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from hfddpm import HFDDPMMel
from hfddpm.audio import decode_audio, load_audio_folder
from hfddpm.evaluation.frechet import feature_statistics
from hfddpm.evaluation.small_cnn import accuracy, fit
from hfddpm.evaluation.spoken_digits import (
    HELDOUT_ACCENT,
    SPOKEN_DIGIT_CLASSIFIER_WEIGHTS,
    SPOKEN_DIGIT_MEL,
    SpokenDigitClassifier,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, required=True, help="output of training/make_spoken_digits.py")
    parser.add_argument("--output_dir", type=Path, default=SPOKEN_DIGIT_CLASSIFIER_WEIGHTS.parent)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--weight_decay", type=float, default=1e-4)
    parser.add_argument("--max_shift", type=int, default=8, help="random circular time shift, in frames")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=2)
    return parser.parse_args(argv)


def load_spectrograms(data_dir: Path):
    """``(spectrograms [N, 1, 64, 64], labels [N], held_out [N] bool)`` of the demo folder."""
    dataset = load_audio_folder(data_dir)
    mel = HFDDPMMel(**SPOKEN_DIGIT_MEL)
    images, held_out = [], []
    for row in dataset:
        waveform, _ = decode_audio(row["audio"], mel.sample_rate)
        images.append(torch.from_numpy(mel.audio_to_spectrogram(waveform).copy()))
        held_out.append(Path(row["audio"]["path"]).name.startswith(HELDOUT_ACCENT + "_"))
    return torch.stack(images)[:, None], torch.tensor(dataset["label"]), torch.tensor(held_out)


def random_time_shift(spectrograms: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Roll the batch by up to ``max_shift`` frames: the word moves in time; the padding is silence either way."""
    shift = torch.randint(-max_shift, max_shift + 1, (1,), generator=generator).item()
    return torch.roll(spectrograms, shifts=shift, dims=-1)


def main(args):
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    images, labels, held_out = load_spectrograms(args.data_dir)
    train_x, train_y = images[~held_out], labels[~held_out]
    test_x, test_y = images[held_out], labels[held_out]
    if len(test_x) == 0:
        raise ValueError(f"No clips of the held-out accent {HELDOUT_ACCENT!r} in {args.data_dir}.")

    model = SpokenDigitClassifier()
    start = time.perf_counter()

    def report(epoch, mean_loss):
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}: loss {mean_loss:.4f}, held-out accuracy {accuracy(model, test_x, test_y):.3f}")

    fit(
        model,
        train_x,
        train_y,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        generator=generator,
        augment=lambda x, gen: random_time_shift(x, args.max_shift, gen),
        on_epoch=report,
    )
    seconds = time.perf_counter() - start

    model.eval()
    with torch.no_grad():
        mu, sigma = feature_statistics(model.features(images).double().numpy())
    args.output_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.output_dir / "spoken_digit_classifier.safetensors"))
    save_file(
        {"mu": torch.from_numpy(mu).float(), "sigma": torch.from_numpy(sigma).float()},
        str(args.output_dir / "spoken_digit_reference.safetensors"),
    )
    info = {
        "heldout_accuracy": accuracy(model, test_x, test_y),
        "train_accuracy": accuracy(model, train_x, train_y),
        "num_train": len(train_x),
        "num_heldout": len(test_x),
        "heldout_accent": HELDOUT_ACCENT,
        "reference": f"features of all {len(images)} clips of the demo folder",
        "spectrogram": SPOKEN_DIGIT_MEL,
        "epochs": args.epochs,
        "train_seconds": round(seconds, 1),
        "seed": args.seed,
    }
    (args.output_dir / "spoken_digit_classifier.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main(parse_args())
