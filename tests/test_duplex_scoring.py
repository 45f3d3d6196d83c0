"""scoring/duplex.py on hand-built session events with known answers for every metric.

Events are dicts as bin/duplex_inference writes them (SessionEvent.to_dict): the assistant's
answers are placed by hand (play times, cuts, decisions), so every take-over, onset and
latency below is known without running a model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from espnet_freeze_omni.scoring import duplex as dx

PAUSE = dict(scenario="pause", speech_start=0.2, pause_start=1.0, pause_end=2.5,
             speech_end=3.2, duration=6.2)
SMOOTH = dict(scenario="smooth", speech_start=0.1, speech_end=2.0, duration=6.0)
INTER = dict(scenario="interruption", speech_start=0.0, speech_end=1.8, interrupt_start=3.4,
             interrupt_end=5.4, duration=9.4)
SIDE = dict(scenario="side_talk", speech_start=0.1, speech_end=2.1, duration=5.1)
OVER = dict(scenario="side_talk_over_answer", speech_start=0.1, speech_end=2.0,
            side_talk_start=3.6, side_talk_end=5.4, duration=9.4)


# ---------------------------------------------------------------------------- event builders
def ended(time, heard_input=None):
    return {"type": "turn_ended", "time": time, "audio_time": heard_input or time,
            "opened_at": 0.0, "forced": False, "heard_seconds": 1.0}


def speech(answer, start, seconds, packet=0.5):
    """Back-to-back audio packets of `answer` from `start` for `seconds`."""
    events, t = [], start
    while t < start + seconds - 1e-9:
        d = min(packet, start + seconds - t)
        events.append({"type": "audio", "time": t, "audio_time": t, "answer_id": answer,
                       "segment": 0, "play_at": round(t, 4), "duration": round(d, 4),
                       "samples": int(d * 24000)})
        t += d
    return events


def done(answer, text, at=0.0, status="completed"):
    return {"type": "answer_done", "time": at, "audio_time": at, "answer_id": answer,
            "status": status, "text": text, "tokens": len(text.split())}


def cut(answer, at, voiced_text):
    return {"type": "interrupted", "time": at, "audio_time": at, "answer_id": answer,
            "voiced_text": voiced_text, "voiced_tokens": 3, "heard_seconds": 1.0}


def paused(answer, at):
    return {"type": "paused", "time": at, "audio_time": at, "answer_id": answer}


def resumed(answer, at):
    return {"type": "resumed", "time": at, "audio_time": at, "answer_id": answer}


def answer(k, decided, onset, seconds, text="The capital of Zorvia is Quell.",
           heard_input=None):
    """Answer k decided at `decided`, heard from `onset` for `seconds`."""
    return [ended(decided, heard_input)] + speech(k, onset, seconds) + \
        [done(k, text, onset + seconds)]


# ---------------------------------------------------------------------------- heard answers
def test_heard_spans_are_cut_at_barge_in_and_clipped_to_the_item():
    events = answer(1, 2.2, 2.4, 3.0) + [cut(1, 3.65, "The capital")] + \
        answer(2, 7.0, 7.2, 4.0)
    a1, a2 = dx.heard_answers(events, duration=9.0)
    assert (a1.id, a1.onset, a1.end) == (1, 2.4, 3.65)
    assert a1.interrupted and a1.words == 2  # what was voiced, not the whole text
    assert a1.heard_seconds == pytest.approx(1.25) and a1.takes_turn
    assert (a2.onset, a2.end) == (7.2, 9.0)  # the output track ends with the input
    assert (a2.decided_at, a2.heard_input) == (7.0, 7.0) and not a2.interrupted
    assert a2.words == 2  # 6 words, 1.8 of its 4 s heard: 2.7, whole words


def test_an_answer_heard_after_the_item_or_too_short_takes_no_turn():
    late = answer(1, 5.8, 6.3, 2.0)  # decided in time, first heard after the end
    (a,) = dx.heard_answers(late, duration=6.0)
    assert a.onset is None and a.heard_seconds == 0.0 and not a.takes_turn
    # Full-Duplex-Bench: under 1 s AND at most 3 words is no turn (a backchannel)
    (short,) = dx.heard_answers(answer(1, 1.0, 1.2, 0.6, text="Mm, yes."), duration=6.0)
    assert not short.takes_turn
    (wordy,) = dx.heard_answers(answer(1, 1.0, 1.2, 0.6, text="It is in Paris."), 6.0)
    assert wordy.takes_turn  # 4 words
    (long,) = dx.heard_answers(answer(1, 1.0, 1.2, 1.0, text="Quell."), 6.0)
    assert long.takes_turn  # 1 s
    # words count as far as they were heard before the item ended: 8 words over 4 s, 0.5 s
    # of them heard
    (clipped,) = dx.heard_answers(
        answer(1, 5.4, 5.5, 4.0, text="one two three four five six seven eight"), 6.0)
    assert clipped.words == 1 and clipped.heard_seconds == 0.5 and not clipped.takes_turn


def paused_and_resumed():
    """Answer 1 sent to play from 2.4 to 5.4 in 0.5 s packets, paused at 3.8 (the packets
    sent to play after it are taken back), resumed at 4.7: its unplayed 1.6 s sent again
    from 4.8 to 6.4."""
    return [ended(2.2)] + speech(1, 2.4, 3.0) + [paused(1, 3.8), resumed(1, 4.7)] + \
        speech(1, 4.8, 1.6) + [done(1, "The capital of Zorvia is Quell.", 6.4)]


def session_events(events):
    from espnet_freeze_omni.inference.duplex_session import SessionEvent

    return [SessionEvent(e["type"], e["time"], e["audio_time"],
                         {k: v for k, v in e.items()
                          if k not in ("type", "time", "audio_time", "samples")})
            for e in events]


def test_spans_agree_with_the_duplex_runner():
    """The scorer reads events.jsonl; its spans are duplex_runner.speech_spans's rule."""
    from espnet_freeze_omni.inference.duplex_runner import speech_spans

    events = answer(1, 2.2, 2.4, 3.0) + [cut(1, 3.65, "The capital")] + \
        answer(2, 4.0, 4.1, 2.5)
    expected = speech_spans(session_events(events))
    got = [(a.onset, a.end, a.id) for a in dx.heard_answers(events, duration=100.0)]
    assert len(expected) == 2
    np.testing.assert_allclose(np.array(got), np.array(expected))
    # a paused and resumed answer too
    events = paused_and_resumed()
    got = [(a.onset, a.end, a.id) for a in dx.heard_answers(events, duration=100.0)]
    np.testing.assert_allclose(np.array(got), np.array(speech_spans(session_events(events))))


