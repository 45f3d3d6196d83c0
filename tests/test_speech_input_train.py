"""The three speech-input stages through the real entry point, on espeak-ng speech.

One chain runs once per session: collect-stats -> stage 1 (CTC) -> stage 2 (ASR through the
frozen LLM, initialized from stage 1) -> stage 3 (spoken dialog + state head, from stage 2).
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from espnet_freeze_omni.bin import speech_input_train
from espnet_freeze_omni.tasks.resumable_trainer import CHECKPOINT, PREVIOUS, is_complete_torch_file

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def data_args(corpus: Path, stage: int, train_dir: Path | None = None):
    train_dir = train_dir or corpus / "train"
    names = [("wav.scp", "speech", "sound"), ("text", "text", "text")]
    if stage == 3:
        names += [("answer", "answer", "text"), ("history", "history", "text"),
                  ("turn_info", "turn_info", "text")]
    args = []
    for split, d in (("train", train_dir), ("valid", corpus / "valid")):
        for fname, name, type_ in names:
            args += [f"--{split}_data_path_and_name_and_type", f"{d}/{fname},{name},{type_}"]
        # unsorted batches only read the keys of the shape file
        args += [f"--{split}_shape_file", str(d / "wav.scp")]
    return args


def stage_cmd(corpus, stats, out, stage, *extra):
    return [
        "--config", str(CONF / f"speech_input_stage{stage}_tiny.yaml"),
        *data_args(corpus, stage),
        "--token_list", str(corpus / "tokens.txt"),
        *(["--normalize_conf", f"stats_file={stats}/train/feats_stats.npz"] if stats else []),
        "--output_dir", str(out),
        "--ngpu", "0", "--batch_type", "unsorted", "--batch_size", "4",
        "--scheduler_conf", "warmup_steps=5",
        "--seed", "0", "--num_att_plot", "0",
        *extra,
    ]


def epoch_stats(out: Path) -> dict:
    """{epoch: {'train': {...}, 'valid': {...}}} from the checkpoint a resume would use.

    After a kill that is `checkpoint.pth` when whole, else `checkpoint.prev.pth`: the kill
    may land after the trainer moved epoch N-1's checkpoint aside and before (or while)
    epoch N's is written (tasks/resumable_trainer.py).
    """
    ckpt_path = out / CHECKPOINT
    if not (ckpt_path.exists() and is_complete_torch_file(ckpt_path)):
        ckpt_path = out / PREVIOUS
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    return ckpt["reporter"]["stats"]


@pytest.fixture(scope="module")
def stats_dir(spoken_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("stats")
    speech_input_train.main(stage_cmd(spoken_corpus, None, out, 1, "--collect_stats", "true"))
    assert (out / "train" / "feats_stats.npz").exists()
    return out


@pytest.fixture(scope="module")
def stage_dirs(spoken_corpus, stats_dir, tiny_llm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    s1, s2, s3 = root / "stage1", root / "stage2", root / "stage3"
    speech_input_train.main(stage_cmd(
        spoken_corpus, stats_dir, s1, 1, "--max_epoch", "4", "--optim_conf", "lr=0.003"))
    speech_input_train.main(stage_cmd(
        spoken_corpus, stats_dir, s2, 2, "--max_epoch", "4", "--optim_conf", "lr=0.003",
        "--llm_conf", f"path={tiny_llm_dir}", "--init_param", f"{s1}/4epoch.pth"))
    speech_input_train.main(stage_cmd(
        spoken_corpus, stats_dir, s3, 3, "--max_epoch", "4", "--optim_conf", "lr=0.01",
        "--llm_conf", f"path={tiny_llm_dir}", "--init_param", f"{s2}/4epoch.pth"))
    return s1, s2, s3


def test_stage1_ctc_loss_goes_down(stage_dirs):
    stats = epoch_stats(stage_dirs[0])
    first, last = stats[1]["train"]["loss_ctc"], stats[4]["train"]["loss_ctc"]
    assert last < 0.8 * first, (first, last)
    assert "cer_ctc" in stats[4]["valid"]


def test_stage2_llm_loss_goes_down_and_starts_from_stage1(stage_dirs):
    s1, s2, _ = stage_dirs
    stats = epoch_stats(s2)
    first, last = stats[1]["train"]["loss_llm"], stats[4]["train"]["loss_llm"]
    assert last < first, (first, last)
    # --init_param carried the encoder: the first stage-2 epoch beats a fresh encoder's CTC
    assert stats[1]["train"]["loss_ctc"] < epoch_stats(s1)[1]["train"]["loss_ctc"]
    # A falling loss alone does not show that the audio path learns: the task embeddings
    # lower it by themselves. That the LLM loss reaches the adapter and the encoder is
    # test_stage2_llm_loss_reaches_the_adapter_and_the_encoder.


def test_stage2_llm_loss_reaches_the_adapter_and_the_encoder(spoken_corpus, stats_dir, tiny_llm_dir):
    """Stage 2 exists to teach the encoder and the adapter to speak to the frozen LLM: the
    LLM loss alone (CTC off, it reaches the encoder by itself) must give every adapter
    parameter and the encoder's top layer a gradient, through the frozen LLM."""
    model = build_model_from_config(2, spoken_corpus, stats_dir, tiny_llm_dir).train()
    model.ctc_weight = 0.0
    assert model.distill_weight == model.distill_hidden_weight == 0.0  # the stage-2 config
    loss, stats, _ = model(**preprocessed_batch(spoken_corpus, tiny_llm_dir, ["tr000", "tr003"]))
    assert torch.allclose(loss, stats["loss_llm"])  # nothing else in the loss
    loss.backward()
    for name, p in model.adapter.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"adapter.{name}: no gradient"
    top = model.encoder.encoders[-1]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in top.parameters())
    assert model.task_embeddings.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.llm.parameters())


