"""One websocket client: Realtime client events in, the session's events out as server events.

The connection lives on the server's event loop. It decodes and checks the client's events,
resamples input audio to the model's rate, puts work into its ServedSession's inbox, and
turns what the worker hands back (DuplexSession events) into Realtime server events:

    speech_started / speech_stopped   input_audio_buffer.speech_started / speech_stopped
    turn_ended                        input_audio_buffer.committed (a spoken turn),
                                      response.created
    text                              response.output_audio_transcript.delta
    audio                             response.output_audio.delta (PCM16, 24 kHz)
    answer_done                       response.output_audio.done,
                                      response.output_audio_transcript.done, response.done
                                      (status cancelled at a barge-in or response.cancel)
    state / ignored / paused /        freeze_omni.state / freeze_omni.ignored /
    resumed / interrupted             freeze_omni.paused / freeze_omni.resumed /
                                      freeze_omni.interrupted (extras: clients ignore them)
    (per answer)                      freeze_omni.latency: speech end -> first audio, stages

A typed user message (conversation.item.create, input_text) is acknowledged with
conversation.item.added and answered at the next response.create by the session's
text_turn.

Latency is measured on the server's wall clock: from when the audio holding the speech end
arrived (the VAD's speech_stopped position, or the commit for a manual turn) to when the
answer's first audio event was queued for the client.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import json
import time
from typing import Any, Deque, Dict, List, Optional

from espnet_freeze_omni.serve.audio import (
    AudioFormatError,
    StreamingResampler,
    decode_pcm16,
    encode_pcm16,
)
from espnet_freeze_omni.serve.protocol import (
    OUTPUT_RATE,
    ProtocolError,
    SessionConfig,
    error_event,
    new_id,
    response_object,
    server_event,
)
from espnet_freeze_omni.serve.scheduler import ServedSession

# how long receipt times of input audio are kept to find where a turn's speech ended
RECEIPT_LOG_SECONDS = 120.0


@dataclasses.dataclass
class _Response:
    """One answer as the client sees it."""

    id: str
    item_id: str
    created_at: float
    speech_end_at: Optional[float]  # wall time the speech end (or commit) arrived
    speech_end_sample: Optional[int] = None
    token_ids: List[int] = dataclasses.field(default_factory=list)
    transcript: str = ""  # as sent in deltas
    first_audio_at: Optional[float] = None
    audio_samples: int = 0
    cancel_requested: bool = False
    done: bool = False
    resampler: Optional[StreamingResampler] = None  # a codec not at 24 kHz
    # the freeze_omni.latency figures known at response.done, held until the VAD names
    # where the speech ended (the state head often answers before the VAD's silence wait)
    latency_pending: Optional[Dict[str, Any]] = None


class RealtimeConnection:
    """The protocol of one websocket (see the module docstring)."""

    def __init__(self, ws, server, model: str):
        self.ws = ws
        self.server = server
        self.limits = server.limits
        self.loop = asyncio.get_running_loop()
        self.config = SessionConfig(model=model)
        self.input_rate = server.input_sample_rate  # the model's (16 kHz)
        self.output_rate = server.output_sample_rate
        self.resampler = self._resampler(self.config.input_rate)
        self.served = ServedSession(self._post_from_worker, name=self.config.id)
        self.closed = False
        self.close_reason = ""
        self.last_client_event = time.monotonic()
        # outgoing events, drained by the sender task; bounded by limits.max_outbox_bytes
        self.outbox: asyncio.Queue = asyncio.Queue()
        self.outbox_bytes = 0
        # session configurations sent to the worker, oldest first: (config, previous, input
        # samples before it); a configuration that builds a new session restarts its clock
        self.pending_configs: Deque = collections.deque()
        self.samples_in = 0  # input samples (model rate) handed to the connection
        self.session_start = 0  # of them, those before the current session
        self.receipts: Deque = collections.deque()  # (samples_in after a frame, wall time)
        self.user_item: Optional[str] = None
        self.previous_item: Optional[str] = None
        self.speech_end_sample: Optional[int] = None  # the last speech_stopped of this turn
        self.last_commit_at: Optional[float] = None
        # typed user turns (conversation.item.create) waiting for response.create: (item, text)
        self.text_items: List[tuple] = []
        self.answers = 0  # turn_ended events seen: the session's answer ids
        self.responses: Dict[int, _Response] = {}
        self.stats = collections.Counter()

    # ------------------------------------------------------------------ lifetime
    async def run(self) -> None:
        sender = asyncio.ensure_future(self._sender())
        watchdog = asyncio.ensure_future(self._watchdog())
        try:
            self.server.attach(self.served)
            self.pending_configs.append((self.config, None, 0))
            self.served.put("configure", self.config.session_options())
            self.send(server_event("session.created", session=self.config.describe()))
            await self._read()
        finally:
            self.release()
            watchdog.cancel()
            self.outbox.put_nowait(None)
            try:
                await asyncio.wait_for(sender, timeout=2.0)
            except (asyncio.TimeoutError, Exception):
                sender.cancel()
            if not self.ws.closed:
                await self.ws.close()

    def release(self) -> None:
        """Free the session now (disconnect, limit, failure): idempotent."""
        if not self.closed:
            self.closed = True
            self.served.close()
            self.server.detach(self)

    async def close(self, code: int, reason: str) -> None:
        self.close_reason = reason
        self.release()
        self.outbox.put_nowait(None)
        await self.ws.close(code=code, message=reason.encode()[:120])

    async def _read(self) -> None:
        from aiohttp import WSMsgType

        async for msg in self.ws:
            self.last_client_event = time.monotonic()
            if msg.type == WSMsgType.TEXT:
                self.handle_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                self.send(error_event("invalid_event", "binary frames are not part of the "
                                      "protocol: send JSON text events"))
            else:  # ERROR (e.g. a frame over the size limit): aiohttp closes the socket
                self.close_reason = f"websocket error: {self.ws.exception()}"
                break
            if self.closed:
                break

    async def _sender(self) -> None:
        while True:
            text = await self.outbox.get()
            if text is None or self.ws.closed:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                self.release()
                return
            self.outbox_bytes -= len(text)

    async def _watchdog(self) -> None:
        """Idle connections are closed (a client that went silent without closing)."""
        while not self.closed:
            await asyncio.sleep(min(1.0, self.limits.idle_timeout_s / 4))
            idle = time.monotonic() - self.last_client_event
            busy = any(not r.done for r in self.responses.values())
            if idle > self.limits.idle_timeout_s and not busy:
                self.send(error_event("idle_timeout", f"no client event for "
                                      f"{self.limits.idle_timeout_s:g} s: closing the session"))
                await asyncio.sleep(0.05)
                await self.close(1000, "idle timeout")
                return

    def send(self, event: Dict[str, Any]) -> None:
        if self.closed and event.get("type") != "error":
            return
        text = json.dumps(event)
        if self.outbox_bytes + len(text) > self.limits.max_outbox_bytes:
            # a client that does not read: its session ends rather than the server's memory
            if not self.closed:
                self.stats["slow_reader_closed"] += 1
                asyncio.ensure_future(self.close(1008, "client too slow: events not read"))
            return
        self.outbox_bytes += len(text)
        self.outbox.put_nowait(text)

    # ------------------------------------------------------------------ client events
    def handle_text(self, data: str) -> None:
        try:
            event = json.loads(data)
        except ValueError as err:
            self.send(error_event("invalid_json", f"the frame is not JSON: {err}"))
            return
        event_id = event.get("event_id") if isinstance(event, dict) else None
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            self.send(error_event("invalid_event", "an event is a JSON object with a string "
                                  "`type`", event_id if isinstance(event_id, str) else None))
            return
        handler = self.HANDLERS.get(event["type"])
        try:
            if handler is None:
                raise ProtocolError("unknown_event_type", f"unknown client event type "
                                    f"{event['type']!r}: this server takes "
                                    f"{', '.join(sorted(self.HANDLERS))}", "type")
            handler(self, event)
        except ProtocolError as err:
            self.send(error_event(err.code, err.message, event_id, err.param, err.error_type))

    def on_session_update(self, event: Dict[str, Any]) -> None:
        previous = self.config
        self.config = previous.updated(event.get("session"))
        if self.config.input_rate != previous.input_rate:
            self.resampler = self._resampler(self.config.input_rate)
        self.pending_configs.append((self.config, previous, self.samples_in))
        self.served.put("configure", self.config.session_options(), event.get("event_id"))

    def on_append(self, event: Dict[str, Any]) -> None:
        try:
            pcm = decode_pcm16(event.get("audio"))
        except AudioFormatError as err:
            raise ProtocolError("invalid_audio", f"{err}; nothing of this append was used",
                                "audio") from None
        if self.resampler is not None:
            pcm = self.resampler.push(pcm)
        limit = int(self.limits.max_buffered_seconds * self.input_rate)
        if self.served.buffered_samples + len(pcm) > limit:
            self.stats["appends_dropped"] += 1
            raise ProtocolError(
                "input_audio_buffer_full",
                f"more than {self.limits.max_buffered_seconds:g} s of input audio is waiting "
                "for the model: this append was dropped (send audio in real time)", "audio",
                "server_error")
        if len(pcm) == 0:
            return
        self.samples_in += len(pcm)
        now = time.monotonic()
        self.receipts.append((self.samples_in, now))
        while self.receipts and self.receipts[0][1] < now - RECEIPT_LOG_SECONDS:
            self.receipts.popleft()
        self.served.put("audio", pcm)

    def on_commit(self, event: Dict[str, Any]) -> None:
        self.last_commit_at = time.monotonic()
        self.served.put("commit", None, event.get("event_id"))

    def on_clear(self, event: Dict[str, Any]) -> None:
        self.served.put("clear", None, event.get("event_id"))

    def on_response_create(self, event: Dict[str, Any]) -> None:
        if self.last_commit_at is None:
            self.last_commit_at = time.monotonic()
        text = None
        if self.text_items:  # the typed turns since the last response make one user turn
            self.user_item = self.text_items[-1][0]
            text = "\n".join(t for _, t in self.text_items)
            self.text_items = []
        self.served.put("respond", text, event.get("event_id"))

    def on_response_cancel(self, event: Dict[str, Any]) -> None:
        self.served.put("cancel", None, event.get("event_id"))

    def on_item_create(self, event: Dict[str, Any]) -> None:
        """A typed user message: added to the conversation now (conversation.item.added),
        answered at the next response.create through the session's text turn."""
        item = event.get("item")
        if not isinstance(item, dict):
            raise ProtocolError("invalid_value", "conversation.item.create needs an `item`",
                                "item")
        content = item.get("content") or []
        kinds = {c.get("type") for c in content if isinstance(c, dict)}
        if item.get("type", "message") != "message" or item.get("role", "user") != "user" \
                or not kinds or not kinds <= {"input_text", "text"}:
            raise ProtocolError(
                "unsupported_item",
                f"conversation items of type {item.get('type')!r}, role {item.get('role')!r} "
                f"with {sorted(k for k in kinds if k) or 'no'} content cannot be added: this "
                "server takes user messages of input_text (answered at response.create) and "
                "audio through input_audio_buffer.append", "item")
        text = " ".join(str(c.get("text") or "") for c in content if isinstance(c, dict)).strip()
        if not text:
            raise ProtocolError("invalid_value", "the user message has no text",
                                "item.content")
        item_id = item.get("id") if isinstance(item.get("id"), str) else new_id("item")
        previous = self.text_items[-1][0] if self.text_items else self.previous_item
        self.text_items.append((item_id, text))
        self.send(server_event("conversation.item.added", previous_item_id=previous, item={
            "id": item_id, "type": "message", "object": "realtime.item", "role": "user",
            "status": "completed", "content": [{"type": "input_text", "text": text}]}))

    def on_item_truncate(self, event: Dict[str, Any]) -> None:
        # the session already keeps an interrupted answer as far as it was voiced
        self.send(server_event("conversation.item.truncated", item_id=event.get("item_id"),
                               content_index=event.get("content_index", 0),
                               audio_end_ms=event.get("audio_end_ms", 0)))

    HANDLERS = {
        "session.update": on_session_update,
        "input_audio_buffer.append": on_append,
        "input_audio_buffer.commit": on_commit,
        "input_audio_buffer.clear": on_clear,
        "response.create": on_response_create,
        "response.cancel": on_response_cancel,
        "conversation.item.create": on_item_create,
        "conversation.item.truncate": on_item_truncate,
    }

    # ------------------------------------------------------------------ worker results
    def _post_from_worker(self, kind: str, payload: Any) -> None:
        """Called on the worker thread: hand over to the event loop, never block."""
        if self.closed:
            return
        try:
            self.loop.call_soon_threadsafe(self._on_worker, kind, payload)
        except RuntimeError:  # the loop has stopped (server shutdown)
            pass

    def _on_worker(self, kind: str, payload: Any) -> None:
        if self.closed:
            return
        if kind == "configured":
            config, previous, samples_before = self.pending_configs.popleft()
            if payload:  # a new session: its sample 0 is the audio after this update
                self.session_start = samples_before
            if previous is not None:
                self.send(server_event("session.updated", session=config.describe()))
        elif kind == "error":
            code, message, event_id = payload
            if code in ("conversation_in_progress", "invalid_value") and self.pending_configs:
                _, previous, _ = self.pending_configs.popleft()
                self.config = dataclasses.replace(previous, input_rate=self.config.input_rate)
            self.send(error_event(code, message, event_id))
        elif kind == "cleared":
            self.user_item = None
            self.send(server_event("input_audio_buffer.cleared"))
        elif kind == "cancelling":
            if payload in self.responses:
                self.responses[payload].cancel_requested = True
        elif kind == "failed":
            self.send(error_event("session_failed", f"the session failed and was closed: "
                                  f"{payload}", error_type="server_error"))
            asyncio.ensure_future(self.close(1011, "session failed"))
        elif kind == "events":
            for event in payload:
                self._translate(event)

    def _translate(self, e) -> None:
        data = e.data
        if e.type == "speech_started":
            self.user_item = self.user_item or new_id("item")
            self.speech_end_sample = None
            self.send(server_event("input_audio_buffer.speech_started",
                                   audio_start_ms=int(round(data["at"] * 1000)),
                                   item_id=self.user_item))
        elif e.type == "speech_stopped":
            self.speech_end_sample = int(round(data["at"] * self.input_rate))
            self.send(server_event("input_audio_buffer.speech_stopped",
                                   audio_end_ms=int(round(data["at"] * 1000)),
                                   item_id=self.user_item or new_id("item")))
            latest = self.responses.get(self.answers)
            if latest is not None and latest.speech_end_sample is None \
                    and latest.speech_end_at is None:
                # the state head took the turn before the VAD's silence was long enough (it
                # waits 2 s by default, often past the answer's first audio, even past its
                # end): the speech end is where the VAD says, whenever it says it
                latest.speech_end_sample = self.speech_end_sample
                latest.speech_end_at = self._arrival(self.speech_end_sample)
                if latest.latency_pending is not None:
                    self._send_latency(latest)
        elif e.type == "state":
            self.send(server_event("freeze_omni.state", state=data["state"], chunk=data["chunk"],
                                   probs=data["probs"], audio_ms=int(round(e.audio_time * 1000))))
        elif e.type == "ignored":
            self.send(server_event("freeze_omni.ignored", item_id=self.user_item))
            self.user_item = None
        elif e.type == "turn_ended":
            self._turn_ended(e)
        elif e.type in ("text", "audio", "paused", "resumed", "interrupted", "answer_done"):
            response = self.responses.get(data["answer_id"])
            if response is not None:
                getattr(self, "_answer_" + e.type)(response, e)

    def _turn_ended(self, e) -> None:
        previous = self.responses.get(self.answers)
        if previous is not None and previous.latency_pending is not None:
            self._send_latency(previous)  # no speech end came before the next turn
        item = self.user_item or new_id("item")
        if "text" not in e.data:  # a typed turn was announced by conversation.item.added
            self.send(server_event("input_audio_buffer.committed",
                                   previous_item_id=self.previous_item, item_id=item))
        self.send(server_event("freeze_omni.turn_ended", item_id=item,
                               forced=e.data["forced"], heard_seconds=e.data["heard_seconds"]))
        self.previous_item, self.user_item = item, None
        self.answers += 1
        now = time.monotonic()
        if e.data["forced"] and self.last_commit_at is not None:
            speech_end_at, sample = self.last_commit_at, None  # a committed turn
        elif self.speech_end_sample is not None:
            sample = self.speech_end_sample
            speech_end_at = self._arrival(sample)
        else:  # decided before the VAD said the speech stopped: set at speech_stopped
            speech_end_at, sample = None, None
        self.last_commit_at = None
        self.speech_end_sample = None
        response = _Response(new_id("resp"), new_id("item"), now, speech_end_at, sample)
        self.responses[self.answers] = response
        for old in [k for k, r in self.responses.items() if r.done and k < self.answers - 4]:
            del self.responses[old]
        self.send(server_event("response.created",
                               response=response_object(response.id, "in_progress",
                                                        response.item_id)))

    def _answer_text(self, response: _Response, e) -> None:
        # deltas only ever append: text is decoded from all the answer's tokens, and a
        # character still missing bytes (byte-fallback tokens) waits for the next token
        response.token_ids.append(e.data["token_id"])
        text = self.server.tokenizer.decode(response.token_ids, skip_special_tokens=True)
        self._transcript_delta(response, text.rstrip("\ufffd"))

    def _transcript_delta(self, response: _Response, text: str) -> None:
        if not text.startswith(response.transcript) or text == response.transcript:
            return
        delta = text[len(response.transcript):]
        response.transcript = text
        self.send(server_event("response.output_audio_transcript.delta",
                               response_id=response.id, item_id=response.item_id,
                               output_index=0, content_index=0, delta=delta))

    def _answer_audio(self, response: _Response, e) -> None:
        pcm = e.pcm
        if self.output_rate != OUTPUT_RATE:
            if response.resampler is None:
                response.resampler = StreamingResampler(self.output_rate, OUTPUT_RATE)
            pcm = response.resampler.push(pcm)
        if response.first_audio_at is None:
            response.first_audio_at = time.monotonic()
        response.audio_samples += len(pcm)
        self.send(server_event("response.output_audio.delta", response_id=response.id,
                               item_id=response.item_id, output_index=0, content_index=0,
                               delta=encode_pcm16(pcm)))

    def _answer_paused(self, response: _Response, e) -> None:
        # the user started speaking over the answer: the client stops playback now (what it
        # had queued is sent again at freeze_omni.resumed if the speech was not a turn)
        response.audio_samples -= int(round(e.data["taken_back_seconds"] * OUTPUT_RATE))
        self.send(server_event("freeze_omni.paused", response_id=response.id,
                               voiced_text=e.data["voiced_text"],
                               voiced_tokens=e.data["voiced_tokens"]))

    def _answer_resumed(self, response: _Response, e) -> None:
        self.send(server_event("freeze_omni.resumed", response_id=response.id,
                               paused_ms=int(round(e.data["paused_seconds"] * 1000))))

    def _answer_interrupted(self, response: _Response, e) -> None:
        self.send(server_event("freeze_omni.interrupted", response_id=response.id,
                               voiced_text=e.data["voiced_text"],
                               voiced_tokens=e.data["voiced_tokens"],
                               heard_seconds=e.data["heard_seconds"],
                               reason="client_cancelled" if response.cancel_requested
                               else "turn_detected"))

    def _answer_answer_done(self, response: _Response, e) -> None:
        response.done = True
        completed = e.data["status"] == "completed"
        status = "completed" if completed else "cancelled"
        reason = None if completed else (
            "client_cancelled" if response.cancel_requested else "turn_detected")
        transcript = e.data["text"]
        full = self.server.tokenizer.decode(response.token_ids, skip_special_tokens=True)
        self._transcript_delta(response, full)  # a last incomplete character, as it is
        common = dict(response_id=response.id, item_id=response.item_id, output_index=0,
                      content_index=0)
        self.send(server_event("response.output_audio.done", **common))
        self.send(server_event("response.output_audio_transcript.done", transcript=transcript,
                               **common))
        self.send(server_event("response.done", response=response_object(
            response.id, status, response.item_id, transcript, reason)))
        response.latency_pending = dict(
            audio_seconds=round(response.audio_samples / OUTPUT_RATE, 4),
            stages_s=e.data.get("timings", {}), compute_s=e.data.get("compute", {}))
        if response.speech_end_at is not None or not self.config.session_options().get("vad"):
            self._send_latency(response)  # else: at the VAD's speech_stopped (or next turn)
        self.stats["responses_" + status] += 1

    def _send_latency(self, response: _Response) -> None:
        first_audio = None
        if response.first_audio_at is not None and response.speech_end_at is not None:
            first_audio = round(response.first_audio_at - response.speech_end_at, 4)
        self.send(server_event(
            "freeze_omni.latency", response_id=response.id,
            speech_end_to_first_audio_s=first_audio,
            speech_end_to_decision_s=None if response.speech_end_at is None
            else round(response.created_at - response.speech_end_at, 4),
            **response.latency_pending))
        response.latency_pending = None

    # ------------------------------------------------------------------ helpers
    def _resampler(self, client_rate: int) -> Optional[StreamingResampler]:
        return None if client_rate == self.input_rate else \
            StreamingResampler(client_rate, self.input_rate)

    def _arrival(self, sample: int) -> Optional[float]:
        """Wall time at which the session's input sample `sample` arrived (None: not in
        the log)."""
        ends: List[int] = [end for end, _ in self.receipts]
        i = bisect.bisect_left(ends, sample + self.session_start)
        if i < len(self.receipts):
            return self.receipts[i][1]
        return self.receipts[-1][1] if self.receipts else None
