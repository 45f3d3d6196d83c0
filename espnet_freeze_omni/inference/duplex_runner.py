"""Run a DuplexSession over a recorded input stream: the Full-Duplex-Bench convention.

    events, output = run_duplex(session, input_wav)   # input 16 kHz mono float32
    result = run_turn(session, question_wav)          # one turn of a dialogue, answered

The input is fed in `feed_seconds` pieces as a microphone would deliver it; `output` is a
time-synchronous 24 kHz track of exactly the input's duration holding the assistant's
speech at the time it would be heard (each packet at its `play_at`), cut where a barge-in
stopped or paused it (heard_packets). With the session's `clock="measured"` the times
include this machine's compute, so the track is what real time would have produced, however
fast the run itself went.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from espnet_freeze_omni.inference.duplex_session import DuplexSession, SessionEvent


def run_duplex(session: DuplexSession, wav: np.ndarray, feed_seconds: float = 0.02,
               ) -> Tuple[List[SessionEvent], np.ndarray]:
    """Feed `wav` (at the session's input rate) and flush; returns (events, output track)."""
    step = max(1, int(round(feed_seconds * session.sample_rate)))
    events: List[SessionEvent] = []
    for start in range(0, len(wav), step):
        events += session.feed(wav[start:start + step])
    events += session.flush()
    duration = len(wav) / session.sample_rate
    return events, render_output(events, duration, session.output_sample_rate)


def _fields(event) -> Dict[str, Any]:
    return event.to_dict() if isinstance(event, SessionEvent) else event


def heard_packets(events: Sequence[Any], where: str = "events"
                  ) -> List[Tuple[int, float, float, int]]:
    """(answer id, start, end, event index) of what was heard of each `audio` event, in
    seconds: from its `play_at` for its `duration`, cut at its answer's `interrupted` event
    (the barge-in stopped it there) and, for a packet sent before a `paused` event of its
    answer, at that pause (the user started speaking: the unplayed rest is sent again at
    `resumed`, in new audio events). Packets heard not at all are left out. `events` are
    SessionEvents or their `to_dict()` dicts (events.jsonl); `where` names the source in the
    error a malformed event gets."""
    def get(event, key, i):
        if key not in event:
            raise ValueError(f"{where}[{i}]: a {event.get('type')!r} event without {key!r}")
        return event[key]

    dicts = [_fields(e) for e in events]
    cut: Dict[int, float] = {}
    for i, e in enumerate(dicts):
        if e.get("type") == "interrupted":
            cut[int(get(e, "answer_id", i))] = float(get(e, "time", i))
    pending: Dict[int, List[List[Any]]] = {}  # packets sent since the answer's last pause
    out: List[List[Any]] = []
    for i, e in enumerate(dicts):
        kind = e.get("type")
        if kind == "audio":
            k = int(get(e, "answer_id", i))
            start = float(get(e, "play_at", i))
            end = start + float(get(e, "duration", i))
            if k in cut:
                end = min(end, cut[k])
            packet = [k, start, end, i]
            out.append(packet)
            pending.setdefault(k, []).append(packet)
        elif kind == "paused":
            at = float(get(e, "time", i))
            for packet in pending.pop(int(get(e, "answer_id", i)), []):
                packet[2] = min(packet[2], at)
    return [(k, start, end, i) for k, start, end, i in out if end > start]


def render_output(events: List[SessionEvent], duration: float, rate: int) -> np.ndarray:
    """The assistant's audio placed at its play times (heard_packets), `duration` seconds
    long."""
    total = int(round(duration * rate))
    out = np.zeros(total, dtype=np.float32)
    for _, start_s, end_s, i in heard_packets(events):
        start = int(round(start_s * rate))
        pcm = events[i].pcm
        if end_s < start_s + events[i].data["duration"] - 1e-9:  # cut: the part heard
            pcm = pcm[:max(0, int(round(end_s * rate)) - start)]  # (whole: no rounding loss)
        end = min(total, start + len(pcm))
        if end > start:
            out[start:end] = pcm[:end - start]
    return out


def speech_spans(events: List[SessionEvent]) -> List[Tuple[float, float, int]]:
    """(start, end, answer id) of each answer's heard audio, in seconds."""
    spans: Dict[int, Tuple[float, float]] = {}
    for a, start, end, _ in heard_packets(events):
        lo, hi = spans.get(a, (start, end))
        spans[a] = (min(lo, start), max(hi, end))
    return sorted((lo, hi, a) for a, (lo, hi) in spans.items())


@dataclasses.dataclass
class TurnResult:
    """What one user turn of `run_turn` gave."""

    events: List[SessionEvent]
    decision: int  # STATE_RESPOND, STATE_IGNORE, or STATE_LISTEN: never decided
    decision_time: Optional[float]  # seconds after the turn's start; None if never decided
    committed: bool  # the state head left it undecided and it was committed
    answer_text: str
    answer_tokens: List[int]
    pcm: np.ndarray  # the answer's audio at the session's output rate (empty if none)


def run_turn(session: DuplexSession, wav: np.ndarray, silence_seconds: float = 1.0,
             feed_seconds: float = 0.02, commit_undecided: bool = True) -> TurnResult:
    """One user turn of a dialogue: `wav`, then `silence_seconds` of silence in which the
    state head should take the turn; an undecided turn is committed if `commit_undecided`.
    The answer is played out to its end before returning, so the next turn is a new turn
    and not a barge-in. Used by the CLI's --wav mode and the recipe's decoding (stage 15).
    """
    from espnet_freeze_omni.models.speech_input import (
        STATE_IGNORE,
        STATE_LISTEN,
        STATE_RESPOND,
    )

    rate = session.sample_rate
    step = max(1, int(round(feed_seconds * rate)))
    start = session.audio_time
    audio = np.concatenate([np.asarray(wav, dtype=np.float32),
                            np.zeros(int(round(silence_seconds * rate)), dtype=np.float32)])
    events: List[SessionEvent] = []
    for i in range(0, len(audio), step):
        events += session.feed(audio[i:i + step])
    decided = [e for e in events if e.type in ("turn_ended", "ignored")]
    committed = False
    if not decided and commit_undecided:
        events += session.commit()
        committed = True
    # the answer plays out before the next turn (bounded: an answer is finite)
    silence = np.zeros(step, dtype=np.float32)
    while session.answer is not None and (session.answer.generating
                                          or session.playback_end > session.audio_time
                                          or session.paused_at is not None):
        events += session.feed(silence)
    if decided:
        first = decided[0]
        decision = STATE_RESPOND if first.type == "turn_ended" else STATE_IGNORE
        when = first.audio_time - start
    else:
        decision, when = STATE_LISTEN, None
    done = [e for e in events if e.type == "answer_done"]
    answer = done[-1].data if done else {}
    ids = [e.data["token_id"] for e in events if e.type == "text"
           and done and e.data["answer_id"] == answer["answer_id"]]
    pcm = [e.pcm for e in events if e.type == "audio"
           and done and e.data["answer_id"] == answer["answer_id"]]
    return TurnResult(events, decision, when, committed, answer.get("text", ""), ids,
                      np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.float32))
