"""Scorers: number words, normalization, QA containment (SPEC §4), sclite, turn ends, results."""
import json

import pytest

from espnet_freeze_omni.scoring import qa_containment, results, sclite, turn_end
from espnet_freeze_omni.scoring.normalize import normalize_text
from espnet_freeze_omni.scoring.numbers import digits_to_words, number_to_words


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"),
    (100, "one hundred"), (105, "one hundred five"), (999, "nine hundred ninety nine"),
    (1000, "one thousand"), (1905, "one thousand nine hundred five"),
    (9999, "nine thousand nine hundred ninety nine"),
])
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_number_to_words_range_and_digits_in_text():
    with pytest.raises(ValueError):
        number_to_words(10000)
    assert digits_to_words("he is 42 and 10000 km") == "he is forty two and 10000 km"


def test_normalize_keeps_apostrophes_and_joins_digit_groups():
    assert normalize_text("Don't PANIC, it's 1,000 km (Quell's)!") == \
        "don't panic it's 1000 km quell's"
    assert normalize_text("Forty-two\u2019s") == "forty two's"


@pytest.mark.parametrize("response, answers, correct", [
    ("The capital of Zorvia is Quell.", ["Quell"], True),
    ("It is QUELL!", ["quell"], True),
    ("The capital is Quelle.", ["Quell"], False),  # whole words only
    ("New York is big", ["New York City", "new york"], True),  # any alias
    ("York, new and shiny", ["New York"], True),  # every word, any order
    ("He is 42 years old.", ["forty two"], True),  # digits in the response
    ("He is forty-two years old.", ["42"], True),  # digits in the reference
    ("He is forty years old.", ["42"], False),
    ("I don't know", ["dont"], False),  # the apostrophe is kept
    ("I don't know", ["don't"], True),
    ("Quell's mayor", ["Quell"], False),  # possessive is another word
    ("", ["Quell"], False),
])
def test_containment(response, answers, correct):
    assert qa_containment.is_correct(response, answers) is correct


def test_score_qa_counts_missing_and_names_scorer(tmp_path):
    refs_path = tmp_path / "refs.jsonl"
    refs_path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "q1", "question": "Capital of Zorvia?", "answers": ["Quell"]},
        {"id": "q2", "question": "Age of Tam?", "answers": ["forty two", "42"]},
        {"id": "q3", "question": "Pet?", "answers": ["owl"]},
    ]))
    hyp = tmp_path / "text"
    hyp.write_text("q1 It is Quell.\nq2 Tam is 42.\nside-1 ignored, not a question\n")
    score = qa_containment.score_qa(qa_containment.load_references(refs_path),
                                    qa_containment.load_responses(hyp))
    assert (score.num_items, score.num_correct, score.num_missing) == (3, 2, 1)
    assert score.accuracy == pytest.approx(200 / 3)
    assert "containment" in score.scorer_name
    out = qa_containment.write_qa_score(score, tmp_path / "score")
    assert json.loads(out.read_text())["scorer"] == "answer_containment"
    assert len((tmp_path / "score" / "per_item.jsonl").read_text().splitlines()) == 3


def test_empty_reference_answer_is_refused(tmp_path):
    p = tmp_path / "refs.jsonl"
    p.write_text(json.dumps({"id": "q", "answers": ["?!"]}) + "\n")
    with pytest.raises(ValueError, match="empty reference answer"):
        qa_containment.load_references(p)


def test_sclite_known_wer(tmp_path):
    refs = {"u1": "The cat sat on the mat.", "u2": "Hello world"}
    hyps = {"u1": "the cat sat on mat", "u2": "hello big world"}
    rate = sclite.score_error_rate(refs, hyps, tmp_path)
    # 1 deletion + 1 insertion over 8 reference words
    assert (rate.num_sentences, rate.num_tokens) == (2, 8)
    assert rate.error_rate == pytest.approx(25.0)
    assert rate.deletions == pytest.approx(12.5) and rate.insertions == pytest.approx(12.5)
    assert "Sum/Avg" in (tmp_path / "result.txt").read_text()
    assert (tmp_path / "ref.trn").read_text().splitlines()[0] == \
        "the cat sat on the mat (spk-u1)"


def test_sclite_char_level_and_missing_hypothesis(tmp_path):
    rate = sclite.score_error_rate({"a": "ab c", "b": "d"}, {"a": "ab c"}, tmp_path, unit="char")
    # tokens: a b <space> c | d -> 5 reference tokens, 1 deleted
    assert rate.num_tokens == 5 and rate.error_rate == pytest.approx(20.0)
    assert json.loads((tmp_path / "result.json").read_text())["num_missing_hyps"] == 1


def test_sclite_absent_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sclite, "DEBIAN_SCLITE", str(tmp_path / "nothing"))
    with pytest.raises(RuntimeError, match="sctk"):
        sclite.find_sclite()


