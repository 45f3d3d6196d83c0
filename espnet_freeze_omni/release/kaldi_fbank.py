"""Kaldi fbank features as the authors' release computes them, offline and streaming.

The release featurizes with ``torchaudio.compliance.kaldi.fbank``: the float waveform
scaled by 32768 (16-bit range), 25 ms povey windows every 10 ms, per-frame DC removal,
pre-emphasis 0.97, no dither, ``snip_edges`` (frame t covers samples [160 t, 160 t + 400)),
a 512-point FFT and 80 Kaldi mel bins from 20 Hz to Nyquist, log of the power.
``KaldiFbankFrontend`` is an espnet frontend (``frontend: kaldi_fbank`` in a speech-input
config: one of SpeechInputTask's frontend choices); we call torchaudio's
implementation and only add batching, lengths and the streaming wrapper.

Every frame depends only on its own 400 samples, so streaming is exact:
``KaldiStreamingFrontend`` (what ``streaming_frontend_for(model.frontend)`` returns for
this frontend) emits each frame as soon as its last sample has arrived, and ``push`` + ``flush``
outputs equal the offline features of the whole utterance.

Streaming alignment (RELEASE.md difference 4), ``stream_alignment`` of the frontend:

* ``"lookahead"`` (default): the stream is the offline features; the encoder's chunk of
  16 frames reads 3 frames ahead (output frame t sees fbank frames 4t .. 4t+6).
* ``"release"`` (set by the release importer): as the release's demo code streams,
  ``win - hop`` (240 at 16 kHz) zero samples come before the first window, and the
  stream starts with 3 all-zero *raw* frames (the model's CMVN normalizes them, as the
  release normalizes its zero-initialized 3-frame overlap). The encoder's unchanged
  16 + 3 windowing then reads, per chunk, the 3 previous + 16 new frames the release
  feeds, so output frame t sees fbank frames 4t-3 .. 4t+3 of the zero-prefixed audio.

The offline ``forward`` (training, whole-utterance encoding) ignores ``stream_alignment``.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np
import torch
from espnet2.asr.frontend.abs_frontend import AbsFrontend

FRONTEND_NAME = "kaldi_fbank"
STREAM_ALIGNMENTS = ("lookahead", "release")
# the release's chunk overlap: the encoder's conv context (receptive field 7 - rate 4)
RELEASE_LEAD_FRAMES = 3


def kaldi_fbank(wav: torch.Tensor, fs: int, n_mels: int, frame_length_ms: float,
                frame_shift_ms: float, scale: float) -> torch.Tensor:
    """(L,) float waveform -> (T, n_mels) float32 log-mel fbank, the release's settings."""
    import torchaudio.compliance.kaldi as kaldi

    return kaldi.fbank(
        wav.float()[None] * scale, sample_frequency=float(fs), num_mel_bins=n_mels,
        frame_length=frame_length_ms, frame_shift=frame_shift_ms, dither=0.0,
        window_type="povey", preemphasis_coefficient=0.97, remove_dc_offset=True,
        snip_edges=True)


