"""The one codec interface the rest of the project sees: waveform <-> single-codebook tokens.

Freeze-Omni's speech decoder predicts one stream of 1024 codec tokens at 40 Hz which the codec
turns into 24 kHz audio (SPEC section 2). Every backend (the embedded k-means codec, espnet's
gan_codec) hides behind `AbsCodec`; the registry in `codec/__init__.py` (`load_codec`) builds
one from a small config dict, so training, inference and the packet streamer never know which
backend they hold. This module knows no backend.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from espnet_freeze_omni.data.audio import resample, to_mono_float

TokensLike = Union[np.ndarray, Sequence[int], torch.Tensor]


class AbsCodec(abc.ABC):
    """Single-codebook speech codec: `encode` audio to int64 tokens, `decode` tokens to audio.

    Backends implement `_encode` (24 kHz mono float32 whose length is a multiple of
    `samples_per_token` -> one token per `samples_per_token` samples) and `_decode`
    (checked int64 tokens -> exactly len(tokens) * samples_per_token samples).
    """

    sample_rate: int = 24000
    samples_per_token: int = 600
    vocab_size: int = 1024
    # how many tokens either side can change a token's audio; None = unbounded or unknown.
    # Streaming (packets.PacketDecoder) reproduces offline decoding exactly when it is small.
    context_tokens: Optional[int] = None

    @property
    def token_rate(self) -> float:
        """Tokens per second (40 for 24 kHz / 600)."""
        rate = self.sample_rate / self.samples_per_token
        return int(rate) if float(rate).is_integer() else rate

    # -- what backends implement -------------------------------------------------------------
    @classmethod
    def from_config(cls, **conf) -> "AbsCodec":
        """The codec a `load_codec` config describes (its entries but `type`)."""
        return cls(**conf)

    @abc.abstractmethod
    def _encode(self, wav: np.ndarray) -> np.ndarray:
        """wav: float32 (n,), n % samples_per_token == 0, at sample_rate -> tokens (n / spt,)."""

    @abc.abstractmethod
    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        """tokens: int64 (T,), all in range -> float32 (T * samples_per_token,)."""

    # -- the public interface ----------------------------------------------------------------
    def encode(self, wav: Union[np.ndarray, torch.Tensor], sample_rate: int) -> np.ndarray:
        """Audio at any rate -> int64 tokens (T,), T = ceil(seconds * token_rate).

        The last partial token is zero-padded, so decode(encode(x)) is never shorter than x.
        """
        wav = resample(to_mono_float(wav), sample_rate, self.sample_rate)
        num_tokens = -(-len(wav) // self.samples_per_token)
        if num_tokens == 0:
            return np.zeros(0, dtype=np.int64)
        wav = np.pad(wav, (0, num_tokens * self.samples_per_token - len(wav)))
        tokens = np.asarray(self._encode(wav), dtype=np.int64).reshape(-1)
        if len(tokens) != num_tokens:
            raise RuntimeError(
                f"{type(self).__name__} produced {len(tokens)} tokens for {num_tokens} frames"
            )
        return tokens

    def decode(self, tokens: TokensLike) -> np.ndarray:
        """Tokens (T,) -> float32 audio at sample_rate, exactly T * samples_per_token long."""
        tokens = self.check_tokens(tokens)
        if len(tokens) == 0:
            return np.zeros(0, dtype=np.float32)
        wav = np.asarray(self._decode(tokens), dtype=np.float32).reshape(-1)
        expected = len(tokens) * self.samples_per_token
        if len(wav) != expected:
            raise RuntimeError(
                f"{type(self).__name__} decoded {len(tokens)} tokens to {len(wav)} samples, "
                f"expected {expected}"
            )
        return wav

    def check_tokens(self, tokens: TokensLike) -> np.ndarray:
        """Tokens as a 1-D int64 array; ValueError naming the first id outside the vocabulary."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        arr = np.asarray(tokens)
        if arr.size == 0:
            return np.zeros(0, dtype=np.int64)
        if arr.ndim != 1:
            raise ValueError(f"codec tokens must be 1-D, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.equal(np.mod(arr, 1), 0)):
                bad = int(np.flatnonzero(np.mod(arr, 1) != 0)[0])
                raise ValueError(f"codec token {arr[bad]!r} at position {bad} is not an integer")
        arr = arr.astype(np.int64)
        outside = np.flatnonzero((arr < 0) | (arr >= self.vocab_size))
        if len(outside):
            pos = int(outside[0])
            raise ValueError(
                f"codec token id {int(arr[pos])} at position {pos} is outside "
                f"[0, {self.vocab_size}) ({len(outside)} bad ids in {len(arr)} tokens)"
            )
        return arr

    def describe(self) -> Dict[str, Any]:
        """The numbers downstream code depends on, for logs and config dumps."""
        return dict(
            type=type(self).__name__,
            sample_rate=self.sample_rate,
            token_rate=self.token_rate,
            samples_per_token=self.samples_per_token,
            vocab_size=self.vocab_size,
        )
