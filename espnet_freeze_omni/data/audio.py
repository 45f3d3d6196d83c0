"""Audio in: the one place that opens, checks, downmixes and resamples audio.

A source is a wav.scp value: a file path, or a Kaldi pipe `command |` that writes a wav file
to stdout. Everything that reads audio (training checks, data dir validation, recipes, the
codec, inference and scoring) goes through here, so every error names the utterance and the
file the same way, and no caller decodes audio at a rate it did not ask for:

    load_audio(spec, rate, utt_id)   mono float32 at `rate` (downmixed, resampled)
    read_audio(spec, utt_id)         (mono float32, the file's own rate)
    check_audio(spec, sample_rate)   what is wrong with a source (header only, except for
                                     floating-point files, checked for NaN/inf)
    check_sound_scp(scp, rate)       check_audio over every line of a wav.scp
"""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

import numpy as np

from espnet_freeze_omni.data.kaldi_table import Problem, read_table

if TYPE_CHECKING:  # reading audio never imports torch
    import torch

logger = logging.getLogger(__name__)


class AudioError(RuntimeError):
    """A source that cannot be used; the message names the utterance and the file."""


def is_pipe(spec: str) -> bool:
    return spec.rstrip().endswith("|")


def describe(spec: str) -> str:
    """How messages name a source: the path, or the command of a pipe."""
    spec = spec.strip()
    return f"command '{spec[:-1].strip()}'" if is_pipe(spec) else spec


def _run_pipe(spec: str) -> bytes:
    # bash, as the Kaldi pipes in wav.scp files assume
    proc = subprocess.run(["bash", "-c", spec.strip()[:-1].strip()], capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed (exit {proc.returncode}): "
                           f"{proc.stderr.decode(errors='replace').strip()[-200:]}")
    if not proc.stdout:
        raise RuntimeError("command wrote nothing to stdout")
    return proc.stdout


def _who(utt_id: Optional[str]) -> str:
    return f"utterance {utt_id}: " if utt_id is not None else ""


# What can be wrong with a source, worded once for the reader and the checkers alike.
MISSING = "does not exist"
EMPTY = "is empty (0 samples)"
EMPTY_FILE = "is an empty file (0 bytes)"
# libsndfile's description of a WAV whose data chunk is longer than the file:
# "data : 8000 (should be 3000)"
_TRUNCATED_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# sizes a writer that could not seek back (a pipe) leaves in the header: length unknown
_UNKNOWN_LENGTHS = {0, 0xFFFFFFFF, 0x7FFFF000, 0x7FFFFFFF}


def _truncated(info) -> Optional[str]:
    """Why a file whose header promises more audio than it holds is refused, or None."""
    match = _TRUNCATED_DATA.search(getattr(info, "extra_info", "") or "")
    if match is None:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    if declared in _UNKNOWN_LENGTHS or declared <= present:
        return None
    return (f"is truncated (its header promises {declared} bytes of audio, the file holds "
            f"{present})")


def _non_finite(wav: np.ndarray) -> Optional[str]:
    bad = ~np.isfinite(wav)
    if not bad.any():
        return None
    first = int(np.flatnonzero(bad.reshape(-1))[0]) // (wav.shape[1] if wav.ndim == 2 else 1)
    return f"holds {int(bad.sum())} NaN/inf sample value(s) (the first at sample {first})"


def _unreadable(error: Exception) -> str:
    return f"cannot be read ({str(error).strip()[:200]})"


def _is_missing(spec: str) -> bool:
    # a value with spaces that is not a pipe is no path: opening it says why
    return not is_pipe(spec) and len(spec.split()) == 1 and not os.path.exists(spec)


def to_mono_float(wav: Union[np.ndarray, "torch.Tensor"]) -> np.ndarray:
    """(n,) or (n, channels) audio -> float32 mono; integer PCM is scaled to [-1, 1]."""
    torch_module = sys.modules.get("torch")  # a tensor exists only once torch is imported
    if torch_module is not None and isinstance(wav, torch_module.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav)
    if np.issubdtype(wav.dtype, np.integer):
        wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max + 1)
    wav = wav.astype(np.float32, copy=False)
    if wav.ndim == 2:
        # soundfile gives (frames, channels); downmixing keeps both channels' speech
        wav = wav.mean(axis=1)
    if wav.ndim != 1:
        raise ValueError(f"expected 1-D (or frames x channels) audio, got shape {wav.shape}")
    return wav


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation); a no-op at equal rates."""
    if orig_sr == target_sr:
        return wav
    import torch
    import torchaudio

    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(wav)),
                                         int(orig_sr), int(target_sr))
    return out.numpy().astype(np.float32, copy=False)


def _decode(spec: str) -> Tuple[np.ndarray, int]:
    """(samples as soundfile gives them, float32 (n,) or (n, channels), rate)."""
    import soundfile

    if is_pipe(spec):
        return soundfile.read(io.BytesIO(_run_pipe(spec)), dtype="float32")
    return soundfile.read(spec, dtype="float32")


def _file_problem(spec: str) -> Optional[str]:
    """What a plain file's size and header already say is wrong (empty, truncated)."""
    if is_pipe(spec) or len(spec.split()) != 1 or not os.path.isfile(spec):
        return None
    if os.path.getsize(spec) == 0:
        return EMPTY_FILE
    import soundfile

    try:
        info = soundfile.info(spec)
    except Exception:  # unreadable: decoding says why
        return None
    return _truncated(info)


