"""Spoken QA sets (LLaMA Questions, Web Questions, TriviaQA, dialog turns) as Kaldi dirs +
references, and the paper-scale recipe's data preparation (egs2/librispeech_moss) on tiny
FAKE corpora built here: a 2-speaker LibriSpeech tree of sox-made flacs, a moss-003-sft file
and the three test sets. No real corpus is needed or downloaded."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import soundfile

from espnet_freeze_omni.bin import prepare_qa_eval_set
from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import validation
from espnet_freeze_omni.data import qa_eval_sets as qa
from espnet_freeze_omni.scoring.qa_containment import load_references
from test_recipe_helpers import banner, bash, recipe_copy

FAKE_TTS = """#!/usr/bin/env bash
# Stand-in for a user's TTS: a 22.05 kHz tone as long as the text, one log line per call.
set -euo pipefail
text=$1 wav=$2
echo "$text" >> "$(dirname "$0")/tts_calls.txt"
sox -n -r 22050 -c 1 -b 16 "$wav" synth "$(awk -v n="${#text}" 'BEGIN { print 0.3 + n * 0.01 }')" sine 300
"""


def tone(path: Path, seconds=0.5, rate=16000, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", *(["-t", fmt] if fmt
                    else []), str(path), "synth", str(seconds), "sine", "440"], check=True)
    return path


@pytest.fixture
def fake_tts(tmp_path):
    script = tmp_path / "tts" / "fake_tts.sh"
    script.parent.mkdir()
    script.write_text(FAKE_TTS)
    script.chmod(0o755)
    return f"{script} {{text}} {{wav}}", script.parent / "tts_calls.txt"


def write_llama(root: Path, rows):
    root.mkdir(parents=True, exist_ok=True)
    lines = ["Questions\tAnswer\tWav Filename"] + ["\t".join(r) for r in rows]
    (root / "llama_questions.tsv").write_text("\n".join(lines) + "\n")
    return root / "llama_questions.tsv"


def check_set(data_dir: Path, refs: Path = None):
    """A sound 16 kHz data dir whose turn_info ends each question inside its audio."""
    assert validation.validate_data_dir(data_dir, check_audio=True, sample_rate=16000) == []
    wavs = kt.read_kaldi_map(data_dir / "wav.scp")
    for utt, (label, end) in kt.read_turn_info(data_dir / "turn_info").items():
        duration = soundfile.info(wavs[utt]).duration
        assert label == 1 and 0 < end <= duration - 0.9, (utt, end, duration)  # 1 s padding
    if refs is not None:
        references = load_references(refs)  # what stage 16 reads
        assert [r["id"] for r in references] == sorted(wavs)
        return {r["id"]: r for r in references}


# ----------------------------------------------------------------------- readers + dirs
def test_llama_questions_recordings_and_tts(tmp_path, fake_tts):
    tts_cmd, calls = fake_tts
    root = tmp_path / "llama"
    tone(root / "wavs" / "q1.wav", 0.6, rate=22050)  # converted to 16 kHz
    tsv = write_llama(root, [("What is the capital of France?", "Paris", "wavs/q1.wav"),
                             ("How many legs does a spider have?", "8", "")])
    refs = tmp_path / "refs.jsonl"
    prepare_qa_eval_set.main(["--format", "llama_questions", "--input", str(root),
                              "--data_dir", str(tmp_path / "data/llama"), "--refs", str(refs),
                              "--tts_cmd", tts_cmd, "--nj", "1"])
    references = check_set(tmp_path / "data/llama", refs)
    assert references["llama_questions-00001"] == {
        "id": "llama_questions-00001", "question": "What is the capital of France?",
        "answers": ["Paris"]}
    assert references["llama_questions-00002"]["answers"] == ["8"]
    # only the row without a recording went to the TTS
    assert calls.read_text() == "How many legs does a spider have?\n"
    assert kt.read_kaldi_map(tmp_path / "data/llama/text")["llama_questions-00001"] == \
        "What is the capital of France?"
    recorded = kt.read_kaldi_map(tmp_path / "data/llama/wav.scp")["llama_questions-00001"]
    assert soundfile.info(recorded).duration == pytest.approx(1.6, abs=0.01)  # 0.6 s + 1 s
    assert qa.read_llama_questions(tsv)[0].audio == root / "wavs/q1.wav"


def test_web_questions_and_triviaqa_layouts(tmp_path):
    web = tmp_path / "webq.json"
    web.write_text(json.dumps([
        {"url": "http://www.freebase.com/view/en/justin_bieber", "qText": "what is the name of "
         "justin bieber brother?", "answers": ["Jazmyn Bieber", "Jaxon Bieber"]},
        {"qText": "where is  the eiffel tower?", "answers": "Paris"}]))
    items = qa.read_web_questions(web)
    assert [i.answers for i in items] == [("Jazmyn Bieber", "Jaxon Bieber"), ("Paris",)]
    assert items[1].question == "where is the eiffel tower?" and items[1].audio is None

    hf = tmp_path / "trivia_hf.jsonl"  # Hugging Face trivia_qa rows
    hf.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Which planet is the red planet?", "question_id": "tc_1",
         "answer": {"aliases": ["Mars", "Red Planet"], "normalized_aliases": ["mars"],
                    "value": "Mars", "normalized_value": "mars"}},
        {"question": "Who wrote Hamlet?", "answers": ["William Shakespeare", "Shakespeare"]},
    ]) + "\n\n")
    assert [i.answers for i in qa.read_triviaqa(hf)] == [
        ("Mars", "Red Planet"), ("William Shakespeare", "Shakespeare")]
    official = tmp_path / "trivia_official.json"  # the official release: {"Data": [...]}
    official.write_text(json.dumps({"Version": 1.0, "Data": [
        {"Question": "What is H2O?", "Answer": {"Aliases": ["Water"], "Value": "water"}}]},
        indent=2))
    assert [(i.utt_id, i.answers) for i in qa.read_triviaqa(official, prefix="tq")] == [
        ("tq-00001", ("water", "Water"))]


@pytest.mark.parametrize("fmt, content, message", [
    ("web_questions", json.dumps([{"qText": "a?", "answers": ["x"]}, {"qText": "b?"}]),
     "webq.in: item 2: no 'answers'"),
    ("web_questions", '[{"qText": "a?", "answers": ["x"]},\n {"qText": ]',
     "webq.in: line 2: not valid JSON"),
    ("triviaqa", '{"question": "a?", "answers": ["x"]}\n{"question": "b?", "answer": '
     '{"aliases": ["!!"]}}\n', "webq.in: line 2: no reference answer with a word in it"),
    ("triviaqa", '{"question": "a?", "answers": ["x"]}\nnot json\n',
     "webq.in: line 2: not valid JSON"),
    ("triviaqa", '{"question": " ", "answers": ["x"]}\n', "webq.in: line 1: empty or missing"),
])
def test_json_errors_name_file_and_row(tmp_path, fmt, content, message):
    path = tmp_path / "webq.in"
    path.write_text(content)
    with pytest.raises(qa.QASetError, match=re.escape(message)):
        qa.READERS[fmt](path)


def test_llama_questions_errors_name_file_and_row(tmp_path):
    root = tmp_path / "llama"
    write_llama(root, [("Q one?", "A", ""), ("Q two?", "B", "wavs/missing.wav")])
    with pytest.raises(qa.QASetError, match=r"llama_questions.tsv: line 3: Wav Filename "
                                            r"wavs/missing.wav: no such file"):
        qa.read_llama_questions(root)
    write_llama(root, [("Q one?", "", "")])
    with pytest.raises(qa.QASetError, match="line 2: no reference answer"):
        qa.read_llama_questions(root / "llama_questions.tsv")
    (root / "llama_questions.tsv").write_text("Question\tAnswer\nQ?\tA\n")
    with pytest.raises(qa.QASetError, match=r"line 1: the header lacks column\(s\) "
                                            r"\['Questions', 'Wav Filename'\]"):
        qa.read_llama_questions(root)


def test_tts_failures_name_the_row(tmp_path):
    web = tmp_path / "webq.json"
    web.write_text(json.dumps([{"qText": "fine?", "answers": ["x"]},
                               {"qText": "broken?", "answers": ["y"]}]))
    items = qa.read_web_questions(web)
    failing = "[ {text} != 'broken?' ] && sox -n -r 16000 {wav} synth 0.3 sine 200"
    with pytest.raises(RuntimeError, match=r"webq.json: item 2: utterance web_questions-00002: "
                                           r"the TTS command failed"):
        qa.prepare_question_set(items, tmp_path / "d", refs=tmp_path / "r.jsonl",
                                tts_cmd=failing, num_workers=1)
    with pytest.raises(ValueError, match=r"must contain \{wav\}"):
        qa.prepare_question_set(items, tmp_path / "d", tts_cmd="say {text}")
    with pytest.raises(SystemExit, match="--refs is required"):
        prepare_qa_eval_set.main(["--format", "triviaqa", "--input", str(web),
                                  "--data_dir", str(tmp_path / "d")])


def test_espeak_default_dialog_turns_and_resume(tmp_path):
    dialogs = tmp_path / "dialogs.jsonl"
    dialogs.write_text("\n".join(json.dumps(d) for d in [
        {"id": "d1", "turns": [{"role": "user", "content": "hello there"},
                               {"role": "assistant", "content": "hi"},
                               {"role": "user", "content": "what time is it"},
                               {"role": "assistant", "content": "noon"}]},
        {"id": "d2", "turns": [{"role": "user", "content": "name a colour"},
                               {"role": "assistant", "content": "blue"}]}]) + "\n")
    items = qa.read_dialog_questions(dialogs)
    assert [(i.utt_id, i.question) for i in items] == [
        ("d1-t1", "hello there"), ("d1-t2", "what time is it"), ("d2-t1", "name a colour")]
    counts = qa.prepare_question_set(items, tmp_path / "qa_train", vary_voices=True)
    assert counts == dict(questions=3, recorded=0, synthesized=3, reused=0)
    check_set(tmp_path / "qa_train")
    assert not (tmp_path / "qa_train").joinpath("refs.jsonl").exists()
    # an interrupted run resumes: finished wavs are kept
    (tmp_path / "qa_train/wav/d2-t1.wav").unlink()
    counts = qa.prepare_question_set(items, tmp_path / "qa_train", vary_voices=True)
    assert counts["reused"] == 2 and counts["synthesized"] == 1
    check_set(tmp_path / "qa_train")


# ----------------------------------------------------------------------- the recipe
LIBRI_PARTS = ("train-clean-100", "train-clean-360", "train-other-500", "dev-clean",
               "dev-other", "test-clean", "test-other")


def fake_librispeech(root: Path):
    """2 speakers x 1 chapter x 2 utterances per part, flac made by sox."""
    n = 0
    for p, part in enumerate(LIBRI_PARTS):
        for speaker in (19 + p * 100, 26 + p * 100):
            chapter = 198 + p
            d = root / "LibriSpeech" / part / str(speaker) / str(chapter)
            lines = []
            for u in range(2):
                utt = f"{speaker}-{chapter}-{u:04d}"
                tone(d / f"{utt}.flac", 0.3 + 0.1 * u, fmt="flac")
                lines.append(f"{utt} WORD{n} AND MORE WORDS")
                n += 1
            (d / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")


MOSS_RECORDS = [
    {"conversation_id": 1, "category": "advice_en", "num_turns": 2, "chat": {
        "turn_1": {"Human": "<|Human|>: How do I boil an egg?<eoh>\n",
                   "Inner Thoughts": "<|Inner Thoughts|>: None<eot>\n",
                   "Commands": "<|Commands|>: None<eoc>\n",
                   "Tool Responses": "<|Results|>: None<eor>\n",
                   "MOSS": "<|MOSS|>: Put it in boiling water for nine minutes.<eom>\n"},
        "turn_2": {"Human": "<|Human|>: And a soft one?<eoh>\n",
                   "Commands": "<|Commands|>: None<eoc>\n",
                   "MOSS": "<|MOSS|>: Six minutes.<eom>\n"}}},
    {"conversation_id": 2, "category": "tool_en", "num_turns": 1, "chat": {
        "turn_1": {"Human": "<|Human|>: Weather in Paris?<eoh>\n",
                   "Commands": "<|Commands|>: Search(\"weather Paris\")<eoc>\n",
                   "MOSS": "<|MOSS|>: It is sunny.<eom>\n"}}},
    {"conversation_id": 3, "category": "harmless_zh", "num_turns": 1, "chat": {
        "turn_1": {"Human": "<|Human|>: 你好<eoh>\n", "MOSS": "<|MOSS|>: 你好！<eom>\n"}}},
]


@pytest.fixture(scope="module")
def fake_corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpora")
    fake_librispeech(root / "librispeech")
    (root / "moss.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                             for r in MOSS_RECORDS))
    tone(root / "llama" / "q1.wav", 0.5)
    write_llama(root / "llama", [("Who painted the Mona Lisa?", "Leonardo da Vinci", "q1.wav"),
                                 ("What is two plus two?", "4", "")])
    (root / "webq.json").write_text(json.dumps([
        {"qText": "what language do they speak in brazil?", "answers": ["Portuguese"]}]))
    (root / "trivia.jsonl").write_text(json.dumps(
        {"question": "Which element has the symbol O?",
         "answer": {"aliases": ["Oxygen"], "value": "Oxygen"}}) + "\n")
    script = root / "fake_tts.sh"
    script.write_text(FAKE_TTS)
    script.chmod(0o755)
    return root


def write_db(recipe: Path, root: Path, **overrides):
    values = dict(LIBRISPEECH=root / "librispeech", MOSS_SFT=root / "moss.jsonl",
                  CODEC_CORPUS="", LLAMA_QUESTIONS=root / "llama", WEB_QUESTIONS=root / "webq.json",
                  TRIVIAQA=root / "trivia.jsonl", QWEN2_7B_INSTRUCT="",
                  TTS_CMD=f"'{root}/fake_tts.sh {{text}} {{wav}}'")
    values.update(overrides)
    (recipe / "db.sh").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


def test_librispeech_moss_stages_1_to_4_on_fake_corpora(tmp_path, fake_corpora):
    recipe = recipe_copy(tmp_path, "librispeech_moss")
    write_db(recipe, fake_corpora)
    proc = bash("./run.sh --stage 1 --stop_stage 4 --nj 2 --local_data_opts '--nj 2'", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for n in (1, 2, 3, 4):
        assert re.search(banner(n), proc.stdout, re.M), n
    sizes = {s: len(kt.read_kaldi_map(recipe / "data" / s / "utt2spk")) for s in (
        "train_960", "dev", "dev_clean", "test_other", "qa_train", "llama_questions",
        "web_questions", "triviaqa")}
    assert sizes == dict(train_960=12, dev=8, dev_clean=4, test_other=4, qa_train=2,
                         llama_questions=2, web_questions=1, triviaqa=1)
    for s in ("train_960", "test_clean"):
        assert validation.validate_data_dir(recipe / "data" / s, check_audio=True,
                                    sample_rate=16000) == []
    assert kt.read_kaldi_map(recipe / "data/train_960/utt2spk")["19-198-0000"] == "19-198"
    assert kt.read_kaldi_map(recipe / "data/test_clean/text")["519-203-0001"] == \
        "WORD21 AND MORE WORDS"
    # moss: the tool-using and the Chinese dialogs are dropped, the English one kept whole
    dialogs = [json.loads(l) for l in (recipe / "data/local/moss/qa_train.jsonl").open()]
    assert dialogs == [{"id": "moss-1", "turns": [
        {"role": "user", "content": "How do I boil an egg?"},
        {"role": "assistant", "content": "Put it in boiling water for nine minutes."},
        {"role": "user", "content": "And a soft one?"},
        {"role": "assistant", "content": "Six minutes."}]}]
    assert "1 used tools, 1 not en" in proc.stdout
    assert kt.read_kaldi_map(recipe / "data/qa_train/text") == {
        "moss-1-t1": "How do I boil an egg?", "moss-1-t2": "And a soft one?"}
    for s, n in (("llama_questions", 2), ("web_questions", 1), ("triviaqa", 1)):
        refs = check_set(recipe / "data" / s, recipe / f"data/local/qa_eval/{s}_refs.jsonl")
        assert len(refs) == n
    # the TTS of db.sh spoke every question without a recording, and nothing else
    calls = (fake_corpora / "tts_calls.txt").read_text().splitlines()
    assert sorted(calls) == sorted(["How do I boil an egg?", "And a soft one?",
                                    "What is two plus two?",
                                    "what language do they speak in brazil?",
                                    "Which element has the symbol O?"])
    # stages 2-4: the flacs dumped as 16 kHz wav, speed perturbation of train_960
    assert len(kt.read_kaldi_map(recipe / "dump/raw16k/train_960_sp/utt2spk")) == 36
    assert len(kt.read_kaldi_map(recipe / "dump/raw16k/triviaqa/turn_info")) == 1

    proc = bash("bash local/data.sh", recipe, check=True)  # done parts are kept
    assert proc.stdout.count(" is done") == 4 and "LibriSpeech dirs are done" in proc.stdout


@pytest.mark.parametrize("override, message", [
    (dict(LIBRISPEECH=""), "LIBRISPEECH is empty in db.sh: set it to the LibriSpeech root"),
    (dict(MOSS_SFT="/nowhere/moss.jsonl"), "MOSS_SFT=/nowhere/moss.jsonl (db.sh) does not exist"),
    (dict(TRIVIAQA=""), "TRIVIAQA is empty in db.sh"),
    (dict(CODEC_CORPUS="/nowhere/libritts"), "CODEC_CORPUS=/nowhere/libritts (db.sh) is not a "
                                             "directory"),
])
def test_librispeech_moss_names_the_missing_db_variable(tmp_path, fake_corpora, override,
                                                        message):
    recipe = recipe_copy(tmp_path, "librispeech_moss")
    write_db(recipe, fake_corpora, **override)
    proc = bash("bash local/data.sh", recipe)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert not (recipe / "data").exists()  # checked before anything runs


def test_librispeech_moss_missing_part(tmp_path, fake_corpora):
    recipe = recipe_copy(tmp_path, "librispeech_moss")
    write_db(recipe, fake_corpora)
    proc = bash("bash local/data.sh --train_parts 'train-clean-100 train-other-960'", recipe)
    assert proc.returncode == 1
    assert f"LIBRISPEECH={fake_corpora / 'librispeech'} (db.sh) has no train-other-960/" in \
        proc.stderr
