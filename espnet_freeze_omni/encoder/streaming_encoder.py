"""Streaming chunk transformer encoder of Freeze-Omni (speech input side).

fbank frames -> Conv2d subsampling (4x) -> pre-LN transformer layers whose attention has a
Transformer-XL relative position term -> after_norm.

Attention sees the current chunk of ``chunk_size`` encoder frames plus ``left_chunks`` chunks of
history. The position term depends only on (query position - key position), so running the
encoder chunk by chunk with a bounded K/V cache (:meth:`StreamingChunkEncoder.forward_chunk`)
gives the same outputs as the chunk-masked offline :meth:`StreamingChunkEncoder.forward`, for
any utterance length. (The authors' release feeds absolute key positions into that branch,
without the relative shift, so its streaming and offline outputs differ; this module does not.)

Module names follow the release (``embed.conv``, ``embed.out``, ``encoders.N.self_attn.linear_q``,
``...linear_pos``, ``...pos_bias_u``, ``encoders.N.feed_forward.w_1``, ``norm1``, ``norm2``,
``after_norm``), so importing their checkpoints is a renaming of prefixes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError
from torch import nn

KVCache = Tuple[torch.Tensor, torch.Tensor]


def chunk_attention_mask(
    num_frames: int,
    chunk_size: int,
    left_chunks: int,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """(T, T) bool mask, True where query frame i may attend key frame j.

    A query in chunk c sees chunks c - left_chunks .. c. ``chunk_size <= 0`` means full context,
    ``left_chunks < 0`` means the whole history.
    """
    if chunk_size <= 0:
        return torch.ones(num_frames, num_frames, dtype=torch.bool, device=device)
    chunk_index = torch.arange(num_frames, device=device) // chunk_size
    query_chunk, key_chunk = chunk_index[:, None], chunk_index[None, :]
    mask = key_chunk <= query_chunk
    if left_chunks >= 0:
        mask = mask & (key_chunk >= query_chunk - left_chunks)
    return mask


def sinusoidal_embedding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(R,) positions -> (R, dim) with sin on even and cos on odd channels (Transformer-XL)."""
    inv_freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device)
        * (-math.log(10000.0) / dim)
    )
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)


