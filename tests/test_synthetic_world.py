"""The embedded corpus generator: deterministic, test data held out by text, spoken dirs."""
import dataclasses
import json

import soundfile

import pytest

from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import spoken_turns
from espnet_freeze_omni.data import validation
from espnet_freeze_omni.data.espeak import pick_voice, synthesize
from espnet_freeze_omni.data.synthetic_world import (ASSISTANT_VOICE, REPEAT_PROMPT,
                                                     TTS_TRAILING_SILENCE, CorpusSizes,
                                                     generate_corpus, make_corpus)
from espnet_freeze_omni.llm.dialogs import read_dialogs

SMALL = CorpusSizes(num_train=300, num_dev=40, num_test=40, num_qa_train=400, num_qa_test=60,
                    num_spoken_qa_train=50, num_side_talk_train=20, num_side_talk_test=10,
                    num_countries=8, num_people=40, num_tts_train=400, num_tts_dev=30,
                    num_repeat_train=500)
TTS_SETS = ("tts_train", "tts_dev")


def read_all(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_text_gives_the_same_audio_bytes(tmp_path):
    """sox dithers when it resamples espeak-ng's 22.05 kHz to 16 kHz; unseeded, every run of
    the recipe would train on different audio."""
    a = synthesize("Raidum Soupas is seventy two.", tmp_path / "a.wav", trailing_silence=0.2)
    b = synthesize("Raidum Soupas is seventy two.", tmp_path / "b.wav", trailing_silence=0.2)
    assert a.read_bytes() == b.read_bytes()


def test_deterministic_given_the_seed(tmp_path):
    make_corpus(tmp_path / "a", seed=3, sizes=SMALL, text_only=True)
    make_corpus(tmp_path / "b", seed=3, sizes=SMALL, text_only=True)
    make_corpus(tmp_path / "c", seed=4, sizes=SMALL, text_only=True)
    a, b, c = (read_all(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["local/world/world.json"] != c["local/world/world.json"]
    assert {"local/world/facts.txt", "local/world/llm_text.txt", "local/world/qa_train.jsonl",
            "local/world/qa_test.jsonl", "local/world/qa_test_refs.jsonl",
            "local/world/repeat_train.jsonl", "local/world/utterances_tts_train.tsv",
            "local/world/utterances_tts_dev.tsv"} <= a.keys()
    for name in ("repeat_train.jsonl", "utterances_tts_train.tsv", "utterances_tts_dev.tsv"):
        assert a[f"local/world/{name}"] != c[f"local/world/{name}"], name


def test_qa_test_held_out_by_text_but_facts_known():
    corpus = generate_corpus(0, SMALL)
    user = lambda dialogs: [t["content"] for d in dialogs for t in d["turns"]
                            if t["role"] == "user"]
    train_q, test_q = set(user(corpus.qa_train)), user(corpus.qa_test)
    assert len(test_q) == SMALL.num_qa_test == len(corpus.qa_test_refs)
    assert not train_q & set(test_q)  # no test question text is ever trained on
    statements = {f.statement for f in corpus.world.facts}
    train_facts = {f for d in corpus.qa_train for f, _ in d["facts"]}
    for d in corpus.qa_test:
        for (f, q), turn in zip(d["facts"], d["turns"][1::2]):
            fact = corpus.world.facts[f]
            assert turn["content"] == fact.statement in statements  # the LLM reads the fact
            assert f in train_facts  # ... and is asked it in train with another phrasing
    for ref in corpus.qa_test_refs:
        assert ref["answers"] and ref["id"].startswith("qa_test-")
    ages = [r for r in corpus.qa_test_refs if r["relation"] == "age"]
    assert all(any(a.isdigit() for a in r["answers"]) for r in ages)


def test_asr_and_side_talk_held_out_by_text():
    corpus = generate_corpus(0, SMALL)
    texts = {k: {u.text for u in v} for k, v in corpus.spoken.items()}
    assert not texts["train"] & texts["test"] and not texts["train"] & texts["dev"]
    assert not texts["dev"] & texts["test"]
    assert len(corpus.spoken["train"]) == 300 and len(texts["test"]) == 40  # test texts unique
    assert not set(corpus.side_talk_train) & set(corpus.side_talk_test)
    # nothing spoken in qa_test (questions, side talk) is heard in any ASR set
    asr_texts = texts["train"] | texts["dev"] | texts["test"]
    assert not asr_texts & texts["qa_test"]
    assert any(t in set(corpus.side_talk_train) for t in texts["train"])  # side talk is in ASR
    side = [u for u in corpus.spoken["qa_test"] if u.label == 2]
    assert len(side) == 10 and {u.text for u in side} <= set(corpus.side_talk_test)
    assert all(u.label == 1 for u in corpus.spoken["qa_test"] if u.utt_id.startswith("qa_test"))
    assert all(0.6 <= u.trailing_silence <= 1.0 for k, v in corpus.spoken.items() for u in v
               if k not in TTS_SETS)


def test_tts_sets_one_voice_assistant_answers_test_answers_held_out():
    corpus = generate_corpus(0, SMALL)
    tts = {k: corpus.spoken[k] for k in TTS_SETS}
    assert len(tts["tts_train"]) == 400 and len(tts["tts_dev"]) == 30
    # one voice, at normal speed and pitch, that the ASR training set also speaks with
    voices = {u.voice_index for k in TTS_SETS for u in tts[k]}
    assert len(voices) == 1 and pick_voice(voices.pop()) == ASSISTANT_VOICE
    assert ASSISTANT_VOICE in [pick_voice(u.voice_index) for u in corpus.spoken["train"]]
    assert all(u.trailing_silence == TTS_TRAILING_SILENCE and u.label == 1
               for k in TTS_SETS for u in tts[k])
    texts = {k: [u.text for u in v] for k, v in tts.items()}
    assert len(set(texts["tts_train"])) == 400 and len(set(texts["tts_dev"])) == 30
    assert not set(texts["tts_train"]) & set(texts["tts_dev"])
    # the answers of the test questions are in neither
    test_answers = {t["content"] for d in corpus.qa_test for t in d["turns"][1::2]}
    assert len(test_answers) > 40
    assert not test_answers & (set(texts["tts_train"]) | set(texts["tts_dev"]))
    # the phrasing of the assistant turns: tts_dev and the first part of tts_train are world
    # answers the train dialogs give; the rest of tts_train says the same of invented people
    statements = {f.statement for f in corpus.world.facts}
    train_answers = {t["content"] for d in corpus.qa_train for t in d["turns"][1::2]}
    assert set(texts["tts_dev"]) <= statements
    assert len(set(texts["tts_dev"]) & train_answers) > 20
    world = [t for t in texts["tts_train"] if t in statements]
    assert len(world) == len(statements - test_answers) - 30
    names = {n for p in corpus.world.people for n in p["name"].split()}
    templates = ("lives in", "works as", "favorite color is", "named", "years old")
    for t in texts["tts_train"]:
        if t not in statements:
            assert any(k in t for k in templates) and t.split()[0] not in names, t
    # deterministic: the same seed gives the same sets, another seed others
    again, other = generate_corpus(0, SMALL), generate_corpus(1, SMALL)
    assert [u.text for u in again.spoken["tts_train"]] == texts["tts_train"]
    assert [u.text for u in other.spoken["tts_train"]] != texts["tts_train"]


def test_tts_sets_leave_the_other_sets_unchanged():
    """Adding the TTS sets and repeat dialogs must not reshuffle the corpus recipes use."""
    with_tts = generate_corpus(0, SMALL)
    without = generate_corpus(0, CorpusSizes(**{**SMALL.__dict__, "num_tts_train": 0,
                                                "num_tts_dev": 0, "num_repeat_train": 0}))
    assert with_tts.qa_train == without.qa_train and with_tts.qa_test == without.qa_test
    for k in ("train", "dev", "test", "qa_train", "qa_test"):
        assert with_tts.spoken[k] == without.spoken[k], k
    assert without.spoken["tts_train"] == [] and without.repeat_train == []


def test_repeat_dialogs_copy_train_sentences_only(tmp_path):
    corpus = make_corpus(tmp_path, seed=0, sizes=SMALL, text_only=True)
    dialogs = read_dialogs(tmp_path / "local/world/repeat_train.jsonl")  # checks the format
    assert dialogs == corpus.repeat_train and len(dialogs) == 500
    sentences = []
    for d in dialogs:
        user, assistant = d["turns"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"] == REPEAT_PROMPT.format(assistant["content"])
        assert user["content"] == "Repeat after me: " + assistant["content"]
        sentences.append(assistant["content"])
    assert len(set(sentences)) == len(sentences)  # enough train sentences for 500
    asr_train = {u.text for u in corpus.spoken["train"]}
    dialog_train = {t["content"] for d in corpus.qa_train for t in d["turns"]}
    assert set(sentences) <= asr_train | dialog_train
    assert set(sentences) & asr_train - dialog_train  # both sources are drawn from
    assert set(sentences) & dialog_train - asr_train
    unseen = {u.text for k in ("dev", "test", "qa_test") for u in corpus.spoken[k]} | \
        {t["content"] for d in corpus.qa_test for t in d["turns"]} | set(corpus.side_talk_test)
    assert not set(sentences) & unseen
    assert "repeat_train.jsonl" in (tmp_path / "local/world/README.txt").read_text()


def test_unknown_set_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown data set.*tts_test"):
        make_corpus(tmp_path, seed=0, sizes=SMALL, sets=["tts_train", "tts_test"])


def test_spoken_data_dirs(tmp_path):
    sizes = CorpusSizes(num_train=3, num_dev=1, num_test=1, num_qa_train=6, num_qa_test=2,
                        num_spoken_qa_train=1, num_side_talk_train=1, num_side_talk_test=1,
                        num_countries=3, num_people=5, num_tts_train=2, num_tts_dev=1,
                        num_repeat_train=3)
    corpus = make_corpus(tmp_path, seed=0, sizes=sizes, num_workers=2)
    assert {p.name for p in tmp_path.iterdir()} >= {"tts_train", "tts_dev"}
    for name in TTS_SETS:  # one speaker: the assistant's voice
        assert set(kt.read_kaldi_map(tmp_path / name / "utt2spk").values()) == \
            {"en-us-s160-p50"}, name
    for name, utts in corpus.spoken.items():
        d = tmp_path / name
        assert validation.validate_data_dir(d, check_audio=True, sample_rate=16000) == [], name
        turns = kt.read_turn_info(d / "turn_info")
        wav = kt.read_kaldi_map(d / "wav.scp")
        for u in utts:
            label, end = turns[u.utt_id]
            assert label == u.label
            duration = soundfile.info(wav[u.utt_id]).duration
            # speech ends before the padded silence (0.6-1.0 s; TTS_TRAILING_SILENCE for TTS)
            assert 0.3 < end <= duration - u.trailing_silence + 0.02
    refs = [json.loads(l) for l in (tmp_path / "local/world/qa_test_refs.jsonl").open()]
    assert {r["id"] for r in refs} <= set(kt.read_kaldi_map(tmp_path / "qa_test" / "text"))


def test_paused_questions_change_nothing_else_and_hold_a_real_pause(tmp_path):
    """num_paused_qa_train questions of qa_train get a 0.5-2 s pause inside; the rest of the
    corpus is the same; the wav holds that silence and turn_info's speech end comes after it
    (so the state head's label stays listen through the pause)."""
    import numpy as np

    paused = generate_corpus(0, SMALL)
    plain = generate_corpus(0, CorpusSizes(**{**SMALL.__dict__, "num_paused_qa_train": 0}))
    with_pause = [u for u in paused.spoken["qa_train"] if u.pause]
    assert len(with_pause) == min(SMALL.num_paused_qa_train, SMALL.num_spoken_qa_train)
    assert all(0.5 <= u.pause[1] <= 2.0 and 0 < u.pause[0] < len(u.text.split())
               for u in with_pause)
    strip = [dataclasses.replace(u, pause=None) for u in paused.spoken["qa_train"]]
    assert strip == plain.spoken["qa_train"]
    for k in ("train", "dev", "test", "qa_test", "tts_train"):
        assert paused.spoken[k] == plain.spoken[k], k

    u = with_pause[0]
    d = tmp_path / "one"
    spoken_turns.synthesize_turn_datadir([spoken_turns.SpokenTurn(u.utt_id, u.text, 1, u.voice_index,
                                              u.trailing_silence, u.pause)], d, tmp_path / "w")
    wav, rate = soundfile.read(kt.read_kaldi_map(d / "wav.scp")[u.utt_id], dtype="float32")
    frames = np.abs(wav[: len(wav) // 160 * 160]).reshape(-1, 160).max(axis=1)
    silent = frames < 0.01 * frames.max()
    runs, run = [], 0  # silent stretches (10 ms frames) inside the speech
    first, last = np.flatnonzero(~silent)[[0, -1]]
    for s in silent[first:last + 1]:
        run = run + 1 if s else 0
        runs.append(run)
    assert max(runs) * 0.01 >= u.pause[1] - 0.05
    _, end = kt.read_turn_info(d / "turn_info")[u.utt_id]
    assert end >= u.pause[1] + 0.2 and end <= len(wav) / rate - u.trailing_silence + 0.02
