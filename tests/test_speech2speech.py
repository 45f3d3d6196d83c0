"""Speech2Speech: the whole model for inference, its decoding entry point and packing.

Plumbing tests on untrained tiny models: a stage-3 speech-input and a stage-3 speech-output
model are built through their Tasks' build_model from conf/*_tiny.yaml around one tiny
random LLM and saved as espnet's trainer saves them (state_dict + config.yaml); the codec is
an embedded codec with a random codebook. The audio is noise: only shapes, files and the
equality of computations are checked, never what is said.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
PACK_MODEL = REPO / "egs2/TEMPLATE/freeze_omni1/scripts/utils/pack_model.py"
TEXTS = ["what color is the sky", "the sky is blue.", "where does anna live",
         "anna lives in paris, near the river.", "how old is tom", "tom is ten years old."]
DECODE = dict(max_new_tokens=10, max_codec_tokens=30, seed=3)
# utterance -> (question in the data dir's text, question in the QA references or None)
UTTERANCES = {
    "d1-t1": ("what color is the sky", "what colour is the sky"),
    "d1-t2": ("where does anna live", None),
    "d1-t3": ("how old is tom", None),
    "d2-t1": ("how old is tom", None),
    "solo": ("where does anna live", "where is anna living"),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def save_like_trainer(task, argv, out: Path, adjust=None) -> Path:
    """Build a model through the Task and save what espnet's trainer would: the
    state_dict and the config.yaml of the (build_model-updated) arguments. `adjust(model)`
    may set weights first, as training would have."""
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    args = task.get_parser().parse_args(argv + ["--output_dir", str(out)])
    torch.manual_seed(0)
    model = task.build_model(args)
    if adjust is not None:
        with torch.no_grad():
            adjust(model)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "valid.loss.best.pth")
    with open(out / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    return out / "valid.loss.best.pth"


def answering_state_head(model):
    """The random state head ignores every turn of this noise, and an ignored turn is never
    voiced, so nothing would be spoken. A large respond bias makes it answer every turn (at
    its first chunk) while its logits still depend on the input."""
    from espnet_freeze_omni.models.speech_input import STATE_RESPOND

    model.predictor_head.bias[STATE_RESPOND] += 100.0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from espnet_freeze_omni.codec.embedded import EmbeddedCodec, EmbeddedCodecConfig
    from espnet_freeze_omni.llm.tiny import build_tiny_llm
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask
    from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

    root = tmp_path_factory.mktemp("speech2speech")
    rng = np.random.RandomState(0)
    llm = build_tiny_llm(root / "llm", TEXTS, family="qwen2", hidden_size=128)
    chars = sorted({c for t in TEXTS for c in t if c != " "})
    (root / "tokens.txt").write_text("\n".join(["<blank>", "<unk>", "<space>", *chars,
                                                "<sos/eos>"]) + "\n")
    stats = root / "stats" / "feats_stats.npz"
    stats.parent.mkdir()
    np.savez(stats, count=np.array(100.0), sum=rng.randn(80) * 100,
             sum_square=np.full(80, 100 * 60.0))
    speech_input = save_like_trainer(SpeechInputTask, [
        "--config", str(REPO / "conf/speech_input_stage3_tiny.yaml"),
        "--token_list", str(root / "tokens.txt"), "--llm_conf", f"path={llm}",
        "--normalize_conf", f"stats_file={stats}"], root / "exp" / "speech_input_stage3",
        adjust=answering_state_head)
    speech_output = save_like_trainer(SpeechOutputTask, [
        "--config", str(REPO / "conf/speech_output_stage3_tiny.yaml"),
        "--llm_conf", f"path={llm}"], root / "exp" / "speech_output_stage3")
    vocab = yaml.safe_load((REPO / "conf/speech_output_stage3_tiny.yaml").read_text())[
        "speech_decoder_conf"]["vocab_size"]  # the codec must have the decoder's vocabulary
    cfg = EmbeddedCodecConfig(gl_iters=2, vocab_size=vocab)
    EmbeddedCodec(
        cfg, rng.randn(vocab, cfg.frames_per_token * cfg.n_mels).astype(np.float32),
        np.abs(rng.randn(vocab, cfg.frames_per_token, cfg.n_freq)).astype(np.float32) * 0.01,
    ).save(root / "exp" / "codec")
    # what recipe stage 11 writes beside it: the load_codec() config later stages read
    (root / "exp" / "codec" / "codec_conf.yaml").write_text(
        f"type: embedded\npath: {root / 'exp' / 'codec'}\n")

    data = root / "data"
    (data / "wav").mkdir(parents=True)
    with open(data / "wav.scp", "w") as fw, open(data / "text", "w") as ft, \
            open(data / "qa_refs.jsonl", "w") as fq:
        for i, (utt, (question, ref_question)) in enumerate(UTTERANCES.items()):
            wav = data / "wav" / f"{utt}.wav"
            soundfile.write(wav, (rng.randn(12000 + 2000 * i) * 0.1).astype(np.float32), 16000)
            fw.write(f"{utt} {wav}\n")
            ft.write(f"{utt} {question}\n")
            if ref_question is not None:
                fq.write(json.dumps({"id": utt, "question": ref_question, "answers": ["x"]}) + "\n")
    return dict(root=root, llm=llm, stats=stats, speech_input=speech_input,
                speech_output=speech_output, codec=root / "exp" / "codec", data=data)


@pytest.fixture(scope="module")
def s2s(work):
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    return Speech2Speech.from_files(None, work["speech_input"], None, work["speech_output"],
                                    codec_dir=work["codec"], decode_conf=DECODE)


def read_wav(work, utt):
    wav, rate = soundfile.read(work["data"] / "wav" / f"{utt}.wav", dtype="float32")
    assert rate == 16000
    return wav


def kaldi(path: Path) -> dict:
    lines = path.read_text().splitlines()
    return dict((line.split(" ", 1) + [""])[:2] for line in lines)


# ---------------------------------------------------------------------------- the model
def test_call_gives_text_and_24khz_audio(s2s, work):
    out = s2s(read_wav(work, "solo"))
    assert s2s.sample_rate == 24000 and s2s.input_sample_rate == 16000
    assert isinstance(out["text"], str) and out["text"]
    assert out["wav"].dtype == np.float32 and out["wav"].ndim == 1
    assert len(out["wav"]) > 0 and len(out["wav"]) % s2s.codec.samples_per_token == 0
    # 8 kHz input is resampled to what the frontend reads
    out8 = s2s(read_wav(work, "solo")[::2].copy(), sample_rate=8000)
    assert isinstance(out8["text"], str) and out8["wav"].ndim == 1


def test_one_llm_serves_input_and_output(s2s):
    assert s2s.synthesizer.llm is s2s.listener.model.llm is s2s.llm


def test_spoken_answer_hidden_states_are_the_positions_predicting_each_token(s2s, work):
    """One row per answer token, = a single full forward over prompt + answer."""
    wav = read_wav(work, "d1-t1")
    answer = s2s.answer(wav)
    n = len(answer.token_ids)
    assert n > 0 and answer.hidden_states.shape == (n, s2s.llm.hidden_size)
    with torch.no_grad():
        prompt = s2s.listener.spoken_turn_inputs(wav)
        ids = torch.tensor([answer.token_ids])
        full = torch.cat([prompt, s2s.llm.embed_tokens(ids).to(prompt.dtype)], dim=1)
        hidden = s2s.llm(full).hidden[0]
    start = prompt.size(1) - 1
    torch.testing.assert_close(answer.hidden_states, hidden[start:start + n], atol=1e-4, rtol=1e-4)


def test_text_answer_hidden_states_match_speech_output_training(s2s):
    """The text-in answer's hidden states are what SpeechOutputModel computes in training."""
    from espnet_freeze_omni.models.speech_output import SpeechOutputModel

    question = "where does anna live"
    answer = s2s.answer_text(question)
    n = len(answer.token_ids)
    assert n > 0 and answer.hidden_states.shape == (n, s2s.llm.hidden_size)
    model = SpeechOutputModel(s2s.synthesizer.decoder, s2s.llm)
    q_ids = model.template.question_ids(question)
    expected, lengths = model.answer_hidden_states(
        torch.tensor([answer.token_ids]), torch.tensor([n]),
        torch.tensor([q_ids]), torch.tensor([len(q_ids)]))
    assert int(lengths[0]) == n
    torch.testing.assert_close(answer.hidden_states, expected[0].float(), atol=1e-4, rtol=1e-4)


