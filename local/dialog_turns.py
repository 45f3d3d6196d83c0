#!/usr/bin/env python3
"""Turn dialog JSON lines into recipe data (any corpus; used by freeze_omni.sh stage 9).

Dialogs are {"id", "turns": [{"role": "user"|"assistant", "content"}, ...]}; the k-th user
turn of dialog D is utterance `D-t<k>` (the ids qa_test_refs.jsonl uses too).

    # speak every user turn with espeak-ng into a data dir with turn_info (label 1)
    local/dialog_turns.py speak --dialogs qa_train.jsonl --out dump/raw16k/qa_train \
        [--wav_dir DIR] [--sample_rate 16000] [--nj 2] [--seed 0]

    # the assistant's answer to each user turn, as a Kaldi text file
    local/dialog_turns.py answers --dialogs qa_train.regenerated.jsonl --out dir/answer
"""
import argparse
import json
import random
from pathlib import Path

from espnet_freeze_omni.data.datadir import SpokenTurn, synthesize_turn_datadir, write_kaldi_map


def read_dialogs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def user_turns(dialog):
    """[(utt_id, question, answer or None)] in dialog order."""
    out, turns = [], dialog["turns"]
    k = 0
    for i, turn in enumerate(turns):
        if turn["role"] != "user":
            continue
        k += 1
        answer = turns[i + 1]["content"] if i + 1 < len(turns) and \
            turns[i + 1]["role"] == "assistant" else None
        out.append((f"{dialog['id']}-t{k}", turn["content"], answer))
    return out


def speak(args):
    rng = random.Random(f"dialog-turns-{args.seed}")
    turns = [SpokenTurn(utt, question, 1, rng.randrange(1 << 20), round(rng.uniform(0.6, 1.0), 2))
             for d in read_dialogs(args.dialogs) for utt, question, _ in user_turns(d)]
    out = Path(args.out)
    synthesize_turn_datadir(turns, out, args.wav_dir or out / "wav", args.sample_rate, args.nj)
    print(f"spoke {len(turns)} user turns of {args.dialogs} into {out}")


def answers(args):
    table = {utt: answer for d in read_dialogs(args.dialogs)
             for utt, _, answer in user_turns(d) if answer is not None}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(args.out, {k: " ".join(v.split()) for k, v in table.items()})
    print(f"wrote {len(table)} answers to {args.out}")


parser = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
sub = parser.add_subparsers(dest="command", required=True)
p = sub.add_parser("speak")
p.add_argument("--dialogs", required=True)
p.add_argument("--out", required=True)
p.add_argument("--wav_dir", default=None)
p.add_argument("--sample_rate", type=int, default=16000)
p.add_argument("--nj", type=int, default=2)
p.add_argument("--seed", type=int, default=0)
p.set_defaults(func=speak)
p = sub.add_parser("answers")
p.add_argument("--dialogs", required=True)
p.add_argument("--out", required=True)
p.set_defaults(func=answers)

if __name__ == "__main__":
    args = parser.parse_args()
    args.func(args)
