"""Replace the answers of text dialogs with what the frozen LLM itself says (stage-3 targets).

    python -m espnet_freeze_omni.bin.regenerate_answers --llm_dir /path/to/Qwen2-7B-Instruct \
        --input dialogs.jsonl --output dialogs_llm.jsonl \
        [--batch_size 8 --max_new_tokens 128 --system_prompt "..." --dtype bfloat16 --device cuda]

Greedy decoding, batched with left padding. Dialogs are answered turn by turn: a later
question's history holds the LLM's own earlier answers. Input and output are JSON lines
{"turns": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]};
every user turn gets an assistant turn, other keys are kept.
"""
import argparse
import time

import torch

from espnet_freeze_omni.llm.chat_template import DEFAULT_SYSTEM_PROMPT, ChatTemplate
from espnet_freeze_omni.llm.dialogs import read_dialogs, write_dialogs
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
from espnet_freeze_omni.llm.generation import generate_answers


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm_dir", required=True, help="local folder of the frozen LLM")
    parser.add_argument("--input", required=True, help="dialogs, JSON lines")
    parser.add_argument("--output", required=True, help="dialogs with the LLM's answers")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--system_prompt", default=DEFAULT_SYSTEM_PROMPT)
    parser.add_argument("--dtype", default="float32",
                        help="float32, bfloat16, float16 or auto (from the LLM's config)")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads")
    return parser


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    # Check the input before loading a possibly large LLM.
    dialogs = read_dialogs(args.input)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    llm = FrozenLLM(args.llm_dir, dtype=args.dtype).ensure_device(device)
    template = ChatTemplate(llm.tokenizer, system_prompt=args.system_prompt)
    start = time.time()
    answered = generate_answers(llm, template, dialogs, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, progress=True)
    write_dialogs(args.output, answered)
    turns = sum(len(d["turns"]) // 2 for d in answered)
    print(f"{len(answered)} dialogs, {turns} answers by {args.llm_dir} written to {args.output} "
          f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
