"""One model copy, many DuplexSessions: a worker thread that interleaves their steps.

Each model copy (a `Replica`) has one thread that does all of its compute, so a model is never
used by two threads at once and no lock is held across an answer. The thread goes round the
sessions that have work. A round first pumps each new answer until its first audio is out
(at most `first_audio_budget_s`: that packet is what its user waits for), then gives every
session its queued control events in order and up to `feed_seconds` of its buffered input
audio (`DuplexSession.feed`, which only listens: the sessions run with
`answer_in_feed=False`), then `pump(pump_budget_s)` to every answer in progress. So eight
sessions answering at once each advance by a slice in turn, and a session that is only
listening costs one chunk step per 160 ms of audio. An answer whose voice is
already `AHEAD_S` ahead of its playback sits the round out while other answers are short of
audio (their first packet is what their users are waiting for).

The connection (on the asyncio side) puts work into a session's inbox from its own thread;
the worker hands the session's events back through `post`, a callback that must be
thread-safe and must not block (the server schedules them on its event loop).
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

# a slice of one session: this much buffered input, then this much answer compute
FEED_SECONDS = 0.48
PUMP_BUDGET_S = 0.03
# an answer whose voice is this far ahead of its playback waits while others need the CPU
AHEAD_S = 1.0
# a new answer is pumped up to this long per round until its first audio is out, before the
# round's listening: that first packet is what its user is waiting for
FIRST_AUDIO_BUDGET_S = 0.25


class ServedSession:
    """A DuplexSession as the worker thread runs it, with the inbox the connection fills.

    Inbox items are (kind, payload, client event id); kinds: configure (session options),
    audio (float32 at the session's input rate), commit, respond, clear, cancel. `post(kind,
    payload)` gives back: ("configured", whether a new session was built), ("events",
    [SessionEvent]),
    ("error", (code, message, event id)), ("cleared", event id), ("cancelling", answer id),
    ("failed", message); in a ProcessReplica's child also ("fed", input samples consumed).
    """

    def __init__(self, post: Callable[[str, Any], None], name: str = ""):
        self.post = post
        self.name = name
        self.session = None  # built by the worker at the first configure
        self.options: Optional[Dict[str, Any]] = None
        self.inbox: Deque[Tuple[str, Any, Optional[str]]] = collections.deque()
        self.buffered_samples = 0  # audio in the inbox, not fed yet
        # the last answer started (commit or turn end) has not been claimed by response.create
        self.unclaimed_response = False
        self.closed = False
        self._lock = threading.Lock()
        self.replica = None  # a Replica, or a ProcessReplica (process_replica.py)
        self.remote_id: Optional[int] = None  # this session's id in a ProcessReplica
        self.report_fed = False  # in a ProcessReplica's child: post ("fed", samples)

    # ------------------------------------------------------------------ connection side
    def put(self, kind: str, payload: Any = None, event_id: Optional[str] = None) -> None:
        with self._lock:
            if kind == "audio":
                self.buffered_samples += len(payload)
            replica = self.replica
            remote = getattr(replica, "remote", False)
            if not remote:
                self.inbox.append((kind, payload, event_id))
        if remote:  # the session runs in the replica's child process
            replica.send(self, kind, payload, event_id)
        elif replica is not None:
            replica.wake()

    def consumed(self, samples: int) -> None:
        """The model has taken `samples` of the buffered input (a ProcessReplica's child
        says so; a thread replica counts in take_input)."""
        with self._lock:
            self.buffered_samples = max(0, self.buffered_samples - samples)

    def close(self) -> None:
        """Stop at once: the worker drops the session (and its caches) at its next look."""
        self.closed = True
        with self._lock:
            self.inbox.clear()
            self.buffered_samples = 0
        if self.replica is not None:
            self.replica.detach(self)

    # ------------------------------------------------------------------ worker side
    def has_input(self) -> bool:
        return not self.closed and bool(self.inbox)

    def answering(self) -> bool:
        answer = self.session.answer if self.session is not None else None
        return not self.closed and answer is not None and answer.generating

    def awaiting_first_audio(self) -> bool:
        """An answer in progress that has not given out any audio yet."""
        return self.answering() and "first_pcm" not in self.session.answer.timings

    def ahead(self) -> float:
        """Seconds of answer audio made beyond the session clock (0 without an answer)."""
        session = self.session
        if session is None or session.answer is None:
            return 0.0
        return session.playback_end - session.clock

    def take_input(self, s2s, feed_seconds: float) -> None:
        """The inbox in order: control events, and up to `feed_seconds` of audio."""
        events: List = []
        fed = 0
        limit = None
        while not self.closed:
            with self._lock:
                if not self.inbox:
                    break
                kind, payload, event_id = self.inbox[0]
                if kind == "audio":
                    if self.session is None:  # the connection configures before any audio
                        raise RuntimeError("audio reached a session never configured")
                    limit = limit or int(feed_seconds * self.session.sample_rate)
                    if fed >= limit:
                        break
                    take = payload[:limit - fed]
                    if len(take) < len(payload):
                        self.inbox[0] = (kind, payload[len(take):], event_id)
                    else:
                        self.inbox.popleft()
                    self.buffered_samples -= len(take)
                else:
                    self.inbox.popleft()
            if kind == "audio":
                out = self.session.feed(take)
                fed += len(take)
            else:
                out = self._control(s2s, kind, payload, event_id)
            if kind != "respond":  # an answer response.create starts is its own
                self._count_answers(out)
            events += out
        self._post_events(events)
        if self.report_fed and fed and not self.closed:
            self.post("fed", fed)

    def pump(self, budget_s: float) -> None:
        """About `budget_s` of compute on the answer in progress."""
        if self.answering():
            events = self.session.pump(budget_s)
            self._count_answers(events)
            self._post_events(events)

    def pump_first_audio(self, budget_s: float) -> None:
        """Pump a new answer until its first audio is out, or `budget_s` of compute."""
        deadline = time.perf_counter() + budget_s
        events: List = []
        while self.awaiting_first_audio() and time.perf_counter() < deadline:
            events += self.session.pump(0.01)
        self._count_answers(events)
        self._post_events(events)

    def _post_events(self, events: List) -> None:
        if events and not self.closed:
            self.post("events", events)

    def _count_answers(self, events: List) -> None:
        if any(e.type == "turn_ended" for e in events):
            self.unclaimed_response = True

    def _control(self, s2s, kind: str, payload: Any, event_id: Optional[str]) -> List:
        session = self.session
        if kind == "configure":
            if payload == self.options and session is not None:
                self.post("configured", False)
                return []
            if session is not None and (session.turns or session.answer is not None):
                self.post("error", ("conversation_in_progress",
                                    "instructions and turn detection are fixed once the "
                                    "conversation has a turn: open a new connection to change "
                                    "them", event_id))
                return []
            try:
                self.session = s2s.session(**payload)
            except ValueError as err:
                self.post("error", ("invalid_value", str(err), event_id))
                return []
            self.options = payload  # codec sampling seeded as any session: repeatable answers
            self.post("configured", True)
            return []
        try:
            if kind == "commit":
                return session.commit()
            if kind == "respond":
                if payload is not None:  # typed user turns: answered now
                    self.unclaimed_response = False
                    return session.text_turn(payload)
                if self.unclaimed_response:  # the answer the last commit/turn end started
                    self.unclaimed_response = False
                    return []
                return session.commit()
            if kind == "clear":
                out = session.clear()
                self.post("cleared", event_id)
                return out
            if kind == "cancel":
                if session.answer is None or not (session.answer.generating or
                                                  session.playback_end > session.clock):
                    self.post("error", ("response_cancel_not_active",
                                        "there is no response in progress to cancel", event_id))
                    return []
                self.post("cancelling", session.answer.id)
                return session.cancel()
        except ValueError as err:
            code = "input_audio_buffer_commit_empty" if "no user audio" in str(err) \
                else "invalid_request"
            self.post("error", (code, str(err), event_id))
            return []
        raise ValueError(f"unknown inbox item {kind!r}")


class Replica:
    """One model copy and the thread that runs every compute step of its sessions."""

    remote = False  # its sessions' inboxes are read here (a ProcessReplica's in a child)

    def __init__(self, s2s, name: str = "replica0", feed_seconds: float = FEED_SECONDS,
                 pump_budget_s: float = PUMP_BUDGET_S,
                 first_audio_budget_s: float = FIRST_AUDIO_BUDGET_S):
        self.s2s = s2s
        self.name = name
        self.feed_seconds = feed_seconds
        self.pump_budget_s = pump_budget_s
        self.first_audio_budget_s = first_audio_budget_s
        self.sessions: List[ServedSession] = []
        self.rounds = 0
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"freeze-omni-{name}",
                                        daemon=True)
        self._thread.start()

    @property
    def load(self) -> int:
        return len(self.sessions)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def input_sample_rate(self) -> int:
        return self.s2s.input_sample_rate

    @property
    def output_sample_rate(self) -> int:
        return self.s2s.sample_rate

    @property
    def tokenizer(self):
        return self.s2s.llm.tokenizer

    def attach(self, served: ServedSession) -> None:
        with self._cond:
            served.replica = self
            self.sessions.append(served)
            self._cond.notify()

    def detach(self, served: ServedSession) -> None:
        with self._cond:
            if served in self.sessions:
                self.sessions.remove(served)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        import torch

        with torch.inference_mode(False), torch.no_grad():
            while True:
                with self._cond:
                    if self._stopped:
                        return
                    listening = [s for s in self.sessions if s.has_input()]
                    answering = [s for s in self.sessions if s.answering()]
                    if not listening and not answering:
                        self._cond.wait(0.05)
                        continue
                self.rounds += 1
                # a round: new answers up to their first audio, every session's input, then
                # the answers short of audio: a new answer's first packet matters more than
                # another user's next chunk (buffered meanwhile) or the end of an answer well
                # ahead of its playback, which waits while others need the CPU
                fresh = [s for s in answering if s.awaiting_first_audio()]
                urgent = [s for s in answering if s.ahead() < AHEAD_S]
                for served, step in [(s, "first") for s in fresh] + \
                        [(s, "input") for s in listening] + \
                        [(s, "pump") for s in (urgent or answering)]:
                    if served.closed:
                        continue
                    try:
                        if step == "first":
                            served.pump_first_audio(self.first_audio_budget_s)
                        elif step == "input":
                            served.take_input(self.s2s, self.feed_seconds)
                        else:
                            served.pump(self.pump_budget_s)
                    except Exception as err:  # one session's failure ends that session only
                        logging.exception("session %s failed", served.name)
                        served.post("failed", f"{type(err).__name__}: {err}")
                        served.close()
                del listening, answering, fresh, urgent


def pick_replica(replicas: List[Replica]) -> Replica:
    """The least loaded model copy (the first of equals)."""
    return min(replicas, key=lambda r: r.load)

