"""Recipe machinery: Kaldi-style helpers, mini AN4 data prep and the stage driver
(stages 1-6 and 16 run for real on a tiny synthetic corpus in a temporary recipe copy)."""
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile
import yaml

from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import validation

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "egs2" / "TEMPLATE" / "freeze_omni1"
UTILS = TEMPLATE / "utils"
TINY_CORPUS = ("--num_train 6 --num_dev 2 --num_test 2 --num_qa_train 10 --num_qa_test 2 "
               "--num_spoken_qa_train 2 --num_side_talk_train 1 --num_side_talk_test 1 "
               "--num_people 6 --num_countries 3 --num_tts_train 4 --num_tts_dev 2 "
               "--num_repeat_train 5 --num_duplex_test 1")


def bash(script, cwd, env=None, check=False):
    proc = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# ----------------------------------------------------------------------- parse_options.sh
@pytest.fixture
def options_script(tmp_path):
    script = tmp_path / "demo.sh"
    script.write_text(f"""#!/usr/bin/env bash
set -euo pipefail
stage=1
nj=4
use_gpu=false
test_sets="a b"
help_message="usage: demo.sh [options] <args>"
. {UTILS}/parse_options.sh
echo "stage=$stage nj=$nj use_gpu=$use_gpu test_sets=$test_sets rest=$*"
""")
    return script


@pytest.mark.parametrize("args, expected", [
    ('--stage 3 --nj=8 --use-gpu true --test_sets "x y" pos1 pos2',
     "stage=3 nj=8 use_gpu=true test_sets=x y rest=pos1 pos2"),
    ("", "stage=1 nj=4 use_gpu=false test_sets=a b rest="),
    ("-- --stage", "stage=1 nj=4 use_gpu=false test_sets=a b rest=--stage"),
    ("--stage=2 --stage 7", "stage=7 nj=4 use_gpu=false test_sets=a b rest="),
])
def test_parse_options(options_script, args, expected):
    out = bash(f"bash {options_script} {args}", options_script.parent, check=True)
    assert out.stdout.strip() == expected


@pytest.mark.parametrize("args, message", [
    ("--bogus 1", "unknown option --bogus"),
    ("--use_gpu yes", "takes true or false"),
    ("--nj", "needs a value"),
    ("--config missing.conf", "no such readable file"),
])
def test_parse_options_errors(options_script, args, message):
    proc = bash(f"bash {options_script} {args}", options_script.parent)
    assert proc.returncode == 1 and message in proc.stderr


def test_parse_options_config_and_help(options_script):
    (options_script.parent / "my.conf").write_text("nj=16\nstage=9\n")
    out = bash(f"bash {options_script} --config my.conf --stage 5", options_script.parent,
               check=True)
    assert out.stdout.startswith("stage=5 nj=16 ")
    out = bash(f"bash {options_script} --help", options_script.parent, check=True)
    assert out.stdout.strip() == "usage: demo.sh [options] <args>"


# ----------------------------------------------------------------------- run.pl / slurm.pl
def test_run_pl_job_range_reports_failures(tmp_path):
    proc = bash(f"{UTILS}/run.pl --gpu 1 --max_jobs_run 2 JOB=1:4 log/x.JOB.log "
                "'echo job JOB says hi; [ JOB -ne 2 ] && [ JOB -ne 4 ]'", tmp_path)
    assert proc.returncode == 1
    assert "job 2 failed with exit code 1, log is in log/x.2.log" in proc.stderr
    assert "job 4 failed" in proc.stderr and "job 1 failed" not in proc.stderr
    assert "2 / 4 failed" in proc.stderr
    log1 = (tmp_path / "log/x.1.log").read_text()
    assert log1.startswith("# echo job 1 says hi;") and "job 1 says hi\n" in log1
    assert "# Ended (code 0)" in log1
    assert "# Ended (code 1)" in (tmp_path / "log/x.4.log").read_text()