def test_speak_is_segment_wise_and_stream_gives_the_same_audio(s2s, work):
    answer = s2s.answer(read_wav(work, "d2-t1"))
    s2s.reseed("x")
    whole = s2s.speak(answer.token_ids, answer.hidden_states)
    s2s.reseed("x")
    packets = list(s2s.stream(answer.token_ids, answer.hidden_states))
    np.testing.assert_array_equal(np.concatenate(packets), whole)
    segments = list(s2s.segments(zip(answer.token_ids, answer.hidden_states)))
    assert sum(len(s.token_ids) for s in segments) == len(answer.token_ids)
    assert all(s.hidden_states.shape[0] == len(s.token_ids) for s in segments)
    s2s.reseed("x")
    reply = list(s2s.stream_reply(read_wav(work, "d2-t1")))
    np.testing.assert_array_equal(np.concatenate(reply), whole)
    assert s2s.speak([], answer.hidden_states[:0]).shape == (0,)


# ---------------------------------------------------------------------------- the entry point
def bin_cmd(work, out: Path, *extra):
    return [
        "--config", str(REPO / "conf/decode.yaml"),
        "--llm_conf", f"path={work['llm']}",
        "--speech_input_model", str(work["speech_input"]),
        "--speech_output_model", str(work["speech_output"]),
        "--codec_dir", str(work["codec"]),
        "--data_path_and_name_and_type", f"{work['data']}/wav.scp,speech,sound",
        "--output_dir", str(out),
        "--max_new_tokens", str(DECODE["max_new_tokens"]),
        "--max_codec_tokens", str(DECODE["max_codec_tokens"]), "--seed", str(DECODE["seed"]),
        *extra,
    ]


