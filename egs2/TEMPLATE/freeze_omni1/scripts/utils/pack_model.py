#!/usr/bin/env python3
"""Zip trained models with espnet's packer (stage 17): configs, weights, stats, RESULTS.md.

    scripts/utils/pack_model.py --outpath exp/packed/model.zip \
        --yaml speech_input_config=exp/speech_input_stage3/config.yaml \
        --file speech_input_model=exp/speech_input_stage3/valid.loss.best.pth ... \
        [--codec_dir exp/codec] [--option RESULTS.md]

espnet2.main_funcs.pack_funcs.pack writes meta.yaml (versions, keys -> paths) next to the
files, and espnet_model_zoo's ModelDownloader unpacks the zip offline;
`Speech2Speech.from_pretrained(zip, llm_path=...)` loads it when it holds the keys
speech_input_config/model, speech_output_config/model and codec_config (+ codec_model);
an optional decode_config (the recipe's decode.yaml) gives its decoding defaults.
The frozen LLM is never packed: the configs only name it.

The codec is packed as what it needs, under codec_config + codec_model: an embedded
codec's config.yaml + codebook.npz, or a gan_codec experiment's config.yaml + checkpoint.
Name it with --codec_dir (its codec_conf.yaml from stage 11 if there, else its best
checkpoint; --codec_model to pick) or with --yaml codec_conf=<stage 11's codec_conf.yaml>.

Portable names: the files are staged (hard links, or copies across file systems) under
their paths relative to the deepest directory holding them all, so the zip never records an
absolute path (espnet's pack keeps one for a file outside the current directory, e.g. under
a symlinked exp/). A string in a packed YAML that names another packed file (e.g.
normalize_conf.stats_file) is rewritten to its staged name, which espnet's unpack rewrites
again to where it put the file.
"""
import argparse
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml
from espnet2.main_funcs.pack_funcs import pack


def key_value(text: str) -> Tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected key=path, got {text!r}")
    return key, value


def codec_entries(codec_dir: Optional[str], codec_model: Optional[str],
                  codec_conf: Optional[str]) -> Tuple[str, str]:
    """(config.yaml, weights) of the codec, from its dir or its load_codec() YAML."""
    from espnet_freeze_omni.inference.speech2speech import codec_conf_from_dir, codec_files

    if codec_conf is not None:
        with open(codec_conf, encoding="utf-8") as f:
            conf = yaml.safe_load(f)
        if not isinstance(conf, dict):
            raise SystemExit(f"pack_model.py: {codec_conf} is not a load_codec() config")
    else:
        conf = codec_conf_from_dir(codec_dir, codec_model)
    return codec_files(conf)


def link_or_copy(src: str, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:  # another file system, or links not supported
        shutil.copy2(src, dst)


def rewrite_paths(value, renames: Dict[str, str]):
    """`value` (a loaded YAML) with every string naming a packed file replaced by its name."""
    if isinstance(value, dict):
        return {k: rewrite_paths(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        return [rewrite_paths(v, renames) for v in value]
    if isinstance(value, str) and value:
        for candidate in (os.path.abspath(value), os.path.realpath(value)):
            if candidate in renames:
                return renames[candidate]
    return value


def stage(items: List[Tuple[Optional[str], str, bool]], staging: Path) -> Dict[str, str]:
    """Stage (key, path, is_yaml) items under `staging`; returns {original path: staged name}."""
    absolute = [os.path.abspath(path) for _, path, _ in items]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    names = {p: os.path.relpath(p, root) for p in absolute}
    renames = dict(names)
    renames.update({os.path.realpath(p): name for p, name in names.items()})
    for (_, path, is_yaml), abs_path in zip(items, absolute):
        dst = staging / names[abs_path]
        if is_yaml:
            with open(path, encoding="utf-8") as f:
                conf = yaml.safe_load(f)
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(dst, "w", encoding="utf-8") as f:
                yaml.safe_dump(rewrite_paths(conf, renames), f, sort_keys=False,
                               allow_unicode=True)
        else:
            link_or_copy(path, dst)
    return {path: names[abs_path] for (_, path, _), abs_path in zip(items, absolute)}


def main(cmd=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outpath", required=True, help="the zip to write")
    parser.add_argument("--yaml", type=key_value, action="append", default=[],
                        help="key=config.yaml (paths inside are rewritten on unpacking)")
    parser.add_argument("--file", type=key_value, action="append", default=[],
                        help="key=file (weights, statistics)")
    parser.add_argument("--option", action="append", default=[],
                        help="extra files without a key (RESULTS.md)")
    parser.add_argument("--codec_dir", default=None,
                        help="adds codec_config and codec_model from this codec dir "
                             "(or give --yaml codec_conf=<its codec_conf.yaml>)")
    parser.add_argument("--codec_model", default=None,
                        help="checkpoint inside a gan_codec --codec_dir (default: its best)")
    args = parser.parse_args(cmd)

    yaml_files, files = dict(args.yaml), dict(args.file)
    codec_conf = yaml_files.pop("codec_conf", None)  # stage 11's load_codec() config
    if args.codec_dir is not None or codec_conf is not None:
        yaml_files["codec_config"], files["codec_model"] = codec_entries(
            args.codec_dir, args.codec_model, codec_conf)
    items = ([(k, v, True) for k, v in yaml_files.items()]
             + [(k, v, False) for k, v in files.items()]
             + [(None, v, False) for v in args.option])
    missing = [f"{k or 'option'}={v}" for k, v, _ in items if not Path(v).is_file()]
    if missing:
        raise SystemExit(f"pack_model.py: not found: {', '.join(missing)}")

    outpath = Path(args.outpath).absolute()
    outpath.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pack_", dir=outpath.parent))
    cwd = os.getcwd()
    try:
        names = stage(items, staging)
        os.chdir(staging)  # pack() stores paths relative to the current directory
        pack(files={k: names[v] for k, v in files.items()},
             yaml_files={k: names[v] for k, v in yaml_files.items()},
             option=[names[v] for v in args.option], outpath=outpath)
    finally:
        os.chdir(cwd)
        shutil.rmtree(staging, ignore_errors=True)
    print(f"packed {outpath} (the frozen LLM is not in it: give llm_path when loading)")
    return outpath


if __name__ == "__main__":
    main()
