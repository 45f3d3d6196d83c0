#!/usr/bin/env python3
"""Training-step time of speech-input stage 2 or 3: the forward the model trains with against
a plain full-sequence pass through the frozen LLM, on one batch of the stage's own data.

The training forward (`LLMASRModel.run_llm_for_loss`) runs the chat prefix that every item of
the batch shares once, without gradient, hands its keys/values to the whole batch, and
projects onto the vocabulary only the columns that hold a label. The baseline pushes every
position of every row through the LLM and the vocabulary projection. Both give the same loss
(tests/test_speech_input_train.py); this script prints the loss of each as a check, the
median forward+backward seconds over --runs (after one warm-up, the two paths interleaved so
that a change in machine speed hits both alike) and their ratio.

    cd egs2/synthetic_dialog/freeze_omni1   # paths in the stage's config.yaml are relative
    python -m espnet_freeze_omni.bin.benchmark_speech_input_step \\
        --exp_dir exp/speech_input_stage2 --batch_size 20 --runs 5 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Dict

import torch


def load_stage(exp_dir: Path, checkpoint: str):
    """The trained stage model (train mode, as in training) and its parsed config."""
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

    config = exp_dir / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no config.yaml; run the stage first")
    model, args = SpeechInputTask.build_model_from_file(config, exp_dir / checkpoint, "cpu")
    if not hasattr(model, "run_llm_for_loss"):
        raise ValueError(f"{exp_dir}: {type(model).__name__} has no LLM; give stage 2 or 3")
    return model.train(), args


def first_batch(args, batch_size: int) -> Dict[str, torch.Tensor]:
    """The first `batch_size` training items, read and collated as the Trainer does."""
    from espnet2.train.dataset import ESPnetDataset
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

    dataset = ESPnetDataset(args.train_data_path_and_name_and_type,
                            preprocess=SpeechInputTask.build_preprocess_fn(args, train=True))
    keys = list(dataset.loader_dict[dataset.names()[0]].keys())[:batch_size]
    collate = SpeechInputTask.build_collate_fn(args, train=True)
    _, batch = collate([dataset[k] for k in keys])
    return batch


def plain_forward(model) -> Callable:
    """The baseline: every position through the LLM, logits everywhere."""
    def run(inputs, mask, labels, shared):
        return model.llm(inputs_embeds=inputs, attention_mask=mask), labels
    return run


def timed_step(model, batch) -> tuple:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    loss, stats, _ = model(**batch)
    loss.backward()
    return time.perf_counter() - start, float(stats["loss_llm"])


def main(cmd=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_dir", type=Path, required=True, help="a trained speech-input stage 2 or 3")
    p.add_argument("--checkpoint", default="valid.loss.best.pth")
    p.add_argument("--batch_size", type=int, default=20)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    a = p.parse_args(cmd)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, args = load_stage(a.exp_dir, a.checkpoint)
    batch = first_batch(args, a.batch_size)
    shared = model.shared_prefix_length(batch["llm_prefix"], batch["llm_prefix_lengths"])

    baseline = {"run_llm_for_loss": plain_forward(model),
                "shared_prefix_length": lambda prefix, lengths: 0}
    times = {"training forward": [], "full forward": []}
    losses = {}
    for run in range(a.runs + 1):  # run 0 warms up
        for name in times:
            for attr, fn in baseline.items():  # instance attributes shadow the methods
                if name == "full forward":
                    setattr(model, attr, fn)
                else:
                    model.__dict__.pop(attr, None)
            torch.manual_seed(run)  # same SpecAugment and dropout draws for both paths
            seconds, losses[name] = timed_step(model, batch)
            if run:
                times[name].append(seconds)

    print(f"{a.exp_dir} ({type(model).__name__}), {len(batch['speech'])} utterances, "
          f"{torch.get_num_threads()} thread(s); shared chat prefix {shared} tokens "
          f"of {int(batch['llm_prefix_lengths'].max())}")
    for name, values in times.items():
        print(f"  {name:17s} {statistics.median(values):.3f} s/step "
              f"(runs {', '.join(f'{v:.3f}' for v in values)}), loss_llm {losses[name]:.6f}")
    ratio = statistics.median(times["training forward"]) / statistics.median(times["full forward"])
    print(f"  ratio training/full {ratio:.3f}")


if __name__ == "__main__":
    main()
