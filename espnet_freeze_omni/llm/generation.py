"""Greedy text answers from the frozen LLM.

Used to regenerate the stage-3 targets (the answer the frozen LLM itself gives to the
text question, so the speech model learns to make it say exactly that) and to score the
text-in baseline. Pure greedy decoding through `FrozenLLM`, not `model.generate()`: a
checkpoint's generation_config (Qwen2-Instruct ships sampling and a repetition penalty)
must not change the targets.
"""

import copy
from typing import List, Optional, Sequence

import torch

from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.dialogs import Dialog, check_dialog
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM


@torch.no_grad()
def greedy_generate(
    llm: FrozenLLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int = 128,
) -> List[List[int]]:
    """Greedy continuations of a batch of token prompts, stop token excluded.

    Prompts are left-padded so that every row's next token sits in the last column;
    positions and the attention mask skip the padding, so a row's answer does not depend
    on the rest of the batch.
    """
    if not prompts:
        return []
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy_generate: empty prompt")
    device = llm.device
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), llm.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((batch, width), dtype=torch.long, device=device)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt):] = 1

    stop = torch.tensor(llm.eos_token_ids, device=device)
    answers: List[List[int]] = [[] for _ in prompts]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    out = llm(llm.embed_tokens(ids), attention_mask=mask, past_key_values=llm.new_cache(),
              use_cache=True, logits_to_keep=1)
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1)
        finished = torch.isin(token, stop)
        for i in (~done & ~finished).nonzero().flatten().tolist():
            answers[i].append(int(token[i]))
        done |= finished
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        # Finished rows keep stepping on padding; their outputs are ignored.
        token = torch.where(done, torch.full_like(token, llm.pad_token_id), token)
        mask = torch.cat([mask, torch.ones((batch, 1), dtype=mask.dtype, device=device)], 1)
        out = llm(llm.embed_tokens(token[:, None]), attention_mask=mask,
                  past_key_values=out.past_key_values, use_cache=True, logits_to_keep=1)
    return answers


def generate_answers(
    llm: FrozenLLM,
    template: ChatTemplate,
    dialogs: Sequence[Dialog],
    batch_size: int = 8,
    max_new_tokens: int = 128,
    progress: bool = False,
) -> List[Dialog]:
    """Answer every user turn of every dialog with the LLM, greedily, turn by turn.

    A later turn's history holds the LLM's own earlier answers, not the dataset's.
    Returns copies of the dialogs with each user turn followed by an assistant turn whose
    content is the LLM's answer (a missing last assistant turn is added); other keys
    are kept. A dialog's "system" key overrides the template's system prompt.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = []
    for k, dialog in enumerate(dialogs):
        try:
            check_dialog(dialog)
        except ValueError as e:
            raise ValueError(f"dialog {k}: {e}") from None
        dialog = copy.deepcopy(dialog)
        users = dialog["turns"][0::2]
        olds = dialog["turns"][1::2]
        dialog["turns"] = []
        for u, user in enumerate(users):
            answer = copy.deepcopy(olds[u]) if u < len(olds) else {"role": "assistant"}
            answer["content"] = None  # filled in round u below
            dialog["turns"] += [user, answer]
        out.append(dialog)

    n_user_turns = sum(len(d["turns"]) // 2 for d in out)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_user_turns, desc="answers", unit="turn")
    rounds = max((len(d["turns"]) // 2 for d in out), default=0)
    for u in range(rounds):
        # Round u answers turn u of every dialog that has one, with turns < u as history.
        jobs = []
        for dialog in out:
            turns = dialog["turns"]
            if 2 * u < len(turns):
                history = [{"role": t["role"], "content": t["content"]} for t in turns[: 2 * u]]
                prompt = template.text_prompt_ids(
                    turns[2 * u]["content"], history, system_prompt=dialog.get("system"))
                jobs.append((prompt, turns[2 * u + 1]))
        # Similar lengths together: less padding, and results do not depend on batching.
        jobs.sort(key=lambda job: len(job[0]))
        for start in range(0, len(jobs), batch_size):
            chunk = jobs[start:start + batch_size]
            ids = greedy_generate(llm, [prompt for prompt, _ in chunk], max_new_tokens)
            for (_, turn), answer in zip(chunk, ids):
                turn["content"] = llm.tokenizer.decode(answer, skip_special_tokens=True).strip()
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return out


def answer_questions(
    llm: FrozenLLM,
    template: ChatTemplate,
    questions: Sequence[str],
    batch_size: int = 8,
    max_new_tokens: int = 128,
    system_prompt: Optional[str] = None,
) -> List[str]:
    """Single-turn convenience: one greedy answer per question."""
    dialogs = [{"turns": [{"role": "user", "content": q}]} for q in questions]
    if system_prompt is not None:
        for dialog in dialogs:
            dialog["system"] = system_prompt
    answered = generate_answers(llm, template, dialogs, batch_size, max_new_tokens)
    return [dialog["turns"][1]["content"] for dialog in answered]
