"""The duplex test-set generator (data/duplex_sets.py): plans, audio, duplex_info."""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import speech_end
from espnet_freeze_omni.data import validation
from espnet_freeze_omni.data import duplex_sets as ds

QUESTIONS = ["What is the capital of Zorvia?", "Where does Anna Roul live?",
             "How old is Tom Brask?", "What color does Mia like best?",
             "Which language is spoken in Goulium?"]
SIDE_TALK = ["Hey Sam, pass me the salt.", "Wait a second Ben, I'm on the phone."]


# ---------------------------------------------------------------------------- plans
def test_plan_is_deterministic_and_has_every_scenario():
    a = ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=3, seed=1)
    assert a == ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=3, seed=1)
    assert a != ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=3, seed=2)
    assert [i.utt_id for i in a] == [f"{s}-{n:04d}" for s in ds.SCENARIOS for n in (1, 2, 3)]
    for item in a:
        if item.scenario == "pause":
            k, seconds = item.pause
            assert 0 < k < len(item.text.split())
            assert ds.PAUSE_SECONDS[0] <= seconds <= ds.PAUSE_SECONDS[1]
        else:
            assert item.pause is None
        if item.scenario == "interruption":
            assert item.interrupt_text in QUESTIONS and item.interrupt_text != item.text
        else:
            assert item.interrupt_text is None
        if item.scenario == "side_talk_over_answer":
            assert item.side_talk_text in SIDE_TALK and item.second_text == item.side_talk_text
        else:
            assert item.side_talk_text is None
        assert item.text in (SIDE_TALK if item.scenario == "side_talk" else QUESTIONS)
    # questions are drawn without repeats until all were used: 3 pause + 3 smooth use 5+1
    used = [i.text for i in a if i.scenario in ("pause", "smooth")]
    assert sorted(set(used[:5])) == sorted(QUESTIONS)


# what plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=2, seed=3) planned before
# side_talk_over_answer was added: (utt, text index, voice, pause, interrupt_text index)
PLAN_BEFORE_SIDE_TALK_OVER_ANSWER = [
    ("pause-0001", 3, 931190, (4, 1.06), None),
    ("pause-0002", 0, 1037769, (3, 1.47), None),
    ("smooth-0001", 2, 424, None, None),
    ("smooth-0002", 1, 947424, None, None),
    ("interruption-0001", 4, 413576, None, 0),
    ("interruption-0002", 1, 86910, None, 3),
    ("side_talk-0001", 0, 834058, None, None),
    ("side_talk-0002", 1, 925542, None, None),
]


def test_side_talk_over_answer_leaves_the_other_scenarios_as_they_were():
    every = ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=2, seed=3)
    old = [i for i in every if i.scenario != "side_talk_over_answer"]
    texts = lambda i: SIDE_TALK if i.scenario == "side_talk" else QUESTIONS  # noqa: E731
    assert [(i.utt_id, texts(i).index(i.text), i.voice_index, i.pause,
             None if i.interrupt_text is None else QUESTIONS.index(i.interrupt_text))
            for i in old] == PLAN_BEFORE_SIDE_TALK_OVER_ANSWER
    # with or without it in the scenarios, the others are the same, and it is the same
    # whichever others come with it
    without = [s for s in ds.SCENARIOS if s != "side_talk_over_answer"]
    assert ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=2, seed=3,
                              scenarios=without) == old
    alone = ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=2, seed=3,
                               scenarios=["side_talk_over_answer"])
    assert alone == [i for i in every if i.scenario == "side_talk_over_answer"]
    assert [i.utt_id for i in alone] == ["side_talk_over_answer-0001",
                                         "side_talk_over_answer-0002"]
    # num_items is per scenario: it adds num_items items
    assert len(every) == 2 * len(ds.SCENARIOS) == len(old) + 2
    # its questions and side talk are drawn without repeats from decks of its own
    many = ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=5, seed=3,
                              scenarios=["side_talk_over_answer"])
    assert sorted(i.text for i in many) == sorted(QUESTIONS)
    assert sorted(i.side_talk_text for i in many[:2]) == sorted(SIDE_TALK)


def test_plan_subset_and_errors():
    only = ds.plan_duplex_set(QUESTIONS, [], num_items=2, scenarios=["smooth"])
    assert [i.scenario for i in only] == ["smooth", "smooth"]
    with pytest.raises(ValueError, match="unknown duplex scenario"):
        ds.plan_duplex_set(QUESTIONS, SIDE_TALK, scenarios=["backchannel"])
    with pytest.raises(ValueError, match="num_items must be >= 1"):
        ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=0)
    with pytest.raises(ValueError, match="2 words or more"):
        ds.plan_duplex_set(["Hello?"], SIDE_TALK, num_items=1, scenarios=["pause"])
    with pytest.raises(ValueError, match="need side-talk sentences"):
        ds.plan_duplex_set(QUESTIONS, [], num_items=1, scenarios=["side_talk_over_answer"])
    with pytest.raises(ValueError, match="need questions"):
        ds.plan_duplex_set([], SIDE_TALK, num_items=1, scenarios=["side_talk_over_answer"])


