"""One chat-template builder for every place that talks to the frozen LLM.

Freeze-Omni feeds the LLM `<system turn><earlier turns><user opening>` + (audio embeddings
or question tokens) + `<user closing><assistant opening>` and trains on
`<answer><end of turn>`. Those pieces are cut out of the tokenizer's own chat template by
rendering it with a sentinel string where the user content (or the answer) goes, so any
Hugging Face chat LLM works. A tokenizer without a chat template gets Qwen's format,
the one the paper used:

    <|im_start|>system\\n{role}<|im_end|>\\n<|im_start|>user\\n<audio><|im_end|>\\n<|im_start|>assistant\\n

Token identities the rest of the project relies on (tested):

    text_prompt_ids(q, h)     == apply_chat_template(h + [user q], add_generation_prompt=True)
    prefix_ids(h + [q, a])    == prefix_ids(h) + question_ids(q) + suffix_ids()
                                 + answer_ids(a) + next_turn_ids()

so a streaming dialogue can keep its history in the LLM's K/V cache and append turn after
turn, and still see exactly what the text-in model saw.
"""

from typing import Dict, List, Optional, Sequence

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen's chat format, used when the tokenizer ships no chat template.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Plain letters: no template escapes, trims or lower-cases them away.
_USER_SENTINEL = "FREEZEOMNIUSERSENTINEL"
_ASSISTANT_SENTINEL = "FREEZEOMNIASSISTANTSENTINEL"
_NEXT_USER_SENTINEL = "FREEZEOMNINEXTUSERSENTINEL"

# Tokens that end an assistant turn in the common chat formats, besides the tokenizer's eos.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def end_of_turn_ids(tokenizer) -> List[int]:
    """Ids that end an assistant turn: the tokenizer's eos plus known end-of-turn tokens.

    Chat LLMs stop with an end-of-turn token (`<|im_end|>`) that is often not the
    tokenizer's eos (`<|endoftext|>` for Qwen2), so generation must stop on either.
    """
    ids = []
    eos = tokenizer.eos_token_id
    for i in eos if isinstance(eos, (list, tuple)) else [eos]:
        if i is not None and i not in ids:
            ids.append(int(i))
    vocab = tokenizer.get_vocab()
    for token in _END_OF_TURN_TOKENS:
        i = vocab.get(token)
        if i is not None and i not in ids:
            ids.append(int(i))
    return ids


def _split_once(text: str, sentinel: str, what: str) -> List[str]:
    parts = text.split(sentinel)
    if len(parts) != 2:
        raise ValueError(
            f"The chat template rendered the {what} {len(parts) - 1} times, expected once: {text!r}"
        )
    return parts


