"""The voice server: OpenAI-Realtime protocol, many sessions on one model, limits, bad input.

One server runs in this process (its own event-loop thread and one worker thread) around the
tiny untrained model of test_speech2speech; clients talk to it over loopback. The state head
is untrained, so turns end by commit (turn_detection null). A client's answer is identified
by what a single DuplexSession gives for the same audio: the greedy answer depends on the
audio heard, and each client sends its own noise of its own length.
"""
from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from test_speech2speech import pack, s2s, work  # noqa: F401 (fixtures)

from espnet_freeze_omni.models.speech_input import STATE_IGNORE, STATE_LISTEN, STATE_RESPOND
from espnet_freeze_omni.serve.audio import StreamingResampler, decode_pcm16, encode_pcm16

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RATE = 16000
MANUAL = {"type": "realtime", "audio": {"input": {
    "format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": None}}}


def state_head_session(max_new_tokens: int) -> dict:
    """session.update body: 16 kHz input, the state head taking turns (semantic_vad)."""
    return {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE},
        "turn_detection": {"type": "semantic_vad"}}},
        "freeze_omni": {"max_new_tokens": max_new_tokens}}


def noise(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(seconds * rate)) * 0.1).astype(np.float32)


def single_session_answer(s2s, wav16k: np.ndarray, system_role=None) -> str:
    """What one DuplexSession answers to this audio, committed: the reference answer."""
    session = s2s.session(vad=False, turn_detection="manual", system_role=system_role)
    session.feed(wav16k)
    events = session.commit() + session.flush()
    return [e for e in events if e.type == "answer_done"][0].data["text"]


@pytest.fixture(scope="module")
def server(s2s):
    from espnet_freeze_omni.serve.server import ServerLimits, VoiceServer

    voice = VoiceServer([s2s], ServerLimits(max_sessions=10, max_buffered_seconds=3.0,
                                            max_frame_bytes=256 * 1024, idle_timeout_s=30.0))
    running = voice.start_in_thread()
    yield running
    running.stop()


@pytest.fixture
def limits(server):
    """Change the server's limits for one test."""
    saved = dict(vars(server.server.limits))
    yield server.server.limits
    vars(server.server.limits).update(saved)


class Client:
    """A raw websocket client that records every server event."""

    def __init__(self, ws):
        self.ws = ws
        self.events = []

    @classmethod
    async def open(cls, server, model="freeze-omni"):
        from websockets.asyncio.client import connect

        ws = await connect(f"{server.ws_url}?model={model}", max_size=None)
        client = cls(ws)
        await client.until("session.created")
        return client

    async def send(self, **event):
        await self.ws.send(json.dumps(event))

    async def send_raw(self, text):
        await self.ws.send(text)

    async def until(self, kind, timeout=30.0, where=lambda e: True):
        """Read events until one of type `kind` (and `where`); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {kind} within {timeout} s; got "
                                   f"{[e['type'] for e in self.events][-12:]}")
            event = json.loads(await asyncio.wait_for(self.ws.recv(), left))
            self.events.append(event)
            if event["type"] == kind and where(event):
                return event

    def of(self, kind):
        return [e for e in self.events if e["type"] == kind]

    async def stream(self, wav16k, frame_seconds=0.04, real_time=True):
        step = int(frame_seconds * RATE)
        start = time.monotonic()
        for i in range(0, len(wav16k), step):
            await self.send(type="input_audio_buffer.append",
                            audio=encode_pcm16(wav16k[i:i + step]))
            if real_time:  # as a microphone delivers it
                await asyncio.sleep(max(0.0, start + (i + step) / RATE - time.monotonic()))

    async def turn(self, wav16k, real_time=False):
        """Configure manual turns, send the audio, commit; returns response.done."""
        await self.send(type="session.update", session=MANUAL)
        await self.until("session.updated")
        await self.stream(wav16k, real_time=real_time)
        await self.send(type="input_audio_buffer.commit")
        return await self.until("response.done")

    def transcript(self):
        return "".join(e["delta"] for e in self.of("response.output_audio_transcript.delta"))


def health(server):
    with urllib.request.urlopen(f"{server.url}/healthz", timeout=5) as reply:
        return json.loads(reply.read())


def wait_sessions(server, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    while health(server)["sessions"] != count:
        assert time.monotonic() < deadline, f"sessions stay at {health(server)['sessions']}"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- a real client
def openai_client_turn(server, send, timeout=60):
    """Connect the official `openai` client's realtime connection to this server, run
    `send(connection)`, and return every server event up to response.done."""
    from openai import AsyncOpenAI

    async def talk():
        client = AsyncOpenAI(websocket_base_url=f"{server.ws_url[:-len('/realtime')]}",
                             api_key="x")
        events = []
        async with client.realtime.connect(model="freeze-omni") as connection:
            await send(connection)
            async for event in connection:
                events.append(event)
                if event.type == "response.done":
                    break
        return events

    return asyncio.run(asyncio.wait_for(talk(), timeout))


def test_official_openai_client_gets_a_spoken_answer(server, s2s):
    """The `openai` package's realtime connection, pointed at this server, unchanged."""
    frames = [encode_pcm16(noise(0.1, seed=11 + i, rate=24000)) for i in range(12)]
    # the server resamples 24 kHz to the model's 16 kHz with a streaming resampler
    heard = StreamingResampler(24000, RATE).push(np.concatenate([decode_pcm16(f) for f in frames]))
    role = "You are a terse assistant."
    expected = single_session_answer(s2s, heard, system_role=role)

    async def talk(connection):
        await connection.session.update(session={
            "type": "realtime", "instructions": role,
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                "turn_detection": None}}})
        for frame in frames:
            await connection.input_audio_buffer.append(audio=frame)
        await connection.input_audio_buffer.commit()
        await connection.response.create()

    events = openai_client_turn(server, talk)
    kinds = [e.type for e in events]
    assert kinds[0] == "session.created" and "session.updated" in kinds
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta")
    audio = b"".join(base64.b64decode(e.delta) for e in events
                     if e.type == "response.output_audio.delta")
    assert len(audio) > 0 and len(audio) % 2 == 0
    done = events[-1]
    assert done.response.status == "completed"
    assert done.response.output[0].content[0].transcript == expected
    assert not [e for e in events if e.type == "error"]  # response.create was the commit's


