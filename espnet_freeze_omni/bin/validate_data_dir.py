"""Check a Kaldi-style data dir; print every problem (file:line: [utt] message).

    python -m espnet_freeze_omni.bin.validate_data_dir data/train [--check_audio true]
        [--sample_rate 16000]

Exit status 0 when the dir is sound, 1 when problems were found.
"""
import argparse
import sys

from espnet2.utils.types import int_or_none, str2bool

from espnet_freeze_omni.data.validation import validate_data_dir


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", help="data dir holding wav.scp, text, utt2spk, ...")
    parser.add_argument("--check_audio", type=str2bool, default=False,
                        help="open every recording with soundfile (runs wav.scp pipes)")
    parser.add_argument("--sample_rate", type=int_or_none, default=None,
                        help="expected sample rate in Hz (with --check_audio)")
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    problems = validate_data_dir(args.data_dir, args.check_audio, args.sample_rate)
    for p in problems:
        print(p)
    if problems:
        print(f"validate_data_dir {args.data_dir}: {len(problems)} problem(s); "
              "fix_data_dir can repair most of them", file=sys.stderr)
        return 1
    print(f"validate_data_dir {args.data_dir}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
