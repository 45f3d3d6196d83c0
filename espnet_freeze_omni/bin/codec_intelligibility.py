"""How intelligible is speech after a codec round trip? (original vs encode -> decode)

    # held-out espeak-ng sentences (and optionally a ~1 h training set) from stdlib text
    python -m espnet_freeze_omni.bin.codec_intelligibility make_data --out_dir exp/codec_eval \
        --num_eval 40 [--num_train 1200]
    # score a codec on them
    python -m espnet_freeze_omni.bin.codec_intelligibility evaluate --codec_dir exp/codec \
        --data_dir exp/codec_eval/eval --output_dir exp/codec_eval/embedded \
        [--asr my.module:transcribe]

Measures, per utterance and averaged (written to output_dir/results.yaml):
  stoi       short-time objective intelligibility (Taal et al. 2011), 0..1, clean speech = 1
  mcd        mel-cepstral distortion in dB between original and round trip
  word_acc   isolated-word identification by DTW over mel cepstra of 55 minimal-pair words,
             originals against round trips (a listening proxy for a closed vocabulary)
  wer        only with --asr (module:function taking (wav, sample_rate) -> text) or
             --asr_exp: word error rate of the ASR on the originals and on the round trips,
             against data_dir/text
The measures are in espnet_freeze_omni/scoring/codec_metrics.py, the evaluation in
espnet_freeze_omni/scoring/codec_intelligibility.py.
"""
from __future__ import annotations

import argparse
import sys

import yaml

from espnet_freeze_omni.scoring.codec_intelligibility import (
    evaluate,
    load_asr,
    make_data,
    project_ctc_asr,
)


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make_data", help="synthesize held-out eval (and train) data dirs")
    mk.add_argument("--out_dir", required=True)
    mk.add_argument("--num_eval", type=int, default=40)
    mk.add_argument("--num_train", type=int, default=0)
    mk.add_argument("--sample_rate", type=int, default=24000)
    ev = sub.add_parser("evaluate", help="score a codec's round trips")
    group = ev.add_mutually_exclusive_group(required=True)
    group.add_argument("--codec_dir", help="an embedded codec dir")
    group.add_argument("--codec_conf", help="YAML with a load_codec() dict")
    ev.add_argument("--data_dir", required=True)
    ev.add_argument("--output_dir", default=None)
    asr = ev.add_mutually_exclusive_group()
    asr.add_argument("--asr", default=None, help="module:function, (wav, sample_rate) -> text")
    asr.add_argument("--asr_exp", default=None,
                     help="the project's CTC ASR: a speech-input experiment dir "
                          "(config.yaml + valid.loss.best.pth), e.g. exp/speech_input_stage2")
    ev.add_argument("--max_utts", type=int, default=None)
    ev.add_argument("--no_word_proxy", action="store_true")
    return p


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    if args.command == "make_data":
        make_data(args.out_dir, args.num_eval, args.num_train, args.sample_rate)
        return
    from espnet_freeze_omni.codec import load_codec

    codec = load_codec({"type": "embedded", "path": args.codec_dir} if args.codec_dir
                       else args.codec_conf)
    summary = evaluate(codec, args.data_dir, args.output_dir,
                       load_asr(args.asr) if args.asr else
                       project_ctc_asr(args.asr_exp) if args.asr_exp else None, args.max_utts,
                       word_proxy=not args.no_word_proxy)
    yaml.safe_dump(summary, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