def relative_distances(
    num_queries: int, num_keys: int, max_distance: int, device: Optional[torch.device] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clipped query-key distances for queries that are the last ``num_queries`` of the keys.

    Offline, queries and keys are the same frames; streaming, the keys are the K/V cache followed
    by the new chunk. Returns ``distances`` (R,), every distance that occurs (ascending), and
    ``index`` (Tq, Tk) with ``distances[index[i, j]] == clip(pos(query i) - pos(key j))``.
    """
    offset = num_keys - num_queries
    query_pos = offset + torch.arange(num_queries, device=device)
    key_pos = torch.arange(num_keys, device=device)
    distance = (query_pos[:, None] - key_pos[None, :]).clamp(-max_distance, max_distance)
    low = max(1 - num_queries, -max_distance)
    high = min(num_keys - 1, max_distance)
    distances = torch.arange(low, high + 1, device=device)
    return distances, distance - low


class Conv2dSubsampling4(nn.Module):
    """2 x (Conv2d(k=3, s=2) + ReLU) then Linear: (B, T, F) -> (B, ((T-1)//2-1)//2, d).

    Output frame t sees input frames 4t .. 4t+6.
    """

    subsampling_rate = 4
    receptive_field = 7

    def __init__(self, input_size: int, output_size: int, channels: int | None = None):
        super().__init__()
        # The release uses d channels; on CPU they took ~80 % of a d=144 encoder's training
        # step, so small configs may narrow the convolutions (channels < d).
        channels = channels or output_size
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, 2),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 2),
            nn.ReLU(),
        )
        freq_out = ((input_size - 1) // 2 - 1) // 2
        # A one-layer Sequential keeps the release's parameter names (embed.out.0.weight).
        self.out = nn.Sequential(nn.Linear(channels * freq_out, output_size))

    @staticmethod
    def output_lengths(input_lengths: torch.Tensor) -> torch.Tensor:
        return (((input_lengths - 1) // 2 - 1) // 2).clamp(min=0)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.conv(feats.unsqueeze(1))  # (B, d, T', F')
        batch, channels, frames, freq = x.shape
        return self.out(x.transpose(1, 2).reshape(batch, frames, channels * freq))


class RelPositionMultiHeadedAttention(nn.Module):
    """Multi-head attention with the Transformer-XL relative term (Dai et al. 2019, sec. 3.3).

    score(i, j) = [(q_i + u) . k_j + (q_i + v) . W_pos r(i - j)] / sqrt(d_k), where r is a
    sinusoid of the clipped distance i - j. Nothing depends on absolute positions.
    """

    def __init__(self, size: int, num_heads: int, dropout_rate: float):
        super().__init__()
        if size % num_heads != 0:
            raise ValueError(f"output_size {size} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = size // num_heads
        self.dropout_rate = dropout_rate
        self.linear_q = nn.Linear(size, size)
        self.linear_k = nn.Linear(size, size)
        self.linear_v = nn.Linear(size, size)
        self.linear_out = nn.Linear(size, size)
        self.linear_pos = nn.Linear(size, size, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape
        return x.view(batch, frames, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        pos_index: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        past_key_value: Optional[KVCache] = None,
    ) -> Tuple[torch.Tensor, KVCache]:
        """x (B, Tq, d); pos_emb (R, d); pos_index (Tq, Tk); mask (B or 1, Tq, Tk) True = attend.

        Returns the attention output (B, Tq, d) and this call's keys/values (B, H, Tk, d_k),
        the cache included, for the caller to trim and keep.
        """
        batch, frames, size = x.shape
        q = self._split_heads(self.linear_q(x))
        k = self._split_heads(self.linear_k(x))
        v = self._split_heads(self.linear_v(x))
        if past_key_value is not None:
            k = torch.cat((past_key_value[0], k), dim=2)
            v = torch.cat((past_key_value[1], v), dim=2)

        # Position term: one dot product per distinct distance, then gathered into (Tq, Tk).
        p = self.linear_pos(pos_emb).view(-1, self.num_heads, self.head_dim).transpose(0, 1)
        pos_scores = torch.matmul(q + self.pos_bias_v[:, None], p.transpose(-2, -1))
        index = pos_index.expand(batch, self.num_heads, -1, -1)
        bias = pos_scores.gather(-1, index) / math.sqrt(self.head_dim)
        if mask is not None:
            # A finite fill keeps fully masked rows (padding) free of NaN.
            bias = bias.masked_fill(~mask[:, None], torch.finfo(bias.dtype).min)

        out = F.scaled_dot_product_attention(
            q + self.pos_bias_u[:, None],
            k,
            v,
            attn_mask=bias,
            dropout_p=self.dropout_rate if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, frames, size)
        return self.linear_out(out), (k, v)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, size: int, hidden_units: int, dropout_rate: float):
        super().__init__()
        self.w_1 = nn.Linear(size, hidden_units)
        self.w_2 = nn.Linear(hidden_units, size)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(torch.relu(self.w_1(x))))


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(
        self,
        size: int,
        num_heads: int,
        linear_units: int,
        dropout_rate: float,
        attention_dropout_rate: float,
    ):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(size, num_heads, attention_dropout_rate)
        self.feed_forward = PositionwiseFeedForward(size, linear_units, dropout_rate)
        self.norm1 = nn.LayerNorm(size)
        self.norm2 = nn.LayerNorm(size)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(
        self,
        x: torch.Tensor,
        pos_emb: torch.Tensor,
        pos_index: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        past_key_value: Optional[KVCache] = None,
    ) -> Tuple[torch.Tensor, KVCache]:
        attn_out, key_value = self.self_attn(
            self.norm1(x), pos_emb, pos_index, mask, past_key_value
        )
        x = x + self.dropout(attn_out)
        x = x + self.dropout(self.feed_forward(self.norm2(x)))
        return x, key_value


@dataclass
class StreamingState:
    """What :meth:`StreamingChunkEncoder.forward_chunk` carries from one call to the next.

    Everything is bounded: ``pending`` holds fewer than ``chunk_frames + 3`` feature frames after
    each call, and each layer's cache at most ``left_chunks * chunk_size`` encoder frames.
    """

    batch_size: int
    chunk_size: int
    left_chunks: int
    pending: Optional[torch.Tensor] = None  # (B, n, F) feature frames not yet encoded
    kv_cache: List[KVCache] = field(default_factory=list)  # per layer, (B, H, <=L, d_k)
    num_frames_out: int = 0  # encoder frames emitted so far

    def cache_frames(self) -> int:
        return self.kv_cache[0][0].size(2) if self.kv_cache else 0


class StreamingChunkEncoder(AbsEncoder):
    """Freeze-Omni speech encoder: Conv2d subsampling + relative-position chunk transformer.

    Args:
        input_size: feature dimension (80 fbank bins).
        output_size: model width d.
        chunk_size: encoder frames per attention chunk (4 = 160 ms); <= 0 = full context.
        left_chunks: chunks of history each chunk attends to (< 0 = all history).
        dynamic_chunk_training: in training, sample a chunk size per batch (WeNet-style);
            eval uses ``chunk_size``.
        full_context: always attend to the whole utterance (offline model).
        max_relative_position: distances beyond this (in encoder frames, 40 ms each) share
            one position embedding. 256 frames (~10 s) is far beyond the streaming window
            ((left_chunks + 1) * chunk_size = 68 frames) and keeps the position term bounded
            for long full-context utterances.
        subsampling_channels: channels of the two subsampling convolutions (default d, as
            the release); tiny CPU configs use 32.
        position_mode: "relative" (default): the position term reads the clipped distance
            i - j, so streaming equals offline. "release": the authors' released encoder
            (imported checkpoints, espnet_freeze_omni/release): the term reads the key's
            absolute index j, with no relative shift; streaming, the indices of a chunk's
            keys start at max(0, p - (left_chunks + 1) * chunk_size) where p counts the
            frames encoded before the chunk modulo chunk_size * (5000 // chunk_size) -
            (left_chunks + 1) * chunk_size, as the release does. From the 18th chunk on
            the cache is then numbered 4 frames lower than offline, so in this mode
            streaming equals offline only for the first 17 chunks (2.72 s).
        input_layer: "none" (default) or "linear": Linear(d, d) + LayerNorm + ReLU after
            the subsampling and before the sqrt(d) scaling, as a release encoder whose
            checkpoint has ``enc.1.embed.*`` (module ``input_layer``).
    """

    def __init__(
        self,
        input_size: int,
        output_size: int = 1024,
        attention_heads: int = 16,
        linear_units: int = 4096,
        num_blocks: int = 24,
        dropout_rate: float = 0.1,
        positional_dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        chunk_size: int = 4,
        left_chunks: int = 16,
        dynamic_chunk_training: bool = False,
        full_context: bool = False,
        max_relative_position: int = 256,
        subsampling_channels: int | None = None,
        position_mode: str = "relative",
        input_layer: str = "none",
    ):
        super().__init__()
        if position_mode not in ("relative", "release"):
            raise ValueError(f"position_mode must be 'relative' or 'release', got {position_mode!r}")
        if input_layer not in ("none", "linear"):
            raise ValueError(f"input_layer must be 'none' or 'linear', got {input_layer!r}")
        self.position_mode = position_mode
        self._output_size = output_size
        self.chunk_size = chunk_size
        self.left_chunks = left_chunks
        self.dynamic_chunk_training = dynamic_chunk_training
        self.full_context = full_context
        self.max_relative_position = max_relative_position
        # ESPnet/WeNet scale the subsampled features by sqrt(d) before the layers.
        self.xscale = math.sqrt(output_size)

        self.embed = Conv2dSubsampling4(input_size, output_size, subsampling_channels)
        if input_layer == "linear":  # the release's Transformer.embed (its dropout: index 2)
            self.input_layer = nn.Sequential(
                nn.Linear(output_size, output_size), nn.LayerNorm(output_size),
                nn.Dropout(dropout_rate), nn.ReLU())
        self.pos_dropout = nn.Dropout(positional_dropout_rate)
        self.encoders = nn.ModuleList(
            EncoderLayer(
                output_size, attention_heads, linear_units, dropout_rate, attention_dropout_rate
            )
            for _ in range(num_blocks)
        )
        self.after_norm = nn.LayerNorm(output_size)

    def output_size(self) -> int:
        return self._output_size

    @property
    def chunk_frames(self) -> int:
        """Feature frames per chunk (16 for chunk 4), excluding the 3 frames of conv context."""
        return self.chunk_size * self.embed.subsampling_rate

    # ------------------------------------------------------------------ offline
    def attention_context(
        self, chunk_size: Optional[int] = None, left_chunks: Optional[int] = None
    ) -> Tuple[int, int]:
        """The (chunk_size, left_chunks) to use for one forward; chunk_size <= 0 = full."""
        left = self.left_chunks if left_chunks is None else left_chunks
        if chunk_size is not None:  # decode-time override wins
            return chunk_size, left
        if self.full_context or self.chunk_size <= 0:
            return 0, -1
        if self.training and self.dynamic_chunk_training:
            # WeNet's dynamic chunk: half the batches full context, the rest a chunk of
            # 1..25 frames (up to 1 s of latency), so one model decodes at any chunk size.
            if torch.rand(()).item() < 0.5:
                return 0, -1
            return int(torch.randint(1, 26, ()).item()), left
        return self.chunk_size, left

    def _embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Subsampling (+ the optional input layer), scaled by sqrt(d)."""
        xs = self.embed(feats)
        if hasattr(self, "input_layer"):
            xs = self.input_layer(xs)
        return xs * self.xscale

    def _release_key_start(self, frames_before: int, chunk_size: int, left_chunks: int) -> int:
        """Index the release gives a streamed chunk's first key (see ``position_mode``)."""
        full = (left_chunks + 1) * chunk_size
        wrap = chunk_size * (5000 // chunk_size) - full
        return max(0, frames_before % wrap - full)

    def _relative_positions(
        self, num_queries: int, num_keys: int, like: torch.Tensor, key_start: int = 0
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.position_mode == "release":
            # absolute key indices key_start.., the same for every query (no rel_shift)
            distances = torch.arange(key_start, key_start + num_keys, device=like.device)
            index = torch.arange(num_keys, device=like.device)[None].expand(num_queries, -1)
        else:
            distances, index = relative_distances(
                num_queries, num_keys, self.max_relative_position, like.device
            )
        pos_emb = sinusoidal_embedding(distances, self._output_size).to(like.dtype)
        return self.pos_dropout(pos_emb), index

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: Optional[torch.Tensor] = None,
        chunk_size: Optional[int] = None,
        left_chunks: Optional[int] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, None]:
        """Encode a padded batch: (B, T, F), (B,) -> (B, T', d), (B,), None.

        ``chunk_size``/``left_chunks`` override the configured attention context (decoding).
        """
        receptive_field = self.embed.receptive_field
        if xs_pad.size(1) < receptive_field:
            raise TooShortUttError(
                f"has {xs_pad.size(1)} frames and is too short for subsampling "
                f"(it needs at least {receptive_field} frames)",
                xs_pad.size(1),
                receptive_field,
            )
        chunk_size, left_chunks = self.attention_context(chunk_size, left_chunks)

        xs = self.pos_dropout(self._embed(xs_pad))
        olens = self.embed.output_lengths(ilens)
        frames = xs.size(1)
        valid = torch.arange(frames, device=xs.device)[None, :] < olens.to(xs.device)[:, None]
        mask = chunk_attention_mask(frames, chunk_size, left_chunks, xs.device)
        mask = mask[None] & valid[:, None, :]  # (B, T', T'): chunk window and no padded keys

        pos_emb, pos_index = self._relative_positions(frames, frames, xs)
        for layer in self.encoders:
            xs, _ = layer(xs, pos_emb, pos_index, mask)
        xs = self.after_norm(xs).masked_fill(~valid[..., None], 0.0)
        return xs, olens, None

    # ---------------------------------------------------------------- streaming
    def init_streaming_state(
        self,
        batch_size: int = 1,
        chunk_size: Optional[int] = None,
        left_chunks: Optional[int] = None,
    ) -> StreamingState:
        """A fresh state for :meth:`forward_chunk`, with the configured (or given) context.

        Like :meth:`forward`, a ``full_context`` encoder streams only with an explicit
        ``chunk_size``.
        """
        if chunk_size is None:
            chunk_size = 0 if self.full_context else self.chunk_size
        left = self.left_chunks if left_chunks is None else left_chunks
        if chunk_size <= 0:
            raise ValueError(
                "streaming needs chunk_size > 0 (a full-context encoder cannot stream)"
            )
        return StreamingState(batch_size=batch_size, chunk_size=chunk_size, left_chunks=left)

    def forward_chunk(
        self, feats: torch.Tensor, state: StreamingState, is_final: bool = False
    ) -> Tuple[torch.Tensor, StreamingState]:
        """Feed any number of normalized feature frames (B, n, F); returns new encoder frames.

        Encoder frames come out a whole chunk at a time, as soon as the chunk's
        ``chunk_size * 4`` input frames plus 3 frames of conv context have arrived; with
        ``is_final`` the last partial chunk is flushed. The concatenated outputs equal
        ``forward(..., chunk_size=state.chunk_size, left_chunks=state.left_chunks)``.
        After ``is_final`` the utterance is over: start the next one with a fresh state.
        """
        if feats.size(0) != state.batch_size:
            raise ValueError(f"state is for batch {state.batch_size}, got {feats.size(0)}")
        pending = feats if state.pending is None else torch.cat((state.pending, feats), dim=1)
        step = state.chunk_size * self.embed.subsampling_rate
        # chunk_size outputs need 4 * chunk_size frames plus the 3 the next chunk shares.
        window = step + self.embed.receptive_field - self.embed.subsampling_rate

        outputs = []
        while pending.size(1) >= window:
            outputs.append(self._encode_chunk(pending[:, :window], state))
            pending = pending[:, step:]
        if is_final:
            if pending.size(1) >= self.embed.receptive_field:
                outputs.append(self._encode_chunk(pending, state))
            pending = pending[:, :0]
        # Copy the few leftover frames so the state does not pin this call's whole input.
        state.pending = pending.clone()

        if outputs:
            return torch.cat(outputs, dim=1), state
        return feats.new_zeros(feats.size(0), 0, self._output_size), state

    def _encode_chunk(self, feats: torch.Tensor, state: StreamingState) -> torch.Tensor:
        """Encode one chunk (<= chunk_size output frames) against the cache; update the cache."""
        xs = self.pos_dropout(self._embed(feats))
        frames = xs.size(1)
        key_start = 0
        if self.position_mode == "release":
            key_start = self._release_key_start(
                state.num_frames_out, state.chunk_size, state.left_chunks)
        pos_emb, pos_index = self._relative_positions(
            frames, state.cache_frames() + frames, xs, key_start)
        # The cache holds exactly the left context this chunk may see, so no mask is needed.
        max_cache = state.left_chunks * state.chunk_size
        new_cache: List[KVCache] = []
        for i, layer in enumerate(self.encoders):
            past = state.kv_cache[i] if state.kv_cache else None
            xs, (k, v) = layer(xs, pos_emb, pos_index, None, past)
            if max_cache >= 0:
                start = max(k.size(2) - max_cache, 0)
                k, v = k[:, :, start:], v[:, :, start:]
            new_cache.append((k, v))
        state.kv_cache = new_cache
        state.num_frames_out += frames
        return self.after_norm(xs)