def test_a_paused_answer_is_not_heard_from_the_pause_to_its_resumed_audio():
    from espnet_freeze_omni.inference.duplex_runner import heard_packets

    events = paused_and_resumed()
    pause_index = events.index(paused(1, 3.8))
    # sent before the pause: heard up to 3.8 at most; nothing heard from 3.8 to 4.8
    packets = heard_packets(events)
    assert max(end for _, _, end, i in packets if i < pause_index) == pytest.approx(3.8)
    assert not [p for p in packets if p[1] < 4.8 and p[2] > 3.8]
    assert sum(end - start for _, start, end, _ in packets) == pytest.approx(3.0)
    (a,) = dx.heard_answers(events, duration=9.4)
    assert (a.onset, a.end) == pytest.approx((2.4, 6.4)) and a.pauses == [[3.8, 4.7]]
    assert not a.interrupted and not a.left_paused and a.takes_turn and a.words == 6
    # the item ends in the pause: the audio sent to play beyond 3.8 before it was not heard
    (short,) = dx.heard_answers(events, duration=4.5)
    assert (short.onset, short.end) == pytest.approx((2.4, 3.8))
    assert short.words == 2  # 6 words, 1.4 of its 4.0 s heard extent heard: 2.1
    # the item's outcome: the answer to A was kept through the side talk
    o = dx.score_item(OVER, events)
    assert o["kept"] and o["overlapped"] and o["paused"] and o["resumed"]
    assert o["pause_seconds"] == pytest.approx(0.9) and not o["cut"] and not o["take_over"]
    # paused by an interruption and then cut: it stopped being heard at the pause
    events = answer(1, 2.1, 2.3, 3.0)[:-1] + [paused(1, 3.55), cut(1, 4.4, "The capital")] + \
        answer(2, 5.6, 5.75, 2.0, heard_input=5.6)
    o = dx.score_item(INTER, events)
    assert o["overlapped"] and o["cut"] and o["stop_latency"] == pytest.approx(0.15)
    assert o["take_over"] and o["latency"] == pytest.approx(0.35)


