"""kill -9 and resume: training and stage-9 answer regeneration survive SIGKILL at any point.

One speech-input stage-1 run (tiny encoder + CTC, 3 epochs) is killed four times in a row,
each time at another point, and resumed with `--resume true` after each kill:

    a. during the very first save of checkpoint.pth (half written, no earlier checkpoint)
    b. from outside, in the middle of epoch 2 (after its first iteration is logged)
    c. during the save of epoch 2's checkpoint.pth (half written; epoch 1's is kept)
    d. during the save of 3epoch.pth, right after epoch 3's checkpoint.pth was written

The end result must equal an uninterrupted run with the same seed (per-epoch losses and
parameters within float tolerance), and no resumed process may train an epoch that was
already saved. The kills in a, c and d are made by the trainer's test-only switch
FREEZE_OMNI_TEST_SIGKILL_IN_SAVE (espnet_freeze_omni/tasks/resumable_trainer.py), which
writes part of the file and then SIGKILLs its own process; b is a plain `kill -9` from here.

Stage 9 (bin/regenerate_answers.py) is killed while appending a dialog, on its own and
through the recipe driver, and its re-run answers only the dialogs not saved yet.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import espnet_data_args

from espnet_freeze_omni.bin import regenerate_answers, speech_input_train
from espnet_freeze_omni.tasks import resumable_trainer as resumable
from espnet_freeze_omni.tasks.resumable_trainer import (
    CHECKPOINT,
    KILL_SWITCH_ENV,
    PREVIOUS,
    ResumableGANTrainer,
    ResumableTrainer,
    is_complete_torch_file,
)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
MAX_EPOCH = 3
STARTUP_TIMEOUT = 300  # a cold start imports espnet2 (20 s on 2 busy cores)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def train_cmd(corpus: Path, out: Path, *extra: str) -> list:
    return [
        "--config", str(CONF / "speech_input_stage1_tiny.yaml"), *espnet_data_args(corpus),
        "--token_list", str(corpus / "tokens.txt"),
        "--normalize", "utterance_mvn",  # no collect-stats pass needed
        "--output_dir", str(out), "--ngpu", "0",
        # batch size 1: 12 iterations an epoch, so that a kill can land inside one
        "--batch_type", "unsorted", "--batch_size", "1", "--log_interval", "1",
        "--scheduler_conf", "warmup_steps=5", "--max_epoch", str(MAX_EPOCH),
        "--keep_nbest_models", "2", "--seed", "0", "--num_att_plot", "0",
        "--use_matplotlib", "false", "--use_tensorboard", "false",
        *extra,
    ]


def start(cmd: list, log: Path, kill_switch: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(KILL_SWITCH_ENV, None)
    if kill_switch:
        env[KILL_SWITCH_ENV] = kill_switch
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "espnet_freeze_omni.bin.speech_input_train", *cmd],
            stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


def wait_killed(proc: subprocess.Popen, log: Path) -> str:
    """Wait for a run that kills itself; return its log."""
    try:
        rc = proc.wait(timeout=STARTUP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    text = log.read_text(errors="replace")
    assert rc == -signal.SIGKILL, f"expected a SIGKILL, got exit code {rc}:\n{text[-3000:]}"
    return text


def kill_when_logged(proc: subprocess.Popen, log: Path, pattern: str) -> str:
    """SIGKILL the run as soon as its log matches `pattern`; return the log."""
    deadline = time.time() + STARTUP_TIMEOUT
    try:
        while not re.search(pattern, log.read_text(errors="replace"), re.M):
            assert proc.poll() is None, f"ended before {pattern!r}:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"no {pattern!r} in time"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return log.read_text(errors="replace")


def started_epochs(log: str) -> list:
    return [int(e) for e in re.findall(r"\b(\d+)/\d+epoch started", log)]


def saved_epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["reporter"]["epoch"]


def losses(out: Path) -> dict:
    stats = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=False)["reporter"]
    return {e: (s["train"]["loss"], s["valid"]["loss"]) for e, s in stats["stats"].items()}


def assert_same_params(a: Path, b: Path) -> None:
    sa = torch.load(a, map_location="cpu", weights_only=True)
    sb = torch.load(b, map_location="cpu", weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=f"{a.name}: {k}")


@pytest.fixture(scope="module")
def reference(spoken_corpus, tmp_path_factory):
    """The same run, never interrupted."""
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    speech_input_train.main(train_cmd(spoken_corpus, out))
    return out


def test_tasks_train_with_the_resumable_trainer():
    from espnet2.train.gan_trainer import GANTrainer

    from espnet_freeze_omni.bin import gan_codec_train
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask
    from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

    assert SpeechInputTask.trainer is ResumableTrainer
    assert SpeechOutputTask.trainer is ResumableTrainer
    assert issubclass(ResumableGANTrainer, GANTrainer)
    assert gan_codec_train.ResumableGANCodecTask.trainer is ResumableGANTrainer
    args = gan_codec_train.get_parser().parse_args(
        ["--config", str(CONF / "codec_soundstream_tiny.yaml"), "--resume", "true"])
    assert args.codec == "soundstream" and args.resume


def test_killed_four_times_ends_like_an_uninterrupted_run(spoken_corpus, reference, tmp_path,
                                                          caplog):
    out = tmp_path / "killed"
    cmd = train_cmd(spoken_corpus, out)
    resume = cmd + ["--resume", "true"]
    ckpt, prev = out / CHECKPOINT, out / PREVIOUS

    # a. killed while writing the first checkpoint.pth: nothing earlier to fall back on
    log = wait_killed(start(cmd, tmp_path / "a.log", f"{CHECKPOINT}:1:0.5"), tmp_path / "a.log")
    assert started_epochs(log) == [1]
    assert ckpt.exists() and not is_complete_torch_file(ckpt)
    assert not prev.exists() and not (out / "1epoch.pth").exists()

    # b. resumed: the torn file is set aside with a warning, epoch 1 is trained again and
    # saved; then kill -9 from outside while epoch 2 runs
    log = kill_when_logged(start(resume, tmp_path / "b.log"), tmp_path / "b.log",
                           r"2epoch:train:1-1batch")
    assert "training starts again from epoch 1" in log
    assert (out / (CHECKPOINT + ".torn")).exists()
    assert started_epochs(log) == [1, 2]
    assert saved_epoch(ckpt) == 1 and not (out / "2epoch.pth").exists()  # killed mid-epoch

    # c. resumed at epoch 2 (epoch 1 is not trained again); killed while writing epoch 2's
    # checkpoint.pth: epoch 1's was moved out of the way before and is whole
    log = wait_killed(start(resume, tmp_path / "c.log", f"{CHECKPOINT}:1:0.5"),
                      tmp_path / "c.log")
    assert started_epochs(log) == [2]
    assert "The training was resumed using" in log
    assert not is_complete_torch_file(ckpt)
    assert is_complete_torch_file(prev) and saved_epoch(prev) == 1

    # d. resumed from the previous checkpoint (a log line says so): epoch 2 again, then 3;
    # killed while writing 3epoch.pth, after epoch 3's checkpoint.pth was written
    log = wait_killed(start(resume, tmp_path / "d.log", "3epoch.pth:1:0.3"), tmp_path / "d.log")
    assert "is torn (the run was killed while writing it): resuming from the previous" in log
    assert started_epochs(log) == [2, 3]
    assert saved_epoch(ckpt) == 3
    assert not is_complete_torch_file(out / "3epoch.pth")

    # e. resumed once more, in this process: nothing left to train; 3epoch.pth is rewritten
    # from the checkpoint and the links and the averaged model are made
    caplog.set_level(logging.INFO)
    speech_input_train.main(resume)
    assert "3epoch.pth is missing or torn" in caplog.text
    assert "already reached at max_epoch" in caplog.text
    assert started_epochs(caplog.text) == []

    # the same as never killed: every epoch's losses, the last epoch's and the averaged
    # model's parameters, the same best/latest links
    want, got = losses(reference), losses(out)
    assert sorted(got) == sorted(want) == list(range(1, MAX_EPOCH + 1))
    for epoch in want:
        assert got[epoch] == pytest.approx(want[epoch], rel=1e-5), epoch
    assert_same_params(out / "3epoch.pth", reference / "3epoch.pth")
    assert_same_params(out / "valid.loss.ave.pth", reference / "valid.loss.ave.pth")
    for link in ("latest.pth", "valid.loss.best.pth"):
        assert os.readlink(out / link) == os.readlink(reference / link), link


# ------------------------------------------------ the checkpoint choice at --resume, by case
def _save(path: Path, epoch: int) -> Path:
    torch.save({"model": {"w": torch.full((4096,), float(epoch))},
                "reporter": {"epoch": epoch, "stats": {}}}, path)
    return path


def _tear(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_torn_or_changed_file_is_not_complete(tmp_path):
    whole = _save(tmp_path / "a.pth", 1)
    assert is_complete_torch_file(whole)
    _tear(_save(tmp_path / "b.pth", 1), 0.9)
    assert not is_complete_torch_file(tmp_path / "b.pth")
    (tmp_path / "c.pth").write_bytes(b"")
    assert not is_complete_torch_file(tmp_path / "c.pth")
    flipped = bytearray(whole.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # inside the 16 kB tensor: only its CRC shows it
    (tmp_path / "d.pth").write_bytes(bytes(flipped))
    assert not is_complete_torch_file(tmp_path / "d.pth")


@pytest.mark.parametrize("ckpt_state", ["torn", "empty", "missing"])
def test_resume_falls_back_to_the_previous_checkpoint(tmp_path, caplog, ckpt_state):
    _save(tmp_path / PREVIOUS, 4)
    if ckpt_state != "missing":
        _tear(_save(tmp_path / CHECKPOINT, 5), 0.5 if ckpt_state == "torn" else 0.0)
    caplog.set_level(logging.WARNING)
    resumable._select_checkpoint(tmp_path)
    assert saved_epoch(tmp_path / CHECKPOINT) == 4
    assert f"resuming from the previous checkpoint {tmp_path / PREVIOUS}" in caplog.text
    # a copy, not a link: the next in-place save of checkpoint.pth must not touch it
    assert not os.path.samefile(tmp_path / CHECKPOINT, tmp_path / PREVIOUS)


def test_resume_refuses_to_guess_when_nothing_whole_is_left(tmp_path):
    _tear(_save(tmp_path / CHECKPOINT, 5))
    _tear(_save(tmp_path / PREVIOUS, 4))
    with pytest.raises(RuntimeError, match=f"both {CHECKPOINT} and {PREVIOUS} are damaged"):
        resumable._select_checkpoint(tmp_path)
    (tmp_path / PREVIOUS).unlink()
    _save(tmp_path / "3epoch.pth", 3)
    with pytest.raises(RuntimeError, match=r"epoch files \[3\] show that training went"):
        resumable._select_checkpoint(tmp_path)
    assert (tmp_path / CHECKPOINT).exists()  # left as it was for the user to decide


def test_repair_rewrites_a_torn_epoch_file_and_the_links(tmp_path):
    _save(tmp_path / CHECKPOINT, 2)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    state["reporter"]["stats"] = {1: {"valid": {"loss": 3.0}}, 2: {"valid": {"loss": 2.0}}}
    torch.save(state, tmp_path / CHECKPOINT)
    torch.save(state["model"], tmp_path / "1epoch.pth")
    (tmp_path / "2epoch.pth").write_bytes(b"PK")  # cut short
    (tmp_path / "latest.pth").symlink_to("1epoch.pth")
    resumable._repair_after_checkpoint(tmp_path, [("valid", "loss", "min")])
    assert torch.equal(torch.load(tmp_path / "2epoch.pth", weights_only=True)["w"],
                       state["model"]["w"])
    assert os.readlink(tmp_path / "latest.pth") == "2epoch.pth"
    assert os.readlink(tmp_path / "valid.loss.best.pth") == "2epoch.pth"


# ---------------------------------------------------------- stage 9: answers, by dialog
def test_regenerate_answers_killed_mid_save_resumes_by_dialog(tiny_llm_dir, tmp_path, monkeypatch,
                                                              capsys):
    from espnet_freeze_omni.llm.chat_template import ChatTemplate
    from espnet_freeze_omni.llm.frozen_llm import FrozenLLM
    from espnet_freeze_omni.llm.generation import generate_answers

    questions = ["what color is the sky", "where does anna live", "how old is tom",
                 "who owns the red car", "what does maria do", "when does the shop open"]
    dialogs = [{"id": f"d{k}", "turns": [{"role": "user", "content": q}]}
               for k, q in enumerate(questions)]
    dialogs[1]["turns"] += [{"role": "assistant", "content": "in paris"},
                            {"role": "user", "content": "and tom?"}]
    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in dialogs))
    cmd = ["--llm_dir", str(tiny_llm_dir), "--input", str(src), "--output", str(dst),
           "--max_new_tokens", "6", "--save_every", "2", "--device", "cpu"]
    partial = dst.with_name(dst.name + regenerate_answers.PARTIAL_SUFFIX)

    # killed while appending the 4th dialog (half its line written): 3 whole ones saved
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env[regenerate_answers.KILL_SWITCH_ENV] = "3"
    proc = subprocess.run([sys.executable, "-m", "espnet_freeze_omni.bin.regenerate_answers",
                           *cmd], env=env, cwd=REPO, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-3000:]
    assert not dst.exists()
    assert not partial.read_bytes().endswith(b"\n")  # the torn record

    # run again: the 3 saved dialogs are kept, only the other 3 are answered
    answered_now = []
    real = regenerate_answers.generate_answers

    def spy(llm, template, chunk, **kwargs):
        answered_now.extend(d["id"] for d in chunk)
        return real(llm, template, chunk, **kwargs)

    monkeypatch.setattr(regenerate_answers, "generate_answers", spy)
    regenerate_answers.main(cmd)
    assert "3 of 6 dialogs already answered" in capsys.readouterr().out
    assert sorted(answered_now) == ["d3", "d4", "d5"]
    assert not partial.exists()

    # the same as one uninterrupted run
    llm = FrozenLLM(tiny_llm_dir)
    want = generate_answers(llm, ChatTemplate(llm.tokenizer), dialogs, max_new_tokens=6)
    got = [json.loads(line) for line in dst.read_text().splitlines()]
    assert got == want

    # other options: the partial answers are not reused
    partial.write_bytes(b'{"regenerate_answers_partial": "something else"}\n')
    answered_now.clear()
    regenerate_answers.main(cmd)
    assert len(answered_now) == len(dialogs)


def test_recipe_rerun_after_a_kill_resumes_stage_9_by_dialog(tiny_llm_dir, tmp_path):
    """The driver's stage 9 killed during answer regeneration, then simply run again."""
    (tmp_path / "egs2").mkdir()
    (tmp_path / "egs2" / "TEMPLATE").symlink_to(REPO / "egs2" / "TEMPLATE")
    (tmp_path / "conf").symlink_to(REPO / "conf")
    recipe = tmp_path / "egs2" / "synthetic_dialog" / "freeze_omni1"
    shutil.copytree(REPO / "egs2" / "synthetic_dialog" / "freeze_omni1", recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "dump", "exp", "RESULTS.md"))
    world = recipe / "data" / "local" / "world"
    world.mkdir(parents=True)
    # few and short: the driver lets the tiny LLM say up to 128 tokens an answer
    questions = ["what color is the sky", "where does anna live", "how old is tom"]
    dialogs = [{"id": f"qa{k}", "turns": [{"role": "user", "content": q}]}
               for k, q in enumerate(questions)]
    (world / "qa_train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in dialogs))
    # the questions are already spoken (as stages 1-4 leave them): stage 9 does not speak
    spoken = recipe / "dump" / "raw16k" / "qa_train"
    spoken.mkdir(parents=True)
    utts = [f"qa{k}-t1" for k in range(len(questions))]
    (spoken / "wav.scp").write_text("".join(f"{u} /nonexistent/{u}.wav\n" for u in utts))
    (spoken / "utt2spk").write_text("".join(f"{u} spk0\n" for u in utts))
    (spoken / "text").write_text("".join(f"{u} {q}\n" for u, q in zip(utts, questions)))
    (recipe / "exp").mkdir()
    (recipe / "exp" / "llm").symlink_to(tiny_llm_dir)
    out = recipe / "exp" / "qa_data" / "qa_train.regenerated.jsonl"
    partial = out.with_name(out.name + regenerate_answers.PARTIAL_SUFFIX)

    def stage9(**env):
        return subprocess.run(["bash", "-c", "./run.sh --stage 9 --stop_stage 9"], cwd=recipe,
                              capture_output=True, text=True, env={**os.environ, **env})

    killed = stage9(**{regenerate_answers.KILL_SWITCH_ENV: "1"})
    assert killed.returncode != 0, killed.stdout + killed.stderr
    assert not out.exists() and partial.exists()

    again = stage9()
    assert again.returncode == 0, again.stdout + again.stderr
    log = (recipe / "exp" / "log" / "stage9_regenerate_answers.log").read_text()
    assert "1 of 3 dialogs already answered by an interrupted run" in log
    assert "(1 kept from an interrupted run)" in log
    assert not partial.exists()
    answered = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["id"] for d in answered] == [d["id"] for d in dialogs]
    assert all(d["turns"][1]["role"] == "assistant" for d in answered)
    assert (spoken.parent / "qa_train_train" / "answer").exists()  # the rest of stage 9 ran
