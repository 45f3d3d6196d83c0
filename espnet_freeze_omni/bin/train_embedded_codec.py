"""Train the embedded k-means codec on a wav.scp.

    python -m espnet_freeze_omni.bin.train_embedded_codec --wav_scp data/train/wav.scp \
        --out_dir exp/codec

Writes codebook.npz and config.yaml to out_dir; load with
`EmbeddedCodec.from_dir(out_dir)` or `load_codec({"type": "embedded", "path": out_dir})`.
"""
from __future__ import annotations

import argparse
import logging
import sys

from espnet_freeze_omni.codec.embedded import EmbeddedCodecConfig, train_embedded_codec


def get_parser() -> argparse.ArgumentParser:
    defaults = EmbeddedCodecConfig()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wav_scp", required=True, help="Kaldi wav.scp (any sample rate)")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--vocab_size", type=int, default=defaults.vocab_size)
    p.add_argument("--kmeans_iters", type=int, default=12)
    p.add_argument("--kmeans_max_tokens", type=int, default=100_000,
                   help="k-means runs on a random subset of this many tokens")
    p.add_argument("--max_hours", type=float, default=None,
                   help="use only the first N hours of audio")
    p.add_argument("--n_mels", type=int, default=defaults.n_mels)
    p.add_argument("--gl_iters", type=int, default=defaults.gl_iters,
                   help="Griffin-Lim iterations used when decoding (saved in the config)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--num_threads", type=int, default=None, help="torch threads")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    codec = train_embedded_codec(
        args.wav_scp, args.out_dir, vocab_size=args.vocab_size,
        kmeans_iters=args.kmeans_iters, kmeans_max_tokens=args.kmeans_max_tokens,
        max_hours=args.max_hours,
        progress=not args.no_progress, num_threads=args.num_threads,
        n_mels=args.n_mels, gl_iters=args.gl_iters, seed=args.seed,
    )
    print(f"embedded codec ({codec.vocab_size} codes, {codec.token_rate} tokens/s) -> "
          f"{args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