def test_run_pl_quotes_arguments_and_runs_single_jobs(tmp_path):
    bash(f"{UTILS}/run.pl JOB=1:2 out/JOB.log printf '%s:' 'a b' \"it's\" JOB", tmp_path,
         check=True)
    assert "a b:it's:2:" in (tmp_path / "out/2.log").read_text()
    bash(f"{UTILS}/run.pl one.log echo JOB stays", tmp_path, check=True)
    assert "JOB stays" in (tmp_path / "one.log").read_text()
    proc = bash(f"{UTILS}/run.pl bad.log false", tmp_path)
    assert proc.returncode == 1 and "job failed with exit code 1, log is in bad.log" in proc.stderr
    proc = bash(f"{UTILS}/run.pl --num_nodes 2 x.log true", tmp_path)
    assert proc.returncode == 1 and "slurm.pl" in proc.stderr


FAKE_SBATCH = """#!/usr/bin/env bash
# Stand-in for Slurm's sbatch (no cluster here): records its arguments and runs the array
# tasks of the batch script one after the other, like `sbatch --wait` would.
echo "$@" > "$(dirname "$0")/sbatch.args"
script="${@: -1}"; range=""
for a in "$@"; do case "$a" in --array=*) range=${a#--array=}; range=${range%%%*} ;; esac; done
[ -z "$range" ] && { bash "$script"; exit $?; }
rc=0
for i in $(seq "${range%-*}" "${range#*-}"); do SLURM_ARRAY_TASK_ID=$i bash "$script" || rc=1; done
exit $rc
"""