class KaldiFbankFrontend(AbsFrontend):
    """espnet frontend: (B, L) waveforms at ``fs`` -> (B, T, n_mels) Kaldi fbank.

    T = 1 + (L - win) // hop for L >= win (snip_edges), else 0.
    """

    def __init__(self, fs: Union[int, str] = 16000, n_mels: int = 80,
                 frame_length_ms: float = 25.0, frame_shift_ms: float = 10.0,
                 scale: float = 32768.0, stream_alignment: str = "lookahead"):
        super().__init__()
        from espnet_freeze_omni.data.audio import parse_sample_rate

        if stream_alignment not in STREAM_ALIGNMENTS:
            raise ValueError(f"stream_alignment must be one of {STREAM_ALIGNMENTS}, got "
                             f"{stream_alignment!r}")
        self.stream_alignment = stream_alignment

        self.fs = parse_sample_rate(fs)
        self.n_mels = n_mels
        self.frame_length_ms = frame_length_ms
        self.frame_shift_ms = frame_shift_ms
        self.scale = scale
        self.win_length = int(self.fs * frame_length_ms / 1000)
        self.hop_length = int(self.fs * frame_shift_ms / 1000)

    def output_size(self) -> int:
        return self.n_mels

    def num_frames(self, num_samples: torch.Tensor) -> torch.Tensor:
        n = (num_samples - self.win_length) // self.hop_length + 1
        return torch.where(num_samples >= self.win_length, n, torch.zeros_like(n))

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """(L,) -> (T, n_mels)."""
        if wav.numel() < self.win_length:
            return wav.new_zeros(0, self.n_mels, dtype=torch.float32)
        return kaldi_fbank(wav, self.fs, self.n_mels, self.frame_length_ms,
                           self.frame_shift_ms, self.scale)

    def forward(self, input: torch.Tensor, input_lengths: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        if input.dim() != 2:
            raise ValueError(f"KaldiFbankFrontend takes (B, L) mono waveforms, got "
                             f"{tuple(input.shape)}")
        lengths = self.num_frames(input_lengths.long())
        out = input.new_zeros(input.size(0), int(lengths.max()) if len(lengths) else 0,
                              self.n_mels, dtype=torch.float32)
        for b in range(input.size(0)):
            feats = self.features(input[b, : int(input_lengths[b])])
            out[b, : feats.size(0)] = feats
        return out, lengths


class KaldiStreamingFrontend:
    """Streaming twin of KaldiFbankFrontend, with StreamingFrontend's interface
    (``push``, ``flush``, ``reset``, ``num_frames``, ``sample_rate``, ``n_mels``).
    With the frontend's ``stream_alignment: release`` every utterance (after ``reset``)
    starts with RELEASE_LEAD_FRAMES zero frames and the features of the audio behind
    ``win - hop`` zero samples; ``num_frames`` counts the fbank frames only."""

    def __init__(self, frontend: KaldiFbankFrontend):
        if not isinstance(frontend, KaldiFbankFrontend):
            raise ValueError(f"KaldiStreamingFrontend needs a KaldiFbankFrontend, not "
                             f"{type(frontend).__name__}")
        self.frontend = frontend
        self.sample_rate = frontend.fs
        self.n_mels = frontend.n_mels
        self.hop_length = frontend.hop_length
        self.win_length = frontend.win_length
        self.reset()

    def reset(self) -> None:
        release = self.frontend.stream_alignment == "release"
        # release: the stream starts with win - hop zero samples
        lead = self.win_length - self.hop_length if release else 0
        self._buf = torch.zeros(lead, dtype=torch.float32)
        self._buf_start = 0  # stream sample index of _buf[0]
        self.num_frames = 0
        self._lead_frames = RELEASE_LEAD_FRAMES if release else 0  # still to emit

    def _empty(self) -> torch.Tensor:
        return torch.zeros(1, 0, self.n_mels)

    @torch.no_grad()
    def push(self, samples: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        feats = self._push(samples)
        if self._lead_frames:
            feats = torch.cat([torch.zeros(1, self._lead_frames, self.n_mels), feats], dim=1)
            self._lead_frames = 0
        return feats

    def _push(self, samples: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(samples) if isinstance(samples, np.ndarray)
                            else samples).detach()
        if x.dim() != 1:
            raise ValueError(f"KaldiStreamingFrontend takes 1-D samples, got {tuple(x.shape)}")
        if not torch.is_floating_point(x):
            raise TypeError(f"samples must be floating point, got {x.dtype}")
        self._buf = torch.cat([self._buf, x.float().cpu()])
        available = self._buf_start + self._buf.numel()
        if available < self.win_length:
            return self._empty()
        last = (available - self.win_length) // self.hop_length
        if last < self.num_frames:
            return self._empty()
        start = self.num_frames * self.hop_length - self._buf_start
        stop = last * self.hop_length + self.win_length - self._buf_start
        feats = self.frontend.features(self._buf[start:stop])
        self.num_frames = last + 1
        drop = self.num_frames * self.hop_length - self._buf_start
        self._buf = self._buf[drop:].clone()
        self._buf_start += drop
        return feats[None]

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End the utterance: snip_edges leaves no partial frame, so nothing more comes."""
        self.reset()
        return self._empty()