def test_malformed_events_are_named():
    with pytest.raises(ValueError, match=r"item-7\.jsonl\[1\].*'audio' event without 'play_at'"):
        dx.heard_answers([ended(1.0), {"type": "audio", "answer_id": 1, "duration": 0.5}],
                         5.0, where="item-7.jsonl")
    with pytest.raises(ValueError, match=r"item-7\.jsonl\[1\].*'paused' event without 'time'"):
        dx.heard_answers([ended(1.0), {"type": "paused", "answer_id": 1}], 5.0,
                         where="item-7.jsonl")


# ---------------------------------------------------------------------------- per scenario
def test_pause_item_outcomes():
    none = dx.score_item(PAUSE, [])
    assert not none["take_over"] and not none["in_pause"] and not none["answered_after_end"]
    in_pause = dx.score_item(PAUSE, answer(1, 1.5, 1.7, 2.0))
    assert in_pause["take_over"] and in_pause["in_pause"] and in_pause["onset"] == 1.7
    # decided in the pause, first heard once the user went on: still a take-over
    resumed = dx.score_item(PAUSE, answer(1, 2.3, 2.7, 2.0))
    assert resumed["take_over"] and not resumed["in_pause"]
    after = dx.score_item(PAUSE, answer(1, 3.5, 3.6, 2.0))
    assert not after["take_over"] and after["answered_after_end"] and after["onset"] is None
    # a backchannel-like blip in the pause is no take-over
    blip = dx.score_item(PAUSE, answer(1, 1.5, 1.6, 0.4, text="Mm."))
    assert not blip["take_over"]


def test_smooth_item_outcomes():
    o = dx.score_item(SMOOTH, answer(1, 2.3, 2.45, 2.0))
    assert o["take_over"] and not o["early"] and o["latency"] == pytest.approx(0.45)
    early = dx.score_item(SMOOTH, answer(1, 1.7, 1.8, 2.0))
    assert early["take_over"] and early["early"] and early["latency"] == 0.0
    silent = dx.score_item(SMOOTH, [])
    assert not silent["take_over"] and silent["latency"] is None
    too_late = dx.score_item(SMOOTH, answer(1, 5.5, 6.1, 2.0))  # after the item's end
    assert not too_late["take_over"]


def test_interruption_cut_and_answered():
    events = answer(1, 2.1, 2.3, 3.0) + [cut(1, 3.65, "The capital")] + \
        answer(2, 5.6, 5.75, 2.0, heard_input=5.6)
    o = dx.score_item(INTER, events)
    assert o["overlapped"] and o["cut"]
    assert o["stop_latency"] == pytest.approx(0.25)
    assert o["take_over"] and o["onset"] == 5.75 and o["latency"] == pytest.approx(0.35)


def test_interruption_not_stopped_and_not_answered():
    o = dx.score_item(INTER, answer(1, 2.1, 2.3, 3.0))  # plays on to its end at 5.3
    assert o["overlapped"] and not o["cut"] and o["stop_latency"] == pytest.approx(1.9)
    assert not o["take_over"] and o["latency"] is None


