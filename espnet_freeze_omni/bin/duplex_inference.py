#!/usr/bin/env python3
"""Decode a duplex test set with the duplex runner (recipe stage 15), item by item.

    python -m espnet_freeze_omni.bin.duplex_inference --ngpu 0 --config conf/decode.yaml \\
        --llm_conf path=exp/llm \\
        --speech_input_model exp/speech_input_stage3/valid.loss.best.pth \\
        --speech_output_model exp/speech_output_stage3/valid.loss.best.pth \\
        --codec_dir exp/codec \\
        --data_path_and_name_and_type dump/raw16k/duplex_test/wav.scp,speech,sound \\
        --key_file exp/decode/duplex_test/logdir/keys.1.scp \\
        --output_dir exp/decode/duplex_test/logdir/output.1 [--clock measured] [--num_threads 1]

Every recording (a duplex item of data/duplex_test, see data/duplex_sets.py, or any user
stream) goes through its own fresh DuplexSession (--session_conf, reseeded with the
utterance id) with `duplex_runner.run_duplex`: the audio is fed in --feed_seconds pieces as
a microphone delivers it, then the input is flushed. Writes under --output_dir:

    wav/<utt>.wav       the time-synchronous output track (Full-Duplex-Bench's output.wav):
                        24 kHz, exactly the input's duration, the assistant's speech where it
                        would be heard, cut where a barge-in stopped it
    events/<utt>.jsonl  every session event (SessionEvent.to_dict: session-clock `time`,
                        `audio_time`, the event's fields; audio as sample counts), what
                        scoring/duplex.py scores
    summary             `<utt> <JSON>` a line (Kaldi-style, sorted): duration, the heard
                        answer spans [[start, end, answer id]] (duplex_runner.speech_spans),
                        answers [{"id", "decided_at", "heard_input", "status", "text"}]
                        (answer k is the session's k-th turn_ended), interruptions, ignored
                        turns, compute seconds and real-time factor

Clock (--clock): "measured" (the default) adds the session's own compute to every event
time, as one worker would spend it (the input cannot be processed before it has arrived;
the answer is generated between ticks): the output track and every latency are what this
machine would have produced in real time, while the run itself goes as fast as the CPU
allows. Figures then move a little from run to run and machine to machine, and with load:
run each job on its own core (--num_threads 1, the default, with --inference_nj up to the
number of cores). "audio": compute takes no time, the run is deterministic and the
latencies are those of the model's decisions alone (a lower bound). --clock overrides a
`clock` in --session_conf.

The options of the test-set decoder (speech2speech_inference: --outputs, --history_mode,
--batch_size, --speak_ignored, --turn_silence, --commit_undecided, --qa_refs) are accepted, so one
decode config and one --decode_args serve both entry points; they change nothing here.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, List

import numpy as np

from espnet2.utils import config_argparse
from espnet2.utils.nested_dict_action import NestedDictAction
from espnet2.utils.types import str2bool, str2triple_str, str_or_none

from espnet_freeze_omni.data.kaldi_table import read_keys
from espnet_freeze_omni.inference.decode_options import (
    OUTPUTS,
    add_model_arguments,
    add_synthesis_arguments,
    build_speech2speech,
    parse_decode_args,
    wav_scp_of,
)

CLOCKS = ("measured", "audio")


def get_parser() -> argparse.ArgumentParser:
    parser = config_argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_level", default="INFO",
                        choices=("ERROR", "WARNING", "INFO", "DEBUG"))
    parser.add_argument("--ngpu", type=int, default=0, help="0: CPU, 1: decode on the GPU")
    parser.add_argument("--num_threads", type=int, default=1,
                        help="torch CPU threads of this job (0: torch's default); one worker "
                             "per session is what the measured clock assumes")
    add_model_arguments(parser)

    group = parser.add_argument_group("Data")
    group.add_argument("--data_path_and_name_and_type", type=str2triple_str, action="append",
                       required=True, help="<data dir>/wav.scp,speech,sound")
    group.add_argument("--key_file", type=str_or_none, default=None,
                       help="decode these utterance ids (first column); default: all")
    group.add_argument("--output_dir", required=True)

    group = parser.add_argument_group("Duplex session")
    group.add_argument("--session_conf", action=NestedDictAction, default=dict(),
                       help="DuplexSession options (vad=true, vad_min_silence_s=..., "
                            "turn_detection=state_head, ...)")
    group.add_argument("--clock", default="measured", choices=CLOCKS,
                       help="measured: event times include this machine's compute (real-time "
                            "faithful); audio: compute takes no time (deterministic)")
    group.add_argument("--feed_seconds", type=float, default=0.02,
                       help="audio per feed() call, as a microphone delivers it")
    add_synthesis_arguments(group)

    group = parser.add_argument_group(
        "Test-set decoder options (speech2speech_inference's; accepted so that one decode "
        "config serves both entry points; no effect here)")
    group.add_argument("--outputs", nargs="+", default=list(OUTPUTS), choices=OUTPUTS)
    group.add_argument("--history_mode", default="session", choices=("session", "own", "none"))
    group.add_argument("--batch_size", type=int, default=8)
    group.add_argument("--speak_ignored", type=str2bool, default=False)
    group.add_argument("--turn_silence", type=float, default=1.0)
    group.add_argument("--commit_undecided", type=str2bool, default=True)
    group.add_argument("--qa_refs", type=str_or_none, default=None)
    return parser


def summarize(events, duration: float, compute_s: float, clock: str) -> Dict:
    """The summary line of one item (module docstring)."""
    from espnet_freeze_omni.inference.duplex_runner import speech_spans

    answers: List[Dict] = []
    done = {e.data["answer_id"]: e.data for e in events if e.type == "answer_done"}
    for k, e in enumerate((e for e in events if e.type == "turn_ended"), 1):
        a = done.get(k, {})
        answers.append({"id": k, "decided_at": round(e.time, 4),
                        "heard_input": round(e.audio_time, 4), "forced": e.data["forced"],
                        "status": a.get("status", "unfinished"), "text": a.get("text", "")})
    return {
        "duration": round(duration, 4),
        "spans": [[round(lo, 4), round(hi, 4), a] for lo, hi, a in speech_spans(events)],
        "answers": answers,
        "interrupted": [{"answer_id": e.data["answer_id"], "at": round(e.time, 4),
                         "voiced_text": e.data["voiced_text"]}
                        for e in events if e.type == "interrupted"],
        "ignored": sum(e.type == "ignored" for e in events),
        "compute_s": round(compute_s, 3),
        "rtf": round(compute_s / duration, 4) if duration > 0 else None,
        "clock": clock,
    }


def decode(args: argparse.Namespace) -> Path:
    """Decode --key_file's items (default: all of wav.scp); returns --output_dir."""
    import soundfile
    import torch
    from tqdm import tqdm

    from espnet_freeze_omni.data.audio import load_audio
    from espnet_freeze_omni.data.kaldi_table import read_wav_scp
    from espnet_freeze_omni.inference.duplex_runner import run_duplex

    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    if args.feed_seconds <= 0:
        raise ValueError(f"--feed_seconds must be > 0, got {args.feed_seconds}")
    wav_scp = wav_scp_of(args)
    wavs = read_wav_scp(wav_scp)
    keys = read_keys(args.key_file, wavs, wav_scp) if args.key_file else list(wavs)
    s2s = build_speech2speech(args)
    options = {**args.session_conf, "clock": args.clock}

    out_dir = Path(args.output_dir)
    (out_dir / "wav").mkdir(parents=True, exist_ok=True)
    (out_dir / "events").mkdir(parents=True, exist_ok=True)
    lines: Dict[str, str] = {}
    total_audio = total_compute = 0.0
    for utt in tqdm(keys, desc="duplex", unit="item"):
        wav = load_audio(wavs[utt], s2s.input_sample_rate, utt)
        try:
            session = s2s.session(**options)
            session.reseed(utt)
            start = time.perf_counter()
            events, track = run_duplex(session, wav, feed_seconds=args.feed_seconds)
            spent = time.perf_counter() - start
        except Exception as e:
            raise RuntimeError(f"utterance {utt} ({wavs[utt]}): {e}") from e
        duration = len(wav) / s2s.input_sample_rate
        expected = int(round(duration * s2s.sample_rate))
        if len(track) != expected:  # the Full-Duplex-Bench convention; never expected
            raise RuntimeError(f"utterance {utt}: output track of {len(track)} samples, "
                               f"expected {expected} ({duration:.3f} s at {s2s.sample_rate} Hz)")
        soundfile.write(out_dir / "wav" / f"{utt}.wav", np.clip(track, -1.0, 1.0),
                        s2s.sample_rate, subtype="PCM_16")
        with open(out_dir / "events" / f"{utt}.jsonl", "w", encoding="utf-8") as f:
            for e in events:
                f.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")
        summary = summarize(events, duration, spent, args.clock)
        lines[utt] = json.dumps(summary, ensure_ascii=False, sort_keys=True)
        total_audio += duration
        total_compute += spent
    from espnet_freeze_omni.data.kaldi_table import write_kaldi_map

    write_kaldi_map(out_dir / "summary", lines)
    logging.info("duplex: %d item(s), %.1f s of input in %.1f s of compute (RTF %.3f, clock "
                 "%s); wrote wav/, events/ and summary under %s", len(keys), total_audio,
                 total_compute, total_compute / max(total_audio, 1e-9), args.clock, out_dir)
    return out_dir


def main(cmd=None):
    decode(parse_decode_args(get_parser, cmd))


if __name__ == "__main__":
    main()
