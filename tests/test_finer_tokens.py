"""FinerTokenSplitter: the LLM's own BPE vocabulary, cut finer with its first merges only."""
import json

import pytest

from espnet_freeze_omni.llm.finer_tokens import FinerTokenSplitter
from espnet_freeze_omni.llm.frozen_llm import load_llm_tokenizer
from espnet_freeze_omni.llm.tiny import build_tiny_llm, default_tiny_texts

SENTENCES = ["Plaibe Reestouk is a city in Deekavia.", "What is the capital of Zorbia?",
             "Anna lives in Paris, near the river."]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def tokenizer(request, tmp_path_factory):
    texts = default_tiny_texts() * 2 + SENTENCES * 5
    path = build_tiny_llm(tmp_path_factory.mktemp(request.param) / "llm", texts,
                          family=request.param, vocab_size=400)
    return load_llm_tokenizer(path)


def num_merges(tokenizer) -> int:
    return len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])


def test_split_spells_the_same_text_with_more_shorter_pieces(tokenizer):
    total = num_merges(tokenizer)
    assert total > 100
    counts = []
    for merges in (0, total // 4, total // 2, total):
        splitter = FinerTokenSplitter(tokenizer, merges)
        n = 0
        for sentence in SENTENCES:
            ids = tokenizer.encode(sentence, add_special_tokens=False)
            finer = splitter.split(ids)
            assert all(0 <= i < len(tokenizer) for i in finer)
            # token by token: each token's pieces spell exactly that token
            for t in ids:
                assert "".join(tokenizer.convert_ids_to_tokens(splitter.split_one(t))) == \
                    tokenizer.convert_ids_to_tokens(t)
            assert tokenizer.decode(finer) == tokenizer.decode(ids)
            if merges == total:
                assert finer == ids
            n += len(finer)
        counts.append(n)
    # fewer merges never give fewer pieces, and a quarter of them gives clearly more
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[1] > counts[3], counts


def test_no_merges_leaves_the_base_alphabet(tokenizer):
    splitter = FinerTokenSplitter(tokenizer, 0)
    ids = tokenizer.encode("Deekavia", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(splitter.split(ids))
    assert all(len(p) == 1 for p in pieces), pieces


def test_special_tokens_stay_whole(tokenizer):
    splitter = FinerTokenSplitter(tokenizer, 0)
    for special in tokenizer.all_special_ids:
        assert splitter.split([special]) == [special]


def test_merge_counts_past_the_end_keep_every_token_and_negative_ones_are_refused(tokenizer):
    total = num_merges(tokenizer)
    splitter = FinerTokenSplitter(tokenizer, total + 1000)
    assert splitter.num_merges == total
    ids = tokenizer.encode(SENTENCES[0], add_special_tokens=False)
    assert splitter.split(ids) == ids
    with pytest.raises(ValueError, match=rf"has {total} merges.*got -1"):
        FinerTokenSplitter(tokenizer, -1)


def test_slow_tokenizer_is_refused():
    class Slow:
        pass

    with pytest.raises(ValueError, match="Slow is not a fast tokenizer"):
        FinerTokenSplitter(Slow(), 10)
