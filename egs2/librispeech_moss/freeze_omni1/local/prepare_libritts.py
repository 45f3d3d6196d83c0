#!/usr/bin/env python3
"""A 24 kHz LibriTTS-style corpus (CODEC_CORPUS in db.sh) as one Kaldi data dir, for the
codec and the speech decoder (speech output wants audio above LibriSpeech's 8 kHz band):

    <corpus>/**/<speaker>_<chapter>_<n>_<m>.wav + the same name .normalized.txt (or .txt)

    local/prepare_libritts.py --corpus /corpora/LibriTTS --out data/tts_train
"""
import argparse
import sys
from pathlib import Path

from prepare_librispeech import write_dir  # same folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    utts, no_text = {}, 0
    for wav in sorted(Path(args.corpus).rglob("*.wav")):
        for text_file in (wav.with_suffix(".normalized.txt"), wav.with_suffix(".txt")):
            if text_file.is_file():
                break
        else:
            no_text += 1
            continue
        words = " ".join(text_file.read_text(encoding="utf-8").split())
        if words:
            utts[wav.stem] = (str(wav.resolve()), words, wav.stem.split("_")[0])
    if not utts:
        raise SystemExit(f"{sys.argv[0]}: CODEC_CORPUS={args.corpus} (db.sh): no <name>.wav "
                         "with a <name>.normalized.txt beside it")
    write_dir(utts, Path(args.out))
    print(f"{args.out}: {len(utts)} utterances ({no_text} wavs without a transcript skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
