"""Test signals for the audio tests: pure tones at the mel tests' sample rate."""

import numpy as np

SR = 16000


def tone(freq: float, seconds: float, rate: int = SR, amplitude: float = 0.5) -> np.ndarray:
    """A sine of ``freq`` Hz, ``seconds`` long, float32."""
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
