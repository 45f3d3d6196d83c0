"""Streaming voice-activity detection for the duplex session, on Silero VAD.

What: ``StreamingVAD`` takes microphone audio in pieces of any size and reports
``speech_started`` / ``speech_stopped`` events with sample positions on the stream's own clock::

    vad = StreamingVAD()                       # 16 kHz; loads its model (0.1-0.2 s)
    for pcm in microphone():                   # float32 in [-1, 1] or int16, any length
        for ev in vad.push(pcm):
            print(ev.kind, ev.sample / 16000)  # speech_started 1.02, speech_stopped 3.31, ...
    events = vad.flush()                       # end of input: an open segment is closed

Why: the duplex session must know when the user speaks before the state head can judge a turn
(it gates what the frozen LLM hears, and a barge-in starts at speech onset). Freeze-Omni's
authors use Silero VAD for this too. The ``silero-vad`` package ships its model inside the
wheel (``silero_vad/data/silero_vad.jit``), so nothing is downloaded at run time.

How the model is fed. The Silero model scores windows of exactly 512 samples at 16 kHz (256 at
8 kHz) and is stateful: its TorchScript wrapper carries an LSTM state and the last 64 (32)
samples of the previous window, which it prepends to the next one. Silero's own
``VADIterator`` and ``get_speech_timestamps`` call ``model(window, sample_rate)`` on
consecutive windows after ``model.reset_states()``; this class does exactly that. Windows are
cut on the stream clock (window k covers samples [512 k, 512 k + 512)), the incomplete tail is
buffered until the next push, so the probabilities and the events do not depend on how the
audio was split into pushes. ``flush()`` scores the last incomplete window zero-padded, as
``get_speech_timestamps`` does with the end of a file.

Decisions (hysteresis, like Silero's ``VADIterator``), with p the window's speech probability:

* a segment opens at the first window with p >= ``threshold``;
* it is reported (``speech_started``) once it holds ``min_speech_s`` of windows with
  p >= ``threshold`` (rounded up to whole windows; 0: at once, as ``VADIterator``). The event
  is back-dated: its sample is the start of the segment's first window minus ``speech_pad_s``.
  A segment that ends before that (a click, a cough, a door) is dropped without an event;
* a silence begins at the first window with p < ``neg_threshold`` (default
  ``threshold - 0.15``, Silero's rule); windows in between the two thresholds neither start a
  silence nor end one; a window with p >= ``threshold`` ends it;
* the segment closes (``speech_stopped``) when the silence has lasted ``min_silence_s``
  (from the start of its first window to the end of the current one). The event's sample is
  where the silence began plus ``speech_pad_s``;
* ``flush()`` closes a reported segment still open: at the start of a pending silence plus
  the pad, or else at the end of the stream (Silero's offline function uses the end of the
  audio in both cases; the start of the silence is where the speech really stopped).

Defaults. ``threshold=0.5`` is Silero's documented default; with ``min_silence_s=0.5`` it is
also the session's ``vad_threshold`` / ``vad_min_silence_s``. Freeze-Omni's authors serve
with threshold 0.8 and a 2 s minimum silence. A higher threshold keeps more room noise out
but drops soft speech; on espeak-ng speech it moves the events by at most a window. The 2 s
silence makes the VAD a slow fallback end of turn. Here the state head takes the turns and
the VAD only has to say whether someone is speaking, and with ``turn_detection="vad"`` the
session would wait 2 s before every answer. A shorter silence is enough: on four espeak-ng
utterances the longest dip below ``neg_threshold`` inside an utterance was 3 windows (about
0.1 s). Natural speech pauses longer, but 0.5 s still leaves room, and a split only costs a
``speech_stopped`` / ``speech_started`` pair (the session keeps the turn open across it).
``min_speech_s=0.1`` (4 windows) rejects clicks shorter than a syllable. It delays the
report by 128 ms, but not the sample it reports. ``speech_pad_s=0.03`` is Silero's pad.

Sharing a model: not possible. The wrapper keeps the recurrent state and the context samples
inside the model object, so two streams on one object would corrupt each other. Each
``StreamingVAD`` loads its own copy by default. ``load_model`` costs about 0.1-0.2 s on this
2-core machine: ``torch.jit.load`` of the packaged 2 MB model takes about 75 ms, and the
warm-up calls that take TorchScript's first-call optimization out of the first push take the
rest. After that a 32 ms window takes about 0.7 ms to score. ``model=`` takes a model for
this instance alone, for instance one loaded ahead of time. It is refused while another live
``StreamingVAD`` uses the same object.

Threads: importing ``silero_vad`` calls ``torch.set_num_threads(1)`` for the whole process, and
``load_model`` puts the caller's thread count back, so the VAD does not slow the LLM down.
Windows are scored on one thread; the caller's count is restored after each call.

Memory is bounded: under one window of buffered samples, and the last ``history_windows``
probabilities.
"""
from __future__ import annotations

