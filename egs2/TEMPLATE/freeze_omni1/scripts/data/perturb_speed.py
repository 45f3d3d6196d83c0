#!/usr/bin/env python3
"""Speed-perturbed copy of a data dir (stage 2): one copy per factor, ids prefixed sp<f>-.

    scripts/data/perturb_speed.py --factors "0.9 1.0 1.1" data/train data/train_sp
"""
import argparse

from espnet_freeze_omni.data.derive import perturb_speed
from espnet_freeze_omni.data.kaldi_table import read_kaldi_map

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--factors", required=True, help='space-separated, e.g. "0.9 1.0 1.1"')
parser.add_argument("src")
parser.add_argument("dst")
args = parser.parse_args()
factors = [float(f) for f in args.factors.split()]
perturb_speed(args.src, args.dst, factors)
n_src, n_dst = len(read_kaldi_map(f"{args.src}/utt2spk")), len(read_kaldi_map(f"{args.dst}/utt2spk"))
print(f"perturb_speed: {args.src} ({n_src} utts) x factors {factors} -> {args.dst} ({n_dst} utts)")
