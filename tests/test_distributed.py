"""Distributed training (torch DDP, gloo on CPU) of speech-input stages 1 and 2.

Each stage is trained for one epoch twice on the tiny spoken corpus with the tiny LLM: as
2 processes started the way the recipe does it (the driver's own `launch_training`
function with `--num_procs 2`: utils/run.pl -> torchrun -> espnet's Task), and as one
process in this interpreter, with the same global batches (espnet splits every batch
among the ranks). Dropout and SpecAugment are off, so both runs compute the same thing
up to how the batch is split (padding of 2 vs 4 utterances, float summation order).

Tolerance: the epoch's train loss and the valid loss after it agree within LOSS_RTOL
(relative). Measured: 0.1-0.3 %. A rank whose gradients were not synchronized would stop
the run itself (ResumableTrainer compares the ranks' parameters after every epoch).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import espnet_data_args

from espnet_freeze_omni.bin import speech_input_train
from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TEMPLATE = REPO / "egs2" / "TEMPLATE" / "freeze_omni1"
DRIVER = TEMPLATE / "freeze_omni.sh"
LOSS_RTOL = 0.02
NUM_PROCS = 2


def stage_args(corpus: Path, stage: int, *extra):
    """One epoch, 3 global batches of 4 utterances, nothing random in the forward."""
    return [
        "--config", str(CONF / f"speech_input_stage{stage}_tiny.yaml"),
        *espnet_data_args(corpus),
        "--token_list", str(corpus / "tokens.txt"),
        # per-utterance normalization: no collect-stats pass needed for this test
        "--normalize", "utterance_mvn",
        "--specaug", "none", "--encoder_conf", "dropout_rate=0.0",
        "--batch_type", "unsorted", "--batch_size", "4", "--max_epoch", "1",
        "--scheduler_conf", "warmup_steps=5", "--seed", "0", "--num_att_plot", "0",
        "--use_matplotlib", "false", "--use_tensorboard", "false",
        *extra,
    ]


def driver_function_script() -> str:
    """The driver's own training launcher, cut out of freeze_omni.sh, to be run alone."""
    text = DRIVER.read_text()
    functions = []
    for name in ("rotate_train_log", "launch_training"):
        match = re.search(rf"^{name}\(\) {{.*?^}}\n", text, flags=re.S | re.M)
        assert match, f"{name}() not found in {DRIVER}"
        functions.append(match.group(0))
    return "\n".join(functions)


def launch_like_the_recipe(out: Path, args, num_procs: int = NUM_PROCS):
    script = "\n".join([
        "set -euo pipefail",
        'log() { echo "$*"; }',
        driver_function_script(),
        f"python={sys.executable}",
        f"cuda_cmd={TEMPLATE / 'utils' / 'run.pl'}",
        f"num_procs={num_procs}; ngpu=0; num_nodes=1; train_threads={num_procs}",
        'launch_training "$@"',
    ])
    proc = subprocess.run(
        ["bash", "-c", script, "launch", str(out), "espnet_freeze_omni.bin.speech_input_train",
         *args],
        cwd=REPO, capture_output=True, text=True, timeout=540,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    log = (out / "train.log").read_text() if (out / "train.log").exists() else ""
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}\n{log[-6000:]}"
    return log


def reporter_stats(out: Path) -> dict:
    ckpt = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=False)
    return ckpt["reporter"]["stats"][1]


def assert_close_losses(distributed: Path, single: Path, key: str):
    d, s = reporter_stats(distributed), reporter_stats(single)
    for phase in ("train", "valid"):
        a, b = float(d[phase][key]), float(s[phase][key])
        assert abs(a - b) <= LOSS_RTOL * abs(b), (phase, key, a, b)


def assert_log_shows_both_ranks(log: str):
    """Every rank logs its own lines; their parameters after the epoch are the same."""
    for rank in range(NUM_PROCS):
        assert re.search(rf"^\[[^\]:]+:{rank}/{NUM_PROCS}\] .*rank {rank}/{NUM_PROCS} \(pid \d+, "
                         r"backend gloo\): DDP synchronizes", log, flags=re.M), rank
    prints = re.findall(r"\] .*rank (\d)/2: epoch 1: trained in [\d.]+ s on its share of the "
                        r"batches \((\d+) read, (\d+) utterances\); parameter fingerprint (\S+)$",
                        log, flags=re.M)
    assert sorted(rank for rank, *_ in prints) == ["0", "1"], prints
    # 12 training utterances, batches of 4 split 2 + 2: each rank reads 3 batches of 2
    assert {(batches, utts) for _, batches, utts, _ in prints} == {("3", "6")}, prints
    assert len({fingerprint for *_, fingerprint in prints}) == 1, prints
    assert "epoch 1: the parameters of all 2 ranks are identical" in log
    assert "The training was finished at 1 epochs" in log


