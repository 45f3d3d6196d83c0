"""Streaming codec decoding: turn a growing token stream into PCM packets (SPEC section 3).

Schedule (defaults from the paper's release): the first packet goes out once 20 tokens plus 10
look-ahead tokens have arrived; after that one packet per 40 tokens, each decoded with 10 tokens
of context on both sides. Packets are decoded from overlapping token windows, so the audio around
each nominal packet boundary exists twice; the join is placed at the quietest point of the
middle of that overlap (minimum short-time energy) and smoothed with a short crossfade.

Token windows and emitted audio, for boundaries b1 = 20, b2 = 60 (in tokens):

    packet 0: decode [0, 30)    emit [0, p1)          p1 in [b1 - 5, b1 + 5]
    packet 1: decode [10, 70)   emit [p1, p2)         p2 in [b2 - 5, b2 + 5]
    ...        flush: decode [b_k - 10, end) and emit [p_k, end)

(each emitted span is shortened by half a crossfade at its end and the crossfade is emitted with
the next packet). Concatenated packets are as long as `codec.decode(all tokens)`.

Exactness: every emitted sample lies at least overlap - overlap/2 - 1 tokens (4 by default)
inside its decode window. A codec whose audio for a token depends only on tokens within
`codec.context_tokens` of it (3 for the embedded codec) within that margin gives packets
identical to offline decoding, joins included. Codecs with a longer reach (espnet's SEANet with
LSTMs) differ from offline decoding, most near the window edges, i.e. around the joins, which
`splice_points`/`splice_mask` locate.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from espnet_freeze_omni.codec.abs_codec import AbsCodec, TokensLike


def find_splice_point(audio: np.ndarray, lo: int, hi: int, window: int) -> int:
    """Centre of the lowest-energy `window`-sample stretch whose centre lies in [lo, hi).

    Energy is the sum of squares over the window (clipped at the ends of `audio`); ties go to
    the earliest position so the choice is deterministic.
    """
    lo, hi = max(0, lo), min(len(audio), hi)
    if hi <= lo:
        raise ValueError(f"empty splice search region [{lo}, {hi})")
    half = window // 2
    energy = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    centres = np.arange(lo, hi)
    start = np.clip(centres - half, 0, len(audio))
    stop = np.clip(centres + (window - half), 0, len(audio))
    return int(centres[np.argmin(energy[stop] - energy[start])])


class PacketDecoder:
    """Incremental codec decoder: `push` tokens as they are generated, `flush` at the end.

    Args:
        codec: any AbsCodec.
        first_packet: tokens in the first packet (nominal).
        lookahead: tokens decoded after the first packet's end but not emitted with it.
        packet: tokens per later packet (nominal).
        overlap: context tokens decoded on each side of later packets; the join is searched
            within overlap/2 tokens of each nominal boundary.
        crossfade_ms: length of the raised-cosine crossfade at each join.
        energy_window_ms: window of the short-time energy minimised to place a join.
    """

    def __init__(self, codec: AbsCodec, first_packet: int = 20, lookahead: int = 10,
                 packet: int = 40, overlap: int = 10, crossfade_ms: float = 5.0,
                 energy_window_ms: float = 10.0):
        if min(first_packet, packet) <= 0 or min(lookahead, overlap) < 0:
            raise ValueError("packet sizes must be positive and contexts non-negative")
        half = overlap // 2
        if half > min(first_packet, lookahead, packet - half):
            raise ValueError(
                f"overlap/2 = {half} tokens must fit inside the first packet, its look-ahead "
                "and every later packet"
            )
        self.codec = codec
        reach = getattr(codec, "context_tokens", None)
        margin = min(lookahead, overlap) - half - 1
        # True when packets reproduce offline decoding exactly (see the module docstring)
        self.exact = reach is not None and reach <= margin
        self.first_packet, self.lookahead = first_packet, lookahead
        self.packet, self.overlap = packet, overlap
        spt = codec.samples_per_token
        self.crossfade = min(int(round(crossfade_ms * codec.sample_rate / 1000)), spt)
        self.energy_window = max(1, int(round(energy_window_ms * codec.sample_rate / 1000)))
        # raised cosine sampled at half-sample offsets: fade_in[i] + fade_in[X-1-i] = 1
        phase = (np.arange(self.crossfade) + 0.5) * np.pi / max(1, self.crossfade)
        self._fade_in = (0.5 - 0.5 * np.cos(phase)).astype(np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the current stream (the next push starts a new utterance)."""
        self._tokens: List[int] = []  # tokens from index self._base on
        self._base = 0
        self._num_tokens = 0
        self._boundary = self.first_packet  # nominal end of the pending packet
        self._packet_start = 0  # nominal start of the pending packet
        self._tail: Optional[np.ndarray] = None  # previous packet's audio across the last join
        self._emitted = 0  # samples emitted so far
        self.splice_points: List[int] = []  # sample positions of the joins, in stream time
        self.packets_emitted = 0
        self._finished = False

    @property
    def num_tokens(self) -> int:
        return self._num_tokens

    def push(self, tokens: TokensLike) -> List[np.ndarray]:
        """Add tokens; return the packets that became complete (possibly none)."""
        if self._finished:  # the first push after a flush starts a new stream
            self.reset()
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        tokens = self.codec.check_tokens(np.asarray(tokens).reshape(-1))
        self._tokens.extend(int(t) for t in tokens)
        self._num_tokens += len(tokens)
        out = []
        while self._num_tokens >= self._boundary + self._right_context():
            out.append(self._emit(final=False))
        return out

    def flush(self) -> List[np.ndarray]:
        """End of stream: emit everything not yet emitted.

        `splice_points` stay readable until the next `push`, which starts a new stream.
        """
        out = []
        if self._num_tokens > 0 and not self._finished:
            out.append(self._emit(final=True))
        self._finished = True
        return out

    def splice_mask(self, length: int) -> np.ndarray:
        """Boolean mask over `length` stream samples: True inside the crossfades at the joins."""
        mask = np.zeros(length, dtype=bool)
        for p in self.splice_points:
            mask[max(0, p - self.crossfade // 2):p + self.crossfade - self.crossfade // 2] = True
        return mask

    # -- internals -----------------------------------------------------------------------------
    def _right_context(self) -> int:
        return self.lookahead if self.packets_emitted == 0 else self.overlap

    def _emit(self, final: bool) -> np.ndarray:
        spt = self.codec.samples_per_token
        first_token = max(0, self._packet_start - self.overlap)
        last_token = self._num_tokens if final else self._boundary + self._right_context()
        audio = self.codec.decode(
            np.asarray(self._tokens[first_token - self._base:last_token - self._base]))
        offset = first_token * spt  # stream sample of audio[0]

        if final:
            end = self._num_tokens * spt
            next_tail = None
        else:
            half = self.overlap // 2
            join = find_splice_point(
                audio, (self._boundary - half) * spt - offset,
                (self._boundary + half) * spt - offset + 1, self.energy_window,
            ) + offset
            # this packet must reach past what it already owes: the previous crossfade (its
            # tail, emitted with this packet) and half of its own. Joins can meet when
            # packets are as short as their overlap (the search regions then touch)
            owed = self.crossfade if self._tail is None else \
                self.crossfade + self.crossfade // 2
            join = int(np.clip(join, self._emitted + owed, None))
            self.splice_points.append(join)
            end = join - self.crossfade // 2
            next_tail = audio[end - offset:end - offset + self.crossfade]

        pieces = []
        if self._tail is not None:
            n = len(self._tail)
            head = audio[self._emitted - offset:self._emitted - offset + n]
            pieces.append(self._tail * (1.0 - self._fade_in[:n]) + head * self._fade_in[:n])
            start = self._emitted + n
        else:
            start = self._emitted
        pieces.append(audio[start - offset:end - offset])
        packet = np.concatenate(pieces).astype(np.float32, copy=False)

        self._emitted = end
        self._tail = next_tail
        self.packets_emitted += 1
        if not final:
            self._packet_start = self._boundary
            self._boundary += self.packet
            # tokens before the next window's left context are never needed again
            drop = max(0, self._packet_start - self.overlap) - self._base
            if drop > 0:
                del self._tokens[:drop]
                self._base += drop
        return packet