class ChatTemplate:
    """Token pieces of a chat LLM's prompt format, derived from its tokenizer."""

    def __init__(self, tokenizer, system_prompt: str = DEFAULT_SYSTEM_PROMPT):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        # The tokenizer's own template when it has one (None lets transformers pick it);
        # Qwen's format otherwise.
        self.uses_fallback = not getattr(tokenizer, "chat_template", None)
        self._template = QWEN_CHAT_TEMPLATE if self.uses_fallback else None
        self.end_of_turn_ids = end_of_turn_ids(tokenizer)

        # Closing of the user turn + opening of the assistant turn.
        prefix_text, suffix_text = self._split_user_turn(None, None)
        self._default_prefix_text = prefix_text
        self._default_prefix_ids = self._encode(prefix_text)
        self._suffix_text = suffix_text
        self._suffix_ids = self._encode(suffix_text)

        # What follows an answer: its end-of-turn token(s), then the next user turn's opening.
        one_turn = [{"role": "user", "content": _USER_SENTINEL},
                    {"role": "assistant", "content": _ASSISTANT_SENTINEL},
                    {"role": "user", "content": _NEXT_USER_SENTINEL}]
        text = self._render(self._with_system(one_turn, None), add_generation_prompt=True)
        between = _split_once(
            _split_once(text, _ASSISTANT_SENTINEL, "assistant sentinel")[1],
            _NEXT_USER_SENTINEL, "next user sentinel",
        )[0]
        between_ids = self._encode(between)
        stops = [k for k, i in enumerate(between_ids) if i in self.end_of_turn_ids]
        if not stops:
            raise ValueError(
                f"The chat template closes an assistant turn with {between!r}, which holds none of "
                f"the end-of-turn tokens {self.end_of_turn_ids}: generation could never stop."
            )
        self._answer_end_ids = between_ids[: stops[0] + 1]
        self._next_turn_ids = between_ids[stops[0] + 1:]

    # -- rendering ---------------------------------------------------------------------

    def _render(self, messages: List[Dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self._template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )

    def _encode(self, text: str) -> List[int]:
        # The rendered template carries its own special tokens (bos included, if any).
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _encode_after(self, context_text: str, context_ids: List[int], text: str) -> List[int]:
        """Tokens of `text` as the tokenizer cuts them right after `context_text`.

        Tokenizers cut a word differently at the start of a string and after other text
        (`▁Paris` vs `Paris`); encoding in context makes the pieces add up to exactly
        what the full template tokenizes to.
        """
        ids = self._encode(context_text + text)
        if ids[: len(context_ids)] == context_ids:
            return ids[len(context_ids):]
        return self._encode(text)  # the boundary merged: no exact split exists

    def _with_system(self, turns: List[Dict[str, str]], system_prompt: Optional[str]):
        system = self.system_prompt if system_prompt is None else system_prompt
        return [{"role": "system", "content": system}] + turns

    def _split_user_turn(self, history, system_prompt) -> List[str]:
        messages = self._with_system(_check_history(history), system_prompt)
        messages.append({"role": "user", "content": _USER_SENTINEL})
        text = self._render(messages, add_generation_prompt=True)
        return _split_once(text, _USER_SENTINEL, "user sentinel")

    # -- public pieces -----------------------------------------------------------------

    def prefix_ids(
        self,
        history: Optional[List[Dict[str, str]]] = None,
        system_prompt: Optional[str] = None,
    ) -> List[int]:
        """System turn + earlier turns + opening of the user turn (all before the audio)."""
        if not history and system_prompt is None:
            return list(self._default_prefix_ids)
        return self._encode(self._split_user_turn(history, system_prompt)[0])

    def suffix_ids(self) -> List[int]:
        """Closing of the user turn + opening of the assistant turn."""
        return list(self._suffix_ids)

    def question_ids(self, question: str) -> List[int]:
        """Question tokens as they appear inside the user turn."""
        return self._encode_after(self._default_prefix_text, self._default_prefix_ids, question)

    def answer_ids(self, text: str) -> List[int]:
        """Answer tokens + the end-of-turn token(s): the LLM's target after `suffix_ids()`."""
        return self._encode_after(self._suffix_text, self._suffix_ids, text) + self._answer_end_ids

    def answer_end_ids(self) -> List[int]:
        """The end-of-turn token(s) closing an answer (`<|im_end|>` for Qwen)."""
        return list(self._answer_end_ids)

    def next_turn_ids(self) -> List[int]:
        """What follows `answer_ids(...)` up to the next user content (`\\n<|im_start|>user\\n`)."""
        return list(self._next_turn_ids)

    def text_prompt_ids(
        self,
        question: str,
        history: Optional[List[Dict[str, str]]] = None,
        system_prompt: Optional[str] = None,
    ) -> List[int]:
        """prefix + question + suffix: the prompt of the text-in baseline."""
        prefix_text = self._split_user_turn(history, system_prompt)[0]
        prefix = self._encode(prefix_text)
        return prefix + self._encode_after(prefix_text, prefix, question) + self.suffix_ids()


def _check_history(history: Optional[Sequence[Dict[str, str]]]) -> List[Dict[str, str]]:
    """History as a fresh list of {"role", "content"} turns, roles user/assistant only."""
    turns = []
    for k, turn in enumerate(history or []):
        role = turn.get("role") if isinstance(turn, dict) else None
        if role not in ("user", "assistant") or not isinstance(turn.get("content"), str):
            raise ValueError(
                f"history[{k}] must be {{'role': 'user'|'assistant', 'content': str}}, got {turn!r}"
            )
        turns.append({"role": role, "content": turn["content"]})
    return turns
