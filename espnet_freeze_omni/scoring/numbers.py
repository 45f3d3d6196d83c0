"""English words for whole numbers 0..9999, written out the way a speaker says them.

One place for number words: the QA containment scorer tries numbers as words, and the
synthetic world writes ages in words so that transcripts match what espeak-ng says.
Words are space separated ("forty two", not "forty-two") and carry no "and", so that
"one hundred five" is contained in "one hundred and five".
"""
from __future__ import annotations

import re

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen "
    "fourteen fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()

MAX_NUMBER = 9999


def number_to_words(n: int) -> str:
    """0 -> "zero", 42 -> "forty two", 1905 -> "one thousand nine hundred five"."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"number_to_words covers 0..{MAX_NUMBER}, got {n}")
    if n < 20:
        return _ONES[n]
    words = []
    thousands, rest = divmod(n, 1000)
    if thousands:
        words += [_ONES[thousands], "thousand"]
    hundreds, rest = divmod(rest, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest:
        words.append(_ONES[rest])
    return " ".join(words)


_DIGITS = re.compile(r"\d+")


def digits_to_words(text: str) -> str:
    """Replace every run of digits in 0..9999 by its words; larger numbers stay as digits."""

    def replace(m: re.Match) -> str:
        value = int(m.group(0))
        return f" {number_to_words(value)} " if value <= MAX_NUMBER else m.group(0)

    return re.sub(r"\s+", " ", _DIGITS.sub(replace, text)).strip()
