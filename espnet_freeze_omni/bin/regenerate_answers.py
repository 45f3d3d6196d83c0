"""Replace the answers of text dialogs with what the frozen LLM itself says (stage-3 targets).

    python -m espnet_freeze_omni.bin.regenerate_answers --llm_dir /path/to/Qwen2-7B-Instruct \
        --input dialogs.jsonl --output dialogs_llm.jsonl \
        [--batch_size 8 --max_new_tokens 128 --system_prompt "..." --dtype bfloat16 --device cuda]

Greedy decoding, batched with left padding. Dialogs are answered turn by turn: a later
question's history holds the LLM's own earlier answers. Input and output are JSON lines
{"turns": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]};
every user turn gets an assistant turn, other keys are kept.

Resumable by item: dialogs are answered --save_every at a time and each finished dialog is
appended to `<output>.partial` at once. A run that was killed is simply run again: the
dialogs already in `<output>.partial` are kept and only the others are answered, as long as
the input file, the LLM folder and the options that change an answer (--system_prompt,
--max_new_tokens, --dtype) are the same; otherwise it starts over and says so. The output
file itself is written whole at the end (it exists only when every dialog is answered) and
the partial file is then removed.
"""
import argparse
import hashlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Dict, List

import torch

from espnet_freeze_omni.llm.chat_template import DEFAULT_SYSTEM_PROMPT, ChatTemplate
from espnet_freeze_omni.llm.dialogs import Dialog, check_dialog, read_dialogs, write_dialogs
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
from espnet_freeze_omni.llm.generation import generate_answers

PARTIAL_SUFFIX = ".partial"
# Tests only: after this many dialogs are saved, write half of the next record and SIGKILL
# this process (a kill in the middle of a save, at a chosen point). Never set by recipes.
KILL_SWITCH_ENV = "FREEZE_OMNI_TEST_SIGKILL_AFTER_DIALOGS"


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
    parser.add_argument("--save_every", type=int, default=64,
                        help="dialogs answered between two appends to <output>.partial")
    return parser


def run_key(args: argparse.Namespace) -> str:
    """What the saved answers depend on: the input's bytes, the LLM files, the options.

    The LLM folder is taken by its resolved path and its files' names, sizes and times (not
    their bytes: hashing a 15 GB checkpoint at every start would cost more than it saves).
    Batch size and device are left out: answers do not depend on the batching.
    """
    digest = hashlib.sha256(Path(args.input).read_bytes())
    llm = Path(args.llm_dir).resolve()
    digest.update(str(llm).encode())
    for path in sorted(llm.iterdir()) if llm.is_dir() else []:  # missing: FrozenLLM names it
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(json.dumps([args.system_prompt, args.max_new_tokens, args.dtype]).encode())
    return digest.hexdigest()


def _header(key: str) -> bytes:
    return (json.dumps({"regenerate_answers_partial": key}) + "\n").encode()


def _same_questions(answered: object, dialog: Dialog) -> bool:
    try:
        check_dialog(answered)
    except ValueError:
        return False
    return answered["turns"][0::2] == dialog["turns"][0::2]


def load_partial(path: Path, key: str, dialogs: List[Dialog]) -> Dict[int, Dialog]:
    """The dialogs an interrupted run saved, by input index; the file is left ready to append.

    A kill can only cut the last record short: reading stops at the first line that is not
    a whole, matching record, and the file is truncated there. A file made for another
    input, LLM or options is started over.
    """
    done: Dict[int, Dialog] = {}
    if not path.exists():
        path.write_bytes(_header(key))
        return done
    data = path.read_bytes()
    if not data.startswith(_header(key)):
        logging.warning(f"{path} was made for another input, LLM or options: starting over")
        path.write_bytes(_header(key))
        return done
    keep = len(_header(key))
    while True:
        end = data.find(b"\n", keep)
        if end < 0:
            break  # no newline: a record cut short by the kill (or nothing left)
        try:
            record = json.loads(data[keep:end])
            index, answered = record["index"], record["dialog"]
            whole = (isinstance(index, int) and 0 <= index < len(dialogs)
                     and _same_questions(answered, dialogs[index]))
        except (ValueError, KeyError, TypeError):
            whole = False
        if not whole:
            break
        done[index] = answered
        keep = end + 1
    if keep < len(data):
        logging.warning(f"{path}: {len(data) - keep} bytes after the last whole record "
                        "(cut short by a kill) dropped")
        with open(path, "r+b") as f:
            f.truncate(keep)
    return done


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    if args.save_every < 1:
        raise ValueError(f"--save_every must be >= 1, got {args.save_every}")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    # Check the input before loading a possibly large LLM.
    dialogs = read_dialogs(args.input)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    done = load_partial(partial, run_key(args), dialogs)
    kept = len(done)
    if kept:
        print(f"{partial}: {kept} of {len(dialogs)} dialogs already answered by an "
              "interrupted run; answering the others")
    todo = [k for k in range(len(dialogs)) if k not in done]
    kill_after = int(os.environ.get(KILL_SWITCH_ENV, "-1"))
    start = time.time()
    if todo:
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        llm = FrozenLLM(args.llm_dir, dtype=args.dtype).ensure_device(device)
        template = ChatTemplate(llm.tokenizer, system_prompt=args.system_prompt)
        from tqdm import tqdm

        bar = tqdm(total=len(dialogs), initial=kept, desc="dialogs", unit="dialog")
        with open(partial, "ab") as f:
            for first in range(0, len(todo), args.save_every):
                chunk = todo[first:first + args.save_every]
                answered = generate_answers(llm, template, [dialogs[k] for k in chunk],
                                            batch_size=args.batch_size,
                                            max_new_tokens=args.max_new_tokens)
                for k, dialog in zip(chunk, answered):
                    line = (json.dumps({"index": k, "dialog": dialog}, ensure_ascii=False)
                            + "\n").encode()
                    if len(done) == kill_after:
                        f.write(line[: len(line) // 2])
                        f.flush()
                        os.kill(os.getpid(), signal.SIGKILL)
                    f.write(line)
                    done[k] = dialog
                # on disk before the next chunk starts: a kill loses at most one chunk
                f.flush()
                os.fsync(f.fileno())
                bar.update(len(chunk))
        bar.close()
    write_dialogs(output, [done[k] for k in range(len(dialogs))])
    partial.unlink()
    turns = sum(len(d["turns"]) // 2 for d in done.values())
    print(f"{len(dialogs)} dialogs, {turns} answers by {args.llm_dir} written to {output} "
          f"in {time.time() - start:.1f} s ({kept} kept from an interrupted run)")


if __name__ == "__main__":
    main()
