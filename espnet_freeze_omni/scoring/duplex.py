"""Score a decoded duplex test set (recipe stage 16), after Full-Duplex-Bench v1 (and v1.5).

    python -m espnet_freeze_omni.scoring.duplex --duplex_info dump/raw16k/duplex_test/duplex_info \\
        --decode_dir exp/decode/duplex_test --out_dir exp/scores/duplex_test --test_set duplex_test

Inputs: the items' `duplex_info` (data/duplex_sets.py: scenario and times measured on the
input audio) and, per item, the session's events (`<decode_dir>/events/<utt>.jsonl`,
written by bin/duplex_inference.py). Full-Duplex-Bench transcribes the output track with
time alignment; here the session says itself what it played and when, so nothing is
transcribed. All times are seconds on the item's timeline (the session clock; with
--clock measured they include the compute).

What the assistant was heard to say. Each answer k (the session's k-th `turn_ended`; its
`audio_time` is how much input had been heard when it was decided) is heard where its
`audio` events play, by the very rule the output track is rendered with
(duplex_runner.heard_packets, so the scorer and the track cannot disagree): from `play_at`
for `duration`, cut at the answer's `interrupted` event and, for audio sent before a
`paused` event of the answer (the user started speaking), at the pause: what was sent to
play after it is not heard; a `resumed` answer sends its unplayed rest again in new `audio`
events, heard from their own play times. Then everything is clipped to the item (the
output track has the input's duration). Its heard span is [onset, end] = the first heard
audio to the last (duplex_runner.speech_spans, clipped to the item; a pause inside it
counts in its length). An answer TAKES THE TURN when its heard span lasts >= 1 s or it has
> 3 words heard and at least some of it is heard: Full-Duplex-Bench's rule that shorter
output (< 1 s and <= 3 words, a backchannel) takes no turn. Words heard: those it voiced
(the `interrupted` event's voiced_text, else its answer_done text), in proportion to the
part of its heard extent (first to last heard audio had the item not ended) that lies
before the item's end when the item ends first. Onsets are the play time of an answer's
first audio packet, not of its first word. Each answer's pauses ([paused, resumed or None]
session times, from its `paused` and `resumed` events) are listed with it.

Per scenario (each figure over the scenario's items; latencies as P50, with P90 and mean in
the details, over the items that have one):

    pause         duplex_pause_tor: share of items in which an answer that takes the turn
                  starts before the user's turn has ended (onset < speech_end: in the pause,
                  or after the user went on, having been decided in the pause). Lower is
                  better. Details: how many of those onsets fall inside the pause itself.
    smooth        duplex_smooth_tor: share of items with an answer that takes the turn
                  (higher is better); duplex_smooth_latency: its onset minus speech_end,
                  negative values counted as 0 (as Full-Duplex-Bench; how many started
                  early is in the details).
    interruption  question A, then question B from interrupt_start to interrupt_end.
                  duplex_interrupt_tor: share of items in which an answer decided after B
                  began (its turn_ended heard input beyond interrupt_start) takes the turn:
                  the assistant stops (a new answer always cuts the one playing) and answers
                  B. duplex_interrupt_stop_latency: over the items in which an answer was
                  being heard at interrupt_start, the end of its heard span minus
                  interrupt_start (it stops for the barge-in, or ends by itself).
                  duplex_interrupt_latency: onset of the answer to B minus interrupt_end,
                  negative values counted as 0 (Full-Duplex-Bench's interruption latency).
    side_talk     duplex_side_talk_ignored: share of items in which no answer takes the turn
                  (higher is better); how many had an explicit `ignored` event is in the
                  details.
    side_talk_over_answer
                  question A, then side talk (addressed to someone else) from
                  side_talk_start to side_talk_end, 1.6 s after A (after Full-Duplex-Bench
                  v1.5's "talking to others"). The answer to A is the session's first answer
                  if it was decided before the side talk began (turn_ended audio_time <=
                  side_talk_start). duplex_side_talk_over_answer_kept (higher is better):
                  share of items in which the answer to A was heard, was not cut (no
                  `interrupted` event for it) and was not left paused (every `paused` of it
                  followed by a `resumed`), and no answer decided after the side talk began
                  (audio_time > side_talk_start) takes the turn. Details: how many items had
                  the answer to A being heard at side_talk_start (overlapped), paused,
                  paused and resumed, the P50 of the first pause's length (resumed minus
                  paused time) over the paused-and-resumed items, and how many had it cut or
                  the side talk answered.

Full-Duplex-Bench v1 (synthetic sets) for comparison: Freeze-Omni pause TOR 0.642, smooth TOR
0.336 at 0.953 s, interruption TOR 0.867 at 1.409 s; Moshi 0.985, 0.941 at 0.265 s, 1.000 at
0.257 s. Goals of the embedded recipe: pause TOR <= 0.10; smooth TOR >= 0.95 with P50 <= 0.5
s; interruption TOR >= 0.95 with stop latency <= 0.3 s; side talk ignored >= 0.95. No goal
is set for side talk over an answer (its answer kept: higher is better).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

MIN_TURN_SECONDS = 1.0  # heard for at least this long: a turn, not a backchannel
MIN_TURN_WORDS = 4  # ... or this many words
SCENARIO_METRICS = {
    "pause": ("duplex_pause_tor",),
    "smooth": ("duplex_smooth_tor", "duplex_smooth_latency"),
    "interruption": ("duplex_interrupt_tor", "duplex_interrupt_stop_latency",
                     "duplex_interrupt_latency"),
    "side_talk": ("duplex_side_talk_ignored",),
    "side_talk_over_answer": ("duplex_side_talk_over_answer_kept",),
}
BETTER = {"duplex_pause_tor": "lower", "duplex_smooth_tor": "higher",
          "duplex_smooth_latency": "lower", "duplex_interrupt_tor": "higher",
          "duplex_interrupt_stop_latency": "lower", "duplex_interrupt_latency": "lower",
          "duplex_side_talk_ignored": "higher",
          "duplex_side_talk_over_answer_kept": "higher"}
SCORER = "duplex_turn_taking"
SCORER_NAME = ("duplex turn-taking after Full-Duplex-Bench v1 (take-over rates and latencies "
               "from the session's own play times; scoring/duplex.py)")


@dataclasses.dataclass
class HeardAnswer:
    """One answer of a session as it was heard within the item."""

    id: int
    decided_at: Optional[float] = None  # session time of its turn_ended
    heard_input: Optional[float] = None  # input seconds heard when it was decided
    onset: Optional[float] = None  # first heard audio (None: none heard in the item)
    end: Optional[float] = None  # last heard audio
    words: int = 0  # words heard (module docstring)
    interrupted: bool = False
    # [paused, resumed] session times of each pause, resumed None if it never resumed
    pauses: List[List[Optional[float]]] = dataclasses.field(default_factory=list)

    @property
    def left_paused(self) -> bool:
        """Paused and never resumed: the rest of it was never heard."""
        return bool(self.pauses) and self.pauses[-1][1] is None

    @property
    def heard_seconds(self) -> float:
        return 0.0 if self.onset is None else self.end - self.onset

    @property
    def takes_turn(self) -> bool:
        return self.heard_seconds > 0 and (self.heard_seconds >= MIN_TURN_SECONDS
                                           or self.words >= MIN_TURN_WORDS)


def _field(event: dict, key: str, where: str):
    if key not in event:
        raise ValueError(f"{where}: a {event.get('type')!r} event without {key!r}")
    return event[key]


def heard_answers(events: Sequence[dict], duration: float, where: str = "events"
                  ) -> List[HeardAnswer]:
    """Every answer of an item's events (dicts of SessionEvent.to_dict) as it was heard
    within [0, duration] (module docstring). `where` names the source in errors."""
    # the runner's rule: what is heard is what the output track holds
    from espnet_freeze_omni.inference.duplex_runner import heard_packets

    answers: Dict[int, HeardAnswer] = {}

    def answer(k: int) -> HeardAnswer:
        return answers.setdefault(k, HeardAnswer(k))

    for i, e in enumerate(events):
        if e.get("type") == "interrupted":
            a = answer(int(_field(e, "answer_id", f"{where}[{i}]")))
            a.interrupted = True
            a.words = len(str(e.get("voiced_text", "")).split())
    ended = 0
    for i, e in enumerate(events):
        kind, at = e.get("type"), f"{where}[{i}]"
        if kind == "turn_ended":
            ended += 1
            a = answer(ended)
            a.decided_at = float(_field(e, "time", at))
            a.heard_input = float(_field(e, "audio_time", at))
        elif kind == "answer_done":
            a = answer(int(_field(e, "answer_id", at)))
            if not a.interrupted:
                a.words = len(str(e.get("text", "")).split())
        elif kind == "audio":  # an answer all of whose audio went unheard is listed too
            answer(int(_field(e, "answer_id", at)))
        elif kind == "paused":
            a = answer(int(_field(e, "answer_id", at)))
            a.pauses.append([float(_field(e, "time", at)), None])
        elif kind == "resumed":
            a = answer(int(_field(e, "answer_id", at)))
            if a.pauses and a.pauses[-1][1] is None:
                a.pauses[-1][1] = float(_field(e, "time", at))
    played: Dict[int, Tuple[float, float]] = {}  # heard extent had the item not ended
    for k, start, end, _ in heard_packets(events, where):
        lo, hi = played.get(k, (start, end))
        played[k] = (min(lo, start), max(hi, end))
        start, end = max(start, 0.0), min(end, duration)
        if end <= start:
            continue
        a = answer(k)
        a.onset = start if a.onset is None else min(a.onset, start)
        a.end = end if a.end is None else max(a.end, end)
    for k, a in answers.items():
        lo, hi = played.get(k, (0.0, 0.0))
        if hi > lo and a.heard_seconds < hi - lo:  # the item ended (or began) inside it
            a.words = int(a.words * a.heard_seconds / (hi - lo))
    return [answers[k] for k in sorted(answers)]


def score_item(info: dict, events: Sequence[dict], where: str = "events") -> dict:
    """The outcome of one item (keys by scenario: see the module docstring)."""
    scenario = info["scenario"]
    answers = heard_answers(events, float(info["duration"]), where)
    turns = [a for a in answers if a.takes_turn]
    first = min(turns, key=lambda a: a.onset) if turns else None
    out = {"scenario": scenario, "answers": [dataclasses.asdict(a) for a in answers]}
    if scenario == "pause":
        early = [a for a in turns if a.onset < info["speech_end"]]
        out.update(take_over=bool(early),
                   in_pause=any(info["pause_start"] <= a.onset < info["pause_end"]
                                for a in early),
                   onset=min(a.onset for a in early) if early else None,
                   answered_after_end=any(a.onset >= info["speech_end"] for a in turns))
    elif scenario == "smooth":
        out.update(take_over=first is not None,
                   onset=first.onset if first else None,
                   early=bool(first and first.onset < info["speech_end"]),
                   latency=max(0.0, first.onset - info["speech_end"]) if first else None)
    elif scenario == "interruption":
        start, end = info["interrupt_start"], info["interrupt_end"]
        playing = [a for a in answers if a.onset is not None and a.onset <= start < a.end]
        to_b = [a for a in turns if a.heard_input is not None and a.heard_input > start]
        b = min(to_b, key=lambda a: a.onset) if to_b else None
        out.update(overlapped=bool(playing),
                   stop_latency=(playing[0].end - start) if playing else None,
                   cut=bool(playing and playing[0].interrupted),
                   take_over=b is not None, onset=b.onset if b else None,
                   latency=max(0.0, b.onset - end) if b else None)
    elif scenario == "side_talk":
        out.update(take_over=first is not None, ignored=first is None,
                   ignored_event=any(e.get("type") == "ignored" for e in events))
    elif scenario == "side_talk_over_answer":
        start = info["side_talk_start"]
        # the answer to A: the first answer, if decided before the side talk began (one
        # decided later heard the side talk: it counts as answering it)
        a = answers[0] if answers and answers[0].heard_input is not None \
            and answers[0].heard_input <= start else None
        to_side = [b for b in turns if b.heard_input is not None and b.heard_input > start]
        pause = a.pauses[0] if a is not None and a.pauses else None
        out.update(a_heard=bool(a and a.onset is not None),
                   overlapped=bool(a and a.onset is not None and a.onset <= start < a.end),
                   paused=pause is not None,
                   resumed=bool(pause and pause[1] is not None),
                   pause_seconds=round(pause[1] - pause[0], 4)
                   if pause and pause[1] is not None else None,
                   left_paused=bool(a and a.left_paused),
                   cut=bool(a and a.interrupted),
                   take_over=bool(to_side),
                   kept=bool(a and a.onset is not None and not a.interrupted
                             and not a.left_paused and not to_side))
    else:
        raise ValueError(f"{where}: unknown scenario {scenario!r}")
    return out


def _percentile(values: List[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=float), q))


def _latency(values: List[Optional[float]], num_items: int) -> Optional[Tuple[float, dict]]:
    found = [v for v in values if v is not None]
    if not found:
        return None
    return _percentile(found, 50), dict(
        num_items=num_items, num_measured=len(found), p50=round(_percentile(found, 50), 4),
        p90=round(_percentile(found, 90), 4), mean=round(sum(found) / len(found), 4),
        max=round(max(found), 4))


def aggregate(items: Dict[str, dict]) -> Dict[str, Tuple[float, dict]]:
    """{metric: (value, details)} over per-item outcomes ({utt: score_item(...)}); a
    scenario without items gives no metric, a latency nobody has gives none."""
    by: Dict[str, Dict[str, dict]] = {s: {} for s in SCENARIO_METRICS}
    for utt, o in sorted(items.items()):
        by[o["scenario"]][utt] = o
    out: Dict[str, Tuple[float, dict]] = {}

    def rate(flag: str, group: Dict[str, dict], **details) -> Tuple[float, dict]:
        hits = sorted(u for u, o in group.items() if o[flag])
        return len(hits) / len(group), dict(num_items=len(group), num_hits=len(hits),
                                            items=hits, **details)

    pause, smooth, inter, side = (by[s] for s in ("pause", "smooth", "interruption",
                                                  "side_talk"))
    over = by["side_talk_over_answer"]
    if pause:
        out["duplex_pause_tor"] = rate(
            "take_over", pause, num_in_pause=sum(o["in_pause"] for o in pause.values()),
            num_answered_after_end=sum(o["answered_after_end"] for o in pause.values()))
    if smooth:
        out["duplex_smooth_tor"] = rate("take_over", smooth)
        lat = _latency([o["latency"] for o in smooth.values()], len(smooth))
        if lat:
            lat[1]["num_early"] = sum(o["early"] for o in smooth.values())
            out["duplex_smooth_latency"] = lat
    if inter:
        out["duplex_interrupt_tor"] = rate(
            "take_over", inter, num_overlapped=sum(o["overlapped"] for o in inter.values()),
            num_cut=sum(o["cut"] for o in inter.values()))
        stop = _latency([o["stop_latency"] for o in inter.values()], len(inter))
        if stop:
            stop[1]["num_cut"] = sum(o["cut"] for o in inter.values())
            out["duplex_interrupt_stop_latency"] = stop
        lat = _latency([o["latency"] for o in inter.values()], len(inter))
        if lat:
            out["duplex_interrupt_latency"] = lat
    if side:
        out["duplex_side_talk_ignored"] = rate(
            "ignored", side, num_ignored_event=sum(o["ignored_event"] for o in side.values()))
    if over:
        count = lambda flag: sum(o[flag] for o in over.values())  # noqa: E731
        pauses = [o["pause_seconds"] for o in over.values() if o["pause_seconds"] is not None]
        out["duplex_side_talk_over_answer_kept"] = rate(
            "kept", over, num_a_heard=count("a_heard"),
            num_overlapped=count("overlapped"), num_paused=count("paused"),
            num_resumed=count("resumed"), num_left_paused=count("left_paused"),
            pause_p50=round(_percentile(pauses, 50), 4) if pauses else None,
            num_cut=count("cut"), num_take_over=count("take_over"))
    for metric, (_, details) in out.items():
        details["better"] = BETTER[metric]
    return out


def read_events(path: str | os.PathLike) -> List[dict]:
    """The events of one item; a malformed line is named by file and line."""
    from espnet_freeze_omni.data.json_lines import read_json_lines

    events = []
    for lineno, e in read_json_lines(path):
        if not isinstance(e, dict) or "type" not in e:
            raise ValueError(f"{path}:{lineno}: not an event (no \"type\")")
        events.append(e)
    return events


def score_duplex_set(duplex_info: str | os.PathLike, decode_dir: str | os.PathLike,
                     out_dir: Optional[str | os.PathLike] = None, test_set: str = "duplex_test"
                     ) -> Dict[str, Tuple[float, dict]]:
    """Score every item of `duplex_info` from `<decode_dir>/events/<utt>.jsonl`; with
    `out_dir`, write `<out_dir>/<metric>/metric.json` (scoring/results.py) and
    `<out_dir>/per_item.jsonl`."""
    from espnet_freeze_omni.data.duplex_sets import read_duplex_info
    from espnet_freeze_omni.scoring.results import write_metric

    infos = read_duplex_info(duplex_info)
    if not infos:
        raise ValueError(f"{duplex_info}: no items")
    events_dir = Path(decode_dir) / "events"
    missing = [u for u in infos if not (events_dir / f"{u}.jsonl").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} item(s) of {duplex_info} have no events under {events_dir} "
            f"(first: {missing[0]}): decode them first (recipe stage 15)")
    extra = sorted(p.stem for p in events_dir.glob("*.jsonl") if p.stem not in infos)
    if extra:
        logging.warning("%s: %d event file(s) of items not in %s, not scored (first: %s)",
                        events_dir, len(extra), duplex_info, extra[0])
    items = {}
    for utt, info in infos.items():
        path = events_dir / f"{utt}.jsonl"
        items[utt] = score_item(info, read_events(path), str(path))
    metrics = aggregate(items)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "per_item.jsonl", "w", encoding="utf-8") as f:
            for utt, o in items.items():
                f.write(json.dumps({"id": utt, **o}, ensure_ascii=False) + "\n")
        for metric, (value, details) in metrics.items():
            write_metric(out_dir / metric, metric, test_set, value, SCORER, SCORER_NAME,
                         details)
    return metrics


def format_table(metrics: Dict[str, Tuple[float, dict]]) -> str:
    width = max(map(len, BETTER))  # every metric's name fits
    rows = [f"{'metric':<{width}} value   items  P90     better"]
    for metric, (value, d) in metrics.items():
        p90 = f"{d['p90']:.3f}" if "p90" in d else "-"
        n = d.get("num_measured", d.get("num_items"))
        rows.append(f"{metric:<{width}} {value:<7.3f} {n:<6} {p90:<7} {d['better']}")
    return "\n".join(rows)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duplex_info", required=True, help="the set's duplex_info table")
    parser.add_argument("--decode_dir", required=True,
                        help="bin/duplex_inference's output (events/<utt>.jsonl)")
    parser.add_argument("--out_dir", required=True,
                        help="<score root>/<test set>: one <metric>/metric.json each")
    parser.add_argument("--test_set", default="duplex_test")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    metrics = score_duplex_set(args.duplex_info, args.decode_dir, args.out_dir, args.test_set)
    print(f"{args.test_set}: duplex turn-taking ({args.decode_dir})")
    print(format_table(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