def test_entry_point_writes_every_output_for_every_utterance(s2s, work, tmp_path):
    from espnet_freeze_omni.bin import speech2speech_inference

    keys = ["d1-t3", "d2-t1", "solo", "d1-t2"]  # d1-t1 only as history of later turns
    key_file = tmp_path / "keys.scp"
    key_file.write_text("".join(f"{k} whatever\n" for k in keys))
    out = tmp_path / "out"
    speech2speech_inference.main(bin_cmd(work, out, "--key_file", str(key_file),
                                         "--qa_refs", str(work["data"] / "qa_refs.jsonl"),
                                         "--batch_size", "1", "--history_mode", "own"))
    tables = {}
    for name in ("asr_ctc/text", "asr_llm/text", "text_in/text", "speech_in/text",
                 "turn/turn_info"):
        tables[name] = kaldi(out / name)
        assert sorted(tables[name]) == sorted(keys), name
    # speech out: every turn the state head did not ignore (label 2), as in a duplex dialogue;
    # the fixture's head answers each at its first chunk, so every turn is voiced; at that
    # chunk's end plus the look-ahead that completes it (when a live session could answer)
    voiced = sorted(k for k in keys if tables["turn/turn_info"][k].split()[0] != "2")
    assert voiced == sorted(keys)
    first = 0.16 + s2s.listener.chunk_lookahead_samples / 16000
    assert all(tables["turn/turn_info"][k] == f"1 {first:.3f}" for k in keys), \
        tables["turn/turn_info"]
    for name in ("speech_out/text", "speech_out/asr_text"):
        tables[name] = kaldi(out / name)
        assert sorted(tables[name]) == voiced, name
    assert sorted(p.stem for p in (out / "speech_out" / "wav").iterdir()) == voiced
    for utt in keys:
        label, seconds = tables["turn/turn_info"][utt].split()
        assert label in "012" and float(seconds) >= -1
    for utt in voiced:
        info = soundfile.info(out / "speech_out" / "wav" / f"{utt}.wav")
        assert info.samplerate == 24000 and info.frames > 0
        assert tables["speech_out/text"][utt] == tables["speech_in/text"][utt]

    # own: histories hold the LLM's own earlier answers: text-in ones for text in (questions
    # from the QA references first, then the data dir's text), speech-in ones for speech in
    # (the session mode's histories: tests/test_duplex_session.py)
    q1, q2, q3 = "what colour is the sky", "where does anna live", "how old is tom"
    t1 = s2s.answer_text(q1).text
    t2 = s2s.answer_text(q2, [{"role": "user", "content": q1},
                              {"role": "assistant", "content": t1}]).text
    assert tables["text_in/text"]["d1-t2"] == " ".join(t2.split())
    s1 = s2s.answer(read_wav(work, "d1-t1")).text
    history = [{"role": "user", "content": q1}, {"role": "assistant", "content": s1}]
    s2 = s2s.answer(read_wav(work, "d1-t2"), history).text
    history += [{"role": "user", "content": q2}, {"role": "assistant", "content": s2}]
    assert tables["speech_in/text"]["d1-t2"] == " ".join(s2.split())
    assert tables["speech_in/text"]["d1-t3"] == " ".join(
        s2s.answer(read_wav(work, "d1-t3"), history).text.split())
    assert tables["speech_in/text"]["solo"] == " ".join(
        s2s.answer(read_wav(work, "solo")).text.split())
    assert tables["asr_ctc/text"]["solo"] == s2s.ctc_transcribe(read_wav(work, "solo"))

    # an utterance sounds the same whatever else the job decoded
    alone = tmp_path / "alone"
    (tmp_path / "one.scp").write_text("solo x\n")
    speech2speech_inference.main(bin_cmd(work, alone, "--key_file", str(tmp_path / "one.scp"),
                                         "--outputs", "speech_out", "--history_mode", "none",
                                         "--speak_ignored", "true"))
    assert sorted(p.name for p in alone.iterdir()) == ["speech_out"]
    np.testing.assert_array_equal(soundfile.read(alone / "speech_out/wav/solo.wav")[0],
                                  soundfile.read(out / "speech_out/wav/solo.wav")[0])


