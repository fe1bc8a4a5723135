"""Synthesise the spoken-digits demo dataset with espeak-ng: "zero" to "nine" in several accents, voices, pitches and
speeds, as an audio folder with one sub-folder per digit (the labels), ready for `--train_data_dir`.

Needs the espeak-ng program (Debian/Ubuntu: `apt-get install espeak-ng`; macOS: `brew install espeak-ng`). Nothing
is downloaded. The default is 360 clips (4 accents x 3 voices x 3 pitch/speed settings x 10 digits, 22.05 kHz mono
16-bit WAV, silence trimmed), about 5 MB, written in about half a minute:

    python training/make_spoken_digits.py --output_dir spoken_digits
    accelerate launch training/train.py --train_data_dir spoken_digits --label_column label --preset mel64 \\
        --output_dir hfddpm-spoken-digits

Folder names are `0_zero` ... `9_nine`, so the class indices are the digits. File names record the settings
(`en-us_m3_p50_s175.wav`); `hfddpm.evaluation.spoken_digits` holds out the `en-029` accent for its classifier.
"""

import argparse
import itertools
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029")
VOICES = ("m3", "f2", "m7")  # espeak-ng voice variants
PITCH_SPEED = ((35, 150), (50, 175), (65, 200))  # espeak-ng -p (0-99) and -s (words per minute)


def class_folder(digit: int) -> str:
    """``0_zero`` ... ``9_nine``: sorted by name, the class indices are the digits."""
    return f"{digit}_{DIGITS[digit]}"


def find_espeak() -> str:
    """The espeak-ng executable, or a ``FileNotFoundError`` saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise FileNotFoundError(
            "espeak-ng is not installed (Debian/Ubuntu: `apt-get install espeak-ng`, macOS: `brew install espeak-ng`)."
        )
    return path


def synthesise(espeak: str, word: str, accent: str, voice: str, pitch: int, speed: int, path: Path, top_db: float):
    """Speak ``word`` into ``path`` (WAV), leading and trailing silence trimmed."""
    import librosa
    import soundfile

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(
            [espeak, "-v", f"{accent}+{voice}", "-p", str(pitch), "-s", str(speed), "-w", str(raw), word],
            check=True,
            capture_output=True,
        )
        audio, rate = soundfile.read(raw, dtype="float32")
    trimmed, _ = librosa.effects.trim(audio, top_db=top_db)
    soundfile.write(path, np.asarray(trimmed), rate, subtype="PCM_16")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", type=Path, default=Path("spoken_digits"))
    parser.add_argument("--accents", nargs="+", default=list(ACCENTS), help="espeak-ng voices (languages)")
    parser.add_argument("--voices", nargs="+", default=list(VOICES), help="espeak-ng voice variants")
    parser.add_argument(
        "--settings", type=int, default=len(PITCH_SPEED), help=f"pitch/speed settings, the first of {PITCH_SPEED}"
    )
    parser.add_argument("--top_db", type=float, default=40.0, help="silence threshold of the trimming, in dB")
    args = parser.parse_args(argv)
    if not 1 <= args.settings <= len(PITCH_SPEED):
        parser.error(f"--settings must be in [1, {len(PITCH_SPEED)}], got {args.settings}")

    from tqdm.auto import tqdm

    espeak = find_espeak()
    combos = list(itertools.product(range(len(DIGITS)), args.accents, args.voices, PITCH_SPEED[: args.settings]))
    for digit, accent, voice, (pitch, speed) in tqdm(combos, desc="espeak-ng", unit="clip"):
        folder = args.output_dir / class_folder(digit)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{accent}_{voice}_p{pitch}_s{speed}.wav"
        synthesise(espeak, DIGITS[digit], accent, voice, pitch, speed, path, args.top_db)
    print(f"Wrote {len(combos)} clips in {len(DIGITS)} class folders to {args.output_dir}")


if __name__ == "__main__":
    main()
