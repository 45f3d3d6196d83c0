"""Adapter from the speech encoder to the frozen LLM's embedding space.

Causal Conv1d(d -> 2d, kernel 5, stride 2) + LayerNorm + GELU + Linear(2d -> LLM hidden):
25 Hz encoder frames become 12.5 Hz LLM embeddings, two per 160 ms chunk. The conv only looks
back (k - 1 frames of left padding), so chunk-by-chunk streaming with a small cache of past
frames gives the offline result exactly.

Names follow the single-conv branch of the release's ``CNNSubsampling`` (``conv1d2``, ``bn2``
for the norm, ``relu2`` for the activation, ``project``), so their weights load by renaming.

``num_layers`` > 1 (not in the release) adds causal stride-1 convs with residual connections
before the projection (``more_convs``/``more_norms``): each lets one LLM embedding read 4 more
of the 12.5 Hz frames behind it, so the adapter can gather a whole word before the LLM reads
it. Streaming caches the last k - 1 inputs of each extra conv, and stays exact.
"""
from __future__ import annotations

import abc
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


class AbsAdapter(nn.Module, abc.ABC):
    """Encoder frames -> LLM input embeddings, offline and chunk by chunk.

    The adapter's counterpart of espnet's `AbsEncoder`: the speech-input models and the
    duplex session use only this, so another adapter plugs in through the Task's
    `--speech_adapter` choices. Streaming must reproduce `forward` exactly.
    """

    # encoder frames per LLM embedding: the state head reads chunk ends by it
    stride: int

    @abc.abstractmethod
    def output_size(self) -> int:
        """The LLM hidden size the embeddings have."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, x_lens: torch.Tensor
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), x_lens (B,) -> embeddings (B, T', H), their lengths (B,)."""

    @abc.abstractmethod
    def init_cache(self, batch_size: int = 1) -> Tuple[torch.Tensor, ...]:
        """The streaming state before the first frame."""

    @abc.abstractmethod
    def forward_chunk(self, x: torch.Tensor, cache: Tuple[torch.Tensor, ...]
                      ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """New frames (B, n, D) -> the embeddings now complete (B, n', H), the new state."""


class ConvAdapter(AbsAdapter):
    """Causal strided conv adapter: (B, T, enc_out_dim) -> (B, ceil(T / stride), llm_embed_dim).

    ``num_layers``: the strided conv, then ``num_layers - 1`` residual stride-1 convs.
    """

    def __init__(self, enc_out_dim: int, llm_embed_dim: int, *, kernel_size: int = 5,
                 stride: int = 2, num_layers: int = 1):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.kernel_size = kernel_size
        self.stride = stride
        self._output_size = llm_embed_dim
        hidden = 2 * enc_out_dim
        self.conv1d2 = nn.Conv1d(enc_out_dim, hidden, kernel_size, stride)
        # eps 1e-3 as in the release, so imported weights behave the same.
        self.bn2 = nn.LayerNorm(hidden, eps=1e-3)
        self.relu2 = nn.GELU()
        # Not in the release: more causal convs (stride 1, residual) after the first, so the
        # adapter sees more than 200 ms of encoder frames when it hands a word to the LLM.
        self.more_convs = nn.ModuleList(nn.Conv1d(hidden, hidden, kernel_size)
                                        for _ in range(num_layers - 1))
        self.more_norms = nn.ModuleList(nn.LayerNorm(hidden, eps=1e-3)
                                        for _ in range(num_layers - 1))
        self.project = nn.Linear(hidden, llm_embed_dim)

    def output_size(self) -> int:
        return self._output_size

    def output_lengths(self, x_lens: torch.Tensor) -> torch.Tensor:
        # With k - 1 frames of left padding, T frames give ceil(T / stride) outputs.
        return (x_lens + self.stride - 1) // self.stride

    def _first(self, h: torch.Tensor) -> torch.Tensor:
        """Strided conv over channels-first frames (B, C, T) already padded/cached -> (B, T', 2C)."""
        return self.relu2(self.bn2(self.conv1d2(h).transpose(1, 2)))

    def _more(self, i: int, h: torch.Tensor, padded: torch.Tensor) -> torch.Tensor:
        """Extra layer i on h (B, T, C); ``padded`` (B, C, k - 1 + T) is h channels-first
        behind its k - 1 frames of past input (zeros offline, the cache when streaming)."""
        return h + F.gelu(self.more_norms[i](self.more_convs[i](padded).transpose(1, 2)))

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, enc_out_dim), x_lens (B,) -> y (B, ceil(T/2), llm_embed_dim), y_lens (B,)."""
        frames = torch.arange(x.size(1), device=x.device)
        valid = frames[None, :] < x_lens.to(x.device)[:, None]
        x = x.masked_fill(~valid[..., None], 0.0)
        h = self._first(F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0)))
        for i in range(len(self.more_convs)):
            h = self._more(i, h, F.pad(h.transpose(1, 2), (self.kernel_size - 1, 0)))
        y = self.project(h)
        y_lens = self.output_lengths(x_lens)
        out_valid = torch.arange(y.size(1), device=y.device)[None, :] < y_lens.to(y.device)[:, None]
        return y.masked_fill(~out_valid[..., None], 0.0), y_lens

    def init_cache(self, batch_size: int = 1) -> Tuple[torch.Tensor, ...]:
        """Zeros, i.e. the offline left padding: past input frames (B, enc_out_dim, k - 1),
        then for each extra layer its past k - 1 input frames (B, 2 * enc_out_dim, k - 1)."""
        weight = self.conv1d2.weight
        return (weight.new_zeros(batch_size, weight.size(1), self.kernel_size - 1),) + tuple(
            weight.new_zeros(batch_size, weight.size(0), self.kernel_size - 1)
            for _ in self.more_convs)

    def forward_chunk(
        self, x: torch.Tensor, cache: Tuple[torch.Tensor, ...]
    ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        """Feed any number of new frames (B, n, enc_out_dim); returns the outputs now complete.

        The first cache keeps the input frames not yet fully used: between k - stride and
        k - 1 of them, so pieces of odd length keep the stride aligned with the offline conv.
        """
        h = torch.cat((cache[0], x.transpose(1, 2)), dim=2)
        available = h.size(2)
        if available < self.kernel_size:
            return x.new_zeros(x.size(0), 0, self._output_size), (h,) + tuple(cache[1:])
        num_out = (available - self.kernel_size) // self.stride + 1
        used = (num_out - 1) * self.stride + self.kernel_size
        y = self._first(h[:, :, :used])
        # Slices are views into this call's concatenations; clone so the caches stay small.
        new_cache = [h[:, :, num_out * self.stride :].clone()]
        for i, past in enumerate(cache[1:]):
            padded = torch.cat((past, y.transpose(1, 2)), dim=2)
            y = self._more(i, y, padded)
            new_cache.append(padded[:, :, padded.size(2) - (self.kernel_size - 1):].clone())
        return self.project(y), tuple(new_cache)