def test_official_openai_client_typed_message_is_answered_as_text_in(server, s2s):
    """conversation.item.create (input_text) + response.create through the `openai` client:
    the answer is the text-in model's answer to that question, and it is spoken."""
    question = "where does anna live"
    expected = s2s.answer_text(question).text

    async def talk(connection):
        await connection.session.update(session={
            "type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await connection.conversation.item.create(item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": question}]})
        await connection.response.create()

    events = openai_client_turn(server, talk)
    kinds = [e.type for e in events]
    assert not [e for e in events if e.type == "error"], events
    added = [e for e in events if e.type == "conversation.item.added"]
    assert len(added) == 1 and added[0].item.content[0].text == question
    assert "input_audio_buffer.committed" not in kinds  # no audio was committed
    assert kinds.index("response.created") < kinds.index("response.output_audio.delta")
    done = events[-1]
    assert done.response.status == "completed"
    assert done.response.output[0].content[0].transcript == expected


# ---------------------------------------------------------------------------- many clients
def test_eight_concurrent_clients_each_get_their_own_answer(server, s2s):
    questions = [noise(0.8 + 0.16 * i, seed=100 + i) for i in range(8)]
    expected = [single_session_answer(s2s, q) for q in questions]

    async def one(i):
        client = await Client.open(server)
        done = await client.turn(questions[i], real_time=True)
        await client.until("freeze_omni.latency")  # comes right after response.done
        ended = client.of("freeze_omni.turn_ended")[0]
        await client.ws.close()
        return client, done, ended

    async def everyone():
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(8))), 120)

    results = asyncio.run(everyone())
    for i, (client, done, ended) in enumerate(results):
        assert done["response"]["status"] == "completed", i
        # the turn this client's session heard is this client's audio, whole
        assert ended["heard_seconds"] == pytest.approx(len(questions[i]) / RATE, abs=0.01)
        assert client.transcript().strip() == expected[i], i
        assert done["response"]["output"][0]["content"][0]["transcript"] == expected[i]
        assert client.of("response.output_audio.delta")
        latency = client.of("freeze_omni.latency")[0]["speech_end_to_first_audio_s"]
        assert latency is not None and latency >= 0
    assert len(set(expected)) > 1  # the answers tell the clients apart
    wait_sessions(server, 0)


