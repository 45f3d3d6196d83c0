"""Turn dialog JSON lines into recipe data (any corpus; the driver's stage 9 calls it).

Dialogs are {"id", "turns": [{"role": "user"|"assistant", "content"}, ...]}; the k-th user
turn of dialog D is utterance `D-t<k>` (the ids qa_test_refs.jsonl uses too).

    # speak every user turn with espeak-ng into a data dir with turn_info (label 1)
    python -m espnet_freeze_omni.bin.dialog_turns speak --dialogs qa_train.jsonl \
        --out dump/raw16k/qa_train [--wav_dir DIR] [--sample_rate 16000] [--nj 2] [--seed 0]

    # stage-3 targets for every utterance of a data dir: `answer` (the assistant's answer,
    # `<none>` for speech not addressed to it) and `history` (JSON of the earlier turns,
    # with the regenerated answers); every --valid_every-th dialog goes to <dir>_valid,
    # the rest to <dir>_train
    python -m espnet_freeze_omni.bin.dialog_turns targets \
        --dialogs qa_train.regenerated.jsonl --data_dir DIR [--valid_every 20] \
        [--side_talk_history_prob 0.75] [--seed 0]

Side talk (utterances in no dialog) happens at any point of a conversation, so with
probability --side_talk_history_prob its history is that of a random training dialog after
a random number (>= 1) of its exchanges, else empty (the start of a conversation). With
side talk only ever at a conversation's start, the state head learned "after an exchange,
speech is a question": it answered 16 of 20 side-talk sentences heard after one answered
question, and 20 of 25 spoken over an answer (docs/experiments/2026-12-07-barge-in-pause.md).
"""
import argparse
import json
import random
import sys
from pathlib import Path

from espnet_freeze_omni.data.derive import subset_data_dir
from espnet_freeze_omni.data.kaldi_table import NO_ANSWER, read_kaldi_map, write_kaldi_map
from espnet_freeze_omni.data.spoken_turns import SpokenTurn, synthesize_turn_datadir


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


def targets(args):
    data_dir = Path(args.data_dir)
    answer, history, dialog_of = {}, {}, {}
    for d in read_dialogs(args.dialogs):
        past = []
        for utt, question, reply in user_turns(d):
            answer[utt] = " ".join(reply.split()) if reply else NO_ANSWER
            history[utt] = json.dumps(past, ensure_ascii=False)
            dialog_of[utt] = d["id"]
            past = past + [{"role": "user", "content": question},
                           {"role": "assistant", "content": reply or ""}]
    utts = list(read_kaldi_map(data_dir / "utt2spk"))
    not_in_dialogs = [u for u in utts if u not in answer]  # side talk: nothing to answer
    rng = random.Random(f"side-talk-history-{args.seed}")
    prefixes = [history[u] for u in sorted(history) if history[u] != "[]"]
    with_history = 0
    for utt in sorted(not_in_dialogs):
        if prefixes and rng.random() < args.side_talk_history_prob:
            history[utt] = rng.choice(prefixes)  # a dialog after >= 1 exchange
            with_history += 1
    write_kaldi_map(data_dir / "answer", {u: answer.get(u, NO_ANSWER) for u in utts})
    write_kaldi_map(data_dir / "history", {u: history.get(u, "[]") for u in utts})
    dialogs = sorted({dialog_of.get(u, u) for u in utts})
    valid_dialogs = set(dialogs[::args.valid_every]) if args.valid_every > 0 else set()
    valid = [u for u in utts if dialog_of.get(u, u) in valid_dialogs]
    subset_data_dir(data_dir, f"{data_dir}_valid", valid)
    subset_data_dir(data_dir, f"{data_dir}_train", sorted(set(utts) - set(valid)))
    print(f"{data_dir}: answers and histories for {len(utts)} utterances "
          f"({len(not_in_dialogs)} not addressed to the assistant: answer {NO_ANSWER}, "
          f"{with_history} of them after a dialog's history); "
          f"{len(valid)} utterances of {len(valid_dialogs)} dialogs -> {data_dir}_valid, "
          f"{len(utts) - len(valid)} -> {data_dir}_train")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speak", help="speak every user turn with espeak-ng")
    p.add_argument("--dialogs", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--wav_dir", default=None)
    p.add_argument("--sample_rate", type=int, default=16000)
    p.add_argument("--nj", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=speak)
    p = sub.add_parser("targets", help="answer/history targets and the train/valid split")
    p.add_argument("--dialogs", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--valid_every", type=int, default=20)
    p.add_argument("--side_talk_history_prob", type=float, default=0.75,
                   help="share of side talk given a random dialog's history (see above)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=targets)
    return parser


def main(cmd=None) -> int:
    args = get_parser().parse_args(cmd)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
