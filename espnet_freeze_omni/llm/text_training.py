"""Teach a small LLM a world of facts before it is frozen (the embedded CPU recipe).

Freeze-Omni needs an LLM that can already answer questions in text; the paper uses
Qwen2-7B-Instruct. The CPU-sized recipe cannot run one, so it fine-tunes a tiny LLM
(`espnet_freeze_omni.llm.tiny`) on multi-turn text dialogs about a generated world until
it knows the answers, then freezes it for everything downstream.

Full fine-tuning with AdamW; the loss covers the assistant tokens only (answer + its
end-of-turn token), formatted by the same ChatTemplate the speech model uses.

Saving survives a kill at any moment. `out_dir` appears only whole: the finished model
(`save_pretrained`, the tokenizer and `text_training_state.pt`) is written into
`<out_dir>.tmp` and renamed to `out_dir`, so a folder there with a `config.json` is always
complete (the recipe's stage 5 takes `exp/llm/config.json` as its completion marker). Every
`save_every` steps the same goes to `<out_dir>.training` (the previous one is replaced only
once the new one is whole). `resume=True` goes on from the checkpoint with the most steps
among those folders, with the optimizer, schedule and batch order of that step, so a
resumed run draws the batches an uninterrupted one would.
"""

import math
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.dialogs import Dialog, check_dialog

IGNORE_ID = -100
STATE_FILE = "text_training_state.pt"
WORK_SUFFIX = ".training"  # <out_dir>.training: the last intermediate checkpoint
_TMP, _OLD = ".tmp", ".old"  # <folder>.tmp: being written; <folder>.old: being replaced


def encode_dialog(
    template: ChatTemplate,
    dialog: Dialog,
    max_len: Optional[int] = None,
) -> Tuple[List[int], List[int]]:
    """Token ids of a whole dialog and labels that are IGNORE_ID except on answers.

    Built turn by turn exactly as the streaming model extends its K/V cache:
    prefix, question, suffix, answer + end of turn, next-turn opening, question, ...
    """
    check_dialog(dialog)
    ids = template.prefix_ids(system_prompt=dialog.get("system"))
    labels = [IGNORE_ID] * len(ids)
    turns = dialog["turns"]
    for k in range(0, len(turns), 2):
        if k:
            ids += template.next_turn_ids()
        prompt = template.question_ids(turns[k]["content"]) + template.suffix_ids()
        ids += prompt
        labels += [IGNORE_ID] * (len(ids) - len(labels))
        if k + 1 < len(turns):
            answer = template.answer_ids(turns[k + 1]["content"])
            ids += answer
            labels += answer
    if max_len is not None:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels


def _collate(examples: Sequence[Tuple[List[int], List[int]]], pad_id: int):
    """Right-padded (ids, attention_mask, labels) tensors."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_ID, dtype=torch.long)
    for i, (x, y) in enumerate(examples):
        ids[i, : len(x)] = torch.tensor(x)
        mask[i, : len(x)] = 1
        labels[i, : len(y)] = torch.tensor(y)
    return ids, mask, labels


def length_bucketed_pass(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, pool_batches: int = 32
) -> List[int]:
    """One shuffled pass over the examples, arranged so that consecutive `batch_size` runs
    hold examples of similar length: a random pool of `pool_batches` batches is sorted by
    length and cut into batches, and all batches are shuffled. Padding then costs little
    when short dialogs (copy tasks) and long multi-turn ones are mixed.
    """
    perm = torch.randperm(len(lengths), generator=generator).tolist()
    pool = batch_size * pool_batches
    batches = []
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    # a short remainder batch goes last, so every other batch is full
    shuffled.sort(key=lambda b: len(batches[b]) < batch_size)
    return [i for b in shuffled for i in batches[b]]


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10 % of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _save(model, tokenizer, out_dir: Path, optimizer, scheduler, step: int, losses: List[float],
          generator: torch.Generator, order: List[int]) -> None:
    """Write a whole checkpoint folder named `out_dir`, replacing the one there, if any.

    The folder is written as `<out_dir>.tmp`, the state file last (its presence marks the
    folder complete), and only then renamed into place: a kill leaves either the previous
    folder or the new one under that name (or, between the two renames, the previous one as
    `<out_dir>.old` and the new one whole as `<out_dir>.tmp`; `_checkpoints` finds both).
    """
    tmp, old = _sibling(out_dir, _TMP), _sibling(out_dir, _OLD)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "losses": losses, "generator": generator.get_state(), "order": order}
    torch.save(state, tmp / (STATE_FILE + ".tmp"))
    os.replace(tmp / (STATE_FILE + ".tmp"), tmp / STATE_FILE)
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _sibling(folder: Path, suffix: str) -> Path:
    return folder.with_name(folder.name + suffix)


def _candidate_folders(out_dir: Path) -> List[Path]:
    """Every folder a checkpoint of this run may be in, the finished `out_dir` first."""
    work = _sibling(out_dir, WORK_SUFFIX)
    return [folder for base in (out_dir, work)
            for folder in (base, _sibling(base, _OLD), _sibling(base, _TMP))]


def _checkpoints(out_dir: Path) -> List[Tuple[int, Path]]:
    """(step, folder) of every complete checkpoint of this run, most steps first."""
    found = []
    for folder in _candidate_folders(out_dir):
        state_path = folder / STATE_FILE
        if not state_path.is_file():
            continue  # absent, or cut short before its state file was written: not whole
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        found.append((int(state["step"]), folder))
    # most steps first; on a tie the earlier candidate (the finished out_dir) wins
    order = {folder: k for k, folder in enumerate(_candidate_folders(out_dir))}
    return sorted(found, key=lambda item: (-item[0], order[item[1]]))


def _remove_leftovers(out_dir: Path) -> None:
    """Every checkpoint folder of the run but `out_dir` itself."""
    for folder in _candidate_folders(out_dir)[1:]:
        shutil.rmtree(folder, ignore_errors=True)


def train_text_llm(
    llm_dir,
    dialogs: Sequence[Dialog],
    out_dir,
    steps: int,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup_steps: Optional[int] = None,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    max_len: int = 512,
    seed: int = 0,
    save_every: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> Dict[str, object]:
    """Fine-tune the causal LM in `llm_dir` on `dialogs`; save it to `out_dir`.

    With `resume=True`, training goes on up to `steps` from the complete checkpoint of an
    earlier run with the most steps (`out_dir` itself or `<out_dir>.training`, see the
    module docstring); a finished `out_dir` with `steps` steps is returned as it is.
    Without `resume`, leftovers of an earlier run are removed first. Returns {"losses":
    per-step losses, "step": last step, "out_dir": Path, "seconds": wall time}.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    work_dir = _sibling(out_dir, WORK_SUFFIX)
    found = _checkpoints(out_dir) if resume else []
    resuming = bool(found)
    if not resume:
        _remove_leftovers(out_dir)
    src = found[0][1] if resuming else Path(llm_dir)
    state_path = src / STATE_FILE
    if not src.is_dir():
        raise FileNotFoundError(f"LLM directory not found: {src}")
    if not dialogs:
        raise ValueError("train_text_llm: no dialogs to train on")

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=torch.float32)
    model.train()
    template = ChatTemplate(tokenizer)
    examples = []
    for k, dialog in enumerate(dialogs):
        try:
            examples.append(encode_dialog(template, dialog, max_len))
        except ValueError as e:
            raise ValueError(f"dialog {k}: {e}") from None
    lengths = [len(ids) for ids, _ in examples]
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = template.end_of_turn_ids[0]

    # Decay only matrices: norms and biases stay put (the usual AdamW recipe).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98),
    )
    warmup = min(100, max(1, steps // 10)) if warmup_steps is None else max(1, warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
    generator = torch.Generator().manual_seed(seed)
    step, losses, order = 0, [], []
    if resuming:
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        step, losses, order = int(state["step"]), list(state["losses"]), list(state["order"])

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if resuming and src == out_dir and step >= steps:
        # finished before: nothing to train, nothing to write
        _remove_leftovers(out_dir)
        return {"losses": losses, "step": step, "out_dir": out_dir, "seconds": 0.0}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, initial=min(step, steps), desc="text LLM", unit="step")
    start = time.time()
    while step < steps:
        # Shuffled, length-bucketed passes over the data; saving the generator and the rest
        # of the current pass makes a resumed run draw exactly the batches an uninterrupted
        # one would.
        if len(order) < batch_size:
            order += length_bucketed_pass(lengths, batch_size, generator)
        batch, order = order[:batch_size], order[batch_size:]
        ids, mask, labels = _collate([examples[i] for i in batch], pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        losses.append(loss.item())
        if bar is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update(1)
        if save_every and step % save_every == 0 and step < steps:
            _save(model, tokenizer, work_dir, optimizer, scheduler, step, losses, generator, order)
    if bar is not None:
        bar.close()
    model.eval()
    _save(model, tokenizer, out_dir, optimizer, scheduler, step, losses, generator, order)
    _remove_leftovers(out_dir)
    return {"losses": losses, "step": step, "out_dir": out_dir, "seconds": time.time() - start}


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no trailing punctuation: for exact-match checks."""
    return " ".join(text.lower().split()).rstrip(".!?")


def first_turn_match_rate(llm, template: ChatTemplate, dialogs: Sequence[Dialog],
                          batch_size: int = 8, max_new_tokens: int = 64) -> float:
    """Share of dialogs whose first answer the LLM reproduces greedily (normalized)."""
    from espnet_freeze_omni.llm.generation import generate_answers

    firsts = [dict(d, turns=d["turns"][:1]) for d in dialogs if len(d["turns"]) > 1]
    if not firsts:
        return 0.0
    answered = generate_answers(llm, template, firsts, batch_size, max_new_tokens)
    hits = sum(
        normalize_answer(a["turns"][1]["content"]) == normalize_answer(d["turns"][1]["content"])
        for a, d in zip(answered, (d for d in dialogs if len(d["turns"]) > 1))
    )
    return hits / len(firsts)