def test_stage2_text_in_teacher_runs_through_the_data_loader(
        stage_dirs, spoken_corpus, stats_dir, tiny_llm_dir, tmp_path):
    """Stage 2 with the teacher on: the preprocessor's llm_question (instruction +
    transcript) reaches the model through espnet's loader, and both losses are logged."""
    s1, _, _ = stage_dirs
    out = tmp_path / "stage2_teacher"
    speech_input_train.main(stage_cmd(
        spoken_corpus, stats_dir, out, 2, "--max_epoch", "1",
        "--llm_conf", f"path={tiny_llm_dir}", "--init_param", f"{s1}/4epoch.pth",
        "--model_conf", "distill_weight=1.0", "--model_conf", "distill_hidden_weight=3.0"))
    stats = epoch_stats(out)[1]
    assert stats["train"]["loss_distill_hidden"] > 0 and stats["train"]["loss_distill"] >= 0
    assert "loss_distill_hidden" in stats["valid"]


def test_stage3_keeps_the_configured_parts_frozen(stage_dirs):
    import yaml

    _, s2, s3 = stage_dirs
    stats = epoch_stats(s3)
    assert stats[4]["train"]["loss"] < stats[1]["train"]["loss"]
    assert "acc_state" in stats[4]["valid"] and "loss_state" in stats[4]["train"]
    # the tiny config's text-in teacher got its question tokens through espnet's data loader
    assert stats[4]["train"]["loss_distill_hidden"] > 0 and "loss_distill" in stats[4]["valid"]
    frozen = yaml.safe_load((CONF / "speech_input_stage3_tiny.yaml").read_text())["freeze_param"]
    assert "encoder" in frozen and "task_embeddings" in frozen
    before = torch.load(s2 / "4epoch.pth", map_location="cpu")
    after = torch.load(s3 / "4epoch.pth", map_location="cpu")
    for name in before:
        if name.startswith(tuple(f"{p}." for p in frozen)):
            assert torch.equal(before[name], after[name]), f"{name} changed while frozen"
    if "adapter" not in frozen:  # the tiny config trains it (see the config's comment)
        assert not torch.equal(before["adapter.project.weight"], after["adapter.project.weight"])
    assert "prompt_embeddings.weight" in after and "predictor_head.weight" in after


def test_llm_is_never_in_a_checkpoint(stage_dirs):
    for out in stage_dirs:
        for ckpt in out.glob("*epoch.pth"):
            keys = torch.load(ckpt, map_location="cpu").keys()
            assert not [k for k in keys if k.startswith("llm") or ".llm." in k], ckpt


def build_model_from_config(stage: int, corpus: Path, stats: Path, llm: Path):
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask

    parser = SpeechInputTask.get_parser()
    args = parser.parse_args(stage_cmd(corpus, stats, corpus / "unused", stage,
                                       "--llm_conf", f"path={llm}"))
    return SpeechInputTask.build_model(args)


