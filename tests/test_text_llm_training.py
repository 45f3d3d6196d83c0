"""Text fine-tuning of a tiny LLM on Q/A dialogs (what the embedded recipe does before freezing)."""
import json

import pytest
import torch

from espnet_freeze_omni.bin import train_text_llm as train_cli
from espnet_freeze_omni.llm.chat_template import ChatTemplate
from espnet_freeze_omni.llm.frozen_llm import FrozenLLM, load_llm_tokenizer
from espnet_freeze_omni.llm.text_training import (
    IGNORE_ID,
    STATE_FILE,
    encode_dialog,
    train_text_llm,
)
from espnet_freeze_omni.llm.tiny import build_tiny_llm

PLACES = ["Zorbia", "Telos", "Quenta", "Marlow", "Ostra", "Pellin", "Vard", "Kessa", "Lumen",
          "Dorai"]
ASPECTS = ["capital", "river", "king"]
VALUES = ["Arlo", "Bree", "Cato", "Dune", "Elm", "Fenn", "Gale", "Hale", "Iris", "Jory", "Kale"]


def qa_dialogs():
    """30 one-turn dialogs: a question about a place and its one-word-fact answer."""
    dialogs = []
    for i, (aspect, place) in enumerate((a, p) for a in ASPECTS for p in PLACES):
        value = VALUES[(7 * i + 3) % len(VALUES)]
        dialogs.append({"turns": [
            {"role": "user", "content": f"What is the {aspect} of {place}?"},
            {"role": "assistant", "content": f"The {aspect} of {place} is {value}."}]})
    return dialogs


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory):
    texts = [t["content"] for d in qa_dialogs() for t in d["turns"]]
    return build_tiny_llm(tmp_path_factory.mktemp("text_llm") / "tiny", texts, family="qwen2",
                          hidden_size=128, num_layers=2, intermediate_size=256)


def test_encode_dialog_labels_answers_only_and_matches_the_prompt(llm_dir):
    template = ChatTemplate(load_llm_tokenizer(llm_dir))
    q1, a1, q2, a2 = "What is the king of Vard?", "Elm.", "And its river?", "Fenn."
    dialog = {"turns": [{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                        {"role": "user", "content": q2}, {"role": "assistant", "content": a2}]}
    ids, labels = encode_dialog(template, dialog)
    history = dialog["turns"][:2]
    # The second question sees the same tokens the text-in baseline would feed.
    prompt = template.text_prompt_ids(q2, history)
    assert ids == prompt + template.answer_ids(a2)
    labelled = [i for i, label in zip(ids, labels) if label != IGNORE_ID]
    assert labelled == template.answer_ids(a1) + template.answer_ids(a2)
    assert all(label in (IGNORE_ID, i) for i, label in zip(ids, labels))
    short, short_labels = encode_dialog(template, dialog, max_len=5)
    assert short == ids[:5] and short_labels == labels[:5]


def test_training_memorizes_the_answers(llm_dir, tmp_path, capsys):
    dialogs = tmp_path / "dialogs.jsonl"
    dialogs.write_text("".join(json.dumps(d) + "\n" for d in qa_dialogs()))
    out_dir = tmp_path / "trained"
    train_cli.main(["--llm_dir", str(llm_dir), "--dialogs", str(dialogs), "--out_dir", str(out_dir),
                    "--steps", "200", "--lr", "5e-3", "--batch_size", "16",
                    "--eval_dialogs", "30", "--num_threads", "1"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 200
    assert summary["last_loss"] < 0.3 * summary["first_loss"]
    assert summary["first_answer_match"] >= 0.8
    # The result is an ordinary LLM folder that loads frozen.
    llm = FrozenLLM(out_dir)
    assert (out_dir / STATE_FILE).is_file()
    assert all(not p.requires_grad for p in llm.parameters())


def test_resume_continues_like_an_uninterrupted_run(llm_dir, tmp_path, monkeypatch):
    from espnet_freeze_omni.llm import text_training

    dialogs = qa_dialogs()[:8]
    kwargs = dict(steps=6, batch_size=3, lr=1e-3, save_every=2, progress=False)
    full = train_text_llm(llm_dir, dialogs, tmp_path / "full", **kwargs)

    # Crash right after the step-4 checkpoint, then resume.
    save = text_training._save

    def save_then_crash(*args):
        save(*args)
        if args[5] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(text_training, "_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train_text_llm(llm_dir, dialogs, tmp_path / "run", **kwargs)
    monkeypatch.setattr(text_training, "_save", save)
    # the step-4 checkpoint is kept beside the output folder, which appears only when finished
    assert torch.load(tmp_path / "run.training" / STATE_FILE, weights_only=False)["step"] == 4
    assert not (tmp_path / "run").exists()
    resumed = train_text_llm(llm_dir, dialogs, tmp_path / "run", resume=True, **kwargs)
    assert resumed["step"] == 6 and len(resumed["losses"]) == 6
    assert resumed["losses"] == pytest.approx(full["losses"], rel=1e-4)


def test_bad_dialog_is_reported(llm_dir, tmp_path):
    with pytest.raises(ValueError, match="dialog 1: turn 1 has role 'user'"):
        train_text_llm(llm_dir, [qa_dialogs()[0], {"turns": [{"role": "user", "content": "a"},
                                                             {"role": "user", "content": "b"}]}],
                       tmp_path / "out", steps=1, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not a JSON line"):
        train_cli.main(["--llm_dir", str(llm_dir), "--dialogs", str(bad), "--out_dir",
                        str(tmp_path / "out"), "--steps", "1"])


def test_length_bucketed_pass_is_a_shuffled_permutation_with_little_padding():
    from espnet_freeze_omni.llm.text_training import length_bucketed_pass

    lengths = [int(x) for x in torch.randint(10, 200, (1000,), generator=torch.Generator().manual_seed(1))]
    order = length_bucketed_pass(lengths, 16, torch.Generator().manual_seed(0), pool_batches=8)
    assert sorted(order) == list(range(1000))
    assert order == length_bucketed_pass(lengths, 16, torch.Generator().manual_seed(0), pool_batches=8)
    assert order != length_bucketed_pass(lengths, 16, torch.Generator().manual_seed(1), pool_batches=8)

    def padded(order):
        return sum(16 * max(lengths[i] for i in order[k:k + 16]) - sum(lengths[i] for i in order[k:k + 16])
                   for k in range(0, 992, 16))

    random_order = torch.randperm(1000, generator=torch.Generator().manual_seed(0)).tolist()
    assert padded(order) < 0.25 * padded(random_order)
    # batches are not simply sorted: long and short batches are interleaved
    firsts = [lengths[order[k]] for k in range(0, 992, 16)]
    assert firsts != sorted(firsts)
