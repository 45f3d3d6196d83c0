#!/usr/bin/env python3
"""Serving load: N simulated users talk to the voice server at once, in real time.

Each user is a loopback websocket client speaking the Realtime protocol: it streams a spoken
question (espeak-ng, varied voices) at the pace of a microphone, keeps streaming silence
while it waits and while the answer plays, then asks the next question, until the time is
up. Per number of sessions N it prints

    speech end -> first audio   P50 / P90 (client side: the frame holding the last speech
                                sample was sent -> the first response.output_audio.delta)
    real-time factor            answer generation time (response.created -> response.done)
                                over the answer's audio duration, P50 / P90 (< 1: the voice
                                is made faster than it plays)
    dropped / failed sessions   a connection lost or closed by the server / an error event
                                (e.g. input_audio_buffer_full: the server fell more than
                                --max_buffered_seconds behind and dropped audio) or a
                                question with no answer within --answer_timeout

and writes serving.json and serving.png under --out_dir. Figures are measurements, never
assertions.

    # a trained packed model, in-process server (the state head takes the turns)
    python -m espnet_freeze_omni.bin.benchmark_serving --model_file exp/packed/model.zip \\
        --llm_path exp/llm --sessions 1 2 4 8 16 --minutes 10
    # random weights at the embedded recipe's shapes (commit at speech end: no state head)
    python -m espnet_freeze_omni.bin.benchmark_serving --shapes tiny --sessions 1 2 4 8 \\
        --minutes 1
    # a server already running
    python -m espnet_freeze_omni.bin.benchmark_serving --url ws://127.0.0.1:8765/v1/realtime
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import functools
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

RATE = 16000  # the clients declare 16 kHz input (the model's rate)
FRAME_SECONDS = 0.04


@dataclasses.dataclass
class Turn:
    latency_s: Optional[float]  # speech end -> first audio
    rtf: Optional[float]
    status: str


@dataclasses.dataclass
class UserResult:
    turns: List[Turn] = dataclasses.field(default_factory=list)
    dropped: bool = False
    failed: str = ""


# ---------------------------------------------------------------------------- questions
def spoken_questions(work: Path, count: int) -> List[np.ndarray]:
    """Spoken questions at 16 kHz, cut at their last sound (the speech end is the end)."""
    from espnet_freeze_omni.data.audio import load_audio
    from espnet_freeze_omni.data.espeak import pick_voice, synthesize
    from espnet_freeze_omni.inference.random_model import QUESTIONS

    out = []
    for i in range(count):
        path = synthesize(QUESTIONS[i % len(QUESTIONS)], work / f"q{i:02d}.wav",
                          sample_rate=RATE, **pick_voice(i))
        wav = load_audio(str(path), RATE)
        loud = np.flatnonzero(np.abs(wav) > 0.02)
        out.append(wav[:loud[-1] + 1] if len(loud) else wav)
    return out


def pcm16(wav: np.ndarray) -> str:
    ints = np.clip(np.round(wav * 32768.0), -32768, 32767).astype("<i2")
    return base64.b64encode(ints.tobytes()).decode("ascii")


# ---------------------------------------------------------------------------- one user
async def user(url: str, index: int, questions: List[np.ndarray], until: float,
               session: Dict, answer_timeout: float, manual: bool) -> UserResult:
    """Talk until `until` (monotonic): question, wait for the answer while streaming
    silence, listen to it, next question."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    result = UserResult()
    frame = int(FRAME_SECONDS * RATE)
    silence = pcm16(np.zeros(frame, dtype=np.float32))
    state: Dict = {}
    try:
        async with connect(f"{url}?model=freeze-omni", max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.update", "session": session}))

            async def reader():
                async for message in ws:
                    event = json.loads(message)
                    kind = event["type"]
                    now = time.monotonic()
                    if kind == "error":
                        state.setdefault("errors", []).append(event["error"]["code"])
                    elif kind == "response.created":
                        state["created"] = now
                    elif kind == "response.output_audio.delta":
                        state.setdefault("first_audio", now)
                        state["audio_samples"] = state.get("audio_samples", 0) + \
                            len(event["delta"]) * 3 // 8
                    elif kind == "response.done":
                        state["done"] = now
                        state["status"] = event["response"]["status"]

            reading = asyncio.ensure_future(reader())
            clock = time.monotonic()  # the microphone's clock: one frame per FRAME_SECONDS

            async def send_frame(b64):
                nonlocal clock
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64}))
                clock += FRAME_SECONDS
                await asyncio.sleep(max(0.0, clock - time.monotonic()))

            turn = 0
            while time.monotonic() < until and not reading.done():
                wav = questions[(index + turn) % len(questions)]
                turn += 1
                state.clear()
                for i in range(0, len(wav), frame):
                    await send_frame(pcm16(wav[i:i + frame]))
                speech_end = time.monotonic()  # the last speech frame has just gone out
                if manual:
                    await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
                deadline = speech_end + answer_timeout
                while "done" not in state and time.monotonic() < deadline \
                        and not reading.done():
                    await send_frame(silence)
                if "done" not in state:
                    result.failed = f"no answer within {answer_timeout:g} s"
                    break
                audio_s = state.get("audio_samples", 0) / 24000
                latency = state["first_audio"] - speech_end if "first_audio" in state else None
                rtf = (state["done"] - state["created"]) / audio_s if audio_s else None
                result.turns.append(Turn(latency, rtf, state["status"]))
                # the user listens to the answer before asking again
                listen_until = state.get("first_audio", state["done"]) + audio_s + 0.3
                while time.monotonic() < listen_until:
                    await send_frame(silence)
            if reading.done() and reading.exception() is None and time.monotonic() < until:
                result.dropped = True  # the server closed the connection
            reading.cancel()
            if state.get("errors"):
                result.failed = result.failed or f"error events: {sorted(set(state['errors']))}"
    except ConnectionClosed:
        result.dropped = True
    except OSError as err:
        result.failed = f"cannot connect: {err}"
    return result


