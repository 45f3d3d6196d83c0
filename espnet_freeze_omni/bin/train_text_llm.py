"""Fine-tune a (tiny) LLM on multi-turn text dialogs, loss on the assistant tokens only.

    python -m espnet_freeze_omni.bin.train_text_llm --llm_dir exp/tiny_llm \
        --dialogs data/local/world/qa_train.jsonl [more.jsonl ...] --steps 600 --out_dir exp/text_llm \
        [--batch_size 16 --lr 1e-3 --save_every 200 --resume --eval_dialogs 200]

Dialogs are JSON lines {"turns": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}.
The result is saved with save_pretrained to --out_dir at the end, written beside it and
renamed into place, so --out_dir exists only once complete. Every --save_every steps a
checkpoint (model + text_training_state.pt: optimizer, schedule, batch order) goes to
<out_dir>.training; --resume continues from the latest complete one, drawing the batches an
uninterrupted run would (a kill at any moment, saves included, loses at most --save_every
steps). --eval_dialogs N prints how many of the first N dialogs' first answers the trained
model reproduces greedily.
"""
import argparse
import json

import torch

from espnet_freeze_omni.llm.dialogs import read_dialogs
from espnet_freeze_omni.llm.text_training import first_turn_match_rate, train_text_llm


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm_dir", required=True, help="LLM folder to start from")
    parser.add_argument("--dialogs", required=True, nargs="+",
                        help="training dialogs, JSON lines (several files are concatenated)")
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup_steps", type=int, default=None,
                        help="default: a tenth of --steps, at most 100")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--grad_clip", type=float, default=1.0)
    parser.add_argument("--max_len", type=int, default=512, help="tokens per dialog")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save_every", type=int, default=0,
                        help="steps between checkpoints in <out_dir>.training (0: none)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the latest complete checkpoint (<out_dir>.training "
                        "or a finished --out_dir) if there is one")
    parser.add_argument("--eval_dialogs", type=int, default=0)
    parser.add_argument("--num_threads", type=int, default=None,
                        help="torch CPU threads (1 is fastest on a busy machine)")
    return parser


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    dialogs = [dialog for path in args.dialogs for dialog in read_dialogs(path)]
    result = train_text_llm(
        args.llm_dir, dialogs, args.out_dir, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, max_len=args.max_len, seed=args.seed,
        save_every=args.save_every, resume=args.resume,
    )
    losses = result["losses"]
    summary = {"steps": result["step"], "seconds": round(result["seconds"], 1),
               "first_loss": losses[0] if losses else None,
               "last_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None}
    if args.eval_dialogs > 0:
        from espnet_freeze_omni.llm.chat_template import ChatTemplate
        from espnet_freeze_omni.llm.frozen_llm import FrozenLLM

        llm = FrozenLLM(result["out_dir"])
        summary["first_answer_match"] = first_turn_match_rate(
            llm, ChatTemplate(llm.tokenizer), dialogs[: args.eval_dialogs])
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
