#!/usr/bin/env python3
"""LibriSpeech parts as Kaldi data dirs, from the standard folder layout:

    <corpus>/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <corpus>/<part>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt   (`<utt-id> WORDS`)

(<corpus> may also be the folder holding `LibriSpeech/`, as the tarballs unpack.) Each part
goes to data/<part with _> (train-clean-100 -> data/train_clean_100): wav.scp points at the
flac files (soundfile and sox read them; stage 3 converts), the speaker is
`<speaker>-<chapter>` as in Kaldi's recipe, transcripts are kept as distributed (upper case;
scoring lower-cases). --combine NAME=PART,PART merges parts into one more dir.

    local/prepare_librispeech.py --corpus /corpora/LibriSpeech --datadir data \
        --parts "train-clean-100 dev-clean" --combine dev=dev-clean,dev-other
"""
import argparse
import sys
from pathlib import Path

from espnet_freeze_omni.data.kaldi_table import utt2spk_to_spk2utt, write_kaldi_map


def part_dir(corpus: Path, part: str) -> Path:
    for candidate in (corpus / part, corpus / "LibriSpeech" / part):
        if candidate.is_dir():
            return candidate
    raise SystemExit(f"{sys.argv[0]}: LIBRISPEECH={corpus} (db.sh) has no {part}/ "
                     f"(nor LibriSpeech/{part}/): unpack {part}.tar.gz there")


def read_part(root: Path) -> dict:
    """{utt: (flac path, transcript, speaker)} of one part; errors name file and line."""
    utts = {}
    trans_files = sorted(root.glob("*/*/*.trans.txt"))
    if not trans_files:
        raise SystemExit(f"{sys.argv[0]}: {root} has no <speaker>/<chapter>/*.trans.txt")
    for trans in trans_files:
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, words = line.strip().partition(" ")
            where = f"{trans}:{lineno}"
            if not words.strip():
                raise SystemExit(f"{sys.argv[0]}: {where}: utterance {utt} has no transcript")
            flac = trans.parent / f"{utt}.flac"
            if not flac.is_file():
                raise SystemExit(f"{sys.argv[0]}: {where}: no audio {flac}")
            if utt in utts:
                raise SystemExit(f"{sys.argv[0]}: {where}: duplicate utterance {utt}")
            speaker, chapter = utt.split("-")[:2]
            utts[utt] = (str(flac.resolve()), " ".join(words.split()), f"{speaker}-{chapter}")
    return utts


def write_dir(utts: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(out / "wav.scp", {u: v[0] for u, v in utts.items()})
    write_kaldi_map(out / "text", {u: v[1] for u, v in utts.items()})
    utt2spk = {u: v[2] for u, v in utts.items()}
    write_kaldi_map(out / "utt2spk", utt2spk)
    write_kaldi_map(out / "spk2utt", utt2spk_to_spk2utt(utt2spk))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--datadir", default="data")
    parser.add_argument("--parts", required=True, help="space-separated part names")
    parser.add_argument("--combine", action="append", default=[],
                        help="NAME=PART,PART,...: also data/NAME, the union of those parts")
    args = parser.parse_args()
    corpus, datadir = Path(args.corpus), Path(args.datadir)
    parts = {}
    for part in args.parts.split():
        parts[part] = read_part(part_dir(corpus, part))
        write_dir(parts[part], datadir / part.replace("-", "_"))
        print(f"{datadir / part.replace('-', '_')}: {len(parts[part])} utterances")
    for spec in args.combine:
        name, _, members = spec.partition("=")
        merged = {}
        for part in members.split(","):
            if part not in parts:
                raise SystemExit(f"{sys.argv[0]}: --combine {spec}: {part} is not in --parts")
            merged.update(parts[part])
        write_dir(merged, datadir / name)
        print(f"{datadir / name}: {len(merged)} utterances ({members})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