def test_ignored_turns_are_not_voiced(s2s, work, monkeypatch):
    """A turn the state head ignores (side talk) gets a speech-in answer and its turn line,
    but no spoken answer, unless --speak_ignored; a turn it answers is voiced either way."""
    import io

    from espnet_freeze_omni.bin.speech2speech_inference import Questions, TestSetDecoder
    from espnet_freeze_omni.inference.speech_input_inference import ListenResult
    from espnet_freeze_omni.models.speech_input import STATE_IGNORE, STATE_RESPOND

    wavs = {u: str(work["data"] / "wav" / f"{u}.wav") for u in ("solo", "d2-t1")}
    decision = {len(read_wav(work, "solo")): STATE_IGNORE,
                len(read_wav(work, "d2-t1")): STATE_RESPOND}
    assert len(decision) == 2  # the two recordings tell apart by length
    monkeypatch.setattr(s2s, "listen", lambda wav, history=None: ListenResult(
        states=[decision[len(wav)]], chunk_seconds=0.64, decision=decision[len(wav)],
        decision_time=0.64))
    outputs = ["speech_in", "speech_out", "turn"]
    for speak_ignored, expect_voiced in ((False, ["d2-t1"]), (True, ["d2-t1", "solo"])):
        decoder = TestSetDecoder(s2s, wavs, Questions(None, work["data"]), "none", 1,
                                 speak_ignored=speak_ignored)
        files = {n: io.StringIO() for n in ("speech_in", "speech_out", "speech_out_asr", "turn")}
        wav_dir = work["root"] / f"wavs_{speak_ignored}"
        wav_dir.mkdir(exist_ok=True)
        for utt in wavs:
            decoder.decode_utterance(utt, outputs, files, wav_dir)
        said = {line.split(" ", 1)[0] for line in files["speech_out"].getvalue().splitlines()}
        assert sorted(said) == expect_voiced
        assert sorted(p.stem for p in wav_dir.iterdir()) == expect_voiced
        assert len(files["speech_in"].getvalue().splitlines()) == 2
        assert files["turn"].getvalue().splitlines() == ["solo 2 0.640", "d2-t1 1 0.640"]
        assert decoder.silent == ([] if speak_ignored else ["solo"])


