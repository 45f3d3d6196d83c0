"""`--init_param` that does not fit the model is an error, never a half-random start.

espnet applies `--init_param <file>[:<src_key>[:<dst_key>[:<excludes>]]]` after the model is
built. A checkpoint from a stage trained with another LLM (another hidden size) or another
adapter or encoder depth does not fit: with `--ignore_init_mismatch true` espnet drops the
tensors of another shape with a warning, without it torch stops with a message that does not
name the checkpoint, and a list of layers shorter than the model's (one adapter conv less) is
loaded without a word, leaving the extra layers random. Our Tasks call `check_init_param`
between building the model and loading, and it names the file and every tensor that does
not fit.

Tensors the checkpoint does not have at all are fine when they belong to modules that the
next stage adds (stage 1 has no adapter, stage 2 no state head, and the Task names what a
later stage adds inside an earlier module); a module the checkpoint has only in part is an
error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import yaml


def parse_init_param(spec: str) -> Tuple[str, Optional[str], Optional[str], List[str]]:
    """`<file>[:<src_key>[:<dst_key>[:<excludes>]]]` -> (file, src_key, dst_key, excludes),
    read the way espnet's load_pretrained_model reads it."""
    parts = spec.split(":", 4)
    path = parts[0]
    src_key = parts[1] if len(parts) > 1 and parts[1] else None
    dst_key = parts[2] if len(parts) > 2 and parts[2] else None
    excludes = [e for e in parts[3].split(",") if e] if len(parts) > 3 and parts[3] else []
    return path, src_key, dst_key, excludes


def _source_state(path: str, src_key: Optional[str], excludes: Sequence[str]
                  ) -> Dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"--init_param {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which one
        raise ValueError(f"--init_param {path}: cannot be read as a checkpoint ({e})") from e
    if isinstance(state, dict) and isinstance(state.get("module"), dict):
        state = state["module"]  # as espnet: deepspeed checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"--init_param {path}: not a state dict (got {type(state).__name__})")
    state = {k: v for k, v in state.items() if not any(k.startswith(e) for e in excludes)}
    if src_key is not None:
        state = {k[len(src_key) + 1:]: v for k, v in state.items() if k.startswith(src_key)}
    return state


def init_param_mismatches(model: torch.nn.Module, spec: str,
                          new_modules: Sequence[str] = ()) -> List[str]:
    """Every tensor of `spec` (an --init_param value) that does not fit `model`, worded.

    A tensor of the model that the checkpoint lacks is fine when the checkpoint has nothing
    of its top-level module (a module the next stage adds) or when it lies in one of
    `new_modules` (what a later stage adds inside a module an earlier one has); otherwise the
    checkpoint has that module in part (one adapter layer less) and it does not fit.
    """
    path, src_key, dst_key, excludes = parse_init_param(spec)
    target = model
    for attr in (dst_key.split(".") if dst_key else []):
        target = getattr(target, attr)
    dst = target.state_dict()
    src = _source_state(path, src_key, excludes)
    prefix = f"{dst_key}." if dst_key else ""
    found: List[str] = []
    for k, v in src.items():
        if k not in dst:
            found.append(f"{prefix}{k}: in the checkpoint but not in the model")
        elif hasattr(v, "shape") and tuple(v.shape) != tuple(dst[k].shape):
            found.append(f"{prefix}{k}: shape {tuple(v.shape)} in the checkpoint, "
                         f"{tuple(dst[k].shape)} in the model")
    src_tops = {k.split(".", 1)[0] for k in src}
    for k in dst:
        top = k.split(".", 1)[0]
        if k in src or top not in src_tops:
            continue
        if any((prefix + k).startswith(m + ".") for m in new_modules):
            continue
        found.append(f"{prefix}{k}: in the model but not in the checkpoint, which has "
                     f"other parts of {prefix}{top}")
    return found


def _hidden_size(llm_dir: Path) -> Optional[int]:
    try:
        with open(llm_dir / "config.json", encoding="utf-8") as f:
            size = json.load(f).get("hidden_size")
    except (OSError, ValueError):
        return None
    return size if isinstance(size, int) else None


def llm_mismatch(spec: str, llm_path: Optional[str]) -> Optional[str]:
    """Why the stage behind `spec` was trained around another LLM than `llm_path`, or None.

    espnet writes config.yaml beside the checkpoints of a stage; it names that stage's LLM.
    Some parts (the speech decoder) have the same shapes whatever the LLM's hidden size, so
    only the recorded LLM tells that their weights were learnt on another LLM's vectors.
    """
    config = Path(parse_init_param(spec)[0]).parent / "config.yaml"
    if not llm_path or not config.is_file():
        return None
    try:
        with open(config, encoding="utf-8") as f:
            recorded = ((yaml.safe_load(f) or {}).get("llm_conf") or {}).get("path")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not recorded or Path(recorded).resolve() == Path(llm_path).resolve():
        return None
    old, new = _hidden_size(Path(recorded)), _hidden_size(Path(llm_path))
    if old is not None and new is not None and old != new:
        return (f"LLM: {config} trained around the LLM at {recorded} (hidden size {old}); "
                f"this run's LLM at {llm_path} has hidden size {new}")
    logging.warning("--init_param %s: its stage was trained around the LLM at %s, this run "
                    "uses %s", spec, recorded, llm_path)
    return None


def check_init_param(model: torch.nn.Module, args, new_modules: Sequence[str] = ()) -> None:
    """Raise ValueError naming the file and every tensor of each --init_param that does not
    fit `model`; with --ignore_init_mismatch true they are logged as errors and espnet goes
    on as it would (mismatched tensors dropped)."""
    if getattr(args, "collect_stats", False) or getattr(args, "dry_run", False):
        return
    for spec in getattr(args, "init_param", None) or []:
        found = init_param_mismatches(model, spec, new_modules)
        other_llm = llm_mismatch(spec, (getattr(args, "llm_conf", None) or {}).get("path"))
        if other_llm:
            found.insert(0, other_llm)
        if not found:
            continue
        shown = "\n".join(f"  {f}" for f in found[:40])
        if len(found) > 40:
            shown += f"\n  ... and {len(found) - 40} more"
        message = (f"--init_param {spec} does not fit the {type(model).__name__} being "
                   f"trained ({len(found)} tensor(s)); was it trained with another LLM "
                   f"(hidden size) or another adapter/encoder depth?\n{shown}")
        if getattr(args, "ignore_init_mismatch", False):
            logging.error("%s\n(--ignore_init_mismatch true: these start from random weights)",
                          message)
            continue
        raise ValueError(message + "\nTrain from a matching stage, or exclude tensors "
                         "explicitly with <file>:<src_key>:<dst_key>:<excludes>.")
