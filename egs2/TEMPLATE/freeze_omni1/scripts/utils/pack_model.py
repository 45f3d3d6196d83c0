#!/usr/bin/env python3
"""Zip trained models with espnet's packer (stage 17): configs, weights, stats, RESULTS.md.

    scripts/utils/pack_model.py --outpath exp/packed/model.zip \
        --yaml speech_input_config=exp/speech_input_stage3/config.yaml \
        --file speech_input_model=exp/speech_input_stage3/valid.loss.best.pth ... \
        [--option RESULTS.md]

espnet2.main_funcs.pack_funcs.pack writes meta.yaml (versions, paths) next to the files, and
espnet_model_zoo's ModelDownloader can unpack the zip offline.
"""
import argparse

from espnet2.main_funcs.pack_funcs import pack


def key_value(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected key=path, got {text!r}")
    return key, value


parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--outpath", required=True)
parser.add_argument("--yaml", type=key_value, action="append", default=[])
parser.add_argument("--file", type=key_value, action="append", default=[])
parser.add_argument("--option", action="append", default=[])
args = parser.parse_args()
pack(files=dict(args.file), yaml_files=dict(args.yaml), option=args.option,
     outpath=args.outpath)
print(f"packed {args.outpath}")
