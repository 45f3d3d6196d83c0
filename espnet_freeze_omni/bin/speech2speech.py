#!/usr/bin/env python3
"""Talk to a trained Freeze-Omni model through its duplex session.

A multi-turn dialogue, one wav per user turn (the model's own K/V history carries over):

    python -m espnet_freeze_omni.bin.speech2speech --model_file exp/packed/freeze_omni_model.zip \\
        [--llm_path DIR] --wav q1.wav --wav q2.wav --output_dir out/

    writes out/turn<N>.wav (the spoken answer, 24 kHz), out/answers.txt (`<N> <answer text>`)
    and out/events.jsonl (every session event with its times, the audio as sample counts).
    Each turn is followed by --turn_silence seconds of silence, in which the state head
    should take the turn; a turn it leaves undecided is committed (said in the log) unless
    --commit_undecided false.

A duplex run after Full-Duplex-Bench (time-synchronous output of the input's duration):

    python -m espnet_freeze_omni.bin.speech2speech --model_file ... \\
        --duplex_input input.wav --duplex_output output.wav [--clock measured]

    writes output.wav (24 kHz: the assistant's speech where it would be heard, cut at
    barge-in) and output.events.jsonl. With --clock measured (the default here) the run
    goes as fast as the CPU allows and the output is what real time would have produced.

Input files may have any sample rate and channel count: they are downmixed and resampled
to the model's 16 kHz (a log line says so).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List

import numpy as np

from espnet2.utils.types import str2bool, str_or_none


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log_level", default="INFO",
                        choices=("ERROR", "WARNING", "INFO", "DEBUG"))
    group = parser.add_argument_group("Model")
    group.add_argument("--model_file", required=True,
                       help="packed model zip (recipe stage 17) or a model-zoo name")
    group.add_argument("--llm_path", type=str_or_none, default=None,
                       help="local folder of the frozen LLM (default: the one recorded at "
                            "training)")
    group.add_argument("--device", default="cpu")
    group.add_argument("--cachedir", type=str_or_none, default=None,
                       help="where espnet_model_zoo unpacks the model "
                            "(default ~/.cache/espnet_model_zoo)")
    group.add_argument("--max_new_tokens", type=int, default=128)
    group.add_argument("--top_k", type=int, default=2, help="codec-token sampling")
    group.add_argument("--seed", type=int, default=0)

    group = parser.add_argument_group("Input and output")
    group.add_argument("--wav", action="append", default=[],
                       help="a user turn (repeat for a multi-turn dialogue)")
    group.add_argument("--output_dir", type=str_or_none, default=None,
                       help="with --wav: where the answers go")
    group.add_argument("--duplex_input", type=str_or_none, default=None)
    group.add_argument("--duplex_output", type=str_or_none, default=None)
    group.add_argument("--feed_seconds", type=float, default=0.02,
                       help="audio per feed() call, as a microphone delivers it")

    group = parser.add_argument_group("Session (SessionOptions)")
    group.add_argument("--system_role", type=str_or_none, default=None)
    group.add_argument("--vad", type=str2bool, default=True)
    group.add_argument("--vad_threshold", type=float, default=0.5)
    group.add_argument("--vad_min_silence_s", type=float, default=None,
                       help="default: 2 s (the state head judges the silence), 0.5 s with "
                            "--turn_detection vad")
    group.add_argument("--vad_replay_s", type=float, default=0.96)
    group.add_argument("--turn_detection", default="state_head",
                       choices=("state_head", "vad", "manual"))
    group.add_argument("--barge_in", type=str2bool, default=True)
    group.add_argument("--pause_on_speech", type=str2bool, default=True,
                       help="with VAD: pause an answer as soon as the user starts speaking; "
                            "the state head then cuts it (respond) or resumes it (ignore, "
                            "or the speech stops undecided). false: it plays on until the "
                            "state head says respond, as the paper")
    group.add_argument("--interrupt_on_speech", type=str2bool, default=False,
                       help="with VAD: cut an answer as soon as the user starts speaking, "
                            "side talk too (OpenAI's server VAD); overrides the pause")
    group.add_argument("--commit_after_silence_s", type=float, default=None,
                       help="with VAD: answer a turn the state head left undecided this "
                            "long after the speech stopped (default: never)")
    group.add_argument("--clock", default=None, choices=("audio", "measured"),
                       help="default: audio for --wav, measured for --duplex_input")
    group.add_argument("--max_turn_seconds", type=float, default=30.0)
    group.add_argument("--state_rule", default=None, choices=("argmax", "release"),
                       help="how the state head's probabilities decide (default: the model's)")
    group.add_argument("--respond_threshold", type=float, default=None,
                       help="respond once p(respond) reaches this (default: the rule alone)")
    group.add_argument("--llm_sampling", default="greedy", choices=("greedy", "release"),
                       help="answer tokens: greedy, or the release's temperature / top-k / "
                            "top-p sampling (--llm_temperature, --llm_top_k, --llm_top_p)")
    group.add_argument("--llm_temperature", type=float, default=0.8)
    group.add_argument("--llm_top_k", type=int, default=20)
    group.add_argument("--llm_top_p", type=float, default=0.8)
    group.add_argument("--turn_silence", type=float, default=1.5,
                       help="--wav: seconds of silence fed after each turn")
    group.add_argument("--commit_undecided", type=str2bool, default=True,
                       help="--wav: answer a turn the state head left undecided")
    return parser


def load_input(path: str, rate: int) -> np.ndarray:
    """A wav of any rate / channel count as mono float32 at `rate` (logged when converted)."""
    from espnet_freeze_omni.data.audio import load_audio

    if not Path(path).is_file():
        raise FileNotFoundError(f"input audio not found: {path}")
    return load_audio(path, rate)


def write_events(path: Path, events) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e.to_dict(), ensure_ascii=False) + "\n")


def session_options(args) -> dict:
    return dict(system_role=args.system_role, vad=args.vad, vad_threshold=args.vad_threshold,
                vad_min_silence_s=args.vad_min_silence_s, vad_replay_s=args.vad_replay_s,
                turn_detection=args.turn_detection, barge_in=args.barge_in,
                interrupt_on_speech=args.interrupt_on_speech,
                pause_on_speech=args.pause_on_speech,
                commit_after_silence_s=args.commit_after_silence_s,
                max_turn_seconds=args.max_turn_seconds, max_new_tokens=args.max_new_tokens,
                state_rule=args.state_rule, respond_threshold=args.respond_threshold,
                llm_sampling=args.llm_sampling,
                llm_temperature=args.llm_temperature, llm_top_k=args.llm_top_k,
                llm_top_p=args.llm_top_p)


def run_turns(s2s, args) -> List[str]:
    """--wav mode: one session, one wav per turn; returns the answer texts."""
    import soundfile

    from espnet_freeze_omni.inference.duplex_runner import run_turn

    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wavs = [load_input(p, s2s.input_sample_rate) for p in args.wav]
    session = s2s.session(clock=args.clock or "audio", **session_options(args))
    all_events, answers = [], []
    for n, (path, wav) in enumerate(zip(args.wav, wavs), 1):
        turn = run_turn(session, wav, silence_seconds=args.turn_silence,
                        feed_seconds=args.feed_seconds, commit_undecided=args.commit_undecided)
        if turn.committed:
            logging.warning("turn %d (%s): the state head left it undecided after %.1f s of "
                            "silence: committed", n, path, args.turn_silence)
        elif turn.decision_time is None:
            logging.warning("turn %d (%s): the state head did not take the turn", n, path)
        soundfile.write(out_dir / f"turn{n}.wav", np.clip(turn.pcm, -1, 1),
                        session.output_sample_rate, subtype="PCM_16")
        answers.append(turn.answer_text)
        logging.info("turn %d (%s): %s", n, path, turn.answer_text or "(no answer)")
        all_events += turn.events
    all_events += session.flush()
    with open(out_dir / "answers.txt", "w", encoding="utf-8") as f:
        for n, text in enumerate(answers, 1):
            f.write(f"{n} {' '.join(text.split())}\n")
    write_events(out_dir / "events.jsonl", all_events)
    logging.info("wrote %d turn(s) under %s", len(answers), out_dir)
    return answers


def run_duplex_file(s2s, args) -> Path:
    """--duplex_input mode: the time-synchronous output track."""
    import soundfile

    from espnet_freeze_omni.inference.duplex_runner import run_duplex

    wav = load_input(args.duplex_input, s2s.input_sample_rate)
    session = s2s.session(clock=args.clock or "measured", **session_options(args))
    events, track = run_duplex(session, wav, feed_seconds=args.feed_seconds)
    out = Path(args.duplex_output)
    out.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(out, np.clip(track, -1, 1), session.output_sample_rate, subtype="PCM_16")
    write_events(out.with_suffix(".events.jsonl"), events)
    turns = sum(e.type == "turn_ended" for e in events)
    cut = sum(e.type == "interrupted" for e in events)
    logging.info("%s: %.2f s in, %d turn(s) taken, %d interruption(s) -> %s",
                 args.duplex_input, len(wav) / session.sample_rate, turns, cut, out)
    return out


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s")
    if bool(args.wav) == bool(args.duplex_input):
        raise SystemExit("give --wav (one or more turns) or --duplex_input, not both")
    if args.wav and not args.output_dir:
        raise SystemExit("--wav needs --output_dir")
    if args.duplex_input and not args.duplex_output:
        raise SystemExit("--duplex_input needs --duplex_output")
    for path in args.wav + ([args.duplex_input] if args.duplex_input else []):
        if not Path(path).is_file():  # before the model loads
            raise SystemExit(f"input audio not found: {path}")
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    s2s = Speech2Speech.from_pretrained(args.model_file, llm_path=args.llm_path,
                                        device=args.device, cachedir=args.cachedir,
                                        max_new_tokens=args.max_new_tokens,
                                        top_k=args.top_k, seed=args.seed)
    logging.info("%s %s", sys.executable, " ".join(sys.argv if cmd is None else cmd))
    if args.wav:
        run_turns(s2s, args)
    else:
        run_duplex_file(s2s, args)


if __name__ == "__main__":
    main()
