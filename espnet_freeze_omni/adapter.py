"""Adapter from the speech encoder to the frozen LLM's embedding space.

Causal Conv1d(d -> 2d, kernel 5, stride 2) + LayerNorm + GELU + Linear(2d -> LLM hidden):
25 Hz encoder frames become 12.5 Hz LLM embeddings, two per 160 ms chunk. The conv only looks
back (k - 1 frames of left padding), so chunk-by-chunk streaming with a small cache of past
frames gives the offline result exactly.

Names follow the single-conv branch of the release's ``CNNSubsampling`` (``conv1d2``, ``bn2``
for the norm, ``relu2`` for the activation, ``project``), so their weights load by renaming.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn


class ConvAdapter(nn.Module):
    """Causal strided conv adapter: (B, T, enc_out_dim) -> (B, ceil(T / stride), llm_embed_dim)."""

    def __init__(self, enc_out_dim: int, llm_embed_dim: int, kernel_size: int = 5, stride: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self._output_size = llm_embed_dim
        self.conv1d2 = nn.Conv1d(enc_out_dim, 2 * enc_out_dim, kernel_size, stride)
        # eps 1e-3 as in the release, so imported weights behave the same.
        self.bn2 = nn.LayerNorm(2 * enc_out_dim, eps=1e-3)
        self.relu2 = nn.GELU()
        self.project = nn.Linear(2 * enc_out_dim, llm_embed_dim)

    def output_size(self) -> int:
        return self._output_size

    def output_lengths(self, x_lens: torch.Tensor) -> torch.Tensor:
        # With k - 1 frames of left padding, T frames give ceil(T / stride) outputs.
        return (x_lens + self.stride - 1) // self.stride

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """Conv over channels-first frames (B, C, T) that are already padded/cached."""
        h = self.conv1d2(h).transpose(1, 2)
        return self.project(self.relu2(self.bn2(h)))

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, enc_out_dim), x_lens (B,) -> y (B, ceil(T/2), llm_embed_dim), y_lens (B,)."""
        frames = torch.arange(x.size(1), device=x.device)
        valid = frames[None, :] < x_lens.to(x.device)[:, None]
        x = x.masked_fill(~valid[..., None], 0.0)
        h = F.pad(x.transpose(1, 2), (self.kernel_size - 1, 0))
        y = self._head(h)
        y_lens = self.output_lengths(x_lens)
        out_valid = torch.arange(y.size(1), device=y.device)[None, :] < y_lens.to(y.device)[:, None]
        return y.masked_fill(~out_valid[..., None], 0.0), y_lens

    def init_cache(self, batch_size: int = 1) -> torch.Tensor:
        """Past input frames (B, enc_out_dim, k - 1): zeros, i.e. the offline left padding."""
        weight = self.conv1d2.weight
        return weight.new_zeros(batch_size, weight.size(1), self.kernel_size - 1)

    def forward_chunk(
        self, x: torch.Tensor, cache: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Feed any number of new frames (B, n, enc_out_dim); returns the outputs now complete.

        The cache keeps the frames not yet fully used: between k - stride and k - 1 of them, so
        pieces of odd length keep the stride aligned with the offline conv.
        """
        h = torch.cat((cache, x.transpose(1, 2)), dim=2)
        available = h.size(2)
        if available < self.kernel_size:
            return x.new_zeros(x.size(0), 0, self._output_size), h
        num_out = (available - self.kernel_size) // self.stride + 1
        used = (num_out - 1) * self.stride + self.kernel_size
        y = self._head(h[:, :, :used])
        # The slice is a view into this call's concatenation; clone so the cache stays small.
        return y, h[:, :, num_out * self.stride :].clone()
