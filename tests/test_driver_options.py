"""The driver's options do what they say: --token_type bpe/word through the stages that use
the token list, --force on a training stage (a fresh dir, the old one moved aside, a symlink
moved as a link), --skip_{data_prep,train,eval,packing}, and entry points instead of inline
Python. Runs the synthetic recipe's stages 1-4, 6 and 7 (one epoch) on the tiny corpus."""
import argparse
import re
import socket
from pathlib import Path

import pytest
import torch
import yaml

from espnet_freeze_omni.data import kaldi_table as kt
from test_recipe_helpers import REPO, TEMPLATE, TINY_CORPUS, banner, bash, recipe_copy

DRIVER = TEMPLATE / "freeze_omni.sh"
BPE = "--token_type bpe --nbpe 80"  # the tiny corpus spells ~40 characters: 43 pieces at least
ONE_EPOCH = "--cpu_lanes false --speech_input_args '--max_epoch 1'"


def run(recipe, args, check=True):
    proc = bash(f"./run.sh {args}", recipe)
    if check:
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:] + "".join(
            p.read_text()[-2000:] for p in (recipe / "exp/log/stage6").glob("*.log"))
    return proc


def banners(out):
    return [n for n in range(1, 19) if re.search(banner(n), out, re.M)]


@pytest.fixture(scope="module")
def bpe_recipe(tmp_path_factory):
    """The synthetic recipe through stages 1-7 with a bpe vocabulary (5, the LLM, is not
    needed by 6-7), one epoch of speech input stage 1."""
    recipe = recipe_copy(tmp_path_factory.mktemp("options"), "synthetic_dialog")
    run(recipe, f"--stage 1 --stop_stage 4 --cpu_lanes false --local_data_opts '{TINY_CORPUS}'")
    proc = run(recipe, f"--stage 1 --stop_stage 7 --only_stages '1 2 3 4 6 7' --nj 1 {BPE} "
                       f"{ONE_EPOCH}")
    return recipe, proc.stdout


def test_bpe_token_list_model_and_stage_7(bpe_recipe, monkeypatch):
    recipe, out = bpe_recipe
    assert banners(out) == [1, 2, 3, 4, 6, 7]
    tdir = recipe / "exp/token_list/bpe_unigram80"
    tokens = (tdir / "tokens.txt").read_text().splitlines()
    assert (tdir / "bpe.model").is_file() and not (recipe / "exp/token_list/char").exists()
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert len(tokens) == len(set(tokens)) and any(t.startswith("\u2581") for t in tokens)
    assert f"Stage 6: exp/token_list/bpe_unigram80/tokens.txt: {len(tokens)} tokens (the pieces " \
        "of exp/token_list/bpe_unigram80/bpe.model: unigram, --nbpe 80)" in out
    # stage 7 trained on that list through the bpe model: its CTC has one output per token
    conf = yaml.safe_load((recipe / "exp/speech_input_stage1/config.yaml").read_text())
    assert conf["token_type"] == "bpe"
    assert conf["bpemodel"] == "exp/token_list/bpe_unigram80/bpe.model"
    assert conf["token_list"] == tokens
    state = torch.load(recipe / "exp/speech_input_stage1/valid.loss.best.pth", map_location="cpu")
    assert state["ctc.ctc_lo.weight"].shape[0] == len(tokens)
    # the training preprocessor spells every training transcript without <unk>
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

    monkeypatch.chdir(recipe)  # the config's paths are the recipe's
    prep = SpeechInputTask.build_preprocess_fn(argparse.Namespace(**conf), train=False)
    for utt, text in kt.read_kaldi_map("dump/raw16k/train/text").items():
        ids = prep(utt, {"text": text})["text"]
        assert len(ids) and 1 not in ids.tolist(), (utt, text)
    # decoding reads the pieces back as words (no sentencepiece marks, no glued pieces)
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    listener = SpeechInputInference.from_files("exp/speech_input_stage1/config.yaml",
                                               "exp/speech_input_stage1/valid.loss.best.pth")
    utt, text = next(iter(kt.read_kaldi_map("dump/raw16k/train/text").items()))
    assert listener.tokens_to_text(prep(utt, {"text": text})["text"].tolist()) == text
    wav = listener.load(kt.read_kaldi_map("dump/raw16k/train/wav.scp")[utt])
    assert "\u2581" not in listener.ctc_transcribe(wav)


def test_word_token_list_keeps_the_training_words(bpe_recipe):
    recipe, _ = bpe_recipe  # feature statistics done: stage 6 makes only the list
    proc = run(recipe, "--stage 6 --stop_stage 6 --token_type word")
    tokens = (recipe / "exp/token_list/word/tokens.txt").read_text().splitlines()
    words = {w for t in kt.read_kaldi_map(recipe / "dump/raw16k/train/text").values()
             for w in t.split()}
    assert tokens[:2] == ["<blank>", "<unk>"] and tokens[-1] == "<sos/eos>"
    assert set(tokens[2:-1]) == words
    assert re.search(r"Stage 6: [\d.]+ % of the words of dev are not in the list \(<unk>; "
                     r"--word_vocab_size 10000\)", proc.stdout)
    assert "feats_stats.npz exists; skipping the statistics" in proc.stdout
    proc = run(recipe, "--stage 6 --stop_stage 6 --token_type phn", check=False)
    assert proc.returncode == 1 and "--token_type must be char, word or bpe" in proc.stdout


