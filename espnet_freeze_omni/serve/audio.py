"""Audio on the wire: base64 PCM16 frames in and out, and a streaming resampler.

The Realtime protocol carries audio as base64 little-endian 16-bit PCM, mono. A client's
frames arrive in arbitrary sizes, so resampling (24 kHz clients into the 16 kHz frontend)
keeps its filter state across frames: the result does not depend on how the client sliced
its audio, and frame edges leave no clicks.
"""
from __future__ import annotations

import base64
import binascii
import math

import numpy as np


class AudioFormatError(ValueError):
    """A frame that is not base64 PCM16."""


def decode_pcm16(b64: str) -> np.ndarray:
    """base64 PCM16 (little-endian, mono) -> float32 in [-1, 1)."""
    if not isinstance(b64, str):
        raise AudioFormatError(f"audio must be a base64 string, got {type(b64).__name__}")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as err:
        raise AudioFormatError(f"audio is not valid base64: {err}") from None
    if len(raw) % 2:
        raise AudioFormatError(f"audio has {len(raw)} bytes: PCM16 needs an even number")
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def encode_pcm16(pcm: np.ndarray) -> str:
    """float32 samples -> base64 PCM16 (clipped to the 16-bit range)."""
    ints = np.clip(np.round(np.asarray(pcm, dtype=np.float32) * 32768.0), -32768, 32767)
    return base64.b64encode(ints.astype("<i2").tobytes()).decode("ascii")


class StreamingResampler:
    """Rational-ratio resampling of a stream, frame by frame (polyphase windowed sinc).

    Output sample n lies at input time n * in_rate / out_rate (no shift). It is computed once
    the input reaches that time plus the filter's half width: the last `half_width` input
    samples of a frame (0.7 ms at 24 kHz) wait for the next frame.
    """

    def __init__(self, in_rate: int, out_rate: int, half_width: int = 16):
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be > 0, got {in_rate} -> {out_rate}")
        g = math.gcd(in_rate, out_rate)
        self.up, self.down = out_rate // g, in_rate // g
        self.in_rate, self.out_rate = in_rate, out_rate
        self.half_width = half_width
        # one filter per output phase: taps for input offsets -half_width+1 .. half_width
        cutoff = min(1.0, out_rate / in_rate)  # of the input's Nyquist frequency
        offsets = np.arange(-half_width + 1, half_width + 1)
        self.filters = []
        for phase in range(self.up):
            frac = phase * self.down % self.up / self.up  # output position past its input sample
            t = offsets - frac
            window = 0.5 + 0.5 * np.cos(np.pi * np.clip(t / (half_width + 1), -1, 1))
            taps = cutoff * np.sinc(cutoff * t) * window
            self.filters.append((taps / taps.sum()).astype(np.float32))
        self.filters = np.stack(self.filters)
        self._buffer = np.zeros(half_width - 1, dtype=np.float32)  # silence before the start
        self._base = -(half_width - 1)  # input index of _buffer[0]
        self._next = 0  # index of the next output sample

    def push(self, pcm: np.ndarray) -> np.ndarray:
        pcm = np.asarray(pcm, dtype=np.float32)
        if self.up == self.down:
            return pcm
        self._buffer = np.concatenate([self._buffer, pcm])
        end = self._base + len(self._buffer)  # input samples available: [.., end)
        # output n sits just past input sample (n * down) // up; it needs half_width more
        # (n * down) // up < end - half_width  <=>  n < (end - half_width) * up / down
        last = max(self._next, -(-(end - self.half_width) * self.up // self.down))
        n = np.arange(self._next, last)
        if len(n):
            left = (n * self.down) // self.up
            index = (left - self.half_width + 1 - self._base)[:, None] + \
                np.arange(2 * self.half_width)[None, :]
            taps = self.filters[n % self.up]
            out = np.einsum("ij,ij->i", taps, self._buffer[index]).astype(np.float32)
            self._next = int(last)
        else:
            out = np.zeros(0, dtype=np.float32)
        keep_from = (self._next * self.down) // self.up - self.half_width + 1
        if keep_from > self._base:
            self._buffer = self._buffer[keep_from - self._base:]
            self._base = keep_from
        return out