def test_interruption_without_overlap_or_without_any_answer():
    # the first answer ended before B: no stop latency; B answered before its end (the
    # decision heard part of B): latency 0
    events = answer(1, 2.0, 2.1, 1.0) + answer(2, 5.0, 5.1, 2.0, heard_input=5.0)
    o = dx.score_item(INTER, events)
    assert not o["overlapped"] and o["stop_latency"] is None
    assert o["take_over"] and o["latency"] == 0.0
    # an answer decided on A alone and heard only after B began is no answer to B
    late_a = dx.score_item(INTER, answer(1, 3.3, 3.6, 2.0, heard_input=3.3))
    assert not late_a["overlapped"] and not late_a["take_over"]
    nothing = dx.score_item(INTER, [])
    assert not nothing["overlapped"] and not nothing["take_over"]


def test_side_talk_outcomes():
    ignored = dx.score_item(SIDE, [{"type": "ignored", "time": 2.3, "audio_time": 2.3,
                                    "opened_at": 0.0}])
    assert ignored["ignored"] and ignored["ignored_event"] and not ignored["take_over"]
    answered = dx.score_item(SIDE, answer(1, 2.4, 2.5, 2.0))
    assert not answered["ignored"] and answered["take_over"]
    with pytest.raises(ValueError, match="unknown scenario 'chat'"):
        dx.score_item(dict(SIDE, scenario="chat"), [])


def over_answer_items():
    """side_talk_over_answer items (side talk 3.6-5.4 s) with known outcomes."""
    return {
        # the answer to A paused for the side talk and resumed: kept
        "side_talk_over_answer-1": paused_and_resumed(),
        # played on through the side talk (no pause): kept
        "side_talk_over_answer-2": answer(1, 2.2, 2.4, 3.0),
        # paused, then cut: the side talk was taken for a barge-in and answered
        "side_talk_over_answer-3": answer(1, 2.2, 2.4, 3.0)[:-1]
        + [paused(1, 3.8), cut(1, 4.6, "The capital of")]
        + answer(2, 4.6, 4.8, 2.0, heard_input=4.6),
        # the answer to A ended before the side talk; the side talk got an answer too
        "side_talk_over_answer-4": answer(1, 2.2, 2.4, 1.0)
        + answer(2, 5.6, 5.8, 2.0, heard_input=5.6),
    }


def test_side_talk_over_answer_outcomes():
    o = {utt: dx.score_item(OVER, events) for utt, events in over_answer_items().items()}
    kept, played_on, cut_off, answered = (o[f"side_talk_over_answer-{n}"] for n in range(1, 5))
    assert kept["kept"] and kept["paused"] and kept["resumed"] and kept["overlapped"]
    assert played_on["kept"] and played_on["overlapped"] and not played_on["paused"]
    assert played_on["pause_seconds"] is None
    assert not cut_off["kept"] and cut_off["cut"] and cut_off["take_over"]
    assert cut_off["paused"] and not cut_off["resumed"] and cut_off["overlapped"]
    assert not answered["kept"] and answered["take_over"] and not answered["cut"]
    assert not answered["overlapped"] and answered["a_heard"]
    # paused and never resumed: the rest of the answer to A was never heard
    left = dx.score_item(OVER, answer(1, 2.2, 2.4, 3.0)[:-1] + [paused(1, 3.8)])
    assert not left["kept"] and left["left_paused"] and not left["cut"]
    # the first answer decided after the side talk began is no answer to A
    late = dx.score_item(OVER, answer(1, 4.0, 4.2, 2.0, heard_input=4.0))
    assert not late["kept"] and not late["a_heard"] and late["take_over"]
    nothing = dx.score_item(OVER, [])
    assert not nothing["kept"] and not nothing["take_over"] and not nothing["overlapped"]