# ---------------------------------------------------------------------------- a load level
def percentile(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(values, q)) if len(values) else None


async def load_level(url: str, sessions: int, seconds: float, questions, session, timeout,
                     manual) -> Dict:
    until = time.monotonic() + seconds
    # users arrive spread over the first second, as people do
    async def staggered(i):
        await asyncio.sleep(i / max(1, sessions))
        return await user(url, i, questions, until, session, timeout, manual)

    results = await asyncio.gather(*(staggered(i) for i in range(sessions)))
    latencies = [t.latency_s for r in results for t in r.turns if t.latency_s is not None]
    rtfs = [t.rtf for r in results for t in r.turns if t.rtf is not None]
    return {
        "sessions": sessions, "seconds": seconds,
        "answers": sum(len(r.turns) for r in results),
        "latency_p50_s": percentile(latencies, 50), "latency_p90_s": percentile(latencies, 90),
        "rtf_p50": percentile(rtfs, 50), "rtf_p90": percentile(rtfs, 90),
        "dropped": sum(r.dropped for r in results),
        "failed": sum(bool(r.failed) for r in results),
        "failures": sorted({r.failed for r in results if r.failed}),
        "latencies_s": latencies,
    }


def session_config(turn_detection: str) -> Dict:
    detection = {"semantic_vad": {"type": "semantic_vad", "eagerness": "auto"},
                 "server_vad": {"type": "server_vad", "silence_duration_ms": 500},
                 "manual": None}[turn_detection]
    config = {"type": "realtime", "audio": {"input": {
        "format": {"type": "audio/pcm", "rate": RATE}, "turn_detection": detection}}}
    if detection is None:  # commit at the speech end; the LLM need not hear the silences
        config["freeze_omni"] = {"vad": True}
    return config


def run_level(url: str, sessions: int, seconds: float, questions, turn_detection: str,
              timeout: float) -> Dict:
    """One load level (in a process of its own: see main)."""
    return asyncio.run(load_level(url, sessions, seconds, questions,
                                  session_config(turn_detection), timeout,
                                  turn_detection == "manual"))


# ---------------------------------------------------------------------------- report
def report(levels: List[Dict]) -> str:
    def ms(v):
        return f"{v * 1000:7.0f}" if v is not None else "      -"

    def x(v):
        return f"{v:6.2f}" if v is not None else "     -"

    lines = [" N  answers  P50 ms  P90 ms  RTF P50  RTF P90  dropped  failed"]
    for lv in levels:
        lines.append(f"{lv['sessions']:2d}  {lv['answers']:7d} {ms(lv['latency_p50_s'])} "
                     f"{ms(lv['latency_p90_s'])}   {x(lv['rtf_p50'])}   {x(lv['rtf_p90'])}  "
                     f"{lv['dropped']:7d}  {lv['failed']:6d}")
    return "\n".join(lines)