import collections
import contextlib
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Deque, List, Optional

import numpy as np
import torch

__all__ = ["VADEvent", "StreamingVAD", "load_model"]

SPEECH_STARTED = "speech_started"
SPEECH_STOPPED = "speech_stopped"
_WINDOWS = {16000: 512, 8000: 256}

# id(model) -> the live StreamingVAD using it (the VAD holds the model, so the id is unique)
_OWNERS: "weakref.WeakValueDictionary[int, StreamingVAD]" = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class VADEvent:
    """kind: "speech_started" | "speech_stopped"; sample: position on the stream's clock
    (samples at the VAD's sample rate since the first push) where the speech starts, or where
    the silence that ended it began (both include ``speech_pad_s``)."""

    kind: str
    sample: int


def load_model():
    """A fresh, warmed-up Silero VAD model (TorchScript) from the installed package; no
    download.

    The process's torch thread count is left as it was (``silero_vad`` sets it to 1 when
    imported)."""
    threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            # torch >= 2.9 deprecates torch.jit.load; the package's model is TorchScript
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            # the package's own importlib.resources.path call (deprecated on Python 3.12)
            warnings.filterwarnings("ignore", message="path is deprecated",
                                    category=DeprecationWarning)
            from silero_vad import load_silero_vad

            model = load_silero_vad()
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    # TorchScript's profiling executor optimizes a model's graph on its first calls (tens of
    # ms each); do it here rather than in the live stream's first push
    with torch.no_grad(), _one_thread():
        for sr, n in _WINDOWS.items():
            for _ in range(2):
                model(torch.zeros(n), sr)
    model.reset_states()
    return model


@contextlib.contextmanager
def _one_thread():
    """One intra-op thread for the tiny model (what silero_vad's import sets for the whole
    process), for the calls inside only: with more, a busy core stalls every window on the
    thread team's barrier (measured on 2 cores: 2-4x slower with one core busy, up to
    100 ms a window with both)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _as_samples(samples) -> np.ndarray:
    """1-D float32 audio from a numpy array, a torch tensor or a sequence; checked finite."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu()
        samples = (samples.float() if samples.is_floating_point() else samples).numpy()
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"StreamingVAD takes mono audio as a 1-D array, got shape {x.shape}; "
                         "pass one channel (e.g. x[:, 0]) or their mean")
    if x.dtype == np.int16:
        return np.ascontiguousarray(x, dtype=np.float32) / 32768.0
    if not np.issubdtype(x.dtype, np.floating):
        if x.size == 0:
            return np.zeros(0, dtype=np.float32)
        raise ValueError(f"StreamingVAD takes float samples in [-1, 1] or int16, got {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"StreamingVAD: {int(np.isnan(x).sum())} NaN and "
                         f"{int(np.isinf(x).sum())} infinite samples in this piece (the first "
                         f"at index {first}: {x[first]}); nothing of the piece was used")
    return np.ascontiguousarray(x, dtype=np.float32)


