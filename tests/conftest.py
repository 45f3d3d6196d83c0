"""Session-wide fixtures: a tiny spoken corpus (espeak-ng) and a tiny frozen LLM.

Everything is made on the spot; nothing is downloaded. Session scope keeps the suite to one
synthesis pass and one LLM build.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import soundfile

from espnet_freeze_omni.data.espeak import SpokenUtterance, pick_voice, synthesize_datadir

QUESTIONS = [
    ("what color is the sky", "the sky is blue"),
    ("where does anna live", "anna lives in paris"),
    ("how old is tom", "tom is ten years old"),
    ("what is the capital of zorvia", "the capital of zorvia is quell"),
    ("who owns the red car", "ben owns the red car"),
    ("what does maria do", "maria is a doctor"),
    ("what pet does leo have", "leo has a small dog"),
    ("when does the shop open", "the shop opens at nine"),
    ("what is the name of the river", "the river is called lima"),
    ("which fruit does sam like", "sam likes green apples"),
]
SIDE_TALK = ["hey sam pass me the salt", "no i said the blue one"]
TRAILING_SILENCE = 0.8


def _utterances(prefix: str, items, offset: int):
    utts = []
    for i, (question, _answer) in enumerate(items):
        utts.append(SpokenUtterance(
            utt_id=f"{prefix}{i:03d}", text=question, speaker=f"spk{(i + offset) % 3}",
            trailing_silence=TRAILING_SILENCE, **pick_voice(i + offset)))
    return utts


def _write_dialog_files(data_dir: Path, items, side_talk_ids):
    """answer / history / turn_info files for the stage-3 model, in Kaldi text style."""
    wav = dict(line.split(maxsplit=1) for line in (data_dir / "wav.scp").read_text().splitlines())
    with open(data_dir / "answer", "w") as fa, open(data_dir / "history", "w") as fh, \
            open(data_dir / "turn_info", "w") as ft:
        for utt_id in sorted(wav):
            idx = int(utt_id[-3:])
            duration = soundfile.info(wav[utt_id].strip()).duration
            speech_end = duration - TRAILING_SILENCE
            if utt_id in side_talk_ids:
                fa.write(f"{utt_id} <none>\n")
                ft.write(f"{utt_id} 2 {speech_end:.3f}\n")
            else:
                fa.write(f"{utt_id} {items[idx][1]}\n")
                ft.write(f"{utt_id} 1 {speech_end:.3f}\n")
            prev = items[idx - 1]
            history = [] if idx % 2 == 0 else [
                {"role": "user", "content": prev[0]}, {"role": "assistant", "content": prev[1]}]
            fh.write(f"{utt_id} {json.dumps(history)}\n")


@pytest.fixture(scope="session")
def spoken_corpus(tmp_path_factory):
    """Kaldi-style train (10 questions + 2 side-talk) and valid (4) dirs at 16 kHz."""
    root = tmp_path_factory.mktemp("spoken_corpus")
    train_items = QUESTIONS + [(s, "") for s in SIDE_TALK]
    valid_items = QUESTIONS[:4]
    synthesize_datadir(_utterances("tr", train_items, 0), root / "train", root / "wav")
    synthesize_datadir(_utterances("cv", valid_items, 5), root / "valid", root / "wav")
    _write_dialog_files(root / "train", train_items, {f"tr{i:03d}" for i in range(10, 12)})
    _write_dialog_files(root / "valid", valid_items, set())

    chars = sorted({c for q, a in train_items for c in q + a if c != " "})
    token_list = ["<blank>", "<unk>", "<space>", *chars, "<sos/eos>"]
    (root / "tokens.txt").write_text("\n".join(token_list) + "\n")
    texts = [t for pair in QUESTIONS for t in pair] + SIDE_TALK
    (root / "lm_text.txt").write_text("\n".join(texts) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory, spoken_corpus):
    """A tiny random Qwen2 LLM + tokenizer saved with save_pretrained."""
    from espnet_freeze_omni.llm.tiny import build_tiny_llm

    texts = (spoken_corpus / "lm_text.txt").read_text().splitlines()
    return build_tiny_llm(tmp_path_factory.mktemp("tiny_llm") / "qwen2", texts, family="qwen2")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures(
    "one_thread")`): tiny models run several times faster on one thread than on two
    contending ones on a busy 2-core machine, and runs compared bit for bit (in-process
    against child processes) add their floats up in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def espnet_data_args(corpus: Path, splits=("train", "valid")) -> list:
    """espnet's data options for a corpus of <split>/{wav.scp,text} dirs: speech and text
    of each split, the wav.scp as its shape file."""
    args = []
    for split in splits:
        d = corpus / split
        args += [f"--{split}_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text",
                 f"--{split}_shape_file", str(d / "wav.scp")]
    return args