def test_slurm_pl_against_a_stand_in_sbatch(tmp_path):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "sbatch").write_text(FAKE_SBATCH)
    (fake / "sbatch").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    proc = bash(f"{UTILS}/slurm.pl --gpu 1 --mem 4G --max_jobs_run 2 JOB=1:3 exp/log/x.JOB.log "
                "'echo task JOB; [ JOB -ne 2 ]'", tmp_path, env)
    assert proc.returncode == 1, proc.stderr
    assert "job 2 failed with exit code 1, log is in exp/log/x.2.log" in proc.stderr
    assert "1 / 3 failed" in proc.stderr
    args = (fake / "sbatch.args").read_text()
    assert "--array=1-3%2" in args and "--gres=gpu:1" in args and "--mem=4G" in args
    assert "task 3" in (tmp_path / "exp/log/x.3.log").read_text()
    assert "# Ended (code 0)" in (tmp_path / "exp/log/x.1.log").read_text()
    proc = bash(f"{UTILS}/slurm.pl x.log true", tmp_path, {"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 1 and "no Slurm client" in proc.stderr


# ----------------------------------------------------------------------- format_wav_scp.sh
def test_format_wav_scp_is_repeatable(tmp_path):
    """Resampling to 24 kHz with a 16-bit output dithers; the dump must still be the same
    bytes on every run (sox -R), or no two runs of a recipe train on the same audio."""
    src = tmp_path / "src.wav"
    subprocess.run(["espeak-ng", "-w", str(src), "The capital of Goulium is Kithos."], check=True)
    (tmp_path / "wav.scp").write_text(f"u1 {src}\nu2 cat {src} |\n")
    script = TEMPLATE / "scripts/audio/format_wav_scp.sh"
    for out in ("a", "b"):
        bash(f"{script} --fs 24000 wav.scp {out}", tmp_path, check=True)
    for utt in ("u1", "u2"):
        assert (tmp_path / "a" / f"{utt}.wav").read_bytes() == \
            (tmp_path / "b" / f"{utt}.wav").read_bytes(), utt
    assert soundfile.info(str(tmp_path / "a/u1.wav")).samplerate == 24000


# ----------------------------------------------------------------------- split_scp.sh
def test_split_scp(tmp_path):
    lines = [f"utt{i:02d} /path/{i}.wav\n" for i in range(10)]
    (tmp_path / "wav.scp").write_text("".join(lines))
    bash(f"{UTILS}/split_scp.sh wav.scp split/1.scp split/2.scp split/3.scp", tmp_path, check=True)
    pieces = [(tmp_path / f"split/{n}.scp").read_text() for n in (1, 2, 3)]
    assert [p.count("\n") for p in pieces] == [3, 3, 4]
    assert "".join(pieces) == "".join(lines)
    (tmp_path / "two.scp").write_text("a x\nb y\n")
    proc = bash(f"{UTILS}/split_scp.sh two.scp 1 2 3", tmp_path)
    assert proc.returncode == 1 and "cannot split it into 3 pieces" in proc.stderr


# ----------------------------------------------------------------------- recipes
def recipe_copy(tmp_path, name):
    """egs2/<name>/freeze_omni1 under tmp_path, its links resolving to this repository."""
    (tmp_path / "egs2").mkdir()
    (tmp_path / "egs2" / "TEMPLATE").symlink_to(REPO / "egs2" / "TEMPLATE")
    (tmp_path / "conf").symlink_to(REPO / "conf")
    shutil.copytree(REPO / "egs2" / name, tmp_path / "egs2" / name, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "dump", "exp", "downloads", "RESULTS.md"))
    return tmp_path / "egs2" / name / "freeze_omni1"


def test_mini_an4_data_prep(tmp_path):
    recipe = recipe_copy(tmp_path, "mini_an4")
    bash("bash local/data.sh", recipe, check=True)
    counts = {s: len(kt.read_kaldi_map(recipe / "data" / s / "text"))
              for s in ("train", "test", "train_dev")}
    assert counts == {"train": 5, "test": 2, "train_dev": 1}
    for s in counts:
        assert validation.validate_data_dir(recipe / "data" / s, check_audio=True, sample_rate=16000) == []
    assert kt.read_kaldi_map(recipe / "data/test/text")["mmxg-cen8-mmxg-b"] == \
        "OCTOBER TWENTY FOUR NINETEEN SEVENTY"


def banner(n):
    """A stage banner line: ISO timestamp, where it was printed, "Stage N: ". Stages run in
    a CPU lane (--cpu_lanes) print it behind "[lane <its stages>] "."""
    return (rf"^(\[lane [\d ]+\] )?"
            rf"\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d \(freeze_omni\.sh:\d+:\w+\) Stage {n}: ")


@pytest.fixture(scope="module")
def synthetic_recipe(tmp_path_factory):
    """The synthetic_dialog recipe after stages 1-4, with one transcript broken on purpose."""
    recipe = recipe_copy(tmp_path_factory.mktemp("recipe"), "synthetic_dialog")
    (recipe / "local/data.sh").rename(recipe / "local/data_real.sh")
    (recipe / "local/data.sh").write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\nlocal/data_real.sh \"$@\"\n"
        "# an empty transcript: stage 1 must report and drop it\n"
        "sed -i 's/^\\(asr_train-00002\\) .*/\\1/' data/train/text\n")
    (recipe / "local/data.sh").chmod(0o755)
    proc = bash(f"./run.sh --stage 1 --stop_stage 4 --local_data_opts '{TINY_CORPUS}'", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return recipe, proc.stdout


def test_driver_stages_1_to_4(synthetic_recipe):
    recipe, out = synthetic_recipe
    for n in (1, 2, 3, 4):
        assert re.search(banner(n), out, re.M), n
    # stage 1: the broken utterance is reported and dropped, with its reason on file
    assert "data/train has 1 problem(s)" in out and "kept 5 of 6 utterances" in out
    assert kt.read_kaldi_map(recipe / "data/train/.backup/dropped.txt") == \
        {"asr_train-00002": "empty transcript in text line 2"}
    assert "Speed perturbation: off" in out
    # stage 3: every speech-input set at 16 kHz; the recipe has TTS sets (--tts_train_set
    # tts_train --tts_valid_set tts_dev), so they alone get 24 kHz; stage 4: filtered sets
    for rate, sets in ((16000, ("train", "dev", "test", "qa_train", "qa_test", "qa_test_unseen")),
                       (24000, ("tts_train", "tts_dev"))):
        for s in sets:
            d = recipe / f"dump/raw{rate // 1000}k" / s
            assert validation.validate_data_dir(d, check_audio=True, sample_rate=rate) == [], d
            assert (d / "turn_info").is_file() and (d / "utt2num_samples").is_file()
            assert (d / "audio_format").is_file() and (d / ".done").is_file()
    assert len(kt.read_kaldi_map(recipe / "dump/raw16k/train/wav.scp")) == 5
    # the duplex test set (local/data.sh, one item per scenario): dumped at 16 kHz with its
    # duplex_info, copied whole like every test set
    d = recipe / "dump/raw16k/duplex_test"
    assert validation.validate_data_dir(d, check_audio=True, sample_rate=16000) == []
    assert (d / "duplex_info").read_text() == (recipe / "data/duplex_test/duplex_info").read_text()
    assert sorted(kt.read_kaldi_map(d / "duplex_info")) == \
        ["interruption-0001", "pause-0001", "side_talk-0001", "side_talk_over_answer-0001",
         "smooth-0001"]
    assert "duplex_test is a test set: copied whole" in out
    assert not (recipe / "dump/raw24k/duplex_test").exists()
    assert not (recipe / "dump/raw24k/train").exists()  # speech output does not train on it
    assert not (recipe / "dump/raw16k/tts_train").exists()  # nor the encoder on TTS speech
    assert len(kt.read_kaldi_map(recipe / "dump/raw24k/tts_train/wav.scp")) == 4
    assert set(kt.read_kaldi_map(recipe / "dump/raw24k/tts_dev/utt2spk").values()) == \
        {"en-us-s160-p50"}  # stage 1 took data/tts_* from local/data.sh: one voice
    assert "kept 5 of 5" in out and "qa_test is a test set: copied whole" in out
    assert "kept 4 of 4" in out and "kept 2 of 2" in out  # the TTS sets, at 24 kHz
    logs = list((recipe / "exp/log/stage3_dump").glob("*/format_wav.*.log"))
    assert logs and all("# Ended (code 0)" in p.read_text() for p in logs)


def test_driver_skips_complete_stages(synthetic_recipe):
    recipe, _ = synthetic_recipe
    proc = bash("./run.sh --stage 1 --stop_stage 4", recipe, check=True)
    assert "Stage 1: data/{train,dev,qa_train,test,qa_test,qa_test_unseen,duplex_test,tts_train," \
        "tts_dev} complete" in proc.stdout
    assert proc.stdout.count("complete; skipping") == 9 + 9  # 7 + 2 dumps, 7 + 2 filtered


def test_driver_speed_perturbation(synthetic_recipe):
    recipe, _ = synthetic_recipe
    proc = bash('./run.sh --stage 2 --stop_stage 4 --speed_perturb_factors "0.9 1.0 1.1"',
                recipe, check=True)
    assert re.search(banner(2) + "Speed perturbation of data/train: factors 0.9 1.0 1.1 "
                     r"\(not of the TTS set tts_train\)", proc.stdout, re.M)
    utts = kt.read_kaldi_map(recipe / "dump/raw16k/train_sp/utt2num_samples")
    assert len(utts) == 15
    assert int(utts["sp0.9-asr_train-00001"]) > int(utts["asr_train-00001"]) > \
        int(utts["sp1.1-asr_train-00001"])
    # the TTS sets are never perturbed, and speech output trains on them, not on train_sp
    assert not list(recipe.glob("data/tts_*_sp")) and not list(recipe.glob("dump/*/tts_*_sp"))
    assert not (recipe / "dump/raw24k/train_sp").exists()


def test_driver_without_tts_sets(synthetic_recipe):
    """No --tts_train_set (mini_an4, librispeech_moss without a TTS corpus): every training
    set, the speed-perturbed one included, also gets 24 kHz for the codec, filtered like its
    16 kHz copy even though that was filtered in an earlier run."""
    recipe, _ = synthetic_recipe
    proc = bash('./run.sh --stage 2 --stop_stage 4 --speed_perturb_factors "0.9 1.0 1.1" '
                '--tts_train_set "" --tts_valid_set ""', recipe, check=True)
    assert "24000 Hz for {train_sp,dev,qa_train}" in proc.stdout
    for s in ("train_sp", "dev", "qa_train"):
        assert kt.read_kaldi_map(recipe / f"dump/raw24k/{s}/utt2spk") == \
            kt.read_kaldi_map(recipe / f"dump/raw16k/{s}/utt2spk"), s
    assert soundfile.info(kt.read_kaldi_map(recipe / "dump/raw24k/train_sp/wav.scp")
                          ["sp1.1-asr_train-00003"]).samplerate == 24000
    proc = bash("./run.sh --stage 13 --stop_stage 13 --tts_train_set ''", recipe)
    assert proc.returncode == 1
    assert "Stage 13 needs exp/codec_tokens/train/codec_tokens, which stage 12 makes" \
        in proc.stdout


def test_driver_speech_output_on_tts_sets(synthetic_recipe):
    """--tts_train_set/--tts_valid_set replace train/dev in stages 11-14."""
    recipe, _ = synthetic_recipe
    proc = bash("./run.sh --stage 13 --stop_stage 13", recipe)
    assert proc.returncode == 1
    assert "Stage 13 needs exp/codec_tokens/tts_train/codec_tokens, which stage 12 makes" \
        in proc.stdout
    proc = bash("./run.sh --stage 11 --stop_stage 12 --codec_args "
                "'--vocab_size 8 --kmeans_iters 2 --gl_iters 1 --num_threads 1 --no_progress'",
                recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(banner(11) + r"Codec training \(embedded\) on tts_train$", proc.stdout,
                     re.M)
    assert re.search(banner(12) + r"Codec tokens of \{tts_train,tts_dev\}$", proc.stdout, re.M)
    for s, n in (("tts_train", 4), ("tts_dev", 2)):
        tokens = kt.read_kaldi_map(recipe / f"exp/codec_tokens/{s}/codec_tokens")
        assert sorted(tokens) == sorted(kt.read_kaldi_map(recipe / f"data/{s}/text")), s
        assert len(tokens) == n and all(t.split() for t in tokens.values())
        # the codec's own vocabulary, which stages 13-14 give the speech decoder
        info = yaml.safe_load((recipe / f"exp/codec_tokens/{s}/codec_info.yaml").read_text())
        assert info["vocab_size"] == 8 and info["num_utterances"] == n, info
    assert not (recipe / "exp/codec_tokens/train").exists()
    assert "codec_conf.yaml written (embedded codec, trained on tts_train)" in proc.stdout
    info_file = recipe / "exp/codec_tokens/tts_train/codec_info.yaml"
    saved = info_file.read_text()
    info_file.unlink()
    proc = bash("./run.sh --stage 13 --stop_stage 13", recipe)
    assert proc.returncode == 1
    assert "Stage 13 needs exp/codec_tokens/tts_train/codec_info.yaml, which stage 12 makes" \
        in proc.stdout
    # ... and stage 12 does make it: a set with tokens but no codec_info.yaml is redone
    proc = bash("./run.sh --stage 12 --stop_stage 12", recipe, check=True)
    assert "Stage 12: exp/codec_tokens/tts_dev is complete (codec_info.yaml written); skipping" \
        in proc.stdout
    assert "tts_train is complete" not in proc.stdout
    assert info_file.read_text() == saved
    # a codec trained on other data is kept, but said so
    proc = bash("./run.sh --stage 11 --stop_stage 11 --tts_train_set tts_dev", recipe,
                check=True)
    assert "that codec was trained on tts_train, not tts_dev" in proc.stdout


def test_driver_runs_stages_1_to_17_like_the_demo(tmp_path):
    """One driver call from data prep to the packed model, as `make demo` makes it, on the
    tiny corpus with one epoch per training stage and a tiny LLM of the recipe's text (the
    recipe's own LLM build takes minutes): QA data, all three training chains, decoding of
    both test sets with every output, the duplex test set item by item through the duplex
    runner, scoring into results.json and RESULTS.md, packing."""
    from espnet_freeze_omni.llm.tiny import build_tiny_llm

    recipe = recipe_copy(tmp_path, "synthetic_dialog")
    bash(f"./run.sh --stage 1 --stop_stage 1 --local_data_opts '{TINY_CORPUS}'", recipe,
         check=True)
    texts = (recipe / "data/local/world/llm_text.txt").read_text().splitlines()
    llm = build_tiny_llm(tmp_path / "llm", texts, family="qwen2", hidden_size=128)
    proc = bash(f"./run.sh --stage 1 --stop_stage 17 --cpu_lanes false --llm_path {llm} "
                f"--local_data_opts '{TINY_CORPUS}' "
                "--speech_input_args '--max_epoch 1' --speech_output_args '--max_epoch 1' "
                "--codec_args '--vocab_size 8 --kmeans_iters 2 --gl_iters 1 --num_threads 1 "
                "--no_progress' --decode_args '--max_codec_tokens 40 --max_new_tokens 16 "
                "--speak_ignored true'",
                recipe, check=True)
    for n in range(1, 18):
        assert re.search(banner(n), proc.stdout, re.M), n
    assert "Successfully finished stages 1-17" in proc.stdout

    # stage 9: every spoken qa_train utterance lands in exactly one of the two splits,
    # with its regenerated answer, its history and its turn_info
    spoken = set(kt.read_kaldi_map(recipe / "dump/raw16k/qa_train/wav.scp"))
    splits = {}
    for split in ("train", "valid"):
        d = recipe / f"dump/raw16k/qa_train_{split}"
        splits[split] = set(kt.read_kaldi_map(d / "wav.scp"))
        for name in ("text", "answer", "history", "turn_info"):
            assert set(kt.read_kaldi_map(d / name)) == splits[split], (split, name)
    assert splits["train"] and splits["valid"] and not splits["train"] & splits["valid"]
    assert splits["train"] | splits["valid"] == spoken
    # stage 10 starts from stage 8 and keeps the encoder frozen
    conf = yaml.safe_load((recipe / "exp/speech_input_stage3/config.yaml").read_text())
    assert conf["init_param"] == ["exp/speech_input_stage2/valid.loss.best.pth"]
    assert "encoder" in conf["freeze_param"]

    # stages 13-14: the speech decoder is sized by the codec's own vocabulary
    # (codec_info.yaml) on top of the config, and stage 14 starts from stage 13
    stage2, stage3 = (yaml.safe_load((recipe / f"exp/speech_output_stage{n}/config.yaml")
                                     .read_text()) for n in (2, 3))
    for conf in (stage2, stage3):
        dec = conf["speech_decoder_conf"]
        assert dec["vocab_size"] == 8 and dec["hidden_size"] == 128, dec
        assert ["exp/codec_tokens/tts_train/codec_tokens", "codec_tokens", "text_int"] in \
            conf["train_data_path_and_name_and_type"]
    assert not stage2["speech_decoder_conf"]["use_prefix"]
    assert stage3["speech_decoder_conf"]["use_prefix"]
    assert stage3["init_param"] == ["exp/speech_output_stage2/valid.loss.best.pth"]

    # stages 15-16: every figure the issue names, from both test sets (--speak_ignored: one
    # epoch leaves a state head that may answer nothing, and speech_out is to be exercised)
    results = json.loads((recipe / "exp/results.json").read_text())
    for key in ("asr_wer_ctc", "asr_wer_llm", "qa_acc_text_in", "qa_acc_speech_in",
                "qa_acc_speech_out", "speech_out_cer", "turn_end_f1"):
        assert isinstance(results[key], (int, float)), (key, results[key])
    assert "modality_gap" in json.dumps(results)
    qa_ids = set(kt.read_kaldi_map(recipe / "data/qa_test/wav.scp"))
    for out in ("text_in", "speech_in", "speech_out"):
        assert set(kt.read_kaldi_map(recipe / f"exp/decode/qa_test/{out}/text")) == qa_ids, out
    assert {p.stem for p in (recipe / "exp/decode/qa_test/speech_out/wav").glob("*.wav")} == qa_ids
    # the speech-out ceiling: every voiced text re-spoken by espeak-ng and heard, and scored
    # (the one-epoch LLM's answers hold NUL bytes and the like: espeak-ng is spared them)
    ceiling = recipe / "exp/decode/qa_test/speech_out_ceiling"
    assert set(kt.read_kaldi_map(ceiling / "asr_text")) == qa_ids
    assert set(kt.read_kaldi_map(ceiling / "wav.scp")) <= qa_ids
    assert isinstance(results["qa_acc_speech_out_ceiling"], float)
    assert "qa_test" in (recipe / "RESULTS.md").read_text()
    # the duplex set (one item per scenario): a time-synchronous track of the input's
    # duration and the session's events per item, scored per scenario
    dx = recipe / "exp/decode/duplex_test"
    items = kt.read_kaldi_map(recipe / "dump/raw16k/duplex_test/wav.scp")
    assert len(items) == 5 and sorted(kt.read_kaldi_map(dx / "summary")) == sorted(items)
    for utt, path in items.items():
        track = soundfile.info(dx / "wav" / f"{utt}.wav")
        assert track.samplerate == 24000
        assert track.frames == round(soundfile.info(path).frames / 16000 * 24000), utt
        events = [json.loads(l) for l in (dx / "events" / f"{utt}.jsonl").open()]
        assert any(e["type"] == "state" for e in events), utt
    for key in ("duplex_pause_tor", "duplex_smooth_tor", "duplex_interrupt_tor",
                "duplex_side_talk_ignored"):
        assert 0.0 <= results[key] <= 1.0, (key, results[key])
        assert results[f"{key}_test_set"] == "duplex_test"
    for key in ("duplex_smooth_latency", "duplex_interrupt_latency",
                "duplex_interrupt_stop_latency"):  # none when nothing was answered
        assert results[key] is None or results[key] >= 0.0, (key, results[key])
    md = (recipe / "RESULTS.md").read_text()
    assert "### duplex_test" in md and "|duplex_pause_tor|" in md
    # a state head that answers no turn leaves speech_out empty: stage 16 says so and goes
    # on, the CER is n/a and the unanswered turns count against qa_acc_speech_out
    # (every QA test set: the headline figure is the first set's that has one)
    qa_sets = ("qa_test", "qa_test_unseen")
    for qa_set in qa_sets:
        for name in ("text", "asr_text"):
            (recipe / f"exp/decode/{qa_set}/speech_out/{name}").write_text("")
    proc = bash("./run.sh --stage 16 --stop_stage 16", recipe, check=True)
    for qa_set in qa_sets:
        assert f"{qa_set}: no spoken answers (the state head answered no turn)" in proc.stdout
    results = json.loads((recipe / "exp/results.json").read_text())
    assert results["speech_out_cer"] is None and results["qa_acc_speech_out"] == 0.0
    # stage 17: the packed zip decodes a first turn as stage 15 did from the model files:
    # through a fresh session (history_mode session, the decode config's session defaults),
    # the turn followed by a second of silence and committed if the head left it undecided
    from espnet_freeze_omni.inference.duplex_runner import run_turn
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    s2s = Speech2Speech.from_pretrained(recipe / "exp/packed/freeze_omni_model.zip",
                                        llm_path=recipe / "exp/llm", cachedir=tmp_path / "cache",
                                        max_new_tokens=16)
    wavs = kt.read_kaldi_map(recipe / "dump/raw16k/qa_test/wav.scp")
    utt = sorted(u for u in wavs if u.endswith("-t1"))[0]
    wav, _ = soundfile.read(recipe / wavs[utt], dtype="float32")
    decoded = {out: kt.read_kaldi_map(recipe / f"exp/decode/qa_test/{out}/text")[utt]
               for out in ("speech_in", "asr_ctc")}
    session = s2s.session()
    session.reseed(utt)
    spoken = run_turn(session, wav, silence_seconds=1.0).answer_text
    assert " ".join(spoken.split()) == " ".join(decoded["speech_in"].split())
    assert s2s.ctc_transcribe(wav) == decoded["asr_ctc"]

    # a second run finds every training stage done and leaves the models alone
    models = sorted(recipe.glob("exp/*/valid.loss.best.pth"))
    assert len(models) == 5
    before = {p: p.resolve().stat().st_mtime_ns for p in models}
    bash("./run.sh --stage 7 --stop_stage 14 --cpu_lanes false --speech_input_args "
         "'--max_epoch 1' --speech_output_args '--max_epoch 1'", recipe, check=True)
    assert {p: p.resolve().stat().st_mtime_ns for p in models} == before


def test_driver_llm_link_and_upload_refusal(synthetic_recipe, tmp_path):
    recipe, _ = synthetic_recipe
    (tmp_path / "my_llm").mkdir()
    (tmp_path / "my_llm" / "config.json").write_text("{}")
    proc = bash(f"./run.sh --stage 5 --stop_stage 5 --llm_path {tmp_path / 'my_llm'}", recipe,
                check=True)
    assert (recipe / "exp/llm").resolve() == (tmp_path / "my_llm").resolve()
    proc = bash(f"./run.sh --stage 5 --stop_stage 5 --llm_path {tmp_path}", recipe)
    assert proc.returncode == 1 and "no config.json" in proc.stdout
    proc = bash("./run.sh --stage 18 --stop_stage 18", recipe, check=True)
    assert "upload skipped" in proc.stdout  # off by default, so `make demo` ends cleanly
    proc = bash("./run.sh --stage 18 --stop_stage 18 --skip_upload false", recipe)
    assert proc.returncode == 1 and "needs --hf_repo" in proc.stdout


def test_driver_says_which_stage_to_run_first(tmp_path):
    recipe = recipe_copy(tmp_path, "synthetic_dialog")
    proc = bash("./run.sh --stage 3 --stop_stage 3", recipe)
    assert proc.returncode == 1
    assert "Stage 3 needs data/train/wav.scp, which stage 1 makes: run it first " \
           "(./run.sh --stage 1 --stop_stage 1)" in proc.stdout
    proc = bash("./run.sh --stage 6 --stop_stage 6", recipe)
    assert proc.returncode == 1 and "which stage 4 makes" in proc.stdout
    proc = bash("./run.sh --stage 16 --stop_stage 16", recipe)
    assert proc.returncode == 1 and "run stage 15 first" in proc.stdout
    proc = bash("./run.sh --stgae 1", recipe)
    assert proc.returncode == 1 and "unknown option --stgae" in proc.stderr


@pytest.mark.skipif(importlib.util.find_spec("espnet_freeze_omni.bin.speech_input_train") is None,
                    reason="speech_input_train is not in this checkout yet")
def test_driver_stage_6_token_list_and_stats(synthetic_recipe):
    recipe, _ = synthetic_recipe
    proc = bash("./run.sh --stage 6 --stop_stage 6 --nj 1", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "".join(
        p.read_text()[-3000:] for p in (recipe / "exp/log/stage6").glob("*.log"))
    tokens = (recipe / "exp/token_list/char/tokens.txt").read_text().split("\n")
    assert tokens[:3] == ["<blank>", "<unk>", "<space>"] and "<sos/eos>" in tokens
    for split in ("train", "valid"):
        assert (recipe / f"exp/stats_fbank/{split}/feats_stats.npz").is_file()
        assert (recipe / f"exp/stats_fbank/{split}/speech_shape").is_file()


def test_driver_stage_16_scoring(synthetic_recipe):
    recipe, _ = synthetic_recipe
    dec = recipe / "exp/decode"
    # stand-in decoding outputs (stage 15 is pending integration)
    ref = kt.read_kaldi_map(recipe / "data/test/text")
    first = sorted(ref)[0]
    hyp = {**ref, first: " ".join(ref[first].split()[1:])}  # one deleted word
    (dec / "test/asr_ctc").mkdir(parents=True)
    kt.write_kaldi_map(dec / "test/asr_ctc/text", hyp)
    refs = [json.loads(l) for l in (recipe / "data/local/world/qa_test_refs.jsonl").open()]
    assert len(refs) == 2
    for sub, answers in (("text_in", [r["answers"][0] for r in refs]),
                         ("speech_in", [refs[0]["answers"][0], "I do not know."])):
        (dec / "qa_test" / sub).mkdir(parents=True)
        kt.write_kaldi_map(dec / "qa_test" / sub / "text",
                           {r["id"]: f"It is {a}." for r, a in zip(refs, answers)})
    turns = kt.read_turn_info(recipe / "data/qa_test/turn_info")
    (dec / "qa_test/turn").mkdir(parents=True)
    kt.write_turn_info(dec / "qa_test/turn/turn_info",
                       {u: (lab, end + 0.3 if lab == 1 else -1) for u, (lab, end) in turns.items()})
    proc = bash("./run.sh --stage 16 --stop_stage 16", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(banner(16), proc.stdout, re.M)
    results = json.loads((recipe / "exp/results.json").read_text())
    n_words = sum(len(t.split()) for t in ref.values())
    assert results["asr_wer_ctc"] == pytest.approx(100 / n_words, abs=0.05)  # sclite rounds
    assert results["qa_acc_text_in"] == 100.0 and results["qa_acc_speech_in"] == 50.0
    assert results["turn_end_f1"] == 100.0 and results["asr_wer_llm"] is None
    assert results["modality_gap"][0]["gap_speech_in"] == 50.0
    assert "answer_containment" in results["scorers"]
    md = (recipe / "RESULTS.md").read_text()
    assert "## Environments" in md and "### test" in md and "### qa_test" in md
    assert (recipe / "exp/scores/test/asr_wer_ctc/result.txt").is_file()  # sclite's report
