"""Word (or character) error rate of a hypothesis text file against a reference, by sclite.

    python -m espnet_freeze_omni.bin.score_asr --ref data/test/text \
        --hyp exp/decode/test/asr_ctc/text --out_dir exp/scores/test/asr_wer_ctc \
        [--unit word|char] [--normalize true] [--utt2spk data/test/utt2spk] \
        [--metric asr_wer_ctc --test_set test]

Writes ref.trn, hyp.trn, sclite's result.txt and result.json in --out_dir (and metric.json
for write_results when --metric is given). Texts are Kaldi `utt_id words...` files;
references without a hypothesis are scored as empty output.
"""
import argparse
import dataclasses
import sys

from espnet2.utils.types import str2bool, str_or_none

from espnet_freeze_omni.data.kaldi_table import read_kaldi_map
from espnet_freeze_omni.scoring.results import METRICS, write_metric
from espnet_freeze_omni.scoring.sclite import score_error_rate

SCORER_ID = "sclite"
SCORER_NAME = ("NIST sclite (sctk) alignment; text lower-cased, punctuation stripped except "
               "apostrophes")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", required=True, help="reference Kaldi text file")
    parser.add_argument("--hyp", required=True, help="hypothesis Kaldi text file")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--unit", choices=("word", "char"), default="word")
    parser.add_argument("--normalize", type=str2bool, default=True,
                        help="lower-case and strip punctuation (keeping apostrophes) first")
    parser.add_argument("--utt2spk", type=str_or_none, default=None,
                        help="speaker ids for sclite's per-speaker table")
    parser.add_argument("--metric", type=str_or_none, default=None, choices=[None, *METRICS],
                        help="also write metric.json under this name for write_results")
    parser.add_argument("--test_set", type=str_or_none, default=None)
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    if args.metric and not args.test_set:
        raise SystemExit("score_asr: --metric needs --test_set")
    refs, hyps = read_kaldi_map(args.ref), read_kaldi_map(args.hyp)
    utt2spk = read_kaldi_map(args.utt2spk) if args.utt2spk else None
    rate = score_error_rate(refs, hyps, args.out_dir, args.unit, args.normalize, utt2spk)
    name = "WER" if args.unit == "word" else "CER"
    print(f"{name} {rate.error_rate:.2f}% over {rate.num_sentences} utterances, "
          f"{rate.num_tokens} {args.unit}s (sub {rate.substitutions:.2f}, del "
          f"{rate.deletions:.2f}, ins {rate.insertions:.2f}); report: {rate.result_txt}")
    if args.metric:
        write_metric(args.out_dir, args.metric, args.test_set, rate.error_rate, SCORER_ID,
                     f"{SCORER_NAME}; {args.unit} level", dataclasses.asdict(rate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
