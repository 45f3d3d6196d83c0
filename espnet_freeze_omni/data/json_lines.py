"""JSON-lines files (dialogs, reference answers, session events): one reader, whose errors
name the file and the line."""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Tuple


def read_json_lines(path: str | os.PathLike) -> Iterator[Tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of `path`."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
