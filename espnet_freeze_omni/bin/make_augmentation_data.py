"""Write noise and RIR lists for espnet's on-the-fly augmentation (data/augment.py).

    python -m espnet_freeze_omni.bin.make_augmentation_data --out data/local/augment \
        [--babble_wav_scp data/train/wav.scp] [--seed 0] [--num_per_kind 4] [--num_rirs 8] \
        [--espnet_samples true]

Then train with `--preprocessor_conf noise_scp=<out>/noise.scp --preprocessor_conf
rir_scp=<out>/rirs.scp` (and the apply probabilities / SNR range: espnet's CommonPreprocessor
options noise_apply_prob, noise_db_range, rir_apply_prob).
"""
import argparse
import sys

from espnet2.utils.types import str2bool, str_or_none

from espnet_freeze_omni.data.augment import make_augmentation_data


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output dir, e.g. data/local/augment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--babble_wav_scp", type=str_or_none, default=None,
                        help="16 kHz speech to make babble noise from (a Kaldi wav.scp of "
                             "plain paths); none: no babble")
    parser.add_argument("--num_per_kind", type=int, default=4,
                        help="noise files per synthesized kind (brown, hum, babble)")
    parser.add_argument("--num_rirs", type=int, default=8,
                        help="synthesized room impulse responses, RT60 0.2-0.8 s")
    parser.add_argument("--espnet_samples", type=str2bool, default=True,
                        help="also the noise and RIR recordings of the espnet wheel")
    return parser


def main(cmd=None) -> int:
    from espnet_freeze_omni.data.kaldi_table import read_kaldi_map

    args = get_parser().parse_args(cmd)
    babble = None
    if args.babble_wav_scp:
        babble = sorted(read_kaldi_map(args.babble_wav_scp).values())
    scps = make_augmentation_data(args.out, seed=args.seed, babble_wavs=babble,
                                  num_per_kind=args.num_per_kind, num_rirs=args.num_rirs,
                                  espnet_samples=args.espnet_samples)
    for kind, scp in scps.items():
        with open(scp) as f:
            print(f"make_augmentation_data: {scp}: {sum(1 for _ in f)} {kind} wavs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
