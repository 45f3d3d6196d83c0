"""Copy the utterances listed in a Kaldi table (its first column) from one data dir to another.

    python -m espnet_freeze_omni.bin.subset_data_dir SRC DST --utt_list LIST

Every utterance table of SRC (text, utt2spk, turn_info, ...) keeps the listed utterances,
wav.scp their recordings, spk2utt is rebuilt (data.derive.subset_data_dir). The driver's
stage 4 uses it to keep in the 24 kHz dump exactly the utterances kept at 16 kHz
(--utt_list dump/raw16k/<set>/utt2spk).
"""
import argparse
import sys

from espnet_freeze_omni.data.derive import subset_data_dir
from espnet_freeze_omni.data.kaldi_table import read_kaldi_map


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="data dir to copy from")
    parser.add_argument("dst", help="data dir to write (created)")
    parser.add_argument("--utt_list", required=True,
                        help="a Kaldi table whose keys are the utterances to keep (e.g. utt2spk)")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    keep = read_kaldi_map(args.utt_list)
    subset_data_dir(args.src, args.dst, keep)
    print(f"subset_data_dir: {len(keep)} utterances of {args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
