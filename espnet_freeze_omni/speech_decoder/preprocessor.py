"""Per-utterance preprocessing for speech-output training (espnet `AbsPreprocessor`).

    text          Kaldi text (the answer)  -> the frozen LLM's token ids of that answer,
                  cut exactly as the LLM streams them after the assistant opening
                  (`ChatTemplate.answer_ids`, without the end-of-turn token)
    codec_tokens  text_int codes            -> checked to lie in [0, codec vocabulary)
    question      optional Kaldi text       -> token ids inside the user turn (stage 3 runs
                  the frozen LLM over question + answer to get the answer's hidden states)

Errors name the utterance, since they come from data, not code.
"""
from __future__ import annotations

from typing import Dict, Optional, Union

import numpy as np
from espnet2.train.preprocessor import AbsPreprocessor

from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.frozen_llm import load_llm_tokenizer


class SpeechOutputPreprocessor(AbsPreprocessor):
    def __init__(
        self,
        train: bool,
        llm_path: Optional[str] = None,
        tokenizer=None,
        codec_vocab_size: int = 1024,
        text_name: str = "text",
        codec_name: str = "codec_tokens",
        question_name: str = "question",
    ):
        super().__init__(train)
        if tokenizer is None and llm_path is None:
            raise ValueError("llm_conf needs `path`: the local folder of the frozen LLM")
        self.tokenizer = tokenizer if tokenizer is not None else load_llm_tokenizer(llm_path)
        self.template = ChatTemplate(self.tokenizer)
        self.num_end_ids = len(self.template.answer_end_ids())
        self.text_vocab_size = len(self.tokenizer)
        self.codec_vocab_size = codec_vocab_size
        self.text_name = text_name
        self.codec_name = codec_name
        self.question_name = question_name

    def answer_token_ids(self, text: str) -> list:
        """The answer's tokens as the LLM produces them (no end-of-turn token)."""
        ids = self.template.answer_ids(text)
        return ids[: len(ids) - self.num_end_ids]

    def __call__(
        self, uid: str, data: Dict[str, Union[str, np.ndarray]]
    ) -> Dict[str, np.ndarray]:
        out = dict(data)
        if self.text_name in data:
            text = data[self.text_name]
            if isinstance(text, np.ndarray):  # already token ids (e.g. text_int)
                ids = np.asarray(text, dtype=np.int64).reshape(-1)
            else:
                ids = np.asarray(self.answer_token_ids(str(text).strip()), dtype=np.int64)
            if ids.size == 0:
                raise ValueError(f"utterance {uid}: empty text ({text!r})")
            bad = ids[(ids < 0) | (ids >= self.text_vocab_size)]
            if bad.size:
                raise ValueError(
                    f"utterance {uid}: text token id {int(bad[0])} is outside the LLM "
                    f"vocabulary [0, {self.text_vocab_size})"
                )
            out[self.text_name] = ids

        if self.codec_name in data:
            codes = np.asarray(data[self.codec_name]).reshape(-1)
            if codes.size == 0:
                raise ValueError(f"utterance {uid}: no codec tokens")
            if codes.dtype.kind not in "iu":
                raise ValueError(f"utterance {uid}: codec tokens must be integers, got {codes.dtype}")
            bad = codes[(codes < 0) | (codes >= self.codec_vocab_size)]
            if bad.size:
                raise ValueError(
                    f"utterance {uid}: codec token {int(bad[0])} is outside the codec "
                    f"vocabulary [0, {self.codec_vocab_size})"
                )
            out[self.codec_name] = codes.astype(np.int64)

        if self.question_name in data:
            question = data[self.question_name]
            if not isinstance(question, np.ndarray):
                question = np.asarray(self.template.question_ids(str(question).strip()), dtype=np.int64)
            out[self.question_name] = question.astype(np.int64)
        return out
