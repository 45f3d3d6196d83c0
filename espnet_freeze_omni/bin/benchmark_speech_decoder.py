#!/usr/bin/env python3
"""Latency and speed of the speech-output path: LLM hidden states -> codec tokens -> PCM.

For each decoder size (the speech_decoder_conf of conf/speech_output_stage3_<size>.yaml;
stand-in LLM hidden size 256 for tiny, the embedded recipe's LLM, and 3584 for paper; random
weights: speed does not depend on training):

    first packet   time from the segment's text embeddings + hidden states to the first
                   PCM packet out of the PacketDecoder (prefix decoder + prefill + 30 AR
                   steps + the codec decode of the first packet), P50/P90 over --runs
    AR tokens/s    cached autoregressive steps per second (greedy picks; one pass per token
                   even with --guidance_scale, which doubles the passes elsewhere)
    RTF            wall time of the whole path for a --rtf_tokens segment (codec included)
                   divided by the audio duration (tokens / 40 Hz)

    python -m espnet_freeze_omni.bin.benchmark_speech_decoder [--device cuda] [--plot out.png]

The codec is --codec_conf if given, else the embedded codec with a random codebook (its
decode cost does not depend on the codebook), else a minimal stand-in with the same 40 Hz
token rate; the report says which.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import yaml

from espnet_freeze_omni.codec.abs_codec import AbsCodec
from espnet_freeze_omni.inference.speech_synthesis import generate_codec_tokens, stream_pcm
from espnet_freeze_omni.scoring.machine import device_name
from espnet_freeze_omni.speech_decoder.decoder import SpeechDecoder

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# Stand-in LLM widths: the embedded recipe's tiny LLM (local/build_llm.sh) and Qwen2-7B (SPEC §1).
LLM_HIDDEN_SIZE: Dict[str, int] = {"tiny": 256, "paper": 3584}


def decoder_conf(size: str) -> dict:
    """The speech_decoder_conf of conf/speech_output_stage3_<size>.yaml, read from the
    config itself so the benchmark measures the decoder the recipe trains."""
    path = CONF_DIR / f"speech_output_stage3_{size}.yaml"
    with open(path, encoding="utf-8") as f:
        conf = dict(yaml.safe_load(f)["speech_decoder_conf"])
    conf.update(llm_hidden_size=LLM_HIDDEN_SIZE[size], use_prefix=True)
    return conf


class StandInCodec(AbsCodec):
    """Minimal codec at the paper's rate (24 kHz, 600 samples/token): one stored 25 ms
    waveform per code. Used only when no real codec can be built."""

    def __init__(self, seed: int = 0):
        rng = np.random.RandomState(seed)
        self.table = (rng.randn(self.vocab_size, self.samples_per_token) * 0.05).astype(np.float32)

    def _encode(self, wav: np.ndarray) -> np.ndarray:
        return np.zeros(len(wav) // self.samples_per_token, dtype=np.int64)

    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        return self.table[tokens].reshape(-1)


class TimedCodec(AbsCodec):
    """Wraps a codec and records how long each decode takes."""

    def __init__(self, inner: AbsCodec):
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.samples_per_token = inner.samples_per_token
        self.vocab_size = inner.vocab_size
        self.decode_times: List[float] = []

    def __getattr__(self, name):  # e.g. context_tokens, for packet decoders that ask
        return getattr(self.__dict__["inner"], name)

    def _encode(self, wav):
        return self.inner._encode(wav)

    def _decode(self, tokens):
        t0 = time.perf_counter()
        out = self.inner.decode(tokens)
        self.decode_times.append(time.perf_counter() - t0)
        return out


def build_codec(codec_conf: Optional[str]):
    """(codec, description)."""
    if codec_conf:
        from espnet_freeze_omni.codec import load_codec

        codec = load_codec(codec_conf)
        return codec, f"{type(codec).__name__} from {codec_conf}"
    try:
        from espnet_freeze_omni.codec.embedded import EmbeddedCodec, EmbeddedCodecConfig

        cfg = EmbeddedCodecConfig()
        rng = np.random.RandomState(0)
        centroids = rng.randn(cfg.vocab_size, cfg.frames_per_token * cfg.n_mels).astype(np.float32)
        mags = np.abs(rng.randn(cfg.vocab_size, cfg.frames_per_token, cfg.n_freq)).astype(np.float32)
        return (EmbeddedCodec(cfg, centroids, mags),
                f"embedded k-means/Griffin-Lim codec, random codebook ({cfg.gl_iters} GL iters)")
    except Exception as e:  # noqa: BLE001 - any failure means: fall back, and say so
        return StandInCodec(), f"stand-in table codec (embedded codec unavailable: {e})"


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def bench_size(name: str, args, codec: AbsCodec, device: torch.device, dtype) -> dict:
    conf = decoder_conf(name)
    torch.manual_seed(0)
    decoder = SpeechDecoder(**conf).to(device=device, dtype=dtype).eval()
    n_params = sum(p.numel() for p in decoder.parameters())
    h = conf["llm_hidden_size"]
    text = torch.randn(1, args.text_tokens, h, device=device, dtype=dtype) * 0.02
    prefix = torch.randn(1, args.text_tokens, h, device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    timed = TimedCodec(codec)

    # --- hidden states -> first PCM packet (never stop early: EOS off until rtf_tokens)
    first, prefill_ms, codec_ms = [], [], []
    for run in range(args.runs + 1):  # run 0 warms up (allocations, kernels)
        timed.decode_times.clear()
        sync(device)
        t0 = time.perf_counter()
        decoder.prefill(text, prefix)
        sync(device)
        t_prefill = time.perf_counter() - t0
        sync(device)
        t0 = time.perf_counter()
        tokens = generate_codec_tokens(decoder, text, prefix, top_k=args.top_k,
                                       max_tokens=args.rtf_tokens, min_tokens=args.rtf_tokens,
                                       generator=gen, guidance_scale=args.guidance_scale)
        pcm = stream_pcm(timed, tokens)
        packet = next(pcm)
        sync(device)
        t_first = time.perf_counter() - t0
        pcm.close()
        if run:
            first.append(t_first * 1e3)
            prefill_ms.append(t_prefill * 1e3)
            codec_ms.append(timed.decode_times[0] * 1e3 if timed.decode_times else float("nan"))
    first_packet_samples = len(packet)

    # --- AR tokens/s: cached steps only
    logits, cache, pos = decoder.prefill(text, prefix)
    steps = args.rtf_tokens
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(steps):
            logits = decoder.step(token, pos, cache)
            token[0, 0] = int(logits[0, : decoder.vocab_size].argmax())
            pos += 1
    sync(device)
    tok_per_s = steps / (time.perf_counter() - t0)

    # --- RTF of the whole path (prefill, AR, sampling, codec, packet splicing)
    timed.decode_times.clear()
    sync(device)
    t0 = time.perf_counter()
    tokens = generate_codec_tokens(decoder, text, prefix, top_k=args.top_k,
                                   max_tokens=args.rtf_tokens, min_tokens=args.rtf_tokens,
                                   generator=gen, guidance_scale=args.guidance_scale)
    samples = sum(len(p) for p in stream_pcm(timed, tokens))
    sync(device)
    wall = time.perf_counter() - t0
    audio_s = args.rtf_tokens / (codec.sample_rate / codec.samples_per_token)
    return dict(
        size=name, params_m=n_params / 1e6, first=first, prefill=prefill_ms, codec_first=codec_ms,
        first_packet_ms_p50=percentile(first, 50), first_packet_ms_p90=percentile(first, 90),
        prefill_ms_p50=percentile(prefill_ms, 50), codec_first_ms_p50=percentile(codec_ms, 50),
        first_packet_audio_ms=1e3 * first_packet_samples / codec.sample_rate,
        ar_tokens_per_s=tok_per_s, rtf=wall / audio_s, audio_s=audio_s, pcm_samples=samples,
        codec_total_s=sum(timed.decode_times),
    )


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "paper"], choices=sorted(LLM_HIDDEN_SIZE))
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--runs", type=int, default=5, help="timed runs per size (after 1 warm-up)")
    p.add_argument("--text_tokens", type=int, default=12,
                   help="LLM tokens in the segment (a typical first segment)")
    p.add_argument("--rtf_tokens", type=int, default=200, help="codec tokens for AR/RTF (40 Hz)")
    p.add_argument("--top_k", type=int, default=2)
    p.add_argument("--guidance_scale", type=float, default=1.0,
                   help="classifier-free guidance (!= 1: a second, text-free cached pass per "
                        "token in the first-packet and RTF figures)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--codec_conf", default=None, help="codec config for load_codec (YAML)")
    p.add_argument("--plot", default=None, help="write a PNG of the first-packet latencies")
    return p


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    codec, codec_desc = build_codec(args.codec_conf)
    dev_name = device_name(device)
    print(f"device: {device} ({dev_name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"dtype {args.dtype}")
    print(f"codec: {codec_desc}; {codec.sample_rate} Hz, {codec.samples_per_token} samples/token")
    print(f"segment: {args.text_tokens} LLM tokens (+ as many hidden states), top-k {args.top_k}, "
          f"guidance scale {args.guidance_scale}; "
          f"first packet = PacketDecoder defaults; {args.runs} runs after 1 warm-up")
    results = []
    for name in args.sizes:
        r = bench_size(name, args, codec, device, dtype)
        results.append(r)
        print(
            f"[{name}] {r['params_m']:.1f}M params | first PCM packet P50 {r['first_packet_ms_p50']:.0f} ms, "
            f"P90 {r['first_packet_ms_p90']:.0f} ms (prefill P50 {r['prefill_ms_p50']:.0f} ms, "
            f"codec decode of first packet P50 {r['codec_first_ms_p50']:.0f} ms, "
            f"packet = {r['first_packet_audio_ms']:.0f} ms audio) | AR {r['ar_tokens_per_s']:.1f} tokens/s "
            f"(real time needs 40) | RTF {r['rtf']:.3f} for {r['audio_s']:.1f} s of audio "
            f"(codec {r['codec_total_s']:.2f} s of it)",
            flush=True,
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        axes[0].boxplot([r["first"] for r in results])
        axes[0].set_xticks(range(1, len(results) + 1), [r["size"] for r in results])
        axes[0].set_ylabel("ms")
        axes[0].set_title("hidden states -> first PCM packet")
        axes[1].bar([r["size"] for r in results], [r["rtf"] for r in results])
        axes[1].axhline(1.0, color="r", linestyle="--", linewidth=1)
        axes[1].set_title("RTF (codec included)")
        fig.suptitle(f"speech decoder on {device} ({dev_name})", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"plot: {args.plot}")
    return results


if __name__ == "__main__":
    main()