def test_process_replicas_answer_like_one_session_and_survive_a_dead_copy(work, s2s):
    """Two model copies in child processes: each client's answer equals the in-process
    session's, consumed audio is counted back, and when one child dies its client gets
    session_failed while the other copy goes on serving (new clients included)."""
    import functools

    from espnet_freeze_omni.inference.speech2speech import Speech2Speech
    from espnet_freeze_omni.serve.server import ServerLimits, VoiceServer, start_replicas
    from test_speech2speech import DECODE

    load = functools.partial(Speech2Speech.from_files, None, work["speech_input"], None,
                             work["speech_output"], codec_dir=work["codec"], decode_conf=DECODE)
    replicas = start_replicas([load, load], mode="process", num_threads=1)
    running = VoiceServer(limits=ServerLimits(max_sessions=4),
                          replicas=replicas).start_in_thread()
    questions = [noise(0.9, seed=300), noise(1.3, seed=301), noise(1.1, seed=302)]
    expected = [single_session_answer(s2s, q) for q in questions]
    try:
        async def two_then_kill():
            a, b = await Client.open(running), await Client.open(running)
            done = await asyncio.gather(a.turn(questions[0]), b.turn(questions[1]))
            spread = [r["sessions"] for r in health(running)["replicas"]]
            buffered = [c.served.buffered_samples for c in running.server.connections]
            # b's copy dies (the least loaded copy took each new client: a the first, b the
            # second): b hears why and is closed; a, on the other copy, goes on
            replicas[1]._process.kill()
            failed = await b.until("error", where=lambda e: e["error"]["code"] ==
                                   "session_failed")
            again = await a.turn(questions[0])  # a's second turn: its answer has history
            await a.ws.close()
            c = await Client.open(running)  # goes to the copy still alive
            late = await c.turn(questions[2])
            await c.ws.close()
            return a, b, c, done, spread, buffered, failed, again, late

        a, b, c, done, spread, buffered, failed, again, late = asyncio.run(
            asyncio.wait_for(two_then_kill(), 600))
        assert [d["response"]["status"] for d in done] == ["completed", "completed"]
        assert a.of("response.done")[0]["response"]["output"][0]["content"][0][
            "transcript"] == expected[0]
        assert b.transcript().strip() == expected[1]
        assert spread == [1, 1]  # one session on each copy
        assert buffered == [0, 0]  # the children counted every sample they consumed
        assert "died" in failed["error"]["message"]
        assert again["response"]["status"] == "completed"
        assert len(a.of("response.done")) == 2 and len(a.of("response.created")) == 2
        assert late["response"]["output"][0]["content"][0]["transcript"] == expected[2]
        replicas_now = health(running)["replicas"]
        assert [r["process"] for r in replicas_now] == [True, True]
        assert sorted(r["alive"] for r in replicas_now) == [False, True]
    finally:
        running.stop()


