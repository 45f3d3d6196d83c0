"""Streaming cost of the speech encoder: cached chunks vs recomputing the whole prefix.

For each encoder size (random weights, eval, ``torch.inference_mode``), in one run:

1. Streams ``--num_chunks`` chunks of 16 feature frames (160 ms) through ``forward_chunk``
   and reports per-chunk latency P50/P90, also as a fraction of the 160 ms chunk duration
   (below 1.0 = keeps up with real time).
2. At some chunks, right after streaming them, recomputes the prefix: the chunk-masked offline
   ``forward`` over all audio so far, which is what an encoder without caches redoes at every
   chunk. Timed at the ``--seconds`` points and at ``--recompute_points`` evenly spaced chunks;
   the total recompute cost over the stream is interpolated between those samples, because
   recomputing at every one of hundreds of chunks would take too long on a CPU.

Both wall time and process CPU time are recorded: on a shared machine wall time swings with
the other jobs, and CPU time is the steadier measure of cost. Interleaving the recompute with
the stream keeps each streaming/recompute pair under the same load.

    python -m espnet_freeze_omni.bin.benchmark_encoder --configs tiny paper --seconds 10 30 \
        --plot bench_out/encoder_latency.png
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from espnet_freeze_omni.encoder import StreamingChunkEncoder

FRAME_SHIFT_S = 0.01  # fbank hop
CONV_CONTEXT = 3  # extra fbank frames the first chunk needs (7-frame receptive field - 4)

CONFIGS: Dict[str, dict] = {
    # the embedded recipe's CTC encoder size (shared/ESPNET.md)
    "tiny": dict(output_size=144, attention_heads=4, linear_units=576, num_blocks=4),
    # the paper's encoder (SPEC.md section 1)
    "paper": dict(output_size=1024, attention_heads=16, linear_units=4096, num_blocks=24),
}


@dataclass
class Timing:
    wall: float  # seconds
    cpu: float  # process CPU seconds (all threads)


@dataclass
class Result:
    name: str
    num_params: int
    chunk_seconds: float
    chunks: List[Timing] = field(default_factory=list)  # one per streamed chunk
    recompute: Dict[int, Timing] = field(default_factory=dict)  # chunks so far -> timing

    def audio_seconds(self, num_chunks: int) -> float:
        return num_chunks * self.chunk_seconds


def measure(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> Timing:
    """Median wall and CPU time of ``fn`` over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus))


def build_encoder(
    name: str, feat_dim: int, chunk_size: int, left_chunks: int, device, dtype
) -> StreamingChunkEncoder:
    torch.manual_seed(0)
    encoder = StreamingChunkEncoder(
        feat_dim, chunk_size=chunk_size, left_chunks=left_chunks, **CONFIGS[name]
    )
    return encoder.to(device=device, dtype=dtype).eval()


def recompute_chunks(args: argparse.Namespace, num_chunks: int, chunk_seconds: float) -> List[int]:
    """Chunk counts after which the prefix is recomputed: the --seconds points + even samples."""
    at_seconds = {min(num_chunks, math.ceil(s / chunk_seconds - 1e-9)) for s in args.seconds}
    samples = np.linspace(0, num_chunks, args.recompute_points + 1)[1:]
    return sorted(at_seconds | {max(1, int(round(x))) for x in samples})