def test_text_loaders_name_the_bad_line(tmp_path):
    refs = tmp_path / "refs.jsonl"
    refs.write_text('{"id": "a", "question": "Where is Quell?"}\n\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"refs\.jsonl:3: no \"question\""):
        ds.load_questions(refs)
    refs.write_text('{"question": "Where is Quell?"}\nnot json\n')
    with pytest.raises(ValueError, match=r"refs\.jsonl:2: not a JSON line"):
        ds.load_questions(refs)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no sentences"):
        ds.load_sentences(tmp_path / "empty.txt")


# ---------------------------------------------------------------------------- audio
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("duplex")
    items = ds.plan_duplex_set(QUESTIONS, SIDE_TALK, num_items=2, seed=0)
    ds.build_duplex_set(items, root / "data", root / "wav")
    return root, items


def rms_frames(audio, rate=16000):
    hop = rate // 100
    n = len(audio) // hop
    return np.sqrt((audio[:n * hop].reshape(n, hop) ** 2).mean(axis=1))


def loud(audio, lo, hi, rate=16000):
    """Is there speech (a 10 ms frame above 2 % of the loudest) in [lo, hi) seconds?"""
    rms = rms_frames(audio, rate)
    threshold = rms.max() * speech_end.RELATIVE_THRESHOLD
    return bool((rms[int(round(lo * 100)):int(round(hi * 100))] > threshold).any())


def test_built_set_is_a_valid_data_dir(built):
    root, items = built
    data = root / "data"
    assert validation.validate_data_dir(data, check_audio=True, sample_rate=16000) == []
    infos = ds.read_duplex_info(data / "duplex_info")
    assert sorted(infos) == sorted(i.utt_id for i in items)
    text = kt.read_kaldi_map(data / "text")
    for item in items:
        info = infos[item.utt_id]
        assert info["scenario"] == item.scenario and info["text"] == item.text
        expected = item.text if item.second_text is None \
            else f"{item.text} {item.second_text}"  # A then B, or A then the side talk
        assert text[item.utt_id] == expected


def test_times_are_measured_on_the_written_audio(built):
    root, items = built
    infos = ds.read_duplex_info(root / "data" / "duplex_info")
    wavs = kt.read_kaldi_map(root / "data" / "wav.scp")
    for item in items:
        info = infos[item.utt_id]
        audio, rate = soundfile.read(wavs[item.utt_id], dtype="float32")
        assert rate == 16000
        assert info["duration"] == pytest.approx(len(audio) / rate, abs=1e-4)
        assert info["speech_end"] <= info["duration"]
        # speech right inside the bounds, none outside them
        assert loud(audio, info["speech_start"], info["speech_start"] + 0.01)
        assert not loud(audio, 0, info["speech_start"])
        last = info.get("interrupt_end", info.get("side_talk_end", info["speech_end"]))
        assert loud(audio, last - 0.01, last) and not loud(audio, last, info["duration"])
        if item.scenario not in ds.OVERLAID:
            assert info["speech_end"] == speech_end.speech_end_seconds(wavs[item.utt_id])
        trailing = info["duration"] - last
        if item.scenario == "pause":
            assert not loud(audio, info["pause_start"], info["pause_end"])
            assert loud(audio, info["pause_start"] - 0.01, info["pause_start"])
            assert loud(audio, info["pause_end"], info["pause_end"] + 0.01)
            # the measured pause holds the planned silence (plus espeak-ng's own edges)
            assert info["pause_end"] - info["pause_start"] >= item.pause[1]
            assert info["nominal_pause"] == item.pause[1]
            assert trailing == pytest.approx(ds.PAUSE_TRAILING, abs=0.02)
        elif item.scenario == "interruption":
            assert info["interrupt_text"] == item.interrupt_text
            assert not loud(audio, info["speech_end"], info["interrupt_start"])
            assert loud(audio, info["speech_end"] - 0.01, info["speech_end"])
            assert info["interrupt_start"] - info["speech_end"] == \
                pytest.approx(ds.INTERRUPT_GAP, abs=0.05)
            assert trailing == pytest.approx(ds.INTERRUPT_TRAILING, abs=0.02)
        elif item.scenario == "side_talk_over_answer":
            # question A, then the side talk where the answer to A would be playing
            assert info["side_talk_text"] == item.side_talk_text
            assert "interrupt_start" not in info and "interrupt_text" not in info
            assert not loud(audio, info["speech_end"], info["side_talk_start"])
            assert loud(audio, info["speech_end"] - 0.01, info["speech_end"])
            assert loud(audio, info["side_talk_start"], info["side_talk_start"] + 0.01)
            assert info["side_talk_start"] - info["speech_end"] == \
                pytest.approx(ds.INTERRUPT_GAP, abs=0.05)
            assert trailing == pytest.approx(ds.SIDE_TALK_OVER_ANSWER_TRAILING, abs=0.02)
        else:
            want = ds.SMOOTH_TRAILING if item.scenario == "smooth" else ds.SIDE_TALK_TRAILING
            assert trailing == pytest.approx(want, abs=0.02)


def test_build_is_deterministic(built, tmp_path):
    root, items = built
    ds.build_duplex_set(items[::3], tmp_path / "data", tmp_path / "wav")
    again = ds.read_duplex_info(tmp_path / "data" / "duplex_info")
    first = ds.read_duplex_info(root / "data" / "duplex_info")
    for item in items[::3]:
        assert again[item.utt_id] == first[item.utt_id]
        assert (tmp_path / "wav" / f"{item.utt_id}.wav").read_bytes() == \
            (root / "wav" / f"{item.utt_id}.wav").read_bytes()


def test_command_line(tmp_path, capsys):
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"id": f"q{i}", "question": q}) + "\n"
                            for i, q in enumerate(QUESTIONS)))
    (tmp_path / "side.txt").write_text("\n".join(SIDE_TALK) + "\n")
    assert ds.main(["--refs", str(refs), "--side_talk", str(tmp_path / "side.txt"),
                    "--out", str(tmp_path / "dx"), "--num_items", "1",
                    "--scenarios", "smooth", "side_talk", "--nj", "1"]) == 0
    assert "2 items (smooth 1, side_talk 1)" in capsys.readouterr().out
    assert sorted(kt.read_kaldi_map(tmp_path / "dx/wav.scp")) == \
        ["side_talk-0001", "smooth-0001"]
    assert (tmp_path / "dx" / "wav" / "smooth-0001.wav").is_file()


