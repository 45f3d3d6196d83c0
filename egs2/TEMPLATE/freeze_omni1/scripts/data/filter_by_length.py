#!/usr/bin/env python3
"""Length filtering (stage 4): keep utterances with min <= duration <= max seconds.

    scripts/data/filter_by_length.py --fs 16000 --min_seconds 0.1 --max_seconds 20 \
        dump/raw16k/org/train dump/raw16k/train

Durations come from <src>/utt2num_samples; removed utterances are listed with their
duration in <dst>/filtered_out.txt and counted on stdout.
"""
import argparse

from espnet_freeze_omni.data.derive import filter_by_length

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--fs", type=int, required=True)
parser.add_argument("--min_seconds", type=float, required=True)
parser.add_argument("--max_seconds", type=float, required=True)
parser.add_argument("src")
parser.add_argument("dst")
args = parser.parse_args()
r = filter_by_length(args.src, args.dst, args.fs, args.min_seconds, args.max_seconds)
print(f"filter_by_length {args.src} -> {args.dst}: kept {r.num_kept} of {r.num_before}; "
      f"removed {len(r.too_short)} shorter than {args.min_seconds} s, {len(r.too_long)} "
      f"longer than {args.max_seconds} s, {len(r.no_length)} without length"
      + (f" (listed in {args.dst}/filtered_out.txt)" if r.num_kept < r.num_before else ""))