def benchmark(
    name: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> Result:
    encoder = build_encoder(name, args.feat_dim, args.chunk_size, args.left_chunks, device, dtype)
    step = encoder.chunk_frames
    result = Result(name, sum(p.numel() for p in encoder.parameters()), step * FRAME_SHIFT_S)
    num_chunks = args.num_chunks or math.ceil(max(args.seconds) / result.chunk_seconds - 1e-9)
    feats = torch.randn(1, num_chunks * step + CONV_CONTEXT, args.feat_dim, device=device)
    feats = feats.to(dtype)
    recompute_after = set(recompute_chunks(args, num_chunks, result.chunk_seconds))

    with torch.inference_mode():
        # Warm-up: allocator, kernel choice, both code paths.
        state = encoder.init_streaming_state()
        encoder.forward_chunk(feats[:, : args.warmup * step + CONV_CONTEXT], state)
        encoder(feats[:, : 4 * step + CONV_CONTEXT], torch.tensor([4 * step + 3], device=device))

        state = encoder.init_streaming_state()
        encoder.forward_chunk(feats[:, :CONV_CONTEXT], state)  # conv context arrives first
        for i in range(num_chunks):
            piece = feats[:, CONV_CONTEXT + i * step : CONV_CONTEXT + (i + 1) * step]
            outputs: List[torch.Tensor] = []
            timing = measure(lambda: outputs.append(encoder.forward_chunk(piece, state)[0]), device)
            assert outputs[0].size(1) == encoder.chunk_size
            result.chunks.append(timing)

            done = i + 1
            if done in recompute_after:
                frames = done * step + CONV_CONTEXT  # all audio so far
                prefix = feats[:, :frames]
                lens = torch.tensor([frames], device=device)
                result.recompute[done] = measure(lambda: encoder(prefix, lens), device, args.repeats)
                print(
                    f"[{name}] {result.audio_seconds(done):5.1f} s: chunk "
                    f"{timing.wall * 1e3:.1f} ms, recompute "
                    f"{result.recompute[done].wall * 1e3:.0f} ms",
                    flush=True,
                )
    return result


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def chunk_cost_before(result: Result, done: int) -> Timing:
    """Median streaming chunk cost over the second of audio ending after chunk ``done``."""
    window = result.chunks[max(0, done - round(1.0 / result.chunk_seconds)) : done]
    return Timing(
        statistics.median(t.wall for t in window), statistics.median(t.cpu for t in window)
    )


def totals_until(result: Result, done: int) -> Tuple[Timing, Timing]:
    """Total (streaming, recompute) cost of the first ``done`` chunks.

    Streaming is measured at every chunk; the recompute cost of chunk i is interpolated
    linearly between the sampled chunks (from 0 at chunk 0).
    """
    stream = Timing(
        sum(t.wall for t in result.chunks[:done]), sum(t.cpu for t in result.chunks[:done])
    )
    known = sorted(result.recompute.items())
    xs = [0] + [n for n, _ in known]
    at = np.arange(1, done + 1)
    redo = Timing(
        float(np.interp(at, xs, [0.0] + [t.wall for _, t in known]).sum()),
        float(np.interp(at, xs, [0.0] + [t.cpu for _, t in known]).sum()),
    )
    return stream, redo


def print_report(results: List[Result], args: argparse.Namespace, device: torch.device) -> None:
    print(
        f"\ndevice={device} dtype={args.dtype} torch threads={torch.get_num_threads()} "
        f"chunk={args.chunk_size} encoder frames = 160 ms, left_chunks={args.left_chunks}, "
        "random weights, torch.inference_mode"
    )
    print("\nPer-chunk streaming cost (forward_chunk on 16 new fbank frames = 160 ms of audio)")
    header = (
        f"{'config':<7} {'params':>8} {'chunks':>6} {'P50 ms':>8} {'P90 ms':>8} "
        f"{'P50/160ms':>9} {'P90/160ms':>9} {'CPU P50 ms':>10} {'CPU P90 ms':>10}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        wall = [t.wall for t in r.chunks]
        cpu = [t.cpu for t in r.chunks]
        p50, p90 = percentile(wall, 50), percentile(wall, 90)
        print(
            f"{r.name:<7} {r.num_params / 1e6:>7.1f}M {len(wall):>6} {p50 * 1e3:>8.1f} "
            f"{p90 * 1e3:>8.1f} {p50 / r.chunk_seconds:>9.3f} {p90 / r.chunk_seconds:>9.3f} "
            f"{percentile(cpu, 50) * 1e3:>10.1f} {percentile(cpu, 90) * 1e3:>10.1f}"
        )

    print(
        "\nCached streaming vs recomputing the prefix (chunk-masked offline forward of all "
        "audio so far, redone at each chunk)"
    )
    header = (
        f"{'config':<7} {'audio':>6} {'chunk ms':>9} {'recompute ms':>13} {'ratio':>6} "
        f"{'CPU ratio':>9} | {'stream total s':>14} {'recompute total s*':>18} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        for seconds in args.seconds:
            done = min(len(r.chunks), math.ceil(seconds / r.chunk_seconds - 1e-9))
            chunk, redo = chunk_cost_before(r, done), r.recompute[done]
            stream_total, redo_total = totals_until(r, done)
            print(
                f"{r.name:<7} {r.audio_seconds(done):>5.1f}s {chunk.wall * 1e3:>9.1f} "
                f"{redo.wall * 1e3:>13.1f} {redo.wall / chunk.wall:>5.0f}x "
                f"{redo.cpu / chunk.cpu:>8.0f}x | {stream_total.wall:>14.2f} "
                f"{redo_total.wall:>18.1f} {redo_total.wall / stream_total.wall:>5.0f}x"
            )
    print(
        "\nchunk ms: median streaming chunk (wall) over the second of audio ending there; "
        f"recompute ms: one offline forward of that prefix (median of {args.repeats}), timed "
        "right after that chunk.\nCPU ratio: the same ratio in process CPU time. * totals over "
        "every chunk so far; the recompute total is interpolated between "
        f"{args.recompute_points} evenly spaced sampled chunks (and the --seconds points), "
        "not measured at every chunk."
    )


def plot(results: List[Result], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in results:
        ends = [r.audio_seconds(i + 1) for i in range(len(r.chunks))]
        line = ax.plot(ends, [t.wall * 1e3 for t in r.chunks], label=f"{r.name}: cached chunk")
        known = sorted(r.recompute.items())
        ax.plot(
            [r.audio_seconds(n) for n, _ in known],
            [t.wall * 1e3 for _, t in known],
            "o--",
            color=line[0].get_color(),
            label=f"{r.name}: recompute prefix",
        )
    ax.axhline(160, color="gray", linestyle=":", label="160 ms (real time)")
    ax.set_yscale("log")
    ax.set_xlabel("audio so far (s)")
    ax.set_ylabel("wall time per 160 ms chunk (ms)")
    ax.set_title("Freeze-Omni encoder: streaming with caches vs recomputing the prefix")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot written to {path}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["tiny", "paper"], choices=list(CONFIGS))
    parser.add_argument("--seconds", nargs="+", type=float, default=[10.0, 30.0])
    parser.add_argument(
        "--num_chunks",
        type=int,
        default=None,
        help="chunks to stream (default: enough to cover the largest --seconds)",
    )
    parser.add_argument(
        "--recompute_points",
        type=int,
        default=6,
        help="evenly spaced chunks after which the prefix recompute is also timed",
    )
    parser.add_argument("--repeats", type=int, default=1, help="timings per recompute point")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up chunks")
    parser.add_argument("--chunk_size", type=int, default=4)
    parser.add_argument("--left_chunks", type=int, default=16)
    parser.add_argument("--feat_dim", type=int, default=80)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--plot", default=None, help="write a PNG of per-chunk latency here")
    return parser


def main(cmd: Optional[Sequence[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    results = []
    for name in args.configs:
        start = time.perf_counter()
        results.append(benchmark(name, args, device, dtype))
        print(f"[{name}] measured in {time.perf_counter() - start:.0f} s", flush=True)
    print_report(results, args, device)
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