# ---------------------------------------------------------------------------- duplex_info
GOOD = dict(scenario="pause", speech_start=0.1, pause_start=1.0, pause_end=2.2,
            speech_end=3.0, duration=6.0)


@pytest.mark.parametrize("value, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "must be a JSON object"),
    (dict(GOOD, scenario="chat"), "scenario must be one of"),
    ({k: v for k, v in GOOD.items() if k != "pause_end"}, "pause_end must be a number"),
    (dict(GOOD, speech_start=-0.5), "speech_start must be a number of seconds >= 0"),
    (dict(GOOD, duration=True), "duration must be a number"),
    (dict(GOOD, duration=float("nan")), "duration must be a number"),
    (dict(GOOD, pause_end=0.5), "times must satisfy speech_start <= pause_start"),
    (dict(scenario="interruption", speech_start=0, speech_end=2, interrupt_start=1.5,
          interrupt_end=3, duration=5), "speech_end <= interrupt_start"),
    (dict(scenario="side_talk_over_answer", speech_start=0, speech_end=2, side_talk_start=3.6,
          duration=8), "side_talk_end must be a number"),
    (dict(scenario="side_talk_over_answer", speech_start=0, speech_end=2, side_talk_start=3.6,
          side_talk_end=3.0, duration=8), "side_talk_start <= side_talk_end"),
])
def test_check_duplex_info_rejects(value, message):
    text = value if isinstance(value, str) else json.dumps(value)
    assert message in ds.check_duplex_info(text)


def test_check_duplex_info_accepts_each_scenario():
    assert ds.check_duplex_info(json.dumps(GOOD)) is None
    assert ds.check_duplex_info(dict(scenario="smooth", speech_start=0, speech_end=1.5,
                                     duration=5.5)) is None
    assert ds.check_duplex_info(dict(scenario="side_talk_over_answer", speech_start=0.1,
                                     speech_end=2.0, side_talk_start=3.6, side_talk_end=5.4,
                                     duration=9.4)) is None


def test_a_bad_line_is_named_by_file_line_and_item(tmp_path):
    path = tmp_path / "duplex_info"
    path.write_text(f"pause-0001 {json.dumps(GOOD)}\n"
                    f"pause-0002 {json.dumps(dict(GOOD, pause_end=0.5))}\n")
    with pytest.raises(ValueError, match=r"duplex_info:2: \[pause-0002\] pause: times must"):
        ds.read_duplex_info(path)
    # the data-dir validator reports it too, and fix_data_dir would drop that item
    data = tmp_path / "data"
    data.mkdir()
    for name in ("a", "b"):
        soundfile.write(data / f"{name}.wav", np.zeros(16000, dtype=np.float32), 16000)
    (data / "wav.scp").write_text(f"pause-0001 {data / 'a.wav'}\npause-0002 {data / 'b.wav'}\n")
    (data / "text").write_text("pause-0001 x\npause-0002 y\n")
    (data / "utt2spk").write_text("pause-0001 s\npause-0002 s\n")
    (data / "spk2utt").write_text("s pause-0001 pause-0002\n")
    (data / "duplex_info").write_text(path.read_text())
    problems = validation.validate_data_dir(data)
    assert len(problems) == 1, problems
    assert "duplex_info:2" in str(problems[0]) and "pause-0002" in str(problems[0])