def preprocessed_batch(corpus: Path, llm: Path, utt_ids, split: str = "train") -> dict:
    """Training-corpus utterances (audio + transcript) through the stage-2 preprocessor,
    zero-padded into one batch with the *_lengths entries the model's forward takes."""
    from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor

    pre = SpeechInputPreprocessor(train=True, llm_path=str(llm), token_type="char",
                                  token_list=str(corpus / "tokens.txt"),
                                  asr_instruction="Repeat after me:")
    wavs = dict(line.split(maxsplit=1) for line in (corpus / split / "wav.scp").read_text().splitlines())
    texts = dict(line.split(maxsplit=1) for line in (corpus / split / "text").read_text().splitlines())
    items = []
    for utt in utt_ids:
        wav, _ = soundfile.read(wavs[utt].strip(), dtype="float32")
        items.append(pre(utt, {"speech": wav, "text": texts[utt].strip()}))
    batch = {}
    for key in items[0]:
        rows = [torch.as_tensor(item[key]) for item in items]
        width = max(len(r) for r in rows)
        padded = torch.zeros((len(rows), width), dtype=rows[0].dtype)
        for i, r in enumerate(rows):
            padded[i, :len(r)] = r
        batch[key] = padded
        batch[key + "_lengths"] = torch.tensor([len(r) for r in rows])
    return batch