# ---------------------------------------------------------------------------- bad input
def test_bad_events_get_error_events_and_the_session_goes_on(server, s2s):
    question = noise(1.0, seed=7)
    expected = single_session_answer(s2s, question)

    async def run():
        client = await Client.open(server)
        await client.send_raw("{not json")
        assert (await client.until("error"))["error"]["code"] == "invalid_json"
        await client.send_raw("[1, 2]")
        assert (await client.until("error"))["error"]["code"] == "invalid_event"
        await client.send(type="no.such.event", event_id="evt_1")
        error = (await client.until("error"))["error"]
        assert error["code"] == "unknown_event_type" and error["event_id"] == "evt_1"
        await client.send(type="input_audio_buffer.append", audio="%%%not base64", event_id="e2")
        error = (await client.until("error"))["error"]
        assert error["code"] == "invalid_audio" and error["event_id"] == "e2"
        await client.send(type="input_audio_buffer.append",
                          audio=base64.b64encode(b"\x01\x02\x03").decode(), event_id="e3")
        assert (await client.until("error"))["error"]["code"] == "invalid_audio"
        await client.send(type="session.update", event_id="e4", session={
            "type": "realtime", "audio": {"input": {"format": {"type": "audio/pcm",
                                                              "rate": 44100}}}})
        error = (await client.until("error"))["error"]
        assert error["code"] == "unsupported_sample_rate" and error["event_id"] == "e4"
        await client.send(type="session.update", event_id="e5",
                          session={"audio": {"input": {"format": {"type": "audio/pcmu"}}}})
        assert (await client.until("error"))["error"]["code"] == "unsupported_audio_format"
        await client.send(type="conversation.item.create", event_id="e6", item={
            "type": "message", "role": "assistant",
            "content": [{"type": "output_text", "text": "what color is the sky"}]})
        error = (await client.until("error"))["error"]
        assert error["code"] == "unsupported_item" and error["event_id"] == "e6"
        assert "'assistant'" in error["message"]
        await client.send(type="conversation.item.create", event_id="e6b", item={
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": " "}]})
        error = (await client.until("error"))["error"]
        assert error["code"] == "invalid_value" and error["event_id"] == "e6b"
        await client.send(type="input_audio_buffer.commit", event_id="e7")
        error = (await client.until("error"))["error"]
        assert error["code"] == "input_audio_buffer_commit_empty" and error["event_id"] == "e7"
        await client.send(type="response.cancel", event_id="e8")
        error = (await client.until("error"))["error"]
        assert error["code"] == "response_cancel_not_active" and error["event_id"] == "e8"
        # ... and after all that, the session answers as if nothing had happened
        done = await client.turn(question)
        assert done["response"]["status"] == "completed"
        assert client.transcript().strip() == expected
        await client.ws.close()

    asyncio.run(asyncio.wait_for(run(), 60))
    wait_sessions(server, 0)


def test_oversize_frame_flood_vanishing_and_slow_clients_leave_others_alone(server, s2s,
                                                                           limits):
    """Each misbehaving client gets an error event or a clean close; a bystander streaming in
    real time meanwhile gets its own answer, and the server goes on."""
    from websockets.exceptions import ConnectionClosed

    limits.max_buffered_seconds = 1.0
    bystander_question = noise(1.5, seed=21)
    expected = single_session_answer(s2s, bystander_question)

    async def bystander():
        client = await Client.open(server)
        done = await client.turn(bystander_question, real_time=True)
        await client.ws.close()
        return done, client.transcript().strip()

    async def oversize():
        client = await Client.open(server)
        await client.send_raw(json.dumps({"type": "input_audio_buffer.append",
                                          "audio": "A" * (300 * 1024)}))
        with pytest.raises(ConnectionClosed) as closed:
            await client.until("never")
        assert closed.value.rcvd.code == 1009  # message too big: a clean close

    async def flood():
        client = await Client.open(server)
        frame = encode_pcm16(noise(0.1, seed=3))
        for _ in range(200):  # 20 s of audio at once, without waiting
            await client.send(type="input_audio_buffer.append", audio=frame)
        error = await client.until("error", where=lambda e: e["error"]["code"]
                                   == "input_audio_buffer_full")
        assert "dropped" in error["error"]["message"]
        await client.ws.close()

    async def vanish():
        client = await Client.open(server)
        await client.send(type="session.update", session=MANUAL)
        await client.stream(noise(1.0, seed=4), real_time=False)
        await client.send(type="input_audio_buffer.commit")
        await client.until("response.created")
        client.ws.transport.abort()  # gone mid-answer, no close frame

    async def slow_reader():
        client = await Client.open(server)
        await client.send(type="session.update", session=MANUAL)
        await client.stream(noise(1.0, seed=5), real_time=False)
        await client.send(type="input_audio_buffer.commit")
        await asyncio.sleep(2.0)  # reads nothing meanwhile
        try:
            done = await client.until("response.done")
            assert done["response"]["status"] == "completed"
        except ConnectionClosed as closed:  # or the server gave up on it, cleanly
            assert closed.rcvd is not None and closed.rcvd.code in (1008, 1011)
        await client.ws.close()

    async def everyone():
        return await asyncio.wait_for(asyncio.gather(
            bystander(), oversize(), flood(), vanish(), slow_reader()), 90)

    (done, transcript), *_ = asyncio.run(everyone())
    assert done["response"]["status"] == "completed" and transcript == expected
    wait_sessions(server, 0)  # every session freed, the vanished one included
    assert health(server)["sessions"] == 0


def test_sessions_beyond_the_limit_are_refused_clearly(server, limits):
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    limits.max_sessions = 2

    async def run():
        first, second = await Client.open(server), await Client.open(server)
        third = Client(await connect(server.ws_url, max_size=None))
        error = await third.until("error")
        assert error["error"]["code"] == "session_limit_reached"
        assert "maximum of 2 sessions" in error["error"]["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await third.until("never")
        assert closed.value.rcvd.code == 1013  # try again later
        await first.ws.close()
        wait = time.monotonic() + 5
        while health(server)["sessions"] > 1 and time.monotonic() < wait:
            await asyncio.sleep(0.05)
        fourth = await Client.open(server)  # a freed place is taken again
        await fourth.ws.close()
        await second.ws.close()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert health(server)["refused"] >= 1


def test_idle_clients_are_closed(server, limits):
    from websockets.exceptions import ConnectionClosed

    limits.idle_timeout_s = 0.6

    async def run():
        client = await Client.open(server)
        error = await client.until("error", timeout=10)
        assert error["error"]["code"] == "idle_timeout"
        with pytest.raises(ConnectionClosed):
            await client.until("never", timeout=10)

    asyncio.run(run())
    wait_sessions(server, 0)


def test_response_cancel_stops_the_answer(server, s2s, monkeypatch):
    """response.cancel mid-answer: response.done cancelled (client_cancelled), and the next
    turn is answered. The answer is slowed down so that it is still going when cancelled."""
    from espnet_freeze_omni.inference.duplex_session import DuplexSession

    pump = DuplexSession.pump

    def slow_pump(self, budget_seconds=0.02):
        time.sleep(0.03)
        return pump(self, 0.001)  # about one step per slice

    monkeypatch.setattr(DuplexSession, "pump", slow_pump)

    async def run():
        client = await Client.open(server)
        await client.send(type="session.update", session=MANUAL)
        await client.stream(noise(1.0, seed=8), real_time=False)
        await client.send(type="input_audio_buffer.commit")
        await client.until("response.output_audio_transcript.delta")
        await client.send(type="response.cancel")
        done = await client.until("response.done")
        assert done["response"]["status"] == "cancelled"
        assert done["response"]["status_details"]["reason"] == "client_cancelled"
        assert client.of("freeze_omni.interrupted")
        await client.stream(noise(0.8, seed=9), real_time=False)
        await client.send(type="input_audio_buffer.commit")
        done = await client.until("response.done", timeout=60)
        assert done["response"]["status"] == "completed"
        await client.ws.close()

    asyncio.run(asyncio.wait_for(run(), 90))


def test_latency_of_an_answer_done_before_the_vads_silence_wait_is_still_reported(
        server, s2s, monkeypatch, tmp_path):
    """The state head takes the turn 0.3 s after the speech ends, the short answer is done
    before the VAD (2 s minimum silence) says where the speech stopped: freeze_omni.latency
    waits for that speech_stopped and reports speech end -> first audio."""
    from espnet_freeze_omni.data.audio import load_audio
    from espnet_freeze_omni.data.espeak import synthesize

    speech = load_audio(str(synthesize("what color is the sky over paris",
                                       tmp_path / "q.wav")), RATE)
    speech_over = threading.Event()

    def head(hidden):  # listen while the user speaks, respond once told the speech is over
        out = torch.full(hidden.shape[:-1] + (3,), -5.0)
        out[..., STATE_RESPOND if speech_over.is_set() else STATE_LISTEN] = 5.0
        return out

    monkeypatch.setattr(s2s.listener.model, "state_logits", head)

    async def run():
        client = await Client.open(server)
        await client.send(type="session.update", session=state_head_session(6))
        await client.until("session.updated")
        await client.stream(np.concatenate([np.zeros(RATE // 2, np.float32), speech]))
        await client.stream(np.zeros(int(0.3 * RATE), np.float32))
        speech_over.set()
        # 0.8 s of silence in all: the head decides; the VAD (2 s) cannot have said the
        # speech stopped before the rest of the silence is sent, however slow the machine
        await client.stream(np.zeros(int(0.5 * RATE), np.float32))
        await client.until("response.done", timeout=30)
        await client.stream(np.zeros(int(2.5 * RATE), np.float32))
        latency = await client.until("freeze_omni.latency", timeout=30)
        kinds = [e["type"] for e in client.events]
        await client.ws.close()
        return client, latency, kinds

    client, latency, kinds = asyncio.run(asyncio.wait_for(run(), 60))
    assert kinds.index("response.done") < kinds.index("input_audio_buffer.speech_stopped") \
        < kinds.index("freeze_omni.latency")
    assert latency["speech_end_to_first_audio_s"] is not None
    assert 0.0 < latency["speech_end_to_first_audio_s"] < 3.0
    assert latency["speech_end_to_decision_s"] >= 0.0
    wait_sessions(server, 0)


def test_speech_over_an_answer_pauses_it_and_side_talk_resumes_it(server, s2s, monkeypatch,
                                                                   tmp_path):
    """semantic_vad (the state head takes turns): the user speaks over the answer, the
    client is told to stop playback (freeze_omni.paused); the head calls it side talk, the
    answer goes on (freeze_omni.resumed, its unplayed rest sent again) and completes. The
    server generates faster than the client plays: response.done may come before the pause
    (the answer still playing then) or after the resumption, and comes once."""
    from espnet_freeze_omni.data.audio import load_audio
    from espnet_freeze_omni.data.espeak import synthesize

    speech = load_audio(str(synthesize("what color is the sky over paris",
                                       tmp_path / "q.wav")), RATE)
    side = load_audio(str(synthesize("hold on a second please", tmp_path / "s.wav")), RATE)
    phase = {"state": STATE_LISTEN}

    def head(hidden):
        out = torch.full(hidden.shape[:-1] + (3,), -5.0)
        out[..., phase["state"]] = 5.0
        return out

    monkeypatch.setattr(s2s.listener.model, "state_logits", head)
    monkeypatch.setattr(s2s.synthesizer, "max_tokens", 120)  # 3 s per segment: still talking

    async def run():
        client = await Client.open(server)
        await client.send(type="session.update", session=state_head_session(40))
        await client.until("session.updated")
        await client.stream(np.concatenate([np.zeros(RATE // 2, np.float32), speech]))
        phase["state"] = STATE_RESPOND
        await client.stream(np.zeros(int(0.3 * RATE), np.float32))
        await client.until("response.output_audio.delta")
        phase["state"] = STATE_LISTEN
        await client.stream(np.concatenate([np.zeros(int(0.2 * RATE), np.float32), side]))
        await client.until("freeze_omni.paused", timeout=10)
        phase["state"] = STATE_IGNORE  # side talk
        await client.stream(np.zeros(int(0.5 * RATE), np.float32))
        await client.until("freeze_omni.resumed", timeout=10)
        phase["state"] = STATE_LISTEN
        await client.until("response.output_audio.delta", timeout=10)  # the rest, again
        if not client.of("response.done"):
            await client.until("response.done", timeout=60)
        await client.ws.close()
        return client

    client = asyncio.run(asyncio.wait_for(run(), 90))
    kinds = [e["type"] for e in client.events]
    (done,) = client.of("response.done")
    assert done["response"]["status"] == "completed" and not client.of("freeze_omni.interrupted")
    paused, resumed = kinds.index("freeze_omni.paused"), kinds.index("freeze_omni.resumed")
    assert paused < resumed
    resent = [e for e in client.events[resumed:] if e["type"] == "response.output_audio.delta"]
    assert resent and {e["response_id"] for e in resent} == {done["response"]["id"]}
    assert client.of("freeze_omni.resumed")[0]["paused_ms"] > 0
    assert len(client.of("response.created")) == 1  # the side talk got no answer
    wait_sessions(server, 0)


# ---------------------------------------------------------------------------- session methods
def test_session_cancel_keeps_the_voiced_part_and_goes_on(s2s):
    session = s2s.session(vad=False, turn_detection="manual", clock="measured")
    session.feed(noise(1.0, seed=31))
    events = session.commit()
    while not any(e.type == "audio" for e in events):
        events += session.pump(0.001)
    answer = session.answer
    voiced = answer.voiced_tokens(session.clock)  # the segments already playing
    events += session.cancel()
    done = [e for e in events if e.type == "answer_done"]
    assert len(done) == 1 and done[0].data["status"] == "interrupted"
    assert session.answer is None
    assert session.turns[-1].assistant_ids == answer.tokens[:voiced] + session.turn_closing_ids
    # the history is the dialogue as heard: system, the turn, the voiced answer, closing
    expected = session.system_embeds.size(0) + sum(t.length for t in session.turns)
    assert session.history_length == expected
    assert session.cancel() == []  # nothing left to cancel
    session.feed(noise(0.6, seed=32))
    after = session.commit() + session.flush()
    assert [e.data["status"] for e in after if e.type == "answer_done"] == ["completed"]


def test_session_clear_drops_the_turn_being_heard(s2s):
    session = s2s.session(vad=False, turn_detection="manual")
    session.feed(noise(0.8, seed=41))
    assert session.listening is not None
    session.clear()
    assert session.listening is None
    with pytest.raises(ValueError, match="no user audio"):
        session.commit()


def test_session_clear_drops_the_audio_before_it_partial_tick_included(s2s):
    """Audio that arrived before clear() is never heard, though it did not fill a tick: the
    next turn hears exactly what came after the clear."""
    heard = []
    for before in (noise(0.85, seed=42), np.zeros(int(0.85 * RATE), np.float32)):
        session = s2s.session(vad=False, turn_detection="manual")
        session.feed(before)
        assert len(session._pending)  # a partial tick was waiting
        session.clear()
        session.feed(noise(0.5, seed=43))
        (ended,) = [e for e in session.commit() if e.type == "turn_ended"]
        assert ended.data["heard_seconds"] == pytest.approx(0.5)
        heard.append(session.turns[0].user_embeds)
    # what the LLM read is the same whatever came before the clear
    torch.testing.assert_close(heard[0], heard[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------- pieces
def test_streaming_resampler_does_not_depend_on_frame_sizes():
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(48000) / 24000)).astype(np.float32)
    whole = StreamingResampler(24000, RATE).push(tone)
    resampler, pieces, i = StreamingResampler(24000, RATE), [], 0
    for size in np.random.RandomState(0).randint(1, 3000, size=200):
        pieces.append(resampler.push(tone[i:i + size]))
        i += size
    np.testing.assert_array_equal(np.concatenate(pieces), whole[:sum(map(len, pieces))])
    ideal = 0.5 * np.sin(2 * np.pi * 440 * np.arange(len(whole)) / RATE)
    assert np.abs(whole[64:-64] - ideal[64:-64]).max() < 1e-3
    pcm = decode_pcm16(encode_pcm16(tone))
    assert np.abs(pcm - tone).max() < 1e-4


def test_serve_command_binds_loopback_and_says_where(work, tmp_path):
    zip_path = tmp_path / "packed" / "model.zip"
    pack(work, zip_path, ["--yaml", f"codec_conf={work['codec']}/codec_conf.yaml"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "espnet_freeze_omni.bin.serve", "--model_file", str(zip_path),
         "--llm_path", str(work["llm"]), "--port", "0", "--num_threads", "1",
         "--replica_mode", "process"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        lines = []
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready" in line:
                break
        ready = [ln for ln in lines if "voice server ready" in ln]
        assert ready, "".join(lines[-20:])
        url = ready[0].split("ready: ")[1].split()[0]
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=5) as reply:
            assert "Freeze-Omni" in reply.read().decode()
        with urllib.request.urlopen(url + "healthz", timeout=5) as reply:
            state = json.loads(reply.read())
        assert state["sessions"] == 0
        assert [(r["process"], r["alive"]) for r in state["replicas"]] == [(True, True)]
        # killed outright, the server leaves no model process behind
        children = [int(p) for p in
                    Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        assert children
        proc.kill()
        proc.wait(20)
        deadline = time.monotonic() + 30
        while any(alive(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in children if alive(p)]
    finally:
        proc.kill()
        proc.wait(20)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_benchmark_serving_reports_each_load_level(server, tmp_path):
    from espnet_freeze_omni.bin import benchmark_serving

    result = benchmark_serving.main([
        "--url", server.ws_url, "--sessions", "1", "2", "--seconds", "3",
        "--turn_detection", "manual", "--out_dir", str(tmp_path)])
    levels = result["levels"]
    assert [lv["sessions"] for lv in levels] == [1, 2]
    for level in levels:
        assert level["answers"] >= level["sessions"]
        assert level["dropped"] == 0 and level["failed"] == 0, level["failures"]
        assert level["latency_p50_s"] is not None and level["rtf_p50"] is not None
    assert (tmp_path / "serving.png").stat().st_size > 0
    assert json.loads((tmp_path / "serving.json").read_text())["levels"][1]["sessions"] == 2