def test_force_trains_stage_7_from_scratch_and_moves_a_link(bpe_recipe, tmp_path):
    recipe, _ = bpe_recipe
    exp = recipe / "exp/speech_input_stage1"
    # without --force a finished stage resumes and ends: nothing trained again
    best = exp / "valid.loss.best.pth"
    before = best.resolve().stat().st_mtime_ns
    proc = run(recipe, f"--stage 7 --stop_stage 7 {BPE} {ONE_EPOCH}")
    assert "moved" not in proc.stdout and best.resolve().stat().st_mtime_ns == before
    # the stage dir is a link to other storage (as with --expdir set-ups): --force renames
    # the link, leaves its target whole, and trains in a new real dir
    target = tmp_path / "elsewhere" / "speech_input_stage1"
    target.parent.mkdir()
    exp.rename(target)
    exp.symlink_to(target)
    old_files = sorted(p.name for p in target.iterdir())
    proc = run(recipe, f"--stage 7 --stop_stage 7 --force true {BPE} {ONE_EPOCH}")
    m = re.search(r"Stage 7: --force true: moved the link exp/speech_input_stage1 aside to "
                  r"(exp/speech_input_stage1\.old\.\d{8}T\d{6}) \(still -> (\S+)\); training "
                  r"from scratch in a new exp/speech_input_stage1", proc.stdout)
    assert m, proc.stdout
    aside = recipe / m.group(1)
    assert aside.is_symlink() and aside.resolve() == target.resolve() == Path(m.group(2))
    assert sorted(p.name for p in target.iterdir()) == old_files
    assert exp.is_dir() and not exp.is_symlink()
    assert "1/1epoch started" in (exp / "train.log").read_text()  # not a resumed run
    assert (exp / "valid.loss.best.pth").is_file()
    # a plain dir is moved aside too (a second --force within the same second gets a suffix)
    proc = run(recipe, f"--stage 7 --stop_stage 7 --force true {BPE} {ONE_EPOCH}")
    m = re.search(r"Stage 7: --force true: moved exp/speech_input_stage1 aside to "
                  r"(exp/speech_input_stage1\.old\.\d{8}T\d{6}(\.\d+)?); training from scratch",
                  proc.stdout)
    assert m, proc.stdout
    assert (recipe / m.group(1) / "valid.loss.best.pth").is_file()
    assert not (recipe / m.group(1)).is_symlink()
    assert "1/1epoch started" in (exp / "train.log").read_text()


def test_skip_options_leave_out_their_stages(bpe_recipe, tmp_path):
    recipe, _ = bpe_recipe
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text("{}")  # stage 5 only links it
    # --skip_train: 1-6 (all complete), then straight to decoding, which needs stage 10's model
    proc = run(recipe, f"--stage 1 --stop_stage 17 --skip_train true --cpu_lanes false "
                       f"--llm_path {llm} {BPE}", check=False)
    assert "Leaving out stage(s) 7 8 9 10 11 12 13 14: --skip_train true" in proc.stdout
    assert banners(proc.stdout) == [1, 2, 3, 4, 5, 6, 15], proc.stdout[-3000:]
    assert proc.returncode == 1
    assert "Stage 15 needs exp/speech_input_stage3/valid.loss.best.pth, which stage 10 makes" \
        in proc.stdout
    # every group left out but packing: only stage 17 runs
    proc = run(recipe, "--skip_data_prep true --skip_train true --skip_eval true "
                       "--cpu_lanes false", check=False)
    assert banners(proc.stdout) == [17] and proc.returncode == 1
    assert "Leaving out stage(s) 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16: --skip_data_prep true " \
        "--skip_train true --skip_eval true" in proc.stdout
    proc = run(recipe, "--skip_data_prep true --skip_train true --skip_eval true "
                       "--skip_packing true --cpu_lanes false")
    assert banners(proc.stdout) == [] and "Successfully finished stages 1-18" in proc.stdout
    proc = run(recipe, "--stage 1 --stop_stage 1 --skip_eval yes", check=False)
    assert proc.returncode == 1 and "takes true or false" in proc.stderr


