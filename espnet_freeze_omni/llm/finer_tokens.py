"""Finer pieces of the LLM's own BPE vocabulary, for the speech decoder to read.

A BPE vocabulary holds every merge it ever made: the piece `ĠReestouk` is there, and so are
`ĠRee`, `st` and `ouk`, from which it was merged. The LLM reads and writes only what all
the merges build, and a BPE fitted on text full of invented names gives most names one or
two pieces of their own, each heard in a handful of training answers: too few for a small
speech decoder to learn how it sounds (docs/experiments/2026-11-23-llm-tokenizer-finer-pieces.md).
Re-applying only the first
`num_merges` merges to each token's piece splits it again into shorter pieces that many
words share, without touching the LLM: its answer, its hidden states and its vocabulary
stay the same, and the finer pieces are embedded by the same table (pieces the LLM never
produces keep embeddings its training hardly moved: distinct vectors, which is all the
decoder needs to tell them apart).

    splitter = FinerTokenSplitter(tokenizer, num_merges=341)
    splitter.split(tokenizer.encode("Plaibe Reestouk"))   # ids of Pl ai b e ĠRee st ouk

Each token is split on its own, so the pieces of a token never cross into its neighbours,
and a segment of the answer splits the same way wherever the stream cuts it. Special tokens,
and tokens that the kept merges cannot spell, stay whole.
"""
from __future__ import annotations

import json
from typing import Dict, List, Sequence


class FinerTokenSplitter:
    """Splits token ids of a Hugging Face BPE tokenizer using only its first merges.

    Args:
        tokenizer: a fast (`tokenizers`-backed) BPE tokenizer, e.g. Qwen2's.
        num_merges: how many of its merges, in order, to keep; 0 leaves the base alphabet
            (bytes, for a byte-level BPE), all of them (or more: a BPE with fewer merges
            is kept whole) leaves every token as it is.
    """

    def __init__(self, tokenizer, num_merges: int):
        from tokenizers.models import BPE

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"{type(tokenizer).__name__} is not a fast tokenizer: splitting tokens needs "
                f"the BPE merges of its tokenizer.json"
            )
        model = json.loads(backend.to_str())["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"the LLM's tokenizer model is {model.get('type')}, not BPE: "
                             f"it has no merges to split tokens with")
        merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
                  for m in model["merges"]]
        if num_merges < 0:
            raise ValueError(f"num_merges must be >= 0 (the LLM's BPE has {len(merges)} "
                             f"merges), got {num_merges}")
        self.tokenizer = tokenizer
        self.num_merges = min(num_merges, len(merges))
        self.vocab: Dict[str, int] = dict(model["vocab"])
        # ignore_merges=False: a word found whole in the vocabulary must still be built
        # from the kept merges, or nothing would be split
        options = {key: model[key] for key in
                   ("unk_token", "continuing_subword_prefix", "end_of_word_suffix")
                   if model.get(key)}  # the bindings take no None for these
        self._bpe = BPE(vocab=self.vocab, merges=merges[: self.num_merges],
                        fuse_unk=bool(model.get("fuse_unk")),
                        byte_fallback=bool(model.get("byte_fallback")),
                        ignore_merges=False, **options)
        self._special = set(tokenizer.all_special_ids)
        self._cache: Dict[int, List[int]] = {}

    def split_one(self, token_id: int) -> List[int]:
        """The finer pieces of one token, in order (the token itself if it stays whole)."""
        token_id = int(token_id)
        pieces = self._cache.get(token_id)
        if pieces is None:
            pieces = [token_id]
            piece = self.tokenizer.convert_ids_to_tokens(token_id)
            if token_id not in self._special and self.vocab.get(piece) == token_id:
                found = self._bpe.tokenize(piece)
                if found and "".join(t.value for t in found) == piece:
                    pieces = [t.id for t in found]
            self._cache[token_id] = pieces
        return pieces

    def split(self, token_ids: Sequence[int]) -> List[int]:
        """Token ids -> the finer ids, token by token."""
        return [p for t in token_ids for p in self.split_one(t)]
