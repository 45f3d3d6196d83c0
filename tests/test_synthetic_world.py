"""The embedded corpus generator: deterministic, test data held out by text, spoken dirs."""
import json

import soundfile

from espnet_freeze_omni.data import datadir as dd
from espnet_freeze_omni.data.synthetic_world import CorpusSizes, generate_corpus, make_corpus

SMALL = CorpusSizes(num_train=300, num_dev=40, num_test=40, num_qa_train=400, num_qa_test=60,
                    num_spoken_qa_train=50, num_side_talk_train=20, num_side_talk_test=10,
                    num_countries=8, num_people=40)


def read_all(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_given_the_seed(tmp_path):
    make_corpus(tmp_path / "a", seed=3, sizes=SMALL, text_only=True)
    make_corpus(tmp_path / "b", seed=3, sizes=SMALL, text_only=True)
    make_corpus(tmp_path / "c", seed=4, sizes=SMALL, text_only=True)
    a, b, c = (read_all(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and a["local/world/world.json"] != c["local/world/world.json"]
    assert {"local/world/facts.txt", "local/world/llm_text.txt", "local/world/qa_train.jsonl",
            "local/world/qa_test.jsonl", "local/world/qa_test_refs.jsonl"} <= a.keys()


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
    side = [u for u in corpus.spoken["qa_test"] if u.label == 2]
    assert len(side) == 10 and {u.text for u in side} <= set(corpus.side_talk_test)
    assert all(u.label == 1 for u in corpus.spoken["qa_test"] if u.utt_id.startswith("qa_test"))
    assert all(0.6 <= u.trailing_silence <= 1.0 for v in corpus.spoken.values() for u in v)


def test_spoken_data_dirs(tmp_path):
    sizes = CorpusSizes(num_train=3, num_dev=1, num_test=1, num_qa_train=6, num_qa_test=2,
                        num_spoken_qa_train=1, num_side_talk_train=1, num_side_talk_test=1,
                        num_countries=3, num_people=5)
    corpus = make_corpus(tmp_path, seed=0, sizes=sizes, num_workers=2)
    for name, utts in corpus.spoken.items():
        d = tmp_path / name
        assert dd.validate_data_dir(d, check_audio=True, sample_rate=16000) == [], name
        turns = dd.read_turn_info(d / "turn_info")
        wav = dd.read_kaldi_map(d / "wav.scp")
        for u in utts:
            label, end = turns[u.utt_id]
            assert label == u.label
            duration = soundfile.info(wav[u.utt_id]).duration
            # speech ends before the padded silence, which is at least 0.6 s long
            assert 0.3 < end <= duration - u.trailing_silence + 0.02
    refs = [json.loads(l) for l in (tmp_path / "local/world/qa_test_refs.jsonl").open()]
    assert {r["id"] for r in refs} <= set(dd.read_kaldi_map(tmp_path / "qa_test" / "text"))