def assert_loads_in_one_process(out: Path, corpus: Path, stage: int, *extra):
    """The rank-0 checkpoint is a plain model state dict: a one-process model takes it whole."""
    state = torch.load(out / "1epoch.pth", map_location="cpu")
    assert not [k for k in state if k.startswith("module.")], "a DDP wrapper's names were saved"
    assert not [k for k in state if k.startswith("llm") or ".llm." in k], "the LLM was saved"
    args = SpeechInputTask.get_parser().parse_args(
        stage_args(corpus, stage, "--output_dir", str(out / "unused"), *extra))
    model = SpeechInputTask.build_model(args)
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected


@pytest.fixture(scope="module")
def stage1(spoken_corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_stage1")
    log = launch_like_the_recipe(root / "two", stage_args(spoken_corpus, 1))
    speech_input_train.main(stage_args(spoken_corpus, 1, "--output_dir", str(root / "one")))
    return root / "two", root / "one", log


@pytest.fixture(scope="module")
def stage2(stage1, spoken_corpus, tiny_llm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp_stage2")
    # both start from the 2-process stage-1 model: it loads in either kind of run
    extra = ("--llm_conf", f"path={tiny_llm_dir}", "--init_param", f"{stage1[0]}/1epoch.pth")
    log = launch_like_the_recipe(root / "two", stage_args(spoken_corpus, 2, *extra))
    speech_input_train.main(stage_args(spoken_corpus, 2, "--output_dir", str(root / "one"),
                                       *extra))
    return root / "two", root / "one", log


def test_stage1_two_processes_log_both_ranks(stage1):
    assert_log_shows_both_ranks(stage1[2])


def test_stage1_loss_after_one_epoch_matches_one_process(stage1):
    assert_close_losses(stage1[0], stage1[1], "loss_ctc")


def test_stage1_checkpoint_loads_in_one_process(stage1, spoken_corpus):
    assert_loads_in_one_process(stage1[0], spoken_corpus, 1)


def test_stage2_two_processes_log_both_ranks_with_the_llm_outside_ddp(stage2, tiny_llm_dir):
    log = stage2[2]
    assert_log_shows_both_ranks(log)
    # each rank loaded the frozen LLM itself, and DDP never saw it
    outside = re.findall(r"held outside DDP, loaded in this process, never synchronized or "
                         rf"saved: FrozenLLM {re.escape(str(tiny_llm_dir))} \([\d,]+ parameters, "
                         r"0 trainable\)", log)
    assert len(outside) == NUM_PROCS, outside


def test_stage2_loss_after_one_epoch_matches_one_process(stage2):
    assert_close_losses(stage2[0], stage2[1], "loss_llm")
    assert_close_losses(stage2[0], stage2[1], "loss")


def test_stage2_checkpoint_loads_in_one_process(stage2, spoken_corpus, tiny_llm_dir):
    assert_loads_in_one_process(stage2[0], spoken_corpus, 2, "--llm_conf", f"path={tiny_llm_dir}")


def test_resumed_distributed_run_keeps_the_earlier_log(stage1, spoken_corpus):
    """A second launch (the recipe re-run) resumes the finished run: nothing is trained again,
    and the first run's log is kept as train.1.log, as espnet2.bin.launch does."""
    out = stage1[0]
    before = (out / "1epoch.pth").stat().st_mtime_ns
    log = launch_like_the_recipe(out, stage_args(spoken_corpus, 1))
    assert "already reached at max_epoch" in log
    assert (out / "train.1.log").read_text() == stage1[2]
    assert (out / "1epoch.pth").stat().st_mtime_ns == before


@pytest.mark.parametrize("options, message", [
    ("--num_procs 2 --ngpu 1", "--num_procs is for CPU training on one machine"),
    ("--num_procs 2 --num_nodes 2", "--num_procs is for CPU training on one machine"),
    ("--num_procs two", "--num_procs must be a positive integer, not 'two'"),
])
def test_driver_refuses_num_procs_it_cannot_honour(options, message):
    proc = subprocess.run(
        ["bash", "-c", f"./freeze_omni.sh --train_set a --valid_set b {options}"],
        cwd=TEMPLATE, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and message in proc.stdout + proc.stderr
