"""A model copy in a child process: the CPU cores of a machine, not one interpreter lock.

A `Replica` (scheduler.py) is a worker thread in the server's process. Every small tensor op
of the embedded model spends more time in Python than in arithmetic, and Python runs one
thread at a time: two thread replicas, or one replica beside the event loop's JSON and base64
work, share one interpreter lock, so a second core helps little. A `ProcessReplica` runs the
same Replica loop in a process of its own (multiprocessing "spawn": a clean interpreter, no
forked locks or threads) and keeps the thread replica's interface, so the server and the
connections do not know which kind they talk to.

Traffic: the connection's `ServedSession.put` items go to the child through one queue (audio
as float32 arrays); the child's posts come back through another, read by a thread here that
hands them to each session's `post` (thread-safe, non-blocking, as with a thread replica).
The child reports the input samples it has consumed ("fed"), so the buffered-audio limit
still counts what waits for the model. If the child dies, every session on it gets "failed"
(the connection sends `session_failed` and closes) and new sessions go to the others.
"""
from __future__ import annotations

import itertools
import logging
import multiprocessing
import queue
import threading
import traceback
from typing import Any, Callable, Dict, Optional

from espnet_freeze_omni.serve.scheduler import FEED_SECONDS, PUMP_BUDGET_S, ServedSession

START_TIMEOUT_S = 600.0  # a paper-size model loads for minutes


class ProcessReplica:
    """One model copy built by `factory()` in a child process, with its own worker thread.

    factory: a picklable callable returning a Speech2Speech (e.g. `load_packed_model` with
    its arguments bound by functools.partial); it runs in the child.
    num_threads: torch threads of the child (None: torch's choice).
    """

    remote = True

    def __init__(self, factory: Callable[[], Any], name: str = "replica0",
                 num_threads: Optional[int] = None, feed_seconds: float = FEED_SECONDS,
                 pump_budget_s: float = PUMP_BUDGET_S):
        self.name = name
        self.rounds = 0
        self.alive = False
        self.exit_reason: Optional[str] = None
        self.input_sample_rate = self.output_sample_rate = None
        self.tokenizer = None
        self.sessions: Dict[int, ServedSession] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopping = False
        context = multiprocessing.get_context("spawn")
        self._to_child = context.Queue()
        self._from_child = context.Queue()
        self._process = context.Process(
            target=_child_main, name=f"freeze-omni-{name}", daemon=True,
            args=(factory, name, num_threads, feed_seconds, pump_budget_s, self._to_child,
                  self._from_child))
        self._process.start()
        self._reader: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ start
    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> "ProcessReplica":
        """Block until the child has built its model (raises with the child's error)."""
        try:
            kind, info = self._from_child.get(timeout=timeout)
        except queue.Empty:
            self._process.kill()
            raise RuntimeError(f"{self.name}: the model process did not start within "
                               f"{timeout:.0f} s") from None
        if kind != "ready":
            self._process.join(5)
            raise RuntimeError(f"{self.name}: the model process failed to build its model:\n"
                               f"{info}")
        self.input_sample_rate = info["input_sample_rate"]
        self.output_sample_rate = info["output_sample_rate"]
        self.tokenizer = info["tokenizer"]
        self.alive = True
        self._reader = threading.Thread(target=self._read, name=f"{self.name}-reader",
                                        daemon=True)
        self._reader.start()
        return self

    # ------------------------------------------------------------------ as a thread Replica
    @property
    def load(self) -> float:
        """Sessions on this copy; a dead copy is never the least loaded."""
        return len(self.sessions) if self.alive else float("inf")

    def attach(self, served: ServedSession) -> None:
        with self._lock:
            sid = next(self._ids)
            served.remote_id = sid
            served.replica = self
            self.sessions[sid] = served
            self._to_child.put(("attach", sid, served.name))
            early = list(served.inbox)  # put before the attach: forward in order
            served.inbox.clear()
        for kind, payload, event_id in early:
            self.send(served, kind, payload, event_id)
        if not self.alive:
            served.post("failed", f"the model process {self.name} is not running "
                        f"({self.exit_reason})")

    def send(self, served: ServedSession, kind: str, payload: Any,
             event_id: Optional[str]) -> None:
        if self.alive:
            self._to_child.put(("put", served.remote_id, kind, payload, event_id))

    def detach(self, served: ServedSession) -> None:
        with self._lock:
            sid = served.remote_id
            if self.sessions.pop(sid, None) is not None and self.alive:
                self._to_child.put(("close", sid))

    def wake(self) -> None:
        pass  # the child wakes on its queue

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping = True
        if self._process.is_alive():
            try:
                self._to_child.put(("stop",))
            except (OSError, ValueError):
                pass
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(timeout)
        self.alive = False
        if self._reader is not None:
            self._reader.join(timeout)

    # ------------------------------------------------------------------ the child's posts
    def _read(self) -> None:
        while True:
            try:
                message = self._from_child.get(timeout=0.5)
            except queue.Empty:
                if self._process.is_alive():
                    continue
                self._died()
                return
            except (EOFError, OSError):
                self._died()
                return
            if message[0] == "stopped":
                return
            sid, kind, payload = message
            served = self.sessions.get(sid)
            if kind == "rounds":
                self.rounds = payload
            elif served is None or served.closed:
                continue  # a session closed here while its posts were on the way
            elif kind == "fed":
                served.consumed(payload)
            else:
                served.post(kind, payload)

    def _died(self) -> None:
        self.alive = False
        if self._stopping:
            return
        self.exit_reason = f"exit code {self._process.exitcode}"
        logging.error("model process %s died (%s); its sessions fail", self.name,
                      self.exit_reason)
        with self._lock:
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for served in sessions:
            if not served.closed:
                served.post("failed", f"the model process {self.name} died "
                            f"({self.exit_reason})")


