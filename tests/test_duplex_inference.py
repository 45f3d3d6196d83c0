"""bin/duplex_inference (stage 15's duplex decoding) and --speak_ignored in session mode, on
the untrained tiny models of test_speech2speech with a scripted state head
(test_duplex_session's): what is checked is plumbing (files, durations, which turns are
answered and voiced), never what is said."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from test_duplex_session import scripted_head  # noqa: F401 (fixture)
from test_speech2speech import REPO, s2s, work  # noqa: F401 (fixtures)

from espnet_freeze_omni.models.speech_input import STATE_IGNORE, STATE_LISTEN, STATE_RESPOND

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RATE = 16000


def new_turn_heard(seconds, state):
    """A script: `state` once a new turn (not a barge-in) has been heard `seconds`; the state
    may be a function of the session (e.g. of the turns it has answered)."""
    def script(session):
        branch = session.listening
        if branch.fork_voiced is None and branch.fed_samples >= seconds * RATE:
            return state(session) if callable(state) else state
        return STATE_LISTEN
    return script


def kaldi(text: str) -> dict:
    return dict((line.split(" ", 1) + [""])[:2] for line in text.splitlines())


# ---------------------------------------------------------------------------- speak_ignored
def test_speak_ignored_in_session_mode_voices_the_ignored_turn_only(s2s, work, scripted_head):
    """history_mode session: a turn the state head ignores has no answer in its dialog; with
    --speak_ignored it is answered on a copy of the dialog and voiced, and nothing else of
    the decoding changes (speech_in, turn, the other turns' speech_out)."""
    from espnet_freeze_omni.bin.speech2speech_inference import Questions, TestSetDecoder

    # the dialog's first turn is answered, its second ignored
    scripted_head(new_turn_heard(
        0.8, lambda session: STATE_RESPOND if not session.turns else STATE_IGNORE))
    wavs = {u: str(work["data"] / "wav" / f"{u}.wav") for u in ("d1-t1", "d1-t2")}
    outputs = ["speech_in", "speech_out", "turn"]
    got = {}
    for speak_ignored in (False, True):
        decoder = TestSetDecoder(s2s, wavs, Questions(None, work["data"]), "session", 1,
                                 speak_ignored=speak_ignored, session_conf=dict(vad=False))
        files = {n: io.StringIO() for n in ("speech_in", "speech_out", "speech_out_asr",
                                             "turn")}
        wav_dir = work["root"] / f"ignored_wavs_{speak_ignored}"
        wav_dir.mkdir(exist_ok=True)
        for utt in wavs:
            decoder.decode_utterance(utt, outputs, files, wav_dir)
        got[speak_ignored] = ({n: kaldi(f.getvalue()) for n, f in files.items()},
                              {p.stem: soundfile.read(p, dtype="float32")[0]
                               for p in wav_dir.glob("*.wav")}, decoder)
    (quiet, quiet_wavs, quiet_dec), (loud, loud_wavs, loud_dec) = got[False], got[True]
    assert {u: v.split()[0] for u, v in quiet["turn"].items()} == {"d1-t1": "1", "d1-t2": "2"}
    assert quiet["turn"] == loud["turn"] and quiet["speech_in"] == loud["speech_in"]
    assert quiet["speech_in"]["d1-t1"] and quiet["speech_in"]["d1-t2"] == ""
    assert sorted(quiet["speech_out"]) == sorted(quiet_wavs) == ["d1-t1"]
    assert quiet_dec.silent == ["d1-t2"] and quiet_dec.voiced_ignored == []
    assert sorted(loud["speech_out"]) == sorted(loud_wavs) == ["d1-t1", "d1-t2"]
    assert loud_dec.silent == [] and loud_dec.voiced_ignored == ["d1-t2"]
    assert loud["speech_out"]["d1-t1"] == quiet["speech_out"]["d1-t1"]
    np.testing.assert_array_equal(loud_wavs["d1-t1"], quiet_wavs["d1-t1"])
    assert loud["speech_out"]["d1-t2"] and len(loud_wavs["d1-t2"]) > 0
    assert sorted(loud["speech_out_asr"]) == ["d1-t1", "d1-t2"]


# ---------------------------------------------------------------------------- duplex_inference
def bin_cmd(work, out: Path, *extra):
    return ["--config", str(REPO / "conf/decode.yaml"),  # the QA decode config, shared
            "--llm_conf", f"path={work['llm']}",
            "--speech_input_model", str(work["speech_input"]),
            "--speech_output_model", str(work["speech_output"]),
            "--codec_dir", str(work["codec"]),
            "--data_path_and_name_and_type", f"{work['data']}/wav.scp,speech,sound",
            "--output_dir", str(out), "--max_new_tokens", "8", "--max_codec_tokens", "30",
            "--speak_ignored", "true", *extra]


def test_duplex_inference_writes_tracks_events_and_summary(s2s, work, scripted_head,
                                                           tmp_path, monkeypatch):
    from espnet_freeze_omni.bin import duplex_inference
    from espnet_freeze_omni.scoring.duplex import heard_answers, read_events

    scripted_head(new_turn_heard(0.5, STATE_RESPOND))
    # the scripted head is the fixture model's: decode with it (the files hold the same)
    monkeypatch.setattr(duplex_inference, "build_speech2speech", lambda args: s2s)
    keys = ["d1-t2", "solo"]
    (tmp_path / "keys.scp").write_text("".join(f"{k} x\n" for k in keys))
    out = tmp_path / "out"
    duplex_inference.main(bin_cmd(work, out, "--key_file", str(tmp_path / "keys.scp"),
                                  "--clock", "audio", "--session_conf", "vad=false"))
    summary = {u: json.loads(v) for u, v in kaldi((out / "summary").read_text()).items()}
    assert sorted(summary) == sorted(p.stem for p in (out / "wav").iterdir()) == keys
    for utt in keys:
        wav, _ = soundfile.read(work["data"] / "wav" / f"{utt}.wav", dtype="float32")
        track, rate = soundfile.read(out / "wav" / f"{utt}.wav", dtype="float32")
        # Full-Duplex-Bench: the output has the input's duration, at the codec's rate
        assert rate == 24000 and len(track) == round(len(wav) / RATE * 24000)
        s = summary[utt]
        assert s["duration"] == pytest.approx(len(wav) / RATE) and s["clock"] == "audio"
        assert s["answers"] and s["answers"][0]["id"] == 1 and s["spans"]
        events = read_events(out / "events" / f"{utt}.jsonl")
        assert {"state", "turn_ended", "text", "audio"} <= {e["type"] for e in events}
        # the scorer's reading of events.jsonl gives the summary's spans (speech_spans),
        # clipped to the item
        heard = [[a.onset, a.end, a.id] for a in heard_answers(events, s["duration"])
                 if a.onset is not None]
        spans = [[lo, min(hi, s["duration"]), a] for lo, hi, a in s["spans"]
                 if lo < s["duration"]]
        np.testing.assert_allclose(np.array(heard), np.array(spans), atol=1e-3)
        # the track holds the assistant's speech where it was heard, silence elsewhere
        lo, hi = round(spans[0][0] * 24000), round(spans[0][1] * 24000)
        assert not track[:lo].any() and track[lo:hi].any()

    # clock audio is deterministic: the same item alone gives the same track
    alone = tmp_path / "alone"
    (tmp_path / "one.scp").write_text("solo x\n")
    duplex_inference.main(bin_cmd(work, alone, "--key_file", str(tmp_path / "one.scp"),
                                  "--clock", "audio", "--session_conf", "vad=false"))
    np.testing.assert_array_equal(soundfile.read(alone / "wav/solo.wav")[0],
                                  soundfile.read(out / "wav/solo.wav")[0])


def test_duplex_inference_names_a_bad_key(work, tmp_path):
    from espnet_freeze_omni.bin import duplex_inference

    (tmp_path / "keys.scp").write_text("solo x\nnobody x\n")
    with pytest.raises(KeyError, match=r"nobody \(.*keys\.scp:2\) is not in"):
        duplex_inference.main(bin_cmd(work, tmp_path / "o", "--key_file",
                                      str(tmp_path / "keys.scp")))


def test_every_test_set_decoding_option_is_accepted():
    """Stage 15 gives the duplex decoding the QA sets' --config and --decode_args."""
    from espnet_freeze_omni.bin import duplex_inference, speech2speech_inference

    ours = duplex_inference.get_parser()._option_string_actions
    theirs = speech2speech_inference.get_parser()._option_string_actions
    assert sorted(set(theirs) - set(ours)) == []
