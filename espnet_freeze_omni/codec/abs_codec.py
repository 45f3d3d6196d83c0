"""The one codec interface the rest of the project sees: waveform <-> single-codebook tokens.

Freeze-Omni's speech decoder predicts one stream of 1024 codec tokens at 40 Hz which the codec
turns into 24 kHz audio (SPEC section 2). Every backend (the embedded k-means codec, espnet's
gan_codec) hides behind `AbsCodec`, and `load_codec` builds one from a small config dict, so
training, inference and the packet streamer never know which backend they hold.
"""
from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

TokensLike = Union[np.ndarray, Sequence[int], torch.Tensor]


def to_mono_float(wav: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """(n,) or (n, channels) audio -> float32 mono; integer PCM is scaled to [-1, 1]."""
    wav = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
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
    import torchaudio

    out = torchaudio.functional.resample(torch.from_numpy(wav), int(orig_sr), int(target_sr))
    return out.numpy().astype(np.float32, copy=False)


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


def load_codec(conf: Union[Dict[str, Any], str, os.PathLike]) -> AbsCodec:
    """Build a codec from a config dict (or a YAML file holding one).

    {"type": "embedded", "path": DIR}  -> EmbeddedCodec.from_dir(DIR)
    {"type": "espnet_gan_codec", "model_file": F, "train_config": C, ["device": "cpu"]}
        -> EspnetGanCodec wrapping espnet2.bin.gan_codec_inference.AudioCoding
    """
    if not isinstance(conf, dict):
        import yaml

        with open(conf) as f:
            conf = yaml.safe_load(f)
        if not isinstance(conf, dict):
            raise ValueError(f"codec config {conf!r} is not a mapping")
    conf = dict(conf)
    kind = conf.pop("type", None)
    if kind == "embedded":
        from espnet_freeze_omni.codec.embedded import EmbeddedCodec

        if "path" not in conf:
            raise ValueError("embedded codec config needs 'path' (the train_embedded_codec dir)")
        return EmbeddedCodec.from_dir(Path(conf.pop("path")), **conf)
    if kind == "espnet_gan_codec":
        # imported here: espnet2's task modules take ~15 s to import
        from espnet_freeze_omni.codec.espnet_codec import EspnetGanCodec

        missing = [k for k in ("model_file", "train_config") if k not in conf]
        if missing:
            raise ValueError(f"espnet_gan_codec config lacks {missing}")
        return EspnetGanCodec(**conf)
    raise ValueError(f"unknown codec type {kind!r}: use 'embedded' or 'espnet_gan_codec'")