def test_asr_only_outputs(work, tmp_path):
    from espnet_freeze_omni.bin import speech2speech_inference

    out = tmp_path / "asr"
    speech2speech_inference.main(bin_cmd(work, out, "--outputs", "asr_ctc", "asr_llm"))
    assert sorted(p.name for p in out.iterdir()) == ["asr_ctc", "asr_llm"]
    assert sorted(kaldi(out / "asr_llm/text")) == sorted(UTTERANCES)


# ---------------------------------------------------------------------------- packing
def load_pack_model():
    spec = importlib.util.spec_from_file_location("pack_model", PACK_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pack(work, zip_path: Path, codec_args):
    exp = work["root"] / "exp"
    (work["root"] / "RESULTS.md").write_text("# results\n")
    load_pack_model().main([
        "--outpath", str(zip_path),
        "--yaml", f"speech_input_config={exp}/speech_input_stage3/config.yaml",
        "--file", f"speech_input_model={work['speech_input']}",
        "--yaml", f"speech_output_config={exp}/speech_output_stage3/config.yaml",
        "--file", f"speech_output_model={work['speech_output']}",
        *codec_args,
        "--file", f"feats_stats={work['stats']}",
        "--option", str(work["root"] / "RESULTS.md"),
    ])


def test_packed_model_decodes_exactly_like_the_files(s2s, work, tmp_path):
    import yaml

    from espnet_freeze_omni.inference.speech2speech import Speech2Speech, unpack_model

    zip_path = tmp_path / "packed" / "model.zip"
    pack(work, zip_path, ["--yaml", f"codec_conf={work['codec']}/codec_conf.yaml"])  # as stage 17
    cache = tmp_path / "cache"
    files = unpack_model(zip_path, cache)
    for key in ("speech_input_config", "speech_input_model", "speech_output_config",
                "speech_output_model", "codec_config", "codec_model", "feats_stats"):
        assert Path(files[key]).is_file() and Path(files[key]).is_relative_to(cache), key
    with open(files["speech_input_config"]) as f:  # paths inside configs now point to the copy
        assert yaml.safe_load(f)["normalize_conf"]["stats_file"] == files["feats_stats"]

    packed = Speech2Speech.from_pretrained(zip_path, llm_path=work["llm"], cachedir=cache, **DECODE)
    for utt in ("d1-t1", "solo"):
        wav = read_wav(work, utt)
        a, b = s2s.answer(wav), packed.answer(wav)
        assert a.token_ids == b.token_ids
        torch.testing.assert_close(a.hidden_states, b.hidden_states, atol=0, rtol=0)
        s2s.reseed(utt)
        packed.reseed(utt)
        np.testing.assert_array_equal(s2s.speak(a.token_ids, a.hidden_states),
                                      packed.speak(b.token_ids, b.hidden_states))
        assert s2s.ctc_transcribe(wav) == packed.ctc_transcribe(wav)
        assert s2s.listen(wav).states == packed.listen(wav).states

    # packed again at the same path: unpacked again, not served from the cache
    np.savez(work["stats"], count=np.array(100.0), sum=np.zeros(80), sum_square=np.full(80, 5e3))
    pack(work, zip_path, ["--codec_dir", str(work["codec"])])
    again = unpack_model(zip_path, cache)
    np.testing.assert_array_equal(np.load(again["feats_stats"])["sum"], np.zeros(80))
    assert Path(again["codec_model"]).read_bytes() == (work["codec"] / "codebook.npz").read_bytes()


def test_packed_decode_config_gives_the_decoding_defaults(work, tmp_path):
    """Stage 17 packs the recipe's decode.yaml: a model loaded from the zip (server, CLI)
    decodes with its settings; keywords given to from_pretrained still win."""
    import yaml

    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    decode = tmp_path / "decode.yaml"
    decode.write_text(yaml.safe_dump(dict(
        outputs=["speech_in"], history_mode="session", max_new_tokens=7, top_k=1, seed=11,
        packet_conf=dict(first_packet=10, lookahead=8, packet=40, overlap=8))))
    zip_path = tmp_path / "packed" / "model.zip"
    pack(work, zip_path, ["--codec_dir", str(work["codec"]), "--yaml", f"decode_config={decode}"])
    model = Speech2Speech.from_pretrained(zip_path, llm_path=work["llm"],
                                          cachedir=tmp_path / "cache", seed=5)
    assert model.synthesizer.packet_conf == dict(first_packet=10, lookahead=8, packet=40,
                                                 overlap=8)
    assert model.listener.max_new_tokens == 7 and model.synthesizer.top_k == 1
    assert model.seed == 5  # the keyword, not the packed 11


# ---------------------------------------------------------------------------- bad input
def test_missing_model_file_is_named(work, tmp_path):
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    missing = tmp_path / "nowhere" / "valid.loss.best.pth"
    with pytest.raises(FileNotFoundError, match=f"speech_output_model not found: {missing}"):
        Speech2Speech.from_files(work["speech_input"].parent / "config.yaml", work["speech_input"],
                                 work["speech_output"].parent / "config.yaml", missing,
                                 codec_dir=work["codec"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no_codec")):
        Speech2Speech.from_files(None, work["speech_input"], None, work["speech_output"],
                                 codec_dir=tmp_path / "no_codec")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "no.zip")):
        Speech2Speech.from_pretrained(tmp_path / "no.zip", cachedir=tmp_path / "cache")


def test_unknown_utterance_in_key_file_is_named(work, tmp_path):
    from espnet_freeze_omni.bin import speech2speech_inference

    key_file = tmp_path / "keys.scp"
    key_file.write_text("solo a\nghost b\n")
    with pytest.raises(KeyError, match=rf"ghost \({key_file}:2\) is not in .*wav.scp"):
        speech2speech_inference.main(bin_cmd(work, tmp_path / "o", "--key_file", str(key_file)))


def test_unreadable_audio_and_missing_question_are_named(work, tmp_path):
    from espnet_freeze_omni.bin import speech2speech_inference

    data = tmp_path / "data"
    data.mkdir()
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    (data / "wav.scp").write_text(f"bad {broken}\n")
    cmd = bin_cmd(work, tmp_path / "o", "--outputs", "asr_ctc")
    cmd[cmd.index("--data_path_and_name_and_type") + 1] = f"{data}/wav.scp,speech,sound"
    with pytest.raises(RuntimeError, match=rf"utterance bad.*{broken}"):
        speech2speech_inference.main(cmd)

    soundfile.write(broken, np.zeros(8000, dtype=np.float32), 16000)
    cmd[cmd.index("--outputs") + 1] = "text_in"
    with pytest.raises(KeyError, match="utterance bad: no text question"):
        speech2speech_inference.main(cmd)


def test_gan_codec_dir_gives_its_best_checkpoint_or_says_what_it_looked_for(tmp_path):
    from espnet_freeze_omni.inference.speech2speech import codec_conf_from_dir, codec_files

    (tmp_path / "config.yaml").write_text("codec: soundstream\n")
    with pytest.raises(FileNotFoundError, match="valid.mel_loss.best.pth.*latest.pth"):
        codec_conf_from_dir(tmp_path)
    (tmp_path / "train.total_count.best.pth").write_bytes(b"")
    (tmp_path / "latest.pth").write_bytes(b"")
    conf = codec_conf_from_dir(tmp_path, device="cpu")
    assert conf == {"type": "espnet_gan_codec", "train_config": str(tmp_path / "config.yaml"),
                    "model_file": str(tmp_path / "train.total_count.best.pth"), "device": "cpu"}
    assert codec_files(conf) == (conf["train_config"], conf["model_file"])


def test_guidance_scale_goes_from_the_command_line_to_every_segment(work, tmp_path, monkeypatch):
    from espnet_freeze_omni.bin import speech2speech_inference
    from espnet_freeze_omni.inference import speech_synthesis

    scales = []
    real = speech_synthesis.generate_codec_tokens

    def spy(*args, **kwargs):
        scales.append(kwargs.get("guidance_scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(speech_synthesis, "generate_codec_tokens", spy)
    (tmp_path / "one.scp").write_text("solo x\n")
    out = tmp_path / "out"
    speech2speech_inference.main(bin_cmd(work, out, "--key_file", str(tmp_path / "one.scp"),
                                         "--outputs", "speech_out", "--history_mode", "none",
                                         "--speak_ignored", "true", "--guidance_scale", "2.5"))
    assert scales and set(scales) == {2.5}
    assert soundfile.info(out / "speech_out" / "wav" / "solo.wav").frames > 0