def test_llm_weights_bitwise_unchanged_after_a_training_step(spoken_corpus, stats_dir, tiny_llm_dir):
    from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor

    model = build_model_from_config(2, spoken_corpus, stats_dir, tiny_llm_dir)
    model.train()
    llm_before = {k: v.clone() for k, v in model.llm.model.state_dict().items()}
    adapter_before = model.adapter.project.weight.detach().clone()
    assert all(not p.requires_grad for p in model.llm.parameters())
    assert not any(n.startswith("llm") for n, _ in model.named_parameters())

    pre = SpeechInputPreprocessor(train=True, llm_path=str(tiny_llm_dir), token_type="char",
                                  token_list=str(spoken_corpus / "tokens.txt"))
    wav_path = (spoken_corpus / "train" / "wav.scp").read_text().split()[1]
    wav, _ = soundfile.read(wav_path, dtype="float32")
    item = pre("tr000", {"speech": wav, "text": "what color is the sky"})
    batch = {}
    for k, v in item.items():
        batch[k] = torch.as_tensor(v)[None]
        batch[k + "_lengths"] = torch.tensor([len(v)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, _, _ = model(**batch)
    loss.backward()
    opt.step()
    assert not torch.equal(adapter_before, model.adapter.project.weight)
    for k, v in model.llm.model.state_dict().items():
        assert torch.equal(v, llm_before[k]), f"frozen LLM weight {k} changed"


def test_resume_after_kill_continues_from_last_epoch(spoken_corpus, stats_dir, tmp_path):
    out = tmp_path / "stage1"
    cmd = stage_cmd(spoken_corpus, stats_dir, out, 1, "--max_epoch", "3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "espnet_freeze_omni.bin.speech_input_train", *cmd],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    try:
        while not ((out / "1epoch.pth").exists() and (out / "checkpoint.pth").exists()):
            assert proc.poll() is None, "training died before its first epoch ended"
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.2)
        time.sleep(0.5)  # let the checkpoint write finish
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = sorted(epoch_stats(out))
    assert done_before and max(done_before) < 3, done_before
    first_epoch_file = (out / "1epoch.pth").stat().st_mtime_ns
    loss_epoch1 = epoch_stats(out)[1]["train"]["loss"]

    speech_input_train.main(cmd + ["--resume", "true"])
    stats = epoch_stats(out)
    assert sorted(stats) == [1, 2, 3]
    assert stats[1]["train"]["loss"] == loss_epoch1  # epoch 1 kept, not retrained
    assert (out / "1epoch.pth").stat().st_mtime_ns == first_epoch_file
    assert (out / "3epoch.pth").exists()


# ---------------------------------------------------------------------------- bad input
def test_missing_llm_dir_is_named(spoken_corpus, stats_dir, tmp_path):
    missing = tmp_path / "no_such_llm"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        speech_input_train.main(stage_cmd(spoken_corpus, stats_dir, tmp_path / "o", 2,
                                          "--llm_conf", f"path={missing}"))


def test_not_a_causal_lm_dir_is_named(spoken_corpus, stats_dir, tmp_path):
    not_llm = tmp_path / "just_a_folder"
    not_llm.mkdir()
    (not_llm / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=str(not_llm)):
        speech_input_train.main(stage_cmd(spoken_corpus, stats_dir, tmp_path / "o", 2,
                                          "--llm_conf", f"path={not_llm}"))


def test_adapter_size_mismatch_names_sizes_and_path(spoken_corpus, stats_dir, tiny_llm_dir, tmp_path):
    import json

    llm_size = json.loads((tiny_llm_dir / "config.json").read_text())["hidden_size"]
    with pytest.raises(ValueError) as err:
        speech_input_train.main(stage_cmd(spoken_corpus, stats_dir, tmp_path / "o", 2,
                                          "--llm_conf", f"path={tiny_llm_dir}",
                                          "--speech_adapter_conf", "llm_embed_dim=999"))
    msg = str(err.value)
    assert str(tiny_llm_dir) in msg, msg  # which LLM it was
    # and both sizes, the adapter's and the LLM's, as whole numbers outside the path
    sizes = set(re.findall(r"\d+", msg.replace(str(tiny_llm_dir), "")))
    assert {"999", str(llm_size)} <= sizes, msg

    # the model's own guard, for an adapter built outside the Task, says the same
    from espnet_freeze_omni.adapter import ConvAdapter

    model = build_model_from_config(2, spoken_corpus, stats_dir, tiny_llm_dir)
    with pytest.raises(ValueError) as err:
        type(model)(len(model.token_list), model.token_list, frontend=None, specaug=None,
                    normalize=None, encoder=model.encoder, ctc=model.ctc, llm=model.llm,
                    adapter=ConvAdapter(model.encoder.output_size(), 999))
    msg = str(err.value)
    assert str(tiny_llm_dir) in msg, msg
    assert {"999", str(llm_size)} <= set(re.findall(r"\d+", msg.replace(str(tiny_llm_dir), ""))), msg


def test_bad_audio_is_reported_by_utterance_and_file(spoken_corpus, stats_dir, tmp_path):
    bad = tmp_path / "bad_train"
    shutil.copytree(spoken_corpus / "train", bad)
    lines = (bad / "wav.scp").read_text().splitlines()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"this is not audio")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    slow = tmp_path / "8k.wav"
    soundfile.write(slow, np.zeros(8000, dtype=np.float32), 8000)
    ids = [line.split()[0] for line in lines]
    lines[0], lines[1], lines[2] = f"{ids[0]} {broken}", f"{ids[1]} {empty}", f"{ids[2]} {slow}"
    (bad / "wav.scp").write_text("\n".join(lines) + "\n")
    cmd = stage_cmd(spoken_corpus, stats_dir, tmp_path / "o", 1)
    cmd = [c.replace(str(spoken_corpus / "train"), str(bad)) for c in cmd]
    with pytest.raises(RuntimeError) as err:
        speech_input_train.main(cmd)
    msg = str(err.value)
    assert f"[{ids[0]}] audio {broken}: cannot be read" in msg
    assert f"[{ids[1]}] audio {empty}: is empty" in msg
    assert f"[{ids[2]}] audio {slow}: sample rate 8000 Hz, expected 16000 Hz" in msg
    assert f"{bad}/wav.scp:1:" in msg


# ---------------------------------------------------------------------------- decoding
def test_streaming_listen_matches_offline_state_head(stage_dirs, spoken_corpus):
    """Chunk-by-chunk listening (encoder K/V cache with its bounded left context, adapter
    conv cache, LLM K/V cache after a chat history) gives the state head the logits of one
    offline forward with the encoder's chunk mask, on audio several left contexts long."""
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    s3 = stage_dirs[2]
    dec = SpeechInputInference.from_files(s3 / "config.yaml", s3 / "4epoch.pth")
    model = dec.model
    # the four valid questions back to back: the left context slides over most of it
    paths = [line.split(maxsplit=1)[1].strip()
             for line in (spoken_corpus / "valid" / "wav.scp").read_text().splitlines()]
    wav = np.concatenate([soundfile.read(p, dtype="float32")[0] for p in paths])
    history = [{"role": "user", "content": "where does anna live"},
               {"role": "assistant", "content": "anna lives in paris"}]

    streamed = []
    state_logits = model.state_logits

    def recording(hidden):  # what listen() feeds the state head, chunk by chunk
        logits = state_logits(hidden)
        streamed.append(logits.detach().clone())
        return logits

    model.state_logits = recording  # an instance attribute shadows the method
    try:
        result = dec.listen(wav, history)
    finally:
        del model.state_logits
    streamed = torch.cat(streamed)

    with torch.no_grad():
        speech, lengths = dec._batch(wav)
        audio, audio_lengths, _, _ = model.audio_embeddings(speech, lengths)
        prefix = dec._ids(dec.template.prefix_ids(history))
        inputs, mask, _, start = model.assemble(
            prefix, torch.tensor([prefix.size(1)]), audio, audio_lengths,
            dec._ids([]), torch.tensor([0]), dec._ids([]), torch.tensor([0]))
        hidden = model.llm(inputs_embeds=inputs, attention_mask=mask).hidden
        per = model.embeddings_per_chunk
        n = int(audio_lengths[0])
        last = [min((c + 1) * per, n) - 1 for c in range((n + per - 1) // per)]
        offline = model.state_logits(hidden[0, [int(start[0]) + i for i in last]])
    # long enough that most chunks no longer see the first ones
    assert len(last) > 3 * model.encoder.left_chunks, (len(last), model.encoder.left_chunks)
    assert streamed.shape == offline.shape
    torch.testing.assert_close(streamed, offline, atol=1e-4, rtol=1e-4)
    assert result.states == offline.argmax(-1).tolist()


def test_decoding_entry_point_writes_every_utterance(stage_dirs, spoken_corpus, tmp_path):
    from espnet_freeze_omni.bin import speech_input_inference

    s1, s2, s3 = stage_dirs
    wav_scp = spoken_corpus / "valid" / "wav.scp"
    ids = [line.split()[0] for line in wav_scp.read_text().splitlines()]
    for mode, exp, out_name in (("ctc", s1, "text"), ("llm", s2, "text"), ("listen", s3, "turn_info")):
        out = tmp_path / mode
        speech_input_inference.main([
            "--train_config", str(exp / "config.yaml"), "--model_file", str(exp / "4epoch.pth"),
            "--wav_scp", str(wav_scp), "--mode", mode, "--output_dir", str(out),
            "--max_new_tokens", "8"])
        lines = (out / out_name).read_text().splitlines()
        assert [line.split()[0] for line in lines] == ids
        if mode == "listen":
            assert all(line.split()[1] in "012" for line in lines)


def test_asr_instruction_is_text_before_the_task_embeddings(spoken_corpus, stats_dir, tiny_llm_dir):
    from espnet_freeze_omni.llm.chat_template import ChatTemplate

    model = build_model_from_config(2, spoken_corpus, stats_dir, tiny_llm_dir).eval()
    ids = ChatTemplate(model.llm.tokenizer).question_ids("Repeat after me:")
    assert model.asr_instruction_ids.tolist() == ids and ids  # the stage-2 config's cue
    learned = model.before_audio(2, torch.device("cpu"))
    task_num = model.task_embeddings.num_embeddings
    assert learned.shape == (2, len(ids) + task_num, model.llm.hidden_size)
    with torch.no_grad():
        text = model.llm.embed_tokens(torch.tensor(ids))
    assert torch.equal(learned[0, :len(ids)], text.to(learned.dtype))
    assert torch.equal(learned[1, len(ids):], model.task_embeddings.weight)
    # a text cue, not a parameter: checkpoints keep the release's keys
    assert not any("instruction" in k for k in model.state_dict())
    # stage 3 keeps the cue for ASR through the LLM, and answers with its prompt embeddings
    dialog = build_model_from_config(3, spoken_corpus, stats_dir, tiny_llm_dir).eval()
    assert dialog.before_audio(1, torch.device("cpu"), task="asr").size(1) == len(ids) + task_num
    assert dialog.before_audio(1, torch.device("cpu")).size(1) == dialog.prompt_embeddings.num_embeddings


def test_shared_prefix_and_kept_logits_give_the_full_forward_loss_and_gradients(
        spoken_corpus, stats_dir, tiny_llm_dir):
    """The training forward caches the batch's common chat prefix and projects only
    labelled columns; loss, state loss and gradients must equal a plain full-sequence pass."""
    torch.manual_seed(0)
    model = build_model_from_config(3, spoken_corpus, stats_dir, tiny_llm_dir).eval()
    model.distill_weight = model.distill_hidden_weight = 0.0  # tested on their own below
    pad = -1
    prefix = torch.tensor([[11, 12, 13, 14, 15], [11, 12, 13, 20, pad], [11, 12, 13, 14, 15]])
    prefix_lengths = torch.tensor([5, 4, 5])
    suffix, suffix_lengths = torch.tensor([[30, 31], [30, 31], [30, 31]]), torch.tensor([2, 2, 2])
    target = torch.tensor([[40, 41, 42], [43, 44, pad], [45, pad, pad]])
    target_lengths = torch.tensor([3, 2, 1])
    speech = torch.randn(3, 16000) * 0.1
    speech_lengths = torch.tensor([16000, 12000, 9000])
    turn_info = torch.tensor([[1.0, 0.5], [2.0, 0.4], [1.0, 0.3]])
    batch = dict(speech=speech, speech_lengths=speech_lengths,
                 llm_prefix=prefix.clamp(min=0), llm_prefix_lengths=prefix_lengths,
                 llm_suffix=suffix, llm_suffix_lengths=suffix_lengths,
                 llm_target=target.clamp(min=0), llm_target_lengths=target_lengths,
                 turn_info=turn_info)
    assert model.shared_prefix_length(batch["llm_prefix"], prefix_lengths) == 3

    loss, stats, _ = model(**batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert "adapter.project.weight" in grads and "prompt_embeddings.weight" in grads
    model.zero_grad()

    # reference: the whole assembled sequence through the LLM, every logit computed
    audio, audio_lengths, _, _ = model.audio_embeddings(speech, speech_lengths)
    inputs, mask, labels, audio_start = model.assemble(
        batch["llm_prefix"], prefix_lengths, audio, audio_lengths,
        suffix, suffix_lengths, batch["llm_target"], target_lengths)
    out = model.llm(inputs_embeds=inputs, attention_mask=mask)
    ref_llm, ref_acc = model._token_loss(out.logits, labels)
    ref_state = model._state_loss(out.hidden, audio_lengths, audio_start, turn_info)[0]
    (ref_llm + model.state_weight * ref_state).backward()
    assert torch.allclose(stats["loss_llm"], ref_llm, atol=1e-5)
    assert torch.allclose(stats["loss_state"], ref_state, atol=1e-5)
    assert torch.allclose(stats["acc"], ref_acc)
    for n, g in grads.items():
        p = dict(model.named_parameters())[n]
        assert torch.allclose(g, p.grad, atol=1e-5, rtol=1e-4), n

    # rows without a common first token share nothing
    other = batch["llm_prefix"].clone()
    other[1, 0] = 99
    assert model.shared_prefix_length(other, prefix_lengths) == 0


def test_text_in_teacher_distillation_is_zero_for_the_question_itself(
        spoken_corpus, stats_dir, tiny_llm_dir):
    """distill_weight / distill_hidden_weight compare the speech-in run with the frozen LLM
    reading the question as text. A student whose 'audio' is the question's own token
    embeddings is that teacher: both distances vanish; real audio gives positive ones
    with gradients to the adapter; side talk (no answer) is left out."""
    from espnet_freeze_omni.llm.chat_template import ChatTemplate

    torch.manual_seed(0)
    model = build_model_from_config(3, spoken_corpus, stats_dir, tiny_llm_dir).eval()
    model.distill_weight, model.distill_hidden_weight = 1.0, 1.0
    template = ChatTemplate(model.llm.tokenizer)
    questions = ["what is the weather like", "tell me a story please", "hello there"]
    answers = ["it is sunny", "once upon a time", None]  # the third is side talk
    pad = -1

    def padded(rows):
        width = max(1, max(len(r) for r in rows))
        return (torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
                torch.tensor([len(r) for r in rows]))

    prefix, prefix_lengths = padded([template.prefix_ids(None)] * 2 + [
        template.prefix_ids([{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"}])])
    suffix, suffix_lengths = padded([template.suffix_ids()] * 3)
    target, target_lengths = padded([template.answer_ids(a) if a else [] for a in answers])
    question, question_lengths = padded([template.question_ids(q) for q in questions])
    batch = dict(llm_prefix=prefix.clamp(min=0), llm_prefix_lengths=prefix_lengths,
                 llm_suffix=suffix.clamp(min=0), llm_suffix_lengths=suffix_lengths,
                 llm_target=target.clamp(min=0), llm_target_lengths=target_lengths,
                 llm_question=question, llm_question_lengths=question_lengths)
    shared = model.shared_prefix_length(batch["llm_prefix"], prefix_lengths)

    def distill(audio, audio_lengths, task):
        inputs, mask, labels, _ = model.assemble(
            batch["llm_prefix"], prefix_lengths, audio, audio_lengths,
            batch["llm_suffix"], suffix_lengths, batch["llm_target"], target_lengths, task=task)
        out, kept = model.run_llm_for_loss(inputs, mask, labels, shared)
        losses = model._distill_losses(out, kept, mask, shared, batch)
        return losses["distill"][0], losses["distill_hidden"][0]

    with torch.no_grad():
        q_emb = model.llm.embed_tokens(question.clamp(min=0))
    kl, hid = distill(q_emb, question_lengths, "text")
    assert kl.abs() < 1e-5 and hid.abs() < 1e-5, (kl, hid)

    speech = torch.randn(3, 16000) * 0.1
    audio, audio_lengths, _, _ = model.audio_embeddings(speech, torch.tensor([16000, 12000, 9000]))
    kl, hid = distill(audio, audio_lengths, "default")
    assert kl > 1e-3 and hid > 1e-3, (kl, hid)
    (kl + hid).backward()
    assert model.adapter.project.weight.grad.abs().sum() > 0

    # the side-talk row takes no part: changing its question leaves both losses unchanged
    model.zero_grad()
    batch["llm_question"][2, 0] = (batch["llm_question"][2, 0] + 1) % len(template.tokenizer)
    kl2, hid2 = distill(audio, audio_lengths, "default")
    assert torch.allclose(kl2, kl) and torch.allclose(hid2, hid)

    batch.pop("llm_question")
    with pytest.raises(ValueError, match="'text' data entry"):
        distill(audio, audio_lengths, "default")

    # the preprocessor gives the teacher its text: the question (stage 3, answer +
    # transcript), or the ASR instruction and the transcript (stage 2, transcript only)
    from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor

    pre = SpeechInputPreprocessor(train=True, llm_path=str(tiny_llm_dir), token_type="char",
                                  token_list=str(spoken_corpus / "tokens.txt"),
                                  asr_instruction="Repeat after me:")
    wav = np.zeros(1600, dtype=np.float32)
    item = pre("q1", {"speech": wav, "text": "hello there ", "answer": "hi"})
    assert item["llm_question"].tolist() == template.question_ids("hello there")
    item = pre("a1", {"speech": wav, "text": "hello there"})
    assert item["llm_question"].tolist() == template.question_ids("Repeat after me: hello there")
    assert item["llm_target"].tolist() == template.answer_ids("hello there")


def test_step_benchmark_runs_both_paths_on_a_trained_stage(stage_dirs, capsys):
    """benchmark_speech_input_step times the training forward against a full pass on the
    stage's own data and prints the loss of each: they must agree."""
    from espnet_freeze_omni.bin import benchmark_speech_input_step

    _, _, s3 = stage_dirs
    benchmark_speech_input_step.main(["--exp_dir", str(s3), "--checkpoint", "4epoch.pth",
                                      "--batch_size", "3", "--runs", "1"])
    out = capsys.readouterr().out
    losses = [float(x) for x in re.findall(r"loss_llm (\d+\.\d+)", out)]
    assert len(losses) == 2 and abs(losses[0] - losses[1]) < 1e-4, out
    assert "SpokenDialogModel" in out and re.search(r"shared chat prefix \d+ tokens", out)
    assert re.search(r"ratio training/full \d+\.\d+", out)


def test_answer_follows_audio_cut_after_the_turn_end():
    """answer_at_random_turn_end: in training an addressed turn's audio is cut at a chunk
    end between the first `respond` chunk and the recording's end (every such chunk drawn);
    side talk, evaluation and the option off keep the whole audio."""
    import types

    from espnet_freeze_omni.models.speech_input import SpokenDialogModel

    fake = types.SimpleNamespace(training=True, answer_at_random_turn_end=True,
                                 embeddings_per_chunk=2, turn_end_delay=0.32,
                                 chunk_seconds=0.16)
    lengths = torch.tensor([40, 40, 33])  # 20, 20 and 17 chunks of 2 embeddings
    turn_info = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, 2.6]])
    torch.manual_seed(0)
    cuts = torch.stack([SpokenDialogModel.answered_audio_lengths(fake, lengths, turn_info)
                        for _ in range(400)])
    first = int(np.ceil((1.0 + 0.32) / 0.16))  # chunk 9: the first labelled respond
    assert set(cuts[:, 0].tolist()) == {2 * c for c in range(first, 21)}
    assert set(cuts[:, 1].tolist()) == {40}  # side talk: whole
    # the turn end lies past the last whole chunk: the whole (odd-length) audio is kept
    assert set(cuts[:, 2].tolist()) == {33}
    for change in (dict(training=False), dict(answer_at_random_turn_end=False)):
        off = types.SimpleNamespace(**{**vars(fake), **change})
        assert torch.equal(SpokenDialogModel.answered_audio_lengths(off, lengths, turn_info),
                           lengths)


# ---------------------------------------------------------------------------- state head labels
LISTEN, RESPOND, IGNORE, UNLABELLED = 0, 1, 2, -100


def test_chunk_state_labels_listen_until_the_turn_end_delay_then_respond_or_ignore(
        spoken_corpus, stats_dir, tiny_llm_dir):
    """The state head learns one label per 160 ms chunk from turn_info (label, speech end):
    listen until the first chunk ending `turn_end_delay` or more after the speech end, then
    respond for a turn addressed to the assistant and ignore for side talk; chunks after an
    utterance's end (batch padding) carry no label. Expected rows are written out by hand."""
    model = build_model_from_config(3, spoken_corpus, stats_dir, tiny_llm_dir)
    assert model.chunk_seconds == pytest.approx(0.16) and model.embeddings_per_chunk == 2
    assert model.turn_end_delay == pytest.approx(0.16)  # the tiny config's value
    model.turn_end_delay = 0.32  # the rows below are written out for 0.32 s
    L, R, I, U = LISTEN, RESPOND, IGNORE, UNLABELLED
    audio_lengths = torch.tensor([24, 24, 19, 24])  # 12, 12, 10 (last one partial), 12 chunks
    turn_info = torch.tensor([[1.0, 1.0], [2.0, 1.0], [1.0, 0.5], [1.0, 5.0]])
    # 1.0 s + 0.32 s = 1.32 s: chunk 9 (ends 1.44 s) is the first; 0.5 + 0.32 = 0.82: chunk 6
    # (ends 0.96 s); speech ending after the recording: listen throughout
    assert model.chunk_state_labels(audio_lengths, turn_info).tolist() == [
        [L] * 8 + [R] * 4,
        [L] * 8 + [I] * 4,
        [L] * 5 + [R] * 5 + [U] * 2,
        [L] * 12,
    ]
    model.turn_end_delay = 0.0  # the delay is the model's own setting, not a constant
    # 1.0 s lies inside chunk 7 (0.96-1.12 s), 0.5 s inside chunk 4 (0.48-0.64 s)
    assert model.chunk_state_labels(audio_lengths, turn_info).tolist() == [
        [L] * 6 + [R] * 6,
        [L] * 6 + [I] * 6,
        [L] * 3 + [R] * 7 + [U] * 2,
        [L] * 12,
    ]


def test_side_talk_in_the_corpus_is_trained_as_ignore(spoken_corpus, stats_dir, tiny_llm_dir):
    """From the training corpus' own turn_info lines through the preprocessor to the labels:
    a question ends in respond, side talk in ignore, and neither holds the other's label."""
    from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor

    model = build_model_from_config(3, spoken_corpus, stats_dir, tiny_llm_dir)
    pre = SpeechInputPreprocessor(train=False, llm_path=str(tiny_llm_dir), token_type="char",
                                  token_list=str(spoken_corpus / "tokens.txt"))
    train = spoken_corpus / "train"
    table = {name: dict(line.split(maxsplit=1) for line in (train / name).read_text().splitlines())
             for name in ("wav.scp", "answer", "history", "turn_info")}
    rows, lengths = [], []
    for utt in ("tr000", "tr010"):  # a question and side talk (tests/conftest.py)
        wav, _ = soundfile.read(table["wav.scp"][utt].strip(), dtype="float32")
        item = pre(utt, {"speech": wav, "answer": table["answer"][utt],
                         "history": table["history"][utt], "turn_info": table["turn_info"][utt]})
        rows.append(torch.as_tensor(item["turn_info"]))
        # a long enough audio for every chunk up to well after the speech end
        lengths.append(int(np.ceil((float(item["turn_info"][1]) + 1.0) / 0.16)) * 2)
        if utt == "tr010":
            assert len(item["llm_target"]) == 0  # side talk gets no answer either
    labels = model.chunk_state_labels(torch.tensor(lengths), torch.stack(rows))
    question, side_talk = labels[0][labels[0] != UNLABELLED], labels[1][labels[1] != UNLABELLED]
    assert question[0] == LISTEN and question[-1] == RESPOND and IGNORE not in question
    assert side_talk[0] == LISTEN and side_talk[-1] == IGNORE and RESPOND not in side_talk


def test_state_loss_reads_each_chunks_last_audio_position_against_its_label(
        spoken_corpus, stats_dir, tiny_llm_dir):
    """The state loss is the cross-entropy of the head's logits at the last audio embedding
    of every chunk against that chunk's label; positions and labels are written out here."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = build_model_from_config(3, spoken_corpus, stats_dir, tiny_llm_dir).eval()
    model.turn_end_delay = 0.32  # the labels below are written out for 0.32 s
    hidden = torch.randn(2, 12, model.llm.hidden_size)
    audio_start = torch.tensor([3, 5])
    audio_lengths = torch.tensor([7, 6])  # 4 chunks (the last of one embedding) and 3
    # speech end + 0.32 s = 0.42 s (row 0, addressed) and 0.37 s (row 1, side talk): the
    # first two chunks (ending 0.16 and 0.32 s) listen, the later ones respond / ignore
    turn_info = torch.tensor([[1.0, 0.10], [2.0, 0.05]])
    rows = [0, 0, 0, 0, 1, 1, 1]
    positions = [3 + 1, 3 + 3, 3 + 5, 3 + 6, 5 + 1, 5 + 3, 5 + 5]
    labels = torch.tensor([LISTEN, LISTEN, RESPOND, RESPOND, LISTEN, LISTEN, IGNORE])
    with torch.no_grad():
        logits = model.state_logits(hidden[rows, positions])
        expected = F.cross_entropy(logits, labels)
        expected_acc = (logits.argmax(-1) == labels).float().mean()
        loss, weight, stats = model._state_loss(hidden, audio_lengths, audio_start, turn_info)
    assert torch.allclose(loss, expected, atol=1e-6), (loss, expected)
    assert torch.allclose(stats["acc_state"], expected_acc)
    assert weight == model.state_weight
