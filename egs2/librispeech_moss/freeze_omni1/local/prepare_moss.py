#!/usr/bin/env python3
"""moss-003-sft multi-round Q&A -> the project's dialog JSON lines, the stage-3 training text.

Reads the fnlp/moss-003-sft-data release: JSON lines (or one JSON list) of

    {"conversation_id": 7, "category": "...", "num_turns": 2,
     "chat": {"turn_1": {"Human": "<|Human|>: question<eoh>\\n", "MOSS": "<|MOSS|>: answer<eom>\\n",
                         "Commands": "<|Commands|>: None<eoc>\\n", ...}, "turn_2": {...}}}

(moss-002's {"plain_text": "[Human]: ...<eoh> [MOSS]: ...<eoa>"} and dialogs already in the
project's form are read too) and writes {"id": "moss-<n>", "turns": [{"role", "content"}]}
JSON lines. The answers are placeholders: the driver's stage 9 replaces them with what the
frozen LLM itself answers. Dialogs are dropped, and counted, when they used tools (their
answers depend on the tool results), are not in --language, or have a user turn too long to
speak (--max_question_words) or holding code.

    local/prepare_moss.py --input moss-003-sft-no-tools.jsonl --out data/local/moss/qa_train.jsonl \
        [--language en] [--max_dialogs 60000] [--max_question_words 40]
"""
import argparse
import collections
import json
import re
import sys
from pathlib import Path

_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_ROLE_PREFIX = re.compile(r"^\s*(<\|(Human|MOSS)\|>|\[(Human|MOSS)\])\s*:\s*")
_END_MARK = re.compile(r"\s*<(eoh|eom|eoa)>\s*$")
_PLAIN_TURN = re.compile(r"\[(Human|MOSS)\]\s*:\s*(.*?)\s*<(eoh|eoa)>", re.S)


def clean(text: str) -> str:
    return _END_MARK.sub("", _ROLE_PREFIX.sub("", text or "")).strip()


def uses_tools(turn: dict) -> bool:
    for key in ("Commands", "Tool Responses"):
        value = clean(re.sub(r"<\|[^|]+\|>\s*:|<eo[a-z]>", "", turn.get(key) or ""))
        if value and value != "None":
            return True
    return False


def dialog_turns(record: dict, where: str):
    """[(role, text)] of one record, or None when it used tools."""
    if "chat" in record:
        chat = record["chat"]
        turns = []
        keys = sorted(chat, key=lambda k: int(re.sub(r"\D", "", k) or 0))
        for key in keys:
            turn = chat[key]
            if uses_tools(turn):
                return None
            turns += [("user", clean(turn.get("Human", ""))),
                      ("assistant", clean(turn.get("MOSS", "")))]
        return turns
    if "plain_text" in record:
        return [("user" if m.group(1) == "Human" else "assistant", m.group(2).strip())
                for m in _PLAIN_TURN.finditer(record["plain_text"])]
    if "turns" in record:
        return [(t["role"], t["content"]) for t in record["turns"]]
    raise SystemExit(f"{sys.argv[0]}: {where}: neither 'chat' (moss-003), 'plain_text' "
                     f"(moss-002) nor 'turns': keys {sorted(record)}")


def read_records(path: Path):
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"{sys.argv[0]}: {path}: line {e.lineno}: not valid JSON ({e.msg})")
        yield from ((f"{path}: item {i}", r) for i, r in enumerate(doc, 1))
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"{path}: line {lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{sys.argv[0]}: {path}: line {lineno}: not valid JSON ({e.msg})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="moss-003-sft JSON lines (MOSS_SFT)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--language", choices=["en", "zh", "all"], default="en",
                        help="en: no CJK characters; zh: some (the ASR data decides)")
    parser.add_argument("--max_dialogs", type=int, default=60000, help="0: all (paper: ~60k)")
    parser.add_argument("--max_question_words", type=int, default=40)
    args = parser.parse_args()
    inputs = [Path(p) for p in args.input.split(",")]
    for p in inputs:
        if not p.is_file():
            raise SystemExit(f"{sys.argv[0]}: MOSS_SFT (db.sh): no such file {p}")
    dropped = collections.Counter()
    kept, seen = 0, set()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for path in inputs:
            for where, record in read_records(path):
                if args.max_dialogs and kept >= args.max_dialogs:
                    break
                if not isinstance(record, dict):
                    raise SystemExit(f"{sys.argv[0]}: {where}: expected a JSON object")
                turns = dialog_turns(record, where)
                if turns is None:
                    dropped["used tools"] += 1
                    continue
                turns = [(r, " ".join(t.split())) for r, t in turns]
                users = [t for r, t in turns if r == "user"]
                text = " ".join(t for _, t in turns)
                if not users or any(not t for _, t in turns):
                    dropped["empty turn"] += 1
                elif args.language != "all" and bool(_CJK.search(text)) != (args.language == "zh"):
                    dropped[f"not {args.language}"] += 1
                elif any("```" in u for u in users):
                    dropped["code in a question"] += 1
                elif any(len(u.split()) > args.max_question_words for u in users):
                    dropped[f"question over {args.max_question_words} words"] += 1
                else:
                    dialog_id = f"moss-{record.get('conversation_id', record.get('id', kept + 1))}"
                    while dialog_id in seen:  # several input files may reuse numbers
                        dialog_id += "x"
                    seen.add(dialog_id)
                    f.write(json.dumps(dict(id=dialog_id, turns=[
                        dict(role=r, content=t) for r, t in turns]), ensure_ascii=False) + "\n")
                    kept += 1
    print(f"{out}: {kept} dialogs; dropped: "
          + (", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "none"))
    if kept == 0:
        raise SystemExit(f"{sys.argv[0]}: no dialog of {args.input} was kept")
    return 0


if __name__ == "__main__":
    sys.exit(main())
