"""Turns one speech-input example into the arrays the three stages consume.

On top of espnet's CommonPreprocessor (speech handling, CTC token ids for `text`), it
tokenizes with the frozen LLM's own tokenizer under its chat template:

    llm_prefix   system prompt + earlier turns + opening of the user turn (before the audio)
    llm_suffix   closing of the user turn + opening of the assistant turn
    llm_target   what the LLM must say: the transcript (stage 2) or `answer` (stage 3)
    llm_question the transcript as the user's text (the text-in teacher's input): in stage 3
                 the question itself, in stage 2 `asr_instruction` and the transcript
    turn_info    (label, speech_end_seconds) for the state head (stage 3)

Data names it reads: speech, text, answer, history (a JSON list of {role, content}),
turn_info ("<label> <speech_end_seconds>").
"""
from __future__ import annotations

import json
from typing import Dict, Optional, Union

import numpy as np

from espnet2.train.preprocessor import CommonPreprocessor

from espnet_freeze_omni.data.kaldi_table import NO_ANSWER
from espnet_freeze_omni.llm.chat_template import DEFAULT_SYSTEM_PROMPT, ChatTemplate
from espnet_freeze_omni.llm.frozen_llm import load_llm_tokenizer

class SpeechInputPreprocessor(CommonPreprocessor):
    def __init__(
        self,
        train: bool,
        llm_path: Optional[str] = None,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        asr_instruction: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(train, **kwargs)
        # the stage-2 model's text cue before the audio (model_conf asr_instruction): the
        # text-in teacher of stage 2 reads it before the transcript, as the LLM learned
        self.asr_instruction = asr_instruction
        self.template = None
        if llm_path is not None:
            self.template = ChatTemplate(load_llm_tokenizer(llm_path), system_prompt=system_prompt)

    def __call__(self, uid: str, data: Dict[str, Union[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        transcript = data.get(self.text_name)
        answer = data.pop("answer", None)
        history = data.pop("history", None)
        turn_info = data.pop("turn_info", None)
        speech = data.get(self.speech_name)
        if isinstance(speech, np.ndarray) and speech.size == 0:
            raise ValueError(f"utterance '{uid}': audio is empty (0 samples)")

        data = super().__call__(uid, data)
        speech = data.get(self.speech_name)
        if isinstance(speech, np.ndarray) and speech.ndim == 2 and speech.shape[1] == 1:
            # espnet's reverberation/noise path hands mono audio back as (time, 1), which
            # the frontend would take for one channel of a microphone array
            data[self.speech_name] = speech[:, 0]

        if self.template is not None:
            if answer is not None:
                target = answer.strip()
                target_ids = [] if target in ("", NO_ANSWER) else self.template.answer_ids(target)
            elif isinstance(transcript, str):
                target_ids = self.template.answer_ids(transcript.strip())
            else:
                raise ValueError(f"utterance '{uid}': neither 'answer' nor 'text' to learn from")
            turns = self._parse_history(uid, history)
            data["llm_prefix"] = np.asarray(self.template.prefix_ids(turns), dtype=np.int64)
            data["llm_suffix"] = np.asarray(self.template.suffix_ids(), dtype=np.int64)
            data["llm_target"] = np.asarray(target_ids, dtype=np.int64)
            if isinstance(transcript, str):
                # what the speech says, as text: the frozen LLM reading it is the teacher of
                # the speech-in run (model_conf distill_weight / distill_hidden_weight)
                question = transcript.strip()
                if answer is None and self.asr_instruction:
                    question = f"{self.asr_instruction} {question}"
                data["llm_question"] = np.asarray(
                    self.template.question_ids(question), dtype=np.int64)
        if turn_info is not None:
            data["turn_info"] = self._parse_turn_info(uid, turn_info)
        return data

    @staticmethod
    def _parse_history(uid: str, history: Optional[str]):
        if history is None or history.strip() in ("", "[]"):
            return None
        try:
            turns = json.loads(history)
        except json.JSONDecodeError as e:
            raise ValueError(f"utterance '{uid}': history is not a JSON list of turns ({e})") from e
        if not isinstance(turns, list) or not all(
            isinstance(t, dict) and {"role", "content"} <= set(t) for t in turns
        ):
            raise ValueError(f"utterance '{uid}': history must be a list of {{role, content}}")
        return turns

    @staticmethod
    def _parse_turn_info(uid: str, turn_info: str) -> np.ndarray:
        parts = turn_info.split()
        try:
            label, speech_end = int(parts[0]), float(parts[1])
        except (IndexError, ValueError):
            raise ValueError(
                f"utterance '{uid}': turn_info must be '<label> <speech_end_seconds>', "
                f"got '{turn_info}'"
            ) from None
        if label not in (1, 2):
            raise ValueError(f"utterance '{uid}': turn_info label must be 1 (respond) or 2 "
                             f"(not addressed), got {label}")
        return np.asarray([label, speech_end], dtype=np.float32)
