"""The voice server: one shared model, a DuplexSession per websocket, a web page at `/`.

    server = VoiceServer([s2s], ServerLimits(max_sessions=8))
    running = server.start_in_thread(port=0)     # tests, benchmarks: (url, stop())
    serve(args)                                  # bin/serve.py: blocks until Ctrl-C

Routes: `/` the browser demo (static/), `/v1/realtime?model=...` the Realtime websocket
(connection.py), `/healthz` a JSON summary (sessions, limits). The server binds 127.0.0.1
unless told otherwise: a voice model is not something to expose by accident.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import threading
from pathlib import Path
from typing import List, Optional

from espnet_freeze_omni.serve.protocol import error_event
from espnet_freeze_omni.serve.scheduler import Replica, ServedSession, pick_replica

STATIC_DIR = Path(__file__).parent / "static"
DEFAULT_MODEL_NAME = "freeze-omni"


@dataclasses.dataclass
class ServerLimits:
    """What one client may take of the server."""

    max_sessions: int = 8  # connections beyond it get an error event and a close (1013)
    max_frame_bytes: int = 1 << 20  # one websocket message (~8 s of base64 24 kHz PCM16)
    max_buffered_seconds: float = 10.0  # input audio waiting for the model, per session
    idle_timeout_s: float = 300.0  # no client event this long and no answer going: closed
    max_outbox_bytes: int = 32 << 20  # server events not yet taken by the client


class VoiceServer:
    """The aiohttp application around the model copies.

    models: Speech2Speech copies, each served by a worker thread here (a Replica); or
    replicas: started copies of either kind (Replica, or ProcessReplica: a model in a child
    process, start_process_replicas).
    """

    def __init__(self, models: Optional[List] = None, limits: Optional[ServerLimits] = None,
                 model_name: str = DEFAULT_MODEL_NAME, replicas: Optional[List] = None):
        if replicas is None:
            replicas = [Replica(m, name=f"replica{i}") for i, m in enumerate(models or [])]
        if not replicas:
            raise ValueError("VoiceServer needs at least one model")
        self.limits = limits or ServerLimits()
        self.model_name = model_name
        self.replicas = replicas
        self.input_sample_rate = replicas[0].input_sample_rate
        self.output_sample_rate = replicas[0].output_sample_rate
        self.tokenizer = replicas[0].tokenizer  # answer text for the transcript deltas
        self.connections = set()
        self.refused = 0

    # ------------------------------------------------------------------ sessions
    @property
    def active_sessions(self) -> int:
        return len(self.connections)

    def attach(self, served: ServedSession) -> None:
        pick_replica(self.replicas).attach(served)

    def detach(self, connection) -> None:
        self.connections.discard(connection)

    # ------------------------------------------------------------------ routes
    def app(self):
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/v1/realtime", self._realtime)
        app.router.add_get("/healthz", self._health)
        app.router.add_static("/static/", STATIC_DIR, show_index=False)
        return app

    async def _index(self, request):
        from aiohttp import web

        return web.FileResponse(STATIC_DIR / "index.html")

    async def _health(self, request):
        from aiohttp import web

        return web.json_response({
            "model": self.model_name, "sessions": self.active_sessions,
            "max_sessions": self.limits.max_sessions, "refused": self.refused,
            "replicas": [{"name": r.name, "process": r.remote, "alive": r.alive,
                          "sessions": len(r.sessions),
                          "rounds": r.rounds} for r in self.replicas],
            "input_sample_rate": self.input_sample_rate,
            "output_sample_rate": self.output_sample_rate,
        })

    async def _realtime(self, request):
        from aiohttp import web

        from espnet_freeze_omni.serve.connection import RealtimeConnection

        ws = web.WebSocketResponse(max_msg_size=self.limits.max_frame_bytes, heartbeat=30.0,
                                   protocols=("realtime",))
        await ws.prepare(request)
        model = request.query.get("model") or self.model_name
        if self.active_sessions >= self.limits.max_sessions:
            self.refused += 1
            await ws.send_json(error_event(
                "session_limit_reached",
                f"the server is serving its maximum of {self.limits.max_sessions} sessions: "
                "try again later", error_type="server_error"))
            await ws.close(code=1013, message=b"session limit reached")
            return ws
        connection = RealtimeConnection(ws, self, model)
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:
            logging.exception("connection failed")
        finally:
            connection.release()
        return ws

    # ------------------------------------------------------------------ running
    async def start(self, host: str = "127.0.0.1", port: int = 8765):
        """Start listening; returns (runner, bound port)."""
        from aiohttp import web

        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        return runner, bound

    def start_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> "RunningServer":
        """Serve from a background thread with its own event loop (tests, benchmarks)."""
        ready = threading.Event()
        holder = {}

        def main():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            runner, bound = loop.run_until_complete(self.start(host, port))
            holder.update(loop=loop, runner=runner, port=bound)
            ready.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.close()

        thread = threading.Thread(target=main, name="voice-server", daemon=True)
        thread.start()
        if not ready.wait(30):
            raise RuntimeError("the voice server did not start within 30 s")
        return RunningServer(self, thread, holder["loop"], host, holder["port"])

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@dataclasses.dataclass
class RunningServer:
    server: VoiceServer
    thread: threading.Thread
    loop: asyncio.AbstractEventLoop
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/realtime"

    def stop(self) -> None:
        async def close_all():
            for connection in list(self.server.connections):
                await connection.close(1001, "server shutting down")

        asyncio.run_coroutine_threadsafe(close_all(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.server.stop()


# ---------------------------------------------------------------------------- command line
def add_arguments(parser) -> None:
    parser.add_argument("--model_file", required=True,
                        help="packed model (zip made by stage 17 / pack_model.py)")
    parser.add_argument("--llm_path", default=None,
                        help="local folder of the frozen LLM (default: the path recorded at "
                        "training)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--replicas", type=int, default=1,
                        help="model copies, each with its own worker (on cuda: spread over "
                        "the visible GPUs)")
    parser.add_argument("--replica_mode", choices=("thread", "process"), default="thread",
                        help="where each copy runs: a worker thread in the server's process, "
                        "or a child process of its own (several CPU cores at once: Python "
                        "runs one thread at a time; docs/serving.md)")
    parser.add_argument("--max_sessions", type=int, default=ServerLimits.max_sessions)
    parser.add_argument("--max_frame_bytes", type=int, default=ServerLimits.max_frame_bytes)
    parser.add_argument("--max_buffered_seconds", type=float,
                        default=ServerLimits.max_buffered_seconds)
    parser.add_argument("--idle_timeout_s", type=float, default=ServerLimits.idle_timeout_s)
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME,
                        help="name reported in session.created")


def replica_devices(device: str, replicas: int) -> List[str]:
    """The device of each model copy: on cuda the copies go round the visible GPUs."""
    import torch

    if replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {replicas}")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but no GPU is visible")
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(replicas)]
    return [device] * replicas


def model_factories(model_file, llm_path=None, device: str = "cpu", replicas: int = 1,
                    **decode_conf) -> List:
    """One picklable loader per copy of the packed model (`decode_conf` overrides its
    decoding defaults): called here for thread replicas, in the child for process ones."""
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    return [functools.partial(Speech2Speech.from_pretrained, model_file, llm_path=llm_path,
                              device=d, **decode_conf)
            for d in replica_devices(device, replicas)]


def start_replicas(factories: List, mode: str = "thread",
                   num_threads: Optional[int] = None) -> List:
    """Started model copies: worker threads here (`thread`) or child processes (`process`)."""
    import torch

    if mode == "process":
        from espnet_freeze_omni.serve.process_replica import start_process_replicas

        return start_process_replicas(factories, num_threads=num_threads)
    if mode != "thread":
        raise ValueError(f"replica mode must be thread or process, got {mode!r}")
    if num_threads:
        torch.set_num_threads(num_threads)
    return [Replica(load(), name=f"replica{i}") for i, load in enumerate(factories)]


def serve(args) -> None:
    """Load the model(s), serve until interrupted; prints one readiness line with the URL."""
    factories = model_factories(args.model_file, args.llm_path, args.device, args.replicas)
    replicas = start_replicas(factories, args.replica_mode, args.num_threads)
    limits = ServerLimits(max_sessions=args.max_sessions, max_frame_bytes=args.max_frame_bytes,
                          max_buffered_seconds=args.max_buffered_seconds,
                          idle_timeout_s=args.idle_timeout_s)
    server = VoiceServer(limits=limits, model_name=args.model_name, replicas=replicas)

    workers = "child processes" if args.replica_mode == "process" else "threads"

    async def main():
        runner, port = await server.start(args.host, args.port)
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"Freeze-Omni voice server ready: http://{host}:{port}/ "
              f"(Realtime websocket ws://{host}:{port}/v1/realtime?model={args.model_name}; "
              f"{len(replicas)} model cop{'y' if len(replicas) == 1 else 'ies'} on "
              f"{args.device} in {workers}, max {limits.max_sessions} sessions)", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