def _read(spec: str, utt_id: Optional[str]) -> Tuple[np.ndarray, int, int]:
    """(mono float32, rate, channels) of a source; AudioError naming it otherwise."""
    spec = spec.strip()
    where = f"{_who(utt_id)}audio {describe(spec)}"
    if _is_missing(spec):
        raise AudioError(f"{where}: {MISSING}")
    problem = _file_problem(spec)
    if problem:
        raise AudioError(f"{where}: {problem}")
    try:
        wav, rate = _decode(spec)
    except Exception as e:  # soundfile, subprocess and OS errors all mean "cannot read"
        raise AudioError(f"{where}: {_unreadable(e)}") from e
    if wav.size == 0:
        raise AudioError(f"{where}: {EMPTY}")
    problem = _non_finite(wav)
    if problem:
        raise AudioError(f"{where}: {problem}")
    channels = wav.shape[1] if wav.ndim == 2 else 1
    return to_mono_float(wav), int(rate), channels


def read_audio(spec: str, utt_id: Optional[str] = None) -> Tuple[np.ndarray, int]:
    """A source -> (mono float32 samples, its own sample rate)."""
    wav, rate, _ = _read(spec, utt_id)
    return wav, rate


def load_audio(spec: str, rate: int, utt_id: Optional[str] = None) -> np.ndarray:
    """A source -> mono float32 samples at `rate`: channels are averaged and another
    sample rate is resampled (and logged), never decoded as if it were `rate`."""
    wav, file_rate, channels = _read(spec, utt_id)
    if channels != 1 or file_rate != rate:
        logger.info("%s%s: %d channel(s) at %d Hz -> mono %d Hz", _who(utt_id),
                    describe(spec), channels, file_rate, rate)
    return resample(wav, file_rate, rate)


def check_audio(spec: str, sample_rate: Optional[int] = None, open_audio: bool = True,
                run_pipe: bool = True) -> Optional[Tuple[str, str]]:
    """What is wrong with a source, as (problem kind, message), or None.

    A plain path is always checked to exist; with `open_audio` its header is read (frames,
    rate, a data chunk longer than the file; the samples are decoded only for floating-point
    files, which alone can hold NaN/inf), and with `run_pipe` a pipe is run and its output
    read. Kinds are those of kaldi_table.Problem: missing_audio, unreadable_audio,
    sample_rate.
    """
    import soundfile

    spec = spec.strip()
    what = describe(spec)
    pipe = is_pipe(spec)
    if _is_missing(spec):
        return "missing_audio", f"audio {what}: {MISSING}"
    if not (run_pipe if pipe else open_audio):
        return None
    if not pipe and os.path.isfile(spec) and os.path.getsize(spec) == 0:
        return "unreadable_audio", f"audio {what}: {EMPTY_FILE}"
    wav = None
    try:
        if pipe:  # a stream has no header to ask: decode it
            wav, rate = _decode(spec)
            frames = len(wav)
        else:
            info = soundfile.info(spec)
            rate, frames = info.samplerate, info.frames
            truncated = _truncated(info)
            if truncated:
                return "unreadable_audio", f"audio {what}: {truncated}"
            if frames and info.subtype in ("FLOAT", "DOUBLE"):
                # only floating-point samples can be NaN/inf: decode those (bounded cost)
                wav, _ = soundfile.read(spec, dtype="float32")
    except Exception as e:  # soundfile raises several types; all mean "unreadable"
        return "unreadable_audio", f"audio {what}: {_unreadable(e)}"
    if frames == 0:
        return "unreadable_audio", f"audio {what}: {EMPTY}"
    if wav is not None and _non_finite(wav):
        return "unreadable_audio", f"audio {what}: {_non_finite(wav)}"
    if sample_rate is not None and rate != sample_rate:
        return "sample_rate", f"audio {what}: sample rate {rate} Hz, expected {sample_rate} Hz"
    return None


def check_sound_scp(scp: str | os.PathLike, sample_rate: Optional[int] = None
                    ) -> List[Problem]:
    """Up-front check of every entry of a wav.scp, as a training job does before it builds
    its model: espnet's loaders read audio lazily, so an unreadable, empty or wrongly
    sampled file would otherwise surface mid-epoch (or never, for a wrong rate). Files are
    checked by their header; pipes are left to espnet, which runs them."""
    scp = str(scp)
    entries, problems = read_table(scp)
    for e in entries:
        if not e.value:
            problems.append(Problem("format", scp, "no audio path or command", e.line, e.key))
            continue
        found = check_audio(e.value, sample_rate, open_audio=True, run_pipe=False)
        if found:
            problems.append(Problem(found[0], scp, found[1], e.line, e.key))
    return problems


def parse_sample_rate(fs: Union[int, str]) -> int:
    """A sample rate as espnet configs write it (16000, "16k", "22.05k") -> Hz."""
    if isinstance(fs, str):
        import humanfriendly

        return int(humanfriendly.parse_size(fs))
    return int(fs)