def test_side_talk_over_answer_aggregate():
    items = {utt: dx.score_item(OVER, events) for utt, events in over_answer_items().items()}
    value, d = dx.aggregate(items)["duplex_side_talk_over_answer_kept"]
    assert value == 0.5 and d["better"] == "higher"
    assert d["items"] == ["side_talk_over_answer-1", "side_talk_over_answer-2"]
    assert (d["num_items"], d["num_overlapped"], d["num_paused"], d["num_resumed"]) == \
        (4, 3, 2, 1)
    assert d["pause_p50"] == pytest.approx(0.9)
    assert (d["num_cut"], d["num_take_over"], d["num_left_paused"]) == (1, 2, 1)
    assert dx.SCENARIO_METRICS["side_talk_over_answer"] == \
        ("duplex_side_talk_over_answer_kept",)


# ---------------------------------------------------------------------------- aggregates
def outcomes():
    items = {
        "pause-1": dx.score_item(PAUSE, answer(1, 1.5, 1.7, 2.0)),
        "pause-2": dx.score_item(PAUSE, answer(1, 3.5, 3.6, 2.0)),
        "pause-3": dx.score_item(PAUSE, []),
        "pause-4": dx.score_item(PAUSE, answer(1, 3.4, 3.5, 2.0)),
    }
    for n, onset in enumerate((2.2, 2.4, 2.6), 1):  # latencies 0.2, 0.4, 0.6
        items[f"smooth-{n}"] = dx.score_item(SMOOTH, answer(1, onset - 0.1, onset, 2.0))
    items["smooth-4"] = dx.score_item(SMOOTH, [])
    items["interruption-1"] = dx.score_item(
        INTER, answer(1, 2.1, 2.3, 3.0) + [cut(1, 3.6, "The capital")]
        + answer(2, 5.6, 5.9, 2.0, heard_input=5.6))
    items["interruption-2"] = dx.score_item(INTER, answer(1, 2.1, 2.3, 3.0))
    items["side_talk-1"] = dx.score_item(SIDE, [])
    items["side_talk-2"] = dx.score_item(SIDE, answer(1, 2.4, 2.5, 2.0))
    return items


def test_aggregate_known_values():
    m = dx.aggregate(outcomes())
    assert m["duplex_pause_tor"][0] == 0.25
    assert m["duplex_pause_tor"][1]["items"] == ["pause-1"]
    assert m["duplex_pause_tor"][1]["num_answered_after_end"] == 2
    assert m["duplex_smooth_tor"][0] == 0.75
    value, d = m["duplex_smooth_latency"]
    assert value == pytest.approx(0.4) and d["p50"] == pytest.approx(0.4)
    assert d["p90"] == pytest.approx(0.56)  # linear between 0.4 and 0.6
    assert d["num_measured"] == 3 and d["num_items"] == 4 and d["better"] == "lower"
    assert m["duplex_interrupt_tor"][0] == 0.5
    value, d = m["duplex_interrupt_stop_latency"]  # 0.2 (cut) and 1.9 (played to its end)
    assert value == pytest.approx(1.05) and d["num_measured"] == 2 and d["num_cut"] == 1
    assert m["duplex_interrupt_latency"][0] == pytest.approx(0.5)
    assert m["duplex_side_talk_ignored"][0] == 0.5
    assert m["duplex_side_talk_ignored"][1]["better"] == "higher"


def test_aggregate_leaves_out_what_nobody_has():
    items = {"smooth-1": dx.score_item(SMOOTH, []), "pause-1": dx.score_item(PAUSE, [])}
    m = dx.aggregate(items)
    assert sorted(m) == ["duplex_pause_tor", "duplex_smooth_tor"]
    assert m["duplex_smooth_tor"][0] == 0.0 and m["duplex_pause_tor"][0] == 0.0


