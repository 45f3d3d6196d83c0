"""Text normalization shared by every scorer (SPEC §4): one place, so WER and QA agree.

lower-case; every punctuation mark becomes a space except the apostrophe (so "don't" and
"Quell's" stay one word); typographic apostrophes count as apostrophes; digit groups
("1,000") are joined before commas are stripped.
"""
from __future__ import annotations

import re
from typing import List

_DIGIT_GROUP_COMMA = re.compile(r"(?<=\d),(?=\d{3}\b)")
_NOT_WORD = re.compile(r"[^\w\s']|_")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    text = _DIGIT_GROUP_COMMA.sub("", text)
    text = _NOT_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def normalized_words(text: str) -> List[str]:
    return normalize_text(text).split()
