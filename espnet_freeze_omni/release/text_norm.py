"""The text the release's speech decoder reads (RELEASE.md difference 7).

The release does not embed the LLM's generated ids: it decodes a segment to text, cleans
it up and tokenizes it again. Our re-implementation of that clean-up, rule by rule:

  1. the enumeration comma 、 and full-width brackets （） become the full-width comma ，,
     ASCII brackets () become ",";
  2. line breaks, tabs and the markdown marks * _ ` ~ are removed;
  3. whitespace after "." or ":" is removed;
  4. list numbers "1." before a word become "1:" (with any CJK character in the text:
     "1：" before a CJK character or a Latin letter);
  5. the text ends in sentence punctuation: a final , ， ; ； : ： 、 is replaced by 。,
     and 。 is appended to anything else that does not end in 。？！.?! (English too).

`ReleaseTextNormalizer` has the `split(token_ids) -> token_ids` interface of the speech
decoder's token splitter (SpeechSynthesizer's `token_splitter`), so it can stand where a
FinerTokenSplitter stands; which model uses it is the speech-output model's choice.
"""
from __future__ import annotations

import re
from typing import List, Sequence

_CJK = re.compile("[\u4e00-\u9fa5]")
_REPLACE = {"、": "，", "（": "，", "）": "，", "(": ",", ")": ","}
_STRIP = re.compile(r"[\n\r\t*_`~]")
_AFTER_STOP = re.compile(r"([.:])\s+")
_LIST_CJK = re.compile("(\\d+)\\.\\s*(?=[\u4e00-\u9fa5A-Za-z])")
_LIST_LATIN = re.compile(r"(\d+)\.\s*(?=\w)")
_ENDS = set("。？！.?!")
_SOFT_ENDS = set(",，;；:：、")


def release_text_normalize(text: str) -> str:
    """The release's clean-up of a segment's text before the speech decoder (see above)."""
    text = "".join(_REPLACE.get(c, c) for c in text)
    text = _STRIP.sub("", text)
    text = _AFTER_STOP.sub(r"\1", text)
    if _CJK.search(text):
        text = _LIST_CJK.sub("\\1：", text)
    else:
        text = _LIST_LATIN.sub(r"\1:", text)
    if text and text[-1] not in _ENDS:
        text = (text[:-1] if text[-1] in _SOFT_ENDS else text) + "。"
    return text


class ReleaseTextNormalizer:
    """Token ids -> ids of the normalized text, re-tokenized by the LLM's tokenizer."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def split(self, token_ids: Sequence[int]) -> List[int]:
        text = self.tokenizer.decode(list(token_ids), skip_special_tokens=True)
        return list(self.tokenizer.encode(release_text_normalize(text), add_special_tokens=False))
