"""Repair a Kaldi-style data dir in place: keep the utterances sound in every file, sorted.

    python -m espnet_freeze_omni.bin.fix_data_dir data/train [--check_audio true]
        [--sample_rate 16000]

Originals are backed up in data/train/.backup/, every dropped utterance and its reason is
listed in data/train/.backup/dropped.txt, spk2utt is regenerated and a summary printed.
"""
import argparse
import sys

from espnet2.utils.types import int_or_none, str2bool

from espnet_freeze_omni.data.validation import fix_data_dir


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir")
    parser.add_argument("--check_audio", type=str2bool, default=False,
                        help="also drop utterances whose audio soundfile cannot read")
    parser.add_argument("--sample_rate", type=int_or_none, default=None,
                        help="also drop recordings at another rate (with --check_audio)")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    fix_data_dir(args.data_dir, args.check_audio, args.sample_rate, verbose=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
