"""Where speech stops: the one energy measure behind every speech end in the project.

A 10 ms frame is loud when its RMS exceeds 2 % of the loudest frame's; the speech ends with
the last loud frame. This ignores the synthesizer's and the padded trailing silence, so
turn_info, duplex_info and the latency benchmark all time the end of a turn the same way.
"""
from __future__ import annotations

import os
from typing import Tuple

import numpy as np

from espnet_freeze_omni.data.audio import read_audio

FRAME_SECONDS = 0.01
RELATIVE_THRESHOLD = 0.02


def loud_frames(audio: np.ndarray, sample_rate: int) -> Tuple[np.ndarray, int]:
    """(indices of the loud 10 ms frames of mono `audio`, samples per frame)."""
    hop = max(1, int(sample_rate * FRAME_SECONDS))
    n = len(audio) // hop
    if n == 0:
        return np.zeros(0, dtype=int), hop
    # float32 arithmetic whatever the input: a frame at the threshold falls the same way
    # for a file read here and for samples a caller already holds
    frames = np.asarray(audio[:n * hop], dtype=np.float32).reshape(n, hop)
    rms = np.sqrt((frames ** 2).mean(axis=1))
    return np.nonzero(rms > max(rms.max() * RELATIVE_THRESHOLD, 1e-5))[0], hop


def speech_end(audio: np.ndarray, sample_rate: int) -> float:
    """Seconds from the start of mono `audio` to the end of its last loud frame (0 if none)."""
    loud, hop = loud_frames(audio, sample_rate)
    return 0.0 if len(loud) == 0 else (loud[-1] + 1) * hop / sample_rate


def speech_end_seconds(wav_path: str | os.PathLike) -> float:
    """speech_end of an audio file (channels averaged), rounded to the 10 ms frames."""
    audio, rate = read_audio(str(wav_path))
    return round(speech_end(audio, rate), 2)
