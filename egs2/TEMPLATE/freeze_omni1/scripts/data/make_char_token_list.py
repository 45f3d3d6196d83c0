#!/usr/bin/env python3
"""Character token list for CTC (stage 6), the list `espnet2.bin.tokenize_text --token_type
char --field 2- --write_vocabulary true --add_symbol "<blank>:0" --add_symbol "<unk>:1"
--add_symbol "<sos/eos>:-1"` writes, without that tool's 15-25 s of imports:

    scripts/data/make_char_token_list.py dump/raw16k/train/text exp/token_list/char/tokens.txt

Characters come from espnet's own CharTokenizer (spaces as <space>), most frequent first.
"""
import argparse
import collections
from pathlib import Path

from espnet2.text.char_tokenizer import CharTokenizer

parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("text", help="Kaldi text file (utt_id transcript)")
parser.add_argument("output")
args = parser.parse_args()

tokenizer = CharTokenizer()
counts: collections.Counter = collections.Counter()
with open(args.text, encoding="utf-8") as f:
    for line in f:
        fields = line.rstrip().split()
        counts.update(tokenizer.text2tokens(" ".join(fields[1:])))
tokens = [t for t, _ in sorted(counts.items(), key=lambda x: -x[1])]
Path(args.output).parent.mkdir(parents=True, exist_ok=True)
Path(args.output).write_text("\n".join(["<blank>", "<unk>", *tokens, "<sos/eos>"]) + "\n",
                             encoding="utf-8")
print(f"{args.output}: {len(tokens) + 3} tokens")
