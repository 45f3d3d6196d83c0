"""mini AN4 end to end, the way espnet's CI runs its mini_an4 recipes: debug-size configs
(egs2/mini_an4/freeze_omni1/conf/), a tiny random LLM from stage 5, one or two epochs of a
few steps on the CPU, then decoding and scoring. It proves the stages chain (every output is
where the next stage looks for it), not that anything is learned: the scores are whatever
they are, only their presence is checked.

About 2.5 minutes on 2 free cores, most of it espnet's import time in the 5 processes.
"""
import json
import re

import pytest

from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import validation
from test_recipe_helpers import banner, bash, recipe_copy


def _logs(recipe, pattern):
    """The tails of the job logs matching `pattern`, for failure messages."""
    return "".join(f"\n==> {p} <==\n{p.read_text()[-3000:]}"
                   for p in sorted(recipe.glob(pattern)))


@pytest.fixture(scope="module")
def mini_an4(tmp_path_factory):
    recipe = recipe_copy(tmp_path_factory.mktemp("mini_an4"), "mini_an4")
    proc = bash("./run.sh --stage 1 --stop_stage 8", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr + _logs(
        recipe, "exp/**/*.log")
    return recipe, proc.stdout


def test_stages_1_to_8(mini_an4):
    recipe, out = mini_an4
    for n in range(1, 9):
        assert re.search(banner(n), out, re.M), f"no banner of stage {n}"
    assert "Stage 1: data/test is sound (2 utterances)" in out
    # --cpu_lanes (on by default for --ngpu 0 on 2+ cores): the LLM beside stages 6-7,
    # each a copy of the driver with one thread; stage 8 needs both, so it runs alone
    assert "Stages {5} and {6 7} run side by side" in out
    assert re.search(r"^\[lane 5\] .* Stage 5: ", out, re.M)
    assert re.search(r"^\[lane 6 7\] .* Stage 7: ", out, re.M)
    assert re.search(r"^\d{4}-.* Stage 8: ", out, re.M)
    lanes = recipe / "exp/log/lanes"
    assert (lanes / "stages_5.rc").read_text().strip() == "0"
    assert "--train_threads 1" in (lanes / "stages_6_7.log").read_text()
    assert validation.validate_data_dir(recipe / "dump/raw16k/train", check_audio=True,
                                sample_rate=16000) == []
    assert (recipe / "exp/llm/config.json").is_file()  # stage 5: local/build_llm.sh
    assert (recipe / "exp/token_list/char/tokens.txt").is_file()
    assert (recipe / "exp/stats_fbank/train/feats_stats.npz").is_file()
    for stage in (1, 2):
        exp = recipe / f"exp/speech_input_stage{stage}"
        assert (exp / "valid.loss.best.pth").is_file(), _logs(exp, "train.log")
        assert "# Ended (code 0)" in (exp / "train.log").read_text()
    # the debug configs really are the debug ones: 2 epochs, then 1
    assert (recipe / "exp/speech_input_stage1/2epoch.pth").is_file()
    assert not (recipe / "exp/speech_input_stage1/3epoch.pth").exists()
    assert (recipe / "exp/speech_input_stage2/1epoch.pth").is_file()


def test_failed_lane_fails_the_run(mini_an4):
    """A lane that fails ends the run with an error naming it and its log; the other lane
    still finishes."""
    recipe, _ = mini_an4
    proc = bash("./run.sh --stage 5 --stop_stage 7 "
                "--speech_input_stage1_config conf/missing.yaml", recipe)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert re.search(r"Stage\(s\) \{6 7\} \(exit \d+, exp/log/lanes/stages_6_7\.log\) failed",
                     out), out[-3000:]
    assert "Successfully finished stage(s) 5 of 5-7" in out  # the LLM lane ended well
    assert "conf/missing.yaml" in (recipe / "exp/log/lanes/stages_6_7.log").read_text()


def test_decoding_and_scoring(mini_an4):
    recipe, _ = mini_an4
    proc = bash("./run.sh --stage 15 --stop_stage 15", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr + _logs(
        recipe, "exp/log/stage15_decode/*.log")
    assert re.search(banner(15), proc.stdout, re.M)
    test_utts = set(kt.read_kaldi_map(recipe / "data/test/text"))
    for sub in ("asr_ctc", "asr_llm"):
        hyp = recipe / "exp/decode/test" / sub / "text"
        keys = {line.split(maxsplit=1)[0] for line in hyp.read_bytes().decode(
            "utf-8", "replace").splitlines() if line.strip()}
        assert keys == test_utts, sub

    proc = bash("./run.sh --stage 16 --stop_stage 16", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(banner(16), proc.stdout, re.M)
    results = json.loads((recipe / "exp/results.json").read_text())
    for metric in ("asr_wer_ctc", "asr_wer_llm"):
        assert isinstance(results[metric], float) and results[metric] >= 0, metric
        assert results[f"{metric}_test_set"] == "test"
    assert results["qa_acc_speech_in"] is None  # no QA sets in this recipe
    md = (recipe / "RESULTS.md").read_text()
    assert "## Environments" in md and "### test" in md and "asr_wer_ctc" in md
