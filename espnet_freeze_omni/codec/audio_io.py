"""Reading Kaldi-style wav.scp entries for the codec tools (training and token extraction)."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import soundfile as sf


def read_wav_scp(path: str | os.PathLike) -> Dict[str, str]:
    """utt_id -> path (or 'command |'), in file order; duplicate or malformed lines are errors."""
    entries: Dict[str, str] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected 'utt_id path', got {line!r}")
            utt, spec = parts
            if utt in entries:
                raise ValueError(f"{path}:{lineno}: duplicate utterance id {utt!r}")
            entries[utt] = spec
    return entries


def load_wav(spec: str, utt_id: str = "?") -> Tuple[np.ndarray, int]:
    """A wav.scp value (a file, or a shell pipe ending in '|') -> (float32 samples, rate).

    Unreadable or empty audio raises RuntimeError naming the utterance and its path.
    """
    try:
        if spec.rstrip().endswith("|"):
            # Kaldi pipes (e.g. 'sox in.flac -t wav - |') write a wav file to stdout
            out = subprocess.run(spec.rstrip()[:-1], shell=True, check=True,
                                 capture_output=True).stdout
            wav, sr = sf.read(io.BytesIO(out), dtype="float32", always_2d=False)
        else:
            if not Path(spec).is_file():
                raise FileNotFoundError(f"no such file {spec}")
            wav, sr = sf.read(spec, dtype="float32", always_2d=False)
    except Exception as e:  # soundfile, subprocess and OS errors all mean "cannot read"
        raise RuntimeError(f"utterance {utt_id}: cannot read audio {spec!r}: {e}") from e
    if wav.size == 0:
        raise RuntimeError(f"utterance {utt_id}: audio {spec!r} is empty")
    if wav.ndim == 2:
        wav = wav.mean(axis=1)
    return wav.astype(np.float32, copy=False), int(sr)
