#!/usr/bin/env python3
"""Decode a Kaldi-style wav.scp with a trained speech-input model.

    --mode ctc      CTC greedy transcript            -> <output_dir>/text
    --mode llm      the frozen LLM's reply: transcript (stage 2) or answer (stage 3)
                                                     -> <output_dir>/text
    --mode listen   streaming state-head decisions   -> <output_dir>/turn_info
                    (`utt_id <first non-listen state> <seconds>`, state 0 = never decided)

Recipes split the scp over JOB=1:N with --key_file, as espnet's asr_inference does. Audio
at another sample rate than the model's frontend, or with several channels, is resampled
and downmixed (and logged), never decoded as if it were at the model's rate.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from tqdm import tqdm

from espnet_freeze_omni.data.kaldi_table import read_kaldi_map, read_keys, read_wav_scp
from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_config", required=True)
    p.add_argument("--model_file", required=True)
    p.add_argument("--llm_path", default=None, help="override the LLM directory in the config")
    p.add_argument("--wav_scp", required=True)
    p.add_argument("--key_file", default=None, help="decode only these utterance ids")
    p.add_argument("--history", default=None, help="Kaldi text file: utt_id <JSON turns>")
    p.add_argument("--mode", choices=["ctc", "llm", "listen"], default="ctc")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--ngpu", type=int, default=0)
    p.add_argument("--max_new_tokens", type=int, default=128)
    return p


def main(cmd=None):
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    decoder = SpeechInputInference.from_files(
        args.train_config, args.model_file, device="cuda" if args.ngpu > 0 else "cpu",
        llm_path=args.llm_path, max_new_tokens=args.max_new_tokens)
    wavs = read_wav_scp(args.wav_scp)
    keys = read_keys(args.key_file, wavs, args.wav_scp) if args.key_file else sorted(wavs)
    histories = read_kaldi_map(args.history) if args.history else {}
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out_name = "turn_info" if args.mode == "listen" else "text"
    with open(out_dir / out_name, "w", encoding="utf-8") as out:
        for utt_id in tqdm(keys, desc=f"decode ({args.mode})"):
            wav = decoder.load(wavs[utt_id], utt_id)
            history = json.loads(histories[utt_id]) if histories.get(utt_id) else None
            if args.mode == "ctc":
                out.write(f"{utt_id} {decoder.ctc_transcribe(wav)}\n")
            elif args.mode == "llm":
                out.write(f"{utt_id} {decoder.llm_generate(wav, history)}\n")
            else:
                res = decoder.listen(wav, history)
                when = res.decision_time if res.decision_time is not None else -1
                out.write(f"{utt_id} {res.decision} {when:.3f}\n")


if __name__ == "__main__":
    main()