def start_process_replicas(factories, num_threads: Optional[int] = None, **kwargs):
    """Start one ProcessReplica per factory, all loading at once; returns them when ready."""
    replicas = [ProcessReplica(f, name=f"replica{i}", num_threads=num_threads, **kwargs)
                for i, f in enumerate(factories)]
    try:
        return [r.wait_ready() for r in replicas]
    except Exception:
        for r in replicas:
            r.stop()
        raise


# ---------------------------------------------------------------------------- the child
def _child_main(factory, name, num_threads, feed_seconds, pump_budget_s, inbox, outbox) -> None:
    import torch

    from espnet_freeze_omni.serve.scheduler import Replica

    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        s2s = factory()
    except BaseException:
        outbox.put(("error", traceback.format_exc()))
        return
    outbox.put(("ready", {"input_sample_rate": s2s.input_sample_rate,
                          "output_sample_rate": s2s.sample_rate,
                          "tokenizer": s2s.llm.tokenizer}))
    replica = Replica(s2s, name=name, feed_seconds=feed_seconds, pump_budget_s=pump_budget_s)
    sessions: Dict[int, ServedSession] = {}
    reported_rounds = 0
    parent = multiprocessing.parent_process()
    while True:
        try:
            message = inbox.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():  # the server was killed
                replica.stop()
                return
            continue
        kind = message[0]
        if kind == "attach":
            _, sid, session_name = message
            served = ServedSession(_Poster(outbox, sid), name=session_name)
            served.report_fed = True
            sessions[sid] = served
            replica.attach(served)
        elif kind == "put":
            _, sid, item, payload, event_id = message
            if sid in sessions:
                sessions[sid].put(item, payload, event_id)
        elif kind == "close":
            served = sessions.pop(message[1], None)
            if served is not None:
                served.close()
        elif kind == "stop":
            replica.stop()
            outbox.put(("stopped",))
            return
        if replica.rounds - reported_rounds >= 50:  # for /healthz, now and then
            reported_rounds = replica.rounds
            outbox.put((-1, "rounds", reported_rounds))


class _Poster:
    """A child session's `post`: its results go to the parent, tagged with the session id."""

    def __init__(self, outbox, sid: int):
        self.outbox = outbox
        self.sid = sid

    def __call__(self, kind: str, payload: Any) -> None:
        self.outbox.put((self.sid, kind, payload))
