"""Recipe stage 5 (the embedded recipe's text LLM, llm/text_training.py) killed and run again.

A training process is killed with SIGKILL while it writes a checkpoint (its weights file
cut in half first, as a kill in the middle of the write leaves it), or stopped between the
two renames that put a new checkpoint in place. Each time the output folder must not look
finished (the recipe takes `<out>/config.json` as stage 5's completion marker), and the
re-run with `--resume` must end exactly like a run that was never interrupted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from espnet_freeze_omni.llm import text_training
from espnet_freeze_omni.llm.text_training import STATE_FILE, WORK_SUFFIX, train_text_llm
from espnet_freeze_omni.llm.tiny import build_tiny_llm

REPO = Path(__file__).resolve().parents[1]
FACTS = [("sky", "blue"), ("grass", "green"), ("sun", "yellow"), ("snow", "white"),
         ("coal", "black"), ("rose", "red"), ("sea", "deep blue"), ("sand", "beige")]
DIALOGS = [{"turns": [{"role": "user", "content": f"What color is the {thing}?"},
                      {"role": "assistant", "content": f"The {thing} is {color}."}]}
           for thing, color in FACTS]
# 6 steps, checkpoints after steps 2 and 4, the finished model after step 6: saves 1, 2, 3
TRAINING = dict(steps=6, batch_size=3, lr=1e-3, save_every=2, seed=0)

# Runs train_text_llm in a fresh process that kills itself with SIGKILL during its n-th
# save, right after save_pretrained wrote the model folder, with the weights cut in half.
KILLER = r"""
import json, os, signal, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from espnet_freeze_omni.llm import text_training
spec = json.loads(sys.argv[1])
real_save, saves = text_training._save, [0]

def save(model, *args):
    saves[0] += 1
    if saves[0] == spec["kill_at_save"]:
        write = model.save_pretrained
        def torn_write(folder, *a, **k):
            write(folder, *a, **k)
            weights = Path(folder) / "model.safetensors"
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        model.save_pretrained = torn_write
    real_save(model, *args)

text_training._save = save
text_training.train_text_llm(spec["llm_dir"], spec["dialogs"], spec["out_dir"], resume=True,
                             progress=False, **spec["training"])
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    texts = [t["content"] for d in DIALOGS for t in d["turns"]]
    return build_tiny_llm(tmp_path_factory.mktemp("kill_llm") / "tiny", texts, family="qwen2",
                          hidden_size=64, num_layers=2, intermediate_size=128)


@pytest.fixture(scope="module")
def uninterrupted(llm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("kill_reference") / "llm"
    result = train_text_llm(llm_dir, DIALOGS, out, progress=False, **TRAINING)
    return result, weights(out)


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def killed_in_save(llm_dir: Path, out: Path, save: int) -> int:
    spec = dict(llm_dir=str(llm_dir), out_dir=str(out), dialogs=DIALOGS, training=TRAINING,
                kill_at_save=save)
    proc = subprocess.run([sys.executable, "-c", KILLER, json.dumps(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == -9, proc.stderr[-3000:]
    return proc.returncode


def leftovers(out: Path):
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def assert_resumes_like_the_uninterrupted_run(llm_dir, out, uninterrupted):
    reference, reference_weights = uninterrupted
    resumed = train_text_llm(llm_dir, DIALOGS, out, resume=True, progress=False, **TRAINING)
    assert resumed["step"] == TRAINING["steps"]
    assert resumed["losses"] == pytest.approx(reference["losses"], rel=1e-4)
    got = weights(out)
    assert got.keys() == reference_weights.keys()
    for name, tensor in reference_weights.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    assert torch.load(out / STATE_FILE, weights_only=False)["step"] == TRAINING["steps"]
    assert leftovers(out) == [], "the checkpoints of the run were not cleaned up"


def test_killed_while_saving_the_finished_model(llm_dir, tmp_path, uninterrupted):
    out = tmp_path / "llm"
    killed_in_save(llm_dir, out, save=3)
    # the torn model was being written beside the output folder, which does not exist yet:
    # stage 5 sees no config.json and runs the build again
    assert not out.exists()
    assert (tmp_path / "llm.tmp" / "config.json").is_file()
    assert not (tmp_path / "llm.tmp" / STATE_FILE).exists()
    work = tmp_path / ("llm" + WORK_SUFFIX)
    assert torch.load(work / STATE_FILE, weights_only=False)["step"] == 4
    assert_resumes_like_the_uninterrupted_run(llm_dir, out, uninterrupted)


def test_killed_while_saving_a_checkpoint_resumes_from_the_one_before(llm_dir, tmp_path,
                                                                      uninterrupted):
    out = tmp_path / "llm"
    killed_in_save(llm_dir, out, save=2)  # the step-4 checkpoint is torn
    work = tmp_path / ("llm" + WORK_SUFFIX)
    assert not out.exists()
    assert torch.load(work / STATE_FILE, weights_only=False)["step"] == 2
    assert_resumes_like_the_uninterrupted_run(llm_dir, out, uninterrupted)


def test_stopped_between_the_two_renames_of_a_checkpoint(llm_dir, tmp_path, uninterrupted,
                                                         monkeypatch):
    """Step 4's checkpoint is whole but not yet renamed into place; step 2's was moved aside."""
    out = tmp_path / "llm"
    work = tmp_path / ("llm" + WORK_SUFFIX)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src) == tmp_path / f"llm{WORK_SUFFIX}.tmp":
            torch_state = torch.load(Path(src) / STATE_FILE, weights_only=False)
            if torch_state["step"] == 4:
                raise KeyboardInterrupt("stopped between the renames")
        real_rename(src, dst)

    monkeypatch.setattr(text_training.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        train_text_llm(llm_dir, DIALOGS, out, resume=True, progress=False, **TRAINING)
    monkeypatch.setattr(text_training.os, "rename", real_rename)
    assert not work.exists() and not out.exists()
    assert torch.load(tmp_path / f"llm{WORK_SUFFIX}.old" / STATE_FILE,
                      weights_only=False)["step"] == 2
    assert_resumes_like_the_uninterrupted_run(llm_dir, out, uninterrupted)


def test_a_finished_model_is_left_as_it_is(llm_dir, tmp_path, uninterrupted):
    out = tmp_path / "llm"
    train_text_llm(llm_dir, DIALOGS, out, progress=False, **TRAINING)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = train_text_llm(llm_dir, DIALOGS, out, resume=True, progress=False, **TRAINING)
    assert again["step"] == TRAINING["steps"]
    assert again["losses"] == pytest.approx(uninterrupted[0]["losses"], rel=1e-4)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_build_script_checkpoints_and_resumes():
    """The embedded recipe's stage-5 build asks for checkpoints and resumes from them."""
    script = (REPO / "egs2/synthetic_dialog/freeze_omni1/local/build_llm.sh").read_text()
    call = script[script.index("espnet_freeze_omni.bin.train_text_llm"):]
    assert '--save_every "${save_every}"' in call and "--resume" in call