def plot(levels: List[Dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [lv["sessions"] for lv in levels]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("latency_p50_s", "P50"), ("latency_p90_s", "P90")):
        a.plot(n, [lv[key] if lv[key] is not None else np.nan for lv in levels], "o-",
               label=label)
    a.axhline(1.0, color="grey", linestyle=":", label="1 s goal")
    a.set_xscale("log", base=2)
    a.set_xticks(n, [str(v) for v in n])
    a.set_xlabel("concurrent sessions")
    a.set_ylabel("speech end -> first audio (s)")
    a.legend()
    for key, label in (("rtf_p50", "P50"), ("rtf_p90", "P90")):
        b.plot(n, [lv[key] if lv[key] is not None else np.nan for lv in levels], "o-",
               label=label)
    b.axhline(1.0, color="grey", linestyle=":", label="real time")
    b.set_xscale("log", base=2)
    b.set_xticks(n, [str(v) for v in n])
    b.set_xlabel("concurrent sessions")
    b.set_ylabel("generation time / audio duration")
    b.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------- main
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_file", help="packed model: served in this process")
    source.add_argument("--shapes", choices=("tiny", "paper"),
                        help="random weights at these shapes (benchmark_latency's builder)")
    source.add_argument("--url", help="a running server's websocket URL (.../v1/realtime)")
    parser.add_argument("--llm_path", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--replica_mode", choices=("thread", "process"), default="thread",
                        help="model copies as worker threads here or child processes")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--minutes", type=float, default=1.0, help="per load level")
    parser.add_argument("--seconds", type=float, default=None,
                        help="per load level, instead of --minutes (short runs, tests)")
    parser.add_argument("--turn_detection", choices=("semantic_vad", "server_vad", "manual"),
                        default=None, help="default: semantic_vad (the state head) for a "
                        "trained model, manual (commit at speech end) for random weights")
    parser.add_argument("--answer_timeout", type=float, default=30.0)
    parser.add_argument("--max_new_tokens", type=int, default=None,
                        help="with --shapes: answer length (random weights never stop)")
    parser.add_argument("--max_codec_tokens", type=int, default=None)
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads of the in-process server")
    parser.add_argument("--out_dir", default="exp/benchmark_serving")
    return parser


def model_factories(args) -> List:
    """One loader per model copy (run here for thread replicas, in the child for process
    ones); the packed model's decoding options overridden by --max_new_tokens and the like."""
    from espnet_freeze_omni.serve.server import model_factories as packed_factories
    from espnet_freeze_omni.serve.server import replica_devices

    decode = {k: v for k, v in (("max_new_tokens", args.max_new_tokens),
                                ("max_codec_tokens", args.max_codec_tokens)) if v is not None}
    if args.model_file:
        return packed_factories(args.model_file, args.llm_path, args.device, args.replicas,
                                **decode)
    from espnet_freeze_omni.inference.random_model import build_random_s2s

    work = Path(tempfile.mkdtemp(prefix="benchmark_serving_"))
    decode.setdefault("max_new_tokens", 24)
    decode.setdefault("max_codec_tokens", 120)
    return [functools.partial(build_random_s2s, args.shapes, work / f"replica{i}", device,
                              seed=0, decode_kwargs=dict(decode))
            for i, device in enumerate(replica_devices(args.device, args.replicas))]


def main(cmd: Optional[List[str]] = None) -> Dict:
    args = get_parser().parse_args(cmd)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60.0
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    turn_detection = args.turn_detection or ("manual" if args.shapes else "semantic_vad")
    running = None
    if args.url:
        url = args.url
        source = args.url
    else:
        from espnet_freeze_omni.serve.server import ServerLimits, VoiceServer, start_replicas

        replicas = start_replicas(model_factories(args), args.replica_mode, args.num_threads)
        limits = ServerLimits(max_sessions=max(args.sessions), idle_timeout_s=600.0)
        running = VoiceServer(limits=limits, replicas=replicas).start_in_thread()
        url = running.ws_url
        source = args.model_file or f"random weights, {args.shapes} shapes"
        source += f"; {args.replicas} {args.replica_mode} replica(s)"
    questions = spoken_questions(Path(tempfile.mkdtemp(prefix="questions_")), 10)
    levels = []
    # the users run in a process of their own: their JSON and base64 work must not take the
    # server's interpreter lock (a real server's clients are elsewhere)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as users:
            for n in args.sessions:
                level = users.submit(run_level, url, n, seconds, questions, turn_detection,
                                     args.answer_timeout).result()
                levels.append(level)
                print(report([level]).splitlines()[-1], flush=True)
                for failure in level["failures"]:
                    print(f"    N={n}: {failure}", flush=True)
    finally:
        if running is not None:
            running.stop()
    title = (f"{source}; turn detection {turn_detection}; {seconds:g} s per level; "
             f"{platform.processor() or platform.machine()}")
    print(f"\nserving benchmark: {title}\n{report(levels)}")
    result = {"source": source, "turn_detection": turn_detection, "seconds": seconds,
              "machine": platform.platform(), "levels": levels}
    (out_dir / "serving.json").write_text(json.dumps(result, indent=2))
    plot(levels, out_dir / "serving.png", title)
    print(f"wrote {out_dir / 'serving.json'} and {out_dir / 'serving.png'}")
    return result


if __name__ == "__main__":
    main()