class StreamingVAD:
    """Speech start/stop events for audio pushed in pieces; see the module docstring.

    Args:
        threshold: a window with speech probability >= threshold is speech (0 < t < 1).
        min_silence_s: seconds below ``neg_threshold`` that end a segment.
        speech_pad_s: seconds added before a start and after a stop.
        min_speech_s: seconds of speech windows a segment needs before it is reported.
        sample_rate: 16000 or 8000 (Silero's rates); resample anything else first.
        model: a Silero model for this instance alone (default: a fresh one is loaded).
        neg_threshold: the exit threshold; default ``max(threshold - 0.15, 0.01)``.
        history_windows: how many of the last window probabilities ``probabilities`` keeps.

    Attributes:
        window: samples per model window (512 at 16 kHz).
        in_speech: a reported segment is open.
        last_probability: the speech probability of the last window scored (None before).
        num_samples: samples pushed since the stream began (its clock).
    """

    def __init__(self, threshold: float = 0.5, min_silence_s: float = 0.5,
                 speech_pad_s: float = 0.03, min_speech_s: float = 0.1,
                 sample_rate: int = 16000, model=None, neg_threshold: Optional[float] = None,
                 history_windows: int = 512):
        if sample_rate not in _WINDOWS:
            raise ValueError(f"Silero VAD runs at {sorted(_WINDOWS)} Hz, got {sample_rate}: "
                             "resample the audio first")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        if neg_threshold is None:
            neg_threshold = max(threshold - 0.15, 0.01)
        if not 0.0 < neg_threshold <= threshold:
            raise ValueError(f"neg_threshold must be in (0, threshold={threshold}], "
                             f"got {neg_threshold}")
        for name, value in (("min_silence_s", min_silence_s), ("speech_pad_s", speech_pad_s),
                            ("min_speech_s", min_speech_s)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if history_windows < 1:
            raise ValueError(f"history_windows must be >= 1, got {history_windows}")

        self.threshold = float(threshold)
        self.neg_threshold = float(neg_threshold)
        self.sample_rate = int(sample_rate)
        self.window = _WINDOWS[self.sample_rate]
        self.min_silence_samples = int(round(min_silence_s * sample_rate))
        self.pad_samples = int(round(speech_pad_s * sample_rate))
        self.min_speech_windows = max(1, math.ceil(round(min_speech_s * sample_rate, 6)
                                                   / self.window))

        if model is None:
            model = load_model()
        else:
            owner = _OWNERS.get(id(model))
            if owner is not None:
                raise ValueError(
                    "this Silero model is already used by another live StreamingVAD; the model "
                    "keeps the stream's state inside it, so each StreamingVAD needs its own "
                    "(model=None loads one, in well under a second)")
        self.model = model
        _OWNERS[id(model)] = self
        self._history: Deque[float] = collections.deque(maxlen=int(history_windows))
        self.reset()

    # ------------------------------------------------------------------ public API
    def reset(self) -> None:
        """Forget the stream: clock back to 0, no segment, model state cleared."""
        self.model.reset_states()
        self._buffer = np.zeros(0, dtype=np.float32)
        self.num_samples = 0
        self._num_windows = 0
        self._history.clear()
        self._segment_start: Optional[int] = None  # first window's start sample of a segment
        self._voiced_windows = 0
        self._silence_start: Optional[int] = None
        self.in_speech = False
        self._last_stop = 0
        self._ended = False

    def push(self, samples) -> List[VADEvent]:
        """Take more audio (1-D, float32 in [-1, 1] or int16, any length); return the events
        of the windows it completed, in order."""
        self._check_open("push")
        x = _as_samples(samples)
        if not len(x):
            return []
        self.num_samples += len(x)
        buf = np.concatenate([self._buffer, x]) if len(self._buffer) else x
        n = len(buf) // self.window * self.window
        events: List[VADEvent] = []
        for i in range(0, n, self.window):
            self._step(buf[i:i + self.window], events)
        self._buffer = buf[n:].copy()
        return events

    def flush(self) -> List[VADEvent]:
        """End of the stream: the buffered tail is scored (zero-padded to a window) and a
        reported segment still open is closed (a segment not yet reported is dropped).
        ``reset()`` starts a new stream."""
        self._check_open("flush")
        events: List[VADEvent] = []
        if len(self._buffer):
            tail = np.zeros(self.window, dtype=np.float32)
            tail[:len(self._buffer)] = self._buffer
            self._buffer = np.zeros(0, dtype=np.float32)
            self._step(tail, events)
        if self.in_speech:
            end = self.num_samples
            if self._silence_start is not None:
                end = min(self._silence_start + self.pad_samples, end)
            self._stop(end, events)
        self._segment_start = self._silence_start = None
        self._voiced_windows = 0
        self._ended = True
        return events

    @property
    def hearing_speech(self) -> bool:
        """In a reported speech segment, with no silence begun since its last voiced window
        (False in the minimum-silence wait after the speech, True again once it resumes)."""
        return self.in_speech and self._silence_start is None

    @property
    def last_probability(self) -> Optional[float]:
        return self._history[-1] if self._history else None

    @property
    def probabilities(self) -> List[float]:
        """The last ``history_windows`` window probabilities, oldest first."""
        return list(self._history)

    @property
    def num_windows(self) -> int:
        """Windows scored since the stream began (window k starts at sample k * window)."""
        return self._num_windows

    # ------------------------------------------------------------------ internals
    def _check_open(self, what: str) -> None:
        if self._ended:
            raise RuntimeError(f"{what}() after flush(): the stream has ended; call reset() "
                               "to start a new one")

    @torch.no_grad()
    def _score(self, window: np.ndarray) -> float:
        with _one_thread():
            # a copy: the caller's array may be read-only
            return float(self.model(torch.tensor(window), self.sample_rate).item())

    def _step(self, window: np.ndarray, events: List[VADEvent]) -> None:
        """Score one window of the stream and advance the decisions."""
        start = self._num_windows * self.window
        end = min(start + self.window, self.num_samples)  # a flushed tail ends at the stream's end
        p = self._score(window)
        self._num_windows += 1
        self._history.append(p)

        if p >= self.threshold:
            self._silence_start = None
            if self._segment_start is None:
                self._segment_start = start
                self._voiced_windows = 0
            self._voiced_windows += 1
            if not self.in_speech and self._voiced_windows >= self.min_speech_windows:
                self.in_speech = True
                sample = max(self._segment_start - self.pad_samples, self._last_stop, 0)
                events.append(VADEvent(SPEECH_STARTED, int(sample)))
            return
        if self._segment_start is None:
            return
        if self._silence_start is None:
            if p >= self.neg_threshold:
                return  # between the thresholds: no silence starts
            self._silence_start = start
        if end - self._silence_start >= self.min_silence_samples:
            if self.in_speech:
                self._stop(min(self._silence_start + self.pad_samples, end), events)
            self._segment_start = self._silence_start = None  # an unreported one is dropped
            self._voiced_windows = 0

    def _stop(self, sample: int, events: List[VADEvent]) -> None:
        self.in_speech = False
        self._last_stop = int(sample)
        events.append(VADEvent(SPEECH_STOPPED, int(sample)))

    def __repr__(self) -> str:
        return (f"StreamingVAD(threshold={self.threshold}, neg_threshold={self.neg_threshold}, "
                f"min_silence_samples={self.min_silence_samples}, "
                f"min_speech_windows={self.min_speech_windows}, "
                f"sample_rate={self.sample_rate}, in_speech={self.in_speech})")