# ----------------------------------------------------------------------- no inline Python
def test_driver_and_recipes_call_entry_points_only():
    scripts = [DRIVER, *REPO.glob("egs2/*/freeze_omni1/local/*.sh"),
               *REPO.glob("egs2/*/freeze_omni1/run.sh")]
    for script in scripts:
        text = script.read_text()
        assert not re.search(r"python\S*\}?\s+-c\b", text), script
        assert "<<" not in text, script
        assert "MAIN_ROOT}/local" not in text, script
    text = DRIVER.read_text()
    for module in ("subset_data_dir", "dialog_turns", "check_reachable", "spm_train"):
        assert f"-m espnet_freeze_omni.bin.{module}" in text, module


def test_subset_data_dir_bin(tmp_path):
    from espnet_freeze_omni.bin import subset_data_dir

    src = tmp_path / "src"
    src.mkdir()
    kt.write_kaldi_map(src / "wav.scp", {"a": "a.wav", "b": "b.wav", "c": "c.wav"})
    kt.write_kaldi_map(src / "text", {"a": "x", "b": "y", "c": "z"})
    kt.write_kaldi_map(src / "utt2spk", {"a": "s1", "b": "s1", "c": "s2"})
    kt.write_kaldi_map(tmp_path / "keep", {"a": "s1", "c": "s2"})
    assert subset_data_dir.main([str(src), str(tmp_path / "dst"), "--utt_list",
                                 str(tmp_path / "keep")]) == 0
    assert kt.read_kaldi_map(tmp_path / "dst/wav.scp") == {"a": "a.wav", "c": "c.wav"}
    assert kt.read_kaldi_map(tmp_path / "dst/spk2utt") == {"s1": "a", "s2": "c"}


def test_check_reachable_bin():
    from espnet_freeze_omni.bin import check_reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert check_reachable.main(["--host", "127.0.0.1", "--port", str(port)]) == 0
    assert check_reachable.main(["--host", "127.0.0.1", "--port", str(port),
                                 "--timeout", "1"]) == 1


def test_dialog_turns_bin_targets(tmp_path):
    from espnet_freeze_omni.bin import dialog_turns

    dialogs = tmp_path / "d.jsonl"
    dialogs.write_text('{"id": "d1", "turns": [{"role": "user", "content": "hi"}, '
                       '{"role": "assistant", "content": "hello  there"}]}\n')
    data = tmp_path / "qa"
    data.mkdir()
    kt.write_kaldi_map(data / "wav.scp", {"d1-t1": "a.wav", "side-1": "b.wav"})
    kt.write_kaldi_map(data / "utt2spk", {"d1-t1": "u", "side-1": "u"})
    kt.write_kaldi_map(data / "text", {"d1-t1": "hi", "side-1": "pass the salt"})
    assert dialog_turns.main(["targets", "--dialogs", str(dialogs), "--data_dir", str(data),
                              "--valid_every", "0"]) == 0
    assert kt.read_kaldi_map(data / "answer") == {"d1-t1": "hello there",
                                                  "side-1": kt.NO_ANSWER}
    assert set(kt.read_kaldi_map(tmp_path / "qa_train/wav.scp")) == {"d1-t1", "side-1"}
    assert kt.read_kaldi_map(data / "history")["side-1"] == "[]"  # d1 has no turn after t1


def test_side_talk_gets_the_history_of_a_dialog_at_a_random_point(tmp_path):
    """Side talk happens anywhere in a conversation: with probability p its history is a
    training dialog's after >= 1 exchange (one of the histories the dialog's turns have)."""
    import json

    from espnet_freeze_omni.bin import dialog_turns

    dialogs = tmp_path / "d.jsonl"
    turns = [{"role": r, "content": f"{r} {i}"} for i in range(3) for r in ("user", "assistant")]
    dialogs.write_text(json.dumps({"id": "d1", "turns": turns}) + "\n")
    data = tmp_path / "qa"
    data.mkdir()
    utts = ["d1-t1", "d1-t2", "d1-t3"] + [f"side-{i:02d}" for i in range(40)]
    for name in ("wav.scp", "utt2spk", "text"):
        kt.write_kaldi_map(data / name, {u: "x" for u in utts})

    def histories(prob, seed=0):
        assert dialog_turns.main(["targets", "--dialogs", str(dialogs), "--data_dir", str(data),
                                  "--valid_every", "0", "--side_talk_history_prob", str(prob),
                                  "--seed", str(seed)]) == 0
        return kt.read_kaldi_map(data / "history")

    never, always, some = histories(0.0), histories(1.0), histories(0.5)
    dialog_points = {always["d1-t2"], always["d1-t3"]}  # after 1 and after 2 exchanges
    assert always["d1-t1"] == "[]" and len(dialog_points) == 2
    side = [u for u in utts if u.startswith("side")]
    assert all(never[u] == "[]" for u in side)
    assert all(always[u] in dialog_points for u in side)
    assert {always[u] for u in side} == dialog_points  # both points drawn among 40
    assert 8 <= sum(some[u] != "[]" for u in side) <= 32
    assert histories(0.5) == some and histories(0.5, seed=1) != some  # seeded
    assert kt.read_kaldi_map(data / "answer")["side-00"] == kt.NO_ANSWER
