"""Multi-turn text dialogs as JSON lines, the format shared by the LLM tools.

One dialog per line:

    {"turns": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...],
     "system": "optional system prompt for this dialog", ...any other keys, kept as they are}

Turns alternate user/assistant starting with a user turn; the last assistant turn may be
missing (a question still to answer).
"""

import json
import os
from pathlib import Path
from typing import Dict, List, Union

from espnet_freeze_omni.data.json_lines import read_json_lines

Dialog = Dict[str, object]


def check_dialog(dialog: object) -> Dialog:
    """Return `dialog` if it has the format above, else raise ValueError saying what is wrong."""
    if not isinstance(dialog, dict):
        raise ValueError(f"a dialog must be a JSON object, got {type(dialog).__name__}")
    turns = dialog.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ValueError('a dialog needs a non-empty "turns" list')
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("content"), str):
            raise ValueError(f'turn {k} must be an object with a string "content", got {turn!r}')
        expected = "user" if k % 2 == 0 else "assistant"
        if turn.get("role") != expected:
            raise ValueError(
                f"turn {k} has role {turn.get('role')!r}, expected {expected!r} "
                "(turns alternate user/assistant, starting with user)"
            )
    system = dialog.get("system")
    if system is not None and not isinstance(system, str):
        raise ValueError(f'"system" must be a string, got {system!r}')
    return dialog


def read_dialogs(path: Union[str, os.PathLike]) -> List[Dialog]:
    """Read and check a dialog JSON-lines file; errors name the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dialog file not found: {path}")
    dialogs = []
    for lineno, dialog in read_json_lines(path):
        try:
            dialogs.append(check_dialog(dialog))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    return dialogs


def write_dialogs(path: Union[str, os.PathLike], dialogs: List[Dialog]) -> None:
    """Write dialogs as JSON lines (via a temporary file, so a crash leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for dialog in dialogs:
            f.write(json.dumps(dialog, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