def test_turn_end_scoring():
    ref = {"a": (1, 2.0), "b": (1, 3.0), "c": (1, 1.5), "d": (2, 2.0), "e": (2, 1.0),
           "f": (1, 2.0)}
    hyp = {"a": (1, 2.3),   # hit, 0.3 s after the end
           "b": (1, 2.5),   # early: cuts the user off -> FP + FN
           "c": (0, -1.0),  # never decided -> FN
           "d": (1, 2.2),   # answered side talk -> FP
           "e": (2, 0.9)}   # ignored side talk; "f" has no prediction -> FN
    s = turn_end.score_turn_end(ref, hyp, early_tolerance=0.16, late_tolerance=1.0)
    assert (s.true_positives, s.false_positives, s.false_negatives) == (1, 2, 3)
    assert s.precision == pytest.approx(100 / 3) and s.recall == pytest.approx(25.0)
    assert s.f1 == pytest.approx(2 * (100 / 3) * 25 / (100 / 3 + 25))
    assert s.mean_latency == pytest.approx(0.3)
    assert s.not_addressed_ignored == pytest.approx(50.0)
    assert s.num_missing_predictions == 1
    assert s.outcomes["b"] == "early" and s.outcomes["d"] == "answered_side_talk"


def test_results_json_and_markdown(tmp_path):
    root = tmp_path / "scores"
    results.write_metric(root / "test" / "asr_wer_ctc", "asr_wer_ctc", "test", 12.5, "sclite",
                         "NIST sclite", {"num_sentences": 2, "num_tokens": 8, "correct": 87.5})
    results.write_metric(root / "qa_test" / "qa_acc_text_in", "qa_acc_text_in", "qa_test", 80.0,
                         "answer_containment", qa_containment.SCORER_NAME,
                         {"num_items": 10, "num_correct": 8, "num_missing": 0})
    results.write_metric(root / "qa_test" / "qa_acc_speech_in", "qa_acc_speech_in", "qa_test",
                         70.0, "answer_containment", qa_containment.SCORER_NAME,
                         {"num_items": 10, "num_correct": 7, "num_missing": 0})
    # per-item verdicts as score_qa writes them: q2's answers differ between modalities
    for cond, responses in (("text_in", ["It is blue.", "Anna lives in Paris."]),
                            ("speech_in", ["It is blue.", "Anna lives in Rome."])):
        with open(root / "qa_test" / f"qa_acc_{cond}" / "per_item.jsonl", "w") as f:
            for i, r in enumerate(responses):
                f.write(json.dumps({"id": f"q{i + 1}", "question": "?", "answers": ["x"],
                                    "response": r, "correct": "Paris" in r}) + "\n")
    with pytest.raises(ValueError):
        results.write_metric(root, "bleu", "test", 1.0, "x")
    out = results.write_results(root, tmp_path / "exp" / "results.json", tmp_path / "RESULTS.md",
                                ["test", "qa_test"])
    saved = json.loads((tmp_path / "exp" / "results.json").read_text())
    assert saved == json.loads(json.dumps(out))
    for key in ("asr_wer_ctc", "asr_wer_llm", "qa_acc_text_in", "qa_acc_speech_in",
                "qa_acc_speech_out", "speech_out_cer", "turn_end_f1", "modality_gap"):
        assert key in saved
    assert saved["asr_wer_ctc"] == 12.5 and saved["asr_wer_llm"] is None
    assert saved["modality_gap"] == [{
        "test_set": "qa_test", "text_in": 80.0, "speech_in": 70.0, "gap_speech_in": 10.0,
        "items": [{"id": "q2", "question": "?", "answers": ["x"],
                   "text_in": "Anna lives in Paris.", "speech_in": "Anna lives in Rome.",
                   "text_in_correct": True, "speech_in_correct": False}]}]
    assert set(saved["environment"]) >= {"date", "os", "python", "torch", "espnet",
                                         "transformers", "git_commit"}
    md = (tmp_path / "RESULTS.md").read_text()
    assert "### test" in md and "### qa_test" in md and "answer containment" in md
    assert "|asr_wer_ctc (WER %)|2|8|87.50|" in md


def test_score_bins_write_metrics(tmp_path):
    from espnet_freeze_omni.bin import score_asr, score_qa, write_results

    (tmp_path / "ref").write_text("u1 a b c d\n")
    (tmp_path / "hyp").write_text("u1 a b x d\n")
    assert score_asr.main(["--ref", str(tmp_path / "ref"), "--hyp", str(tmp_path / "hyp"),
                           "--out_dir", str(tmp_path / "s/test/asr_wer_llm"),
                           "--metric", "asr_wer_llm", "--test_set", "test"]) == 0
    (tmp_path / "ti_ref").write_text("u1 1 2.00\nu2 2 1.00\n")
    (tmp_path / "ti_hyp").write_text("u1 1 2.40\nu2 2 -1\n")
    assert score_qa.main(["--ref_turn_info", str(tmp_path / "ti_ref"),
                          "--hyp_turn_info", str(tmp_path / "ti_hyp"),
                          "--out_dir", str(tmp_path / "s/test/turn_end_f1"),
                          "--metric", "turn_end_f1", "--test_set", "test"]) == 0
    assert write_results.main(["--score_root", str(tmp_path / "s"),
                               "--results_json", str(tmp_path / "r.json"),
                               "--results_md", str(tmp_path / "R.md")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["asr_wer_llm"] == 25.0 and r["turn_end_f1"] == 100.0