# ---------------------------------------------------------------------------- files
def write_set(root, items):
    from espnet_freeze_omni.data.duplex_sets import write_duplex_info

    (root / "decode" / "events").mkdir(parents=True)
    write_duplex_info(root / "duplex_info", {u: info for u, (info, _) in items.items()})
    for utt, (_, events) in items.items():
        with open(root / "decode" / "events" / f"{utt}.jsonl", "w") as f:
            f.writelines(json.dumps(e) + "\n" for e in events)


def test_score_set_writes_metrics_and_results(tmp_path):
    from espnet_freeze_omni.scoring.results import write_results

    write_set(tmp_path, {
        "smooth-0001": (SMOOTH, answer(1, 2.2, 2.3, 2.0)),
        "smooth-0002": (SMOOTH, answer(1, 2.6, 2.7, 2.0)),
        "side_talk-0001": (SIDE, []),
        "side_talk_over_answer-0001": (OVER, paused_and_resumed()),
    })
    metrics = dx.score_duplex_set(tmp_path / "duplex_info", tmp_path / "decode",
                                  tmp_path / "scores" / "duplex_test", "duplex_test")
    assert metrics["duplex_smooth_latency"][0] == pytest.approx(0.5)
    per_item = [json.loads(l) for l in open(tmp_path / "scores/duplex_test/per_item.jsonl")]
    assert [p["id"] for p in per_item] == ["side_talk-0001", "side_talk_over_answer-0001",
                                           "smooth-0001", "smooth-0002"]
    results = write_results(tmp_path / "scores", tmp_path / "results.json",
                            tmp_path / "RESULTS.md", ["duplex_test"], env={
                                "date": "d", "os": "o", "python": "p", "torch": "t",
                                "espnet": "e", "transformers": "tr", "git_commit": "g",
                                "git_commit_date": "gd"})
    assert results["duplex_smooth_tor"] == 1.0 and results["duplex_side_talk_ignored"] == 1.0
    assert results["duplex_smooth_latency"] == 0.5 and results["duplex_pause_tor"] is None
    md = (tmp_path / "RESULTS.md").read_text()
    assert "|duplex_smooth_latency|0.50|s|2|2|0.66|lower|" in md
    assert "|duplex_side_talk_ignored|1.00|rate|1|1|-|higher|" in md
    assert results["duplex_side_talk_over_answer_kept"] == 1.0
    assert "|duplex_side_talk_over_answer_kept|1.00|rate|1|1|-|higher|" in md


def test_score_set_names_missing_and_malformed_events(tmp_path):
    write_set(tmp_path, {"smooth-0001": (SMOOTH, []), "smooth-0002": (SMOOTH, [])})
    (tmp_path / "decode/events/smooth-0002.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="first: smooth-0002.*stage 15"):
        dx.score_duplex_set(tmp_path / "duplex_info", tmp_path / "decode")
    (tmp_path / "decode/events/smooth-0002.jsonl").write_text(
        json.dumps(ended(1.0)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"smooth-0002\.jsonl:2: not a JSON line"):
        dx.score_duplex_set(tmp_path / "duplex_info", tmp_path / "decode")


def test_command_line(tmp_path, capsys):
    write_set(tmp_path, {"side_talk-0001": (SIDE, answer(1, 2.4, 2.5, 2.0))})
    assert dx.main(["--duplex_info", str(tmp_path / "duplex_info"), "--decode_dir",
                    str(tmp_path / "decode"), "--out_dir", str(tmp_path / "s"),
                    "--test_set", "dx"]) == 0
    out = capsys.readouterr().out
    # the name column fits the longest name, duplex_side_talk_over_answer_kept
    assert f"{'duplex_side_talk_ignored':<33} 0.000" in out
    assert out.splitlines()[1].index("value") == 34
    metric = json.loads((tmp_path / "s/duplex_side_talk_ignored/metric.json").read_text())
    assert metric["value"] == 0.0 and metric["test_set"] == "dx"
    assert metric["details"]["items"] == []
