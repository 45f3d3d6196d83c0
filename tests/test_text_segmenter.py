"""TextSegmenter: SPEC §3 cutting rules, incremental API, hidden states carried along."""
import torch

from espnet_freeze_omni.inference.text_segmenter import TextSegmenter


def push_pieces(seg, pieces, hidden_dim=None):
    out = []
    for i, p in enumerate(pieces):
        hidden = torch.full((hidden_dim,), float(i)) if hidden_dim else None
        out.extend(seg.push(token_id=i, text=p, hidden=hidden))
    return out


def test_first_segment_cuts_at_comma_after_four_tokens():
    seg = TextSegmenter()
    # comma at token 2: too early (< 4 tokens); comma at token 5: cuts (first segment)
    out = push_pieces(seg, ["Well", ",", " the", " sky", " is", ",", " blue"])
    assert [s.text for s in out] == ["Well, the sky is,"]
    assert out[0].token_ids == [0, 1, 2, 3, 4, 5] and out[0].index == 0
    last = seg.flush()
    assert last.text == " blue" and last.is_last and last.index == 1
    assert seg.flush() is None


def test_later_segments_cut_at_commas_only_after_twenty_tokens():
    seg = TextSegmenter()
    out = push_pieces(seg, ["One", " two", " three", " four", "."])
    assert len(out) == 1
    # Second segment: a comma after 5 tokens does not cut ...
    out = push_pieces(seg, [" a", " b", " c", " d", ","])
    assert out == []
    # ... nor one at 19 tokens, but one at >= 20 tokens does.
    out = push_pieces(seg, [" x"] * 13 + [","])
    assert out == []
    out = push_pieces(seg, [" y", ","])
    assert len(out) == 1 and len(out[0].token_ids) == 21
    # Sentence punctuation after >= 4 tokens cuts again.
    out = push_pieces(seg, [" so", " it", " is", " done", "!"])
    assert [s.text for s in out] == [" so it is done!"]


def test_sentence_punctuation_needs_four_tokens_and_chinese_marks_count():
    seg = TextSegmenter()
    assert push_pieces(seg, ["Hi", "."]) == []  # 2 tokens: no cut
    out = push_pieces(seg, [" you", "!"])
    assert len(out) == 1 and out[0].text == "Hi. you!"
    out = push_pieces(seg, ["你", "好", "吗", "？"])
    assert [s.text for s in out] == ["你好吗？"]
    out = push_pieces(seg, ["一", "二", "三", "\n"])
    assert len(out) == 1


def test_dot_after_digit_is_not_a_full_stop():
    seg = TextSegmenter()
    out = push_pieces(seg, ["Pi", " is", " about", " 3", ".", "14", " today", "."])
    assert [s.text for s in out] == ["Pi is about 3.14 today."]
    seg.reset()
    out = push_pieces(seg, ["It", " costs", " 42.", " Yes", " it", " does", "."])
    assert [s.text for s in out] == ["It costs 42. Yes it does."]


def test_hidden_states_are_stacked_per_segment():
    seg = TextSegmenter()
    out = push_pieces(seg, ["a", "b", "c", "d", ".", "e"], hidden_dim=3)
    assert out[0].hidden_states.shape == (5, 3)
    assert out[0].hidden_states[:, 0].tolist() == [0, 1, 2, 3, 4]
    last = seg.flush()
    assert last.hidden_states.shape == (1, 3)


class PieceTokenizer:
    """Decodes ids by concatenating pieces; id 9 + 10 form one character (like byte fallback)."""

    pieces = ["The", " sky", " is", " blue", ".", " It", " is", " nice", "!", "<b1>", "<b2>"]

    def decode(self, ids, skip_special_tokens=True):
        text = ""
        i = 0
        while i < len(ids):
            if ids[i] == 9:
                text += "é" if i + 1 < len(ids) and ids[i + 1] == 10 else "\ufffd"
                i += 2
                continue
            text += self.pieces[ids[i]]
            i += 1
        return text


def test_token_ids_with_tokenizer_decode_incrementally():
    seg = TextSegmenter(tokenizer=PieceTokenizer())
    out = seg.push_many([0, 1, 2, 3, 4, 5, 9, 10, 6, 7, 8])
    assert [s.text for s in out] == ["The sky is blue.", " Ité is nice!"]
    assert out[1].token_ids == [5, 9, 10, 6, 7, 8]
    assert seg.flush() is None
