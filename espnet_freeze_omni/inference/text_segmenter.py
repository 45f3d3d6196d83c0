"""Cut the LLM's streaming answer into segments for the speech decoder (SPEC §3).

The LLM emits one token at a time; speech can start as soon as a segment is complete:

* a segment ends on a token whose text ends with sentence punctuation
  (``。 ： ？ ！ . ? ! \\n``), provided the segment holds at least 4 tokens;
* for the FIRST segment of an answer, or once the current segment holds at least 20 tokens,
  commas and colons (``, ， :``) end it too: the first packet of audio comes sooner, and long
  sentences do not hold the voice back;
* a ``.`` right after a digit does not end a segment (``3.14``, ``1.`` of a list).

These are the rules of the authors' demo server. Each segment carries its token ids, its
text and, when given, the LLM hidden state of every token (the speech decoder's prefix).

    seg = TextSegmenter(tokenizer)
    for token_id, hidden in llm_stream:
        for segment in seg.push(token_id, hidden=hidden):
            speak(segment)
    last = seg.flush()
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

import torch

SENTENCE_END = ("。", "：", "？", "！", ".", "?", "!", "\n")
CLAUSE_END = (",", "，", ":") + SENTENCE_END


@dataclass
class TextSegment:
    """One piece of the answer to speak."""

    index: int  # 0 for the first segment of the answer
    token_ids: List[int]
    text: str
    hidden_states: Optional[torch.Tensor] = None  # (len(token_ids), llm_hidden) or None
    is_last: bool = False  # produced by flush()


@dataclass
class _Pending:
    token_ids: List[int] = field(default_factory=list)
    text: str = ""
    hidden: List[torch.Tensor] = field(default_factory=list)
    num_tokens: int = 0  # pushes, with or without ids


class TextSegmenter:
    """Incremental segmenter.

    Args:
        tokenizer: optional; with it `push(token_id)` decodes the token's text itself
            (as the difference between the decoded answer before and after it, so
            multi-token characters come out whole). Without it, pass `text=`.
        min_tokens: fewest tokens before any cut (4).
        long_tokens: from this many tokens on, commas cut too (20).
    """

    def __init__(self, tokenizer: Any = None, min_tokens: int = 4, long_tokens: int = 20):
        self.tokenizer = tokenizer
        self.min_tokens = min_tokens
        self.long_tokens = long_tokens
        self.reset()

    def reset(self) -> None:
        """Start a new answer."""
        self._pending = _Pending()
        self._answer_ids: List[int] = []
        self._answer_text = ""
        self._num_segments = 0

    # ------------------------------------------------------------------
    def push(
        self,
        token_id: Optional[int] = None,
        text: Optional[str] = None,
        hidden: Optional[torch.Tensor] = None,
    ) -> List[TextSegment]:
        """Add one streamed token; returns the segments it completes (zero or one)."""
        if text is None:
            if token_id is None or self.tokenizer is None:
                raise ValueError("push() needs text=, or a token id and a tokenizer")
            text = self._decode_piece(int(token_id))
        elif token_id is not None:
            self._answer_ids.append(int(token_id))
        previous_text = self._answer_text
        self._answer_text += text

        pending = self._pending
        pending.num_tokens += 1
        if token_id is not None:
            pending.token_ids.append(int(token_id))
        pending.text += text
        if hidden is not None:
            pending.hidden.append(hidden.reshape(-1))
        if self._ends_segment(text, previous_text, pending.num_tokens):
            return [self._emit(is_last=False)]
        return []

    def push_many(self, token_ids: Sequence[int]) -> List[TextSegment]:
        """Convenience: push several token ids (needs a tokenizer)."""
        out: List[TextSegment] = []
        for t in token_ids:
            out.extend(self.push(t))
        return out

    def flush(self) -> Optional[TextSegment]:
        """End of the answer: whatever is pending becomes the last segment."""
        if self._pending.num_tokens == 0:
            return None
        return self._emit(is_last=True)

    # ------------------------------------------------------------------
    def _ends_segment(self, piece: str, previous_text: str, count: int) -> bool:
        if count < self.min_tokens:
            return False
        ends = CLAUSE_END if (self._num_segments == 0 or count >= self.long_tokens) else SENTENCE_END
        stripped = piece.rstrip(" \t")
        if not stripped.endswith(ends):
            return False
        if stripped.endswith("."):
            # A '.' after a digit is a decimal point or a list number, not a full stop.
            before = (previous_text + stripped)[:-1]
            if before and before[-1].isdigit():
                return False
        return True

    def _emit(self, is_last: bool) -> TextSegment:
        pending = self._pending
        hidden = torch.stack(pending.hidden) if pending.hidden else None
        segment = TextSegment(
            index=self._num_segments,
            token_ids=list(pending.token_ids),
            text=pending.text,
            hidden_states=hidden,
            is_last=is_last,
        )
        self._num_segments += 1
        self._pending = _Pending()
        return segment

    def _decode_piece(self, token_id: int) -> str:
        before = self._answer_text
        self._answer_ids.append(token_id)
        full = self.tokenizer.decode(self._answer_ids, skip_special_tokens=True)
        # An incomplete multi-byte character decodes to U+FFFD: hold it until it completes.
        if full.endswith("\ufffd"):
            return ""
        if not full.startswith(before):
            # Tokenizers may re-normalize earlier text (e.g. spaces); keep the tail only.
            return full[len(before):] if len(full) > len(before) else ""
        return full[len(before):]
