"""Importing the authors' released checkpoints (espnet_freeze_omni/release, issue 30).

A release-format directory is built here with random weights, the release's key names and
tensor shapes at tiny sizes (encoder d=64, 2 layers; the tiny Qwen2 LLM, hidden 128;
decoder 32 wide), converted to a packed model, loaded with Speech2Speech.from_pretrained
and run through a streaming session. Malformed release dirs must fail naming the file and
the key. The module options that make a converted model behave like the release
(position mode, input layer, Kaldi fbank, the state rule) are checked against
straightforward re-derivations of the release's formulas.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

D, HEADS, UNITS, BLOCKS, KERNEL = 64, 4, 128, 2, 5
LLM_HIDDEN = 128
DEC_HIDDEN, DEC_HEADS, DEC_UNITS, DEC_BLOCKS, CODES = 32, 2, 64, 2, 16
PROMPTS, TASKS = 5, 7
TEXTS = ["what color is the sky", "the sky is blue.", "how old is tom", "tom is ten."]


# ---------------------------------------------------------------------------- a fake release
def release_audio_llm_state(gen: torch.Generator, llm_hidden=LLM_HIDDEN, input_layer=True):
    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    freq = ((80 - 1) // 2 - 1) // 2
    s = {"encoder.global_cmvn.mean": r(80) * 10 + 5,
         "encoder.global_cmvn.istd": torch.rand(80, generator=gen) * 0.5 + 0.2,
         "encoder.enc.0.core.conv.0.weight": r(D, 1, 3, 3), "encoder.enc.0.core.conv.0.bias": r(D),
         "encoder.enc.0.core.conv.2.weight": r(D, D, 3, 3) * 0.3,
         "encoder.enc.0.core.conv.2.bias": r(D),
         "encoder.enc.0.core.out.0.weight": r(D, D * freq) * 0.2,
         "encoder.enc.0.core.out.0.bias": r(D)}
    if input_layer:
        s.update({"encoder.enc.1.embed.0.weight": r(D, D), "encoder.enc.1.embed.0.bias": r(D),
                  "encoder.enc.1.embed.1.weight": 1 + r(D), "encoder.enc.1.embed.1.bias": r(D)})
    for n in range(BLOCKS):
        p = f"encoder.enc.1.encoders.{n}."
        for lin in ("q", "k", "v", "out"):
            s[p + f"self_attn.linear_{lin}.weight"] = r(D, D)
            s[p + f"self_attn.linear_{lin}.bias"] = r(D)
        s[p + "self_attn.linear_pos.weight"] = r(D, D)
        s[p + "self_attn.pos_bias_u"] = r(HEADS, D // HEADS)
        s[p + "self_attn.pos_bias_v"] = r(HEADS, D // HEADS)
        s[p + "feed_forward.w_1.weight"] = r(UNITS, D)
        s[p + "feed_forward.w_1.bias"] = r(UNITS)
        s[p + "feed_forward.w_2.weight"] = r(D, UNITS)
        s[p + "feed_forward.w_2.bias"] = r(D)
        for norm in ("norm1", "norm2"):
            s[p + f"{norm}.weight"] = 1 + r(D)
            s[p + f"{norm}.bias"] = r(D)
    s.update({"encoder.enc.1.after_norm.weight": 1 + r(D), "encoder.enc.1.after_norm.bias": r(D),
              "adpter.conv1d2.weight": r(2 * D, D, KERNEL), "adpter.conv1d2.bias": r(2 * D),
              "adpter.bn2.weight": 1 + r(2 * D), "adpter.bn2.bias": r(2 * D),
              "adpter.project.weight": r(llm_hidden, 2 * D), "adpter.project.bias": r(llm_hidden),
              "task_embeddings.weight": r(TASKS, llm_hidden),
              "prompt_embeddings.weight": r(PROMPTS, llm_hidden),
              "predictor_head.weight": r(4, llm_hidden), "predictor_head.bias": r(4),
              "llm_decoder.model.embed_tokens.weight": r(10, llm_hidden)})
    return s


def release_decoder_state(gen: torch.Generator):
    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.1

    s = {"embedding.weight": r(CODES + 4, DEC_HIDDEN), "norm.weight": 1 + r(DEC_HIDDEN),
         "out_fnn.weight": r(CODES + 4, DEC_HIDDEN), "out_fnn.bias": r(CODES + 4)}
    for group, n in (("layers_pre_nn", DEC_BLOCKS // 2), ("layers", DEC_BLOCKS),
                     ("layers_prefix", DEC_BLOCKS)):
        for i in range(n):
            p = f"{group}.{i}."
            for proj in "qkvo":
                s[p + f"self_attn.{proj}_proj.weight"] = r(DEC_HIDDEN, DEC_HIDDEN)
            s[p + "mlp.gate_proj.weight"] = r(DEC_UNITS, DEC_HIDDEN)
            s[p + "mlp.up_proj.weight"] = r(DEC_UNITS, DEC_HIDDEN)
            s[p + "mlp.down_proj.weight"] = r(DEC_HIDDEN, DEC_UNITS)
            s[p + "input_layernorm.weight"] = 1 + r(DEC_HIDDEN)
            s[p + "post_attention_layernorm.weight"] = 1 + r(DEC_HIDDEN)
    return s


def train_yaml(llm_hidden=LLM_HIDDEN, **model_conf):
    tr = {"transformer-input-dim": D, "transformer-output-dim": D,
          "transformer-attention-dim": D, "transformer-attention-heads": HEADS,
          "transformer-linear-units": UNITS, "transformer-num-blocks": BLOCKS,
          "transformer-dropout-rate": 0.1, "transformer-attention-dropout-rate": 0.0,
          "transformer-positional-dropout-rate": 0.1, "transformer-input-layer": "linear",
          "transformer-pos-enc-class": "rel-enc", "transformer-normalize-before": True,
          "transformer-chunk_size": 4, "transformer-left_chunks": 16,
          "transformer-dynamic-chunks": False}
    conf = {"llm_path": "/release/Qwen2-7B-Instruct", "enc_out_dim": D,
            "llm_embed_dim": llm_hidden, "kernel_size": KERNEL, "adpter_type": "subsampling",
            "activation_func": "gelu", "norm": "layer", "prompt_finetune": True,
            "add_prompt_before": True, "prompt_num": PROMPTS, "predict_usr_state": 4,
            "chunk_size": 4, "task_type": "prompt"}
    conf.update(model_conf)
    return {"input_dim": 80, "output_dim": 100, "cmvn_file": "/release/global_cmvn",
            "is_json_cmvn": True,
            "encoder_conf": {"overview_conf": {"encoder-input-dim": 80, "encoder-output-dim": D,
                                               "encoder-layer-config": "subsampling-transformer"},
                             "para_conf": {"subsampling": {"subsampling-rate": 4,
                                                           "subsampling-input-dim": 80,
                                                           "subsampling-output-dim": D},
                                           "transformer": tr}},
            "model_conf": conf}


def write_release(root: Path, seed=0, audio_state=None, yaml_conf=None, decoder_state=None):
    gen = torch.Generator().manual_seed(seed)
    audio_state = release_audio_llm_state(gen) if audio_state is None else audio_state
    decoder_state = release_decoder_state(gen) if decoder_state is None else decoder_state
    (root / "audiollm").mkdir(parents=True, exist_ok=True)
    (root / "decoder").mkdir(exist_ok=True)
    (root / "codec").mkdir(exist_ok=True)
    (root / "audiollm" / "train.yaml").write_text(yaml.safe_dump(yaml_conf or train_yaml()))
    torch.save(audio_state, root / "audiollm" / "final.pt")
    mean = audio_state.get("encoder.global_cmvn.mean", torch.zeros(80)).double()
    istd = audio_state.get("encoder.global_cmvn.istd", torch.ones(80)).double()
    count = 1000.0
    (root / "audiollm" / "global_cmvn").write_text(json.dumps({
        "mean_stat": (mean * count).tolist(),
        "var_stat": ((mean ** 2 + istd ** -2) * count).tolist(), "frame_num": count}))
    (root / "decoder" / "model.json").write_text(json.dumps([DEC_HIDDEN, CODES, {
        "idim": DEC_HIDDEN, "odim": CODES, "encoder_output_dim": DEC_HIDDEN,
        "transformer_attention_dim": DEC_HIDDEN, "transformer_attention_heads": DEC_HEADS,
        "transformer_linear_units": DEC_UNITS, "transformer_num_blocks": DEC_BLOCKS,
        "transformer_dropout_rate": 0.1, "kv_cache_prefix_finetune": 1}]))
    torch.save({"model": decoder_state}, root / "decoder" / "final.pt")
    (root / "codec" / "model.json").write_text(json.dumps({"n_codes": CODES}))
    (root / "server.json").write_text(json.dumps({"decoder_top_k": 2}))
    return audio_state, decoder_state


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from espnet_freeze_omni.codec.embedded import EmbeddedCodec, EmbeddedCodecConfig
    from espnet_freeze_omni.llm.tiny import build_tiny_llm

    root = tmp_path_factory.mktemp("release_import")
    llm = build_tiny_llm(root / "llm", TEXTS, family="qwen2", hidden_size=LLM_HIDDEN)
    other_llm = build_tiny_llm(root / "llm96", TEXTS, family="qwen2", hidden_size=96)
    rng = np.random.RandomState(0)
    cfg = EmbeddedCodecConfig(gl_iters=2, vocab_size=CODES)
    EmbeddedCodec(
        cfg, rng.randn(CODES, cfg.frames_per_token * cfg.n_mels).astype(np.float32),
        np.abs(rng.randn(CODES, cfg.frames_per_token, cfg.n_freq)).astype(np.float32) * 0.01,
    ).save(root / "codec")
    release = root / "release"
    audio_state, decoder_state = write_release(release)
    out = root / "exp" / "release" / "freeze_omni_model.zip"
    from espnet_freeze_omni.bin.import_release import main

    main(["--release_dir", str(release), "--llm_path", str(llm), "--out", str(out),
          "--codec_dir", str(root / "codec"), "--llm_dtype", "float32"])
    return dict(root=root, llm=llm, other_llm=other_llm, release=release, zip=out,
                codec=root / "codec", audio_state=audio_state, decoder_state=decoder_state)


@pytest.fixture(scope="module")
def s2s(work):
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech

    return Speech2Speech.from_pretrained(work["zip"], llm_path=work["llm"],
                                         cachedir=work["root"] / "cache", max_new_tokens=6,
                                         max_codec_tokens=30, seed=1)


# ---------------------------------------------------------------------------- conversion
def test_converted_tensors_equal_the_release_tensors(s2s, work):
    src = work["audio_state"]
    model = s2s.listener.model
    ours = model.state_dict()
    pairs = {
        "encoder.enc.1.encoders.1.self_attn.linear_q.weight": "encoder.encoders.1.self_attn.linear_q.weight",
        "encoder.enc.1.encoders.0.self_attn.pos_bias_u": "encoder.encoders.0.self_attn.pos_bias_u",
        "encoder.enc.1.encoders.0.self_attn.linear_pos.weight": "encoder.encoders.0.self_attn.linear_pos.weight",
        "encoder.enc.0.core.out.0.weight": "encoder.embed.out.0.weight",
        "encoder.enc.1.embed.0.weight": "encoder.input_layer.0.weight",
        "adpter.conv1d2.weight": "adapter.conv1d2.weight",
        "adpter.bn2.bias": "adapter.bn2.bias",
        "predictor_head.weight": "predictor_head.weight",
        "predictor_head.bias": "predictor_head.bias",
        "prompt_embeddings.weight": "prompt_embeddings.weight",
        "task_embeddings.weight": "task_embeddings.weight",
    }
    for theirs, mine in pairs.items():
        torch.testing.assert_close(ours[mine], src[theirs], atol=0, rtol=0, msg=mine)
    torch.testing.assert_close(model.normalize.mean.double(),
                               src["encoder.global_cmvn.mean"].double(), atol=0, rtol=0)
    torch.testing.assert_close(model.normalize.std.double(),
                               1 / src["encoder.global_cmvn.istd"].double())
    assert model.task_embeddings.num_embeddings == TASKS  # from the tensor, not the yaml
    assert model.state_rule == "release"
    assert model.encoder.position_mode == "release"
    assert not model.ctc.ctc_lo.weight.any()  # synthesized: zeros
    dec = s2s.synthesizer.decoder.state_dict()
    for key in ("layers.1.mlp.down_proj.weight", "layers_prefix.0.self_attn.k_proj.weight",
                "layers_pre_nn.0.input_layernorm.weight", "embedding.weight", "out_fnn.bias"):
        torch.testing.assert_close(dec[key], work["decoder_state"][key], atol=0, rtol=0)


def test_imported_model_runs_a_streaming_dialogue(s2s, monkeypatch):
    from espnet_freeze_omni.inference import duplex_session
    from espnet_freeze_omni.release.kaldi_fbank import KaldiStreamingFrontend

    # random weights: make the release rule answer at the first chunk it may
    decided = []

    def respond(probs, rule="argmax"):
        decided.append(rule)
        return duplex_session.STATE_RESPOND
    monkeypatch.setattr(duplex_session, "decide_state", respond)
    session = s2s.session(vad=False)
    assert isinstance(session.state_rule, str) and session.state_rule == "release"
    before = session.history_length
    rng = np.random.RandomState(1)
    events = []
    for _ in range(8):
        events += session.feed((rng.randn(1600) * 0.1).astype(np.float32))
    events += session.flush()
    types = [e.type for e in events]
    assert "state" in types and "turn_ended" in types, types
    assert set(decided) == {"release"}
    assert session.history_length > before  # the LLM K/V grew
    assert any(t in types for t in ("text", "answer_done"))
    from espnet_freeze_omni.inference.streaming_frontend import streaming_frontend_for
    assert isinstance(streaming_frontend_for(s2s.listener.model.frontend),
                      KaldiStreamingFrontend)


def test_cli_and_packed_files(work):
    import zipfile

    with zipfile.ZipFile(work["zip"]) as z:
        names = z.namelist()
        meta = yaml.safe_load(z.read("meta.yaml"))
    for key in ("speech_input_config", "speech_output_config", "codec_config"):
        assert key in meta["yaml_files"]
    assert "release_import.json" in names


# ---------------------------------------------------------------------------- release behaviour
def test_release_position_mode_and_input_layer_follow_the_release_formulas():
    """Offline, the position term reads absolute key indices (no relative shift); streamed,
    the first 17 chunks equal offline, the 18th numbers its keys 4 frames lower."""
    from espnet_freeze_omni.encoder import StreamingChunkEncoder

    torch.manual_seed(0)
    enc = StreamingChunkEncoder(80, output_size=32, attention_heads=2, linear_units=64,
                                num_blocks=1, chunk_size=4, left_chunks=16,
                                position_mode="release", input_layer="linear").eval()
    x = torch.randn(1, 16 * 19 + 3, 80)
    with torch.no_grad():
        offline, _, _ = enc(x, torch.tensor([x.size(1)]))
        state = enc.init_streaming_state()
        streamed, _ = enc.forward_chunk(x, state, is_final=True)

        # the release's score, written out: (q+u).k + (q+v).W_pos PE(j)
        layer = enc.encoders[0]
        att = layer.self_attn
        h = enc.input_layer(enc.embed(x)) * math.sqrt(32)
        T = h.size(1)
        pe = torch.zeros(T, 32)
        pos = torch.arange(T, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, 32, 2, dtype=torch.float32) * -(math.log(10000.0) / 32))
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        n = layer.norm1(h)
        q = att.linear_q(n).view(1, T, 2, 16)
        k = att.linear_k(n).view(1, T, 2, 16).transpose(1, 2)
        v = att.linear_v(n).view(1, T, 2, 16).transpose(1, 2)
        p = att.linear_pos(pe).view(1, T, 2, 16).transpose(1, 2)
        ac = ((q + att.pos_bias_u).transpose(1, 2)) @ k.transpose(-2, -1)
        bd = ((q + att.pos_bias_v).transpose(1, 2)) @ p.transpose(-2, -1)
        chunk = torch.arange(T) // 4
        mask = (chunk[None] <= chunk[:, None]) & (chunk[None] >= chunk[:, None] - 16)
        scores = ((ac + bd) / 4).masked_fill(~mask, -1e30)
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, T, 32)
        y = h + att.linear_out(o)
        y = y + layer.feed_forward(layer.norm2(y))
        expected = enc.after_norm(y)
    torch.testing.assert_close(offline, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(streamed[:, :68], offline[:, :68], atol=1e-4, rtol=1e-4)
    assert (streamed[:, 68:72] - offline[:, 68:72]).abs().max() > 1e-4


def test_recipe_encoder_has_no_input_layer_and_relative_positions():
    from espnet_freeze_omni.encoder import StreamingChunkEncoder

    enc = StreamingChunkEncoder(80, output_size=32, attention_heads=2, linear_units=64,
                                num_blocks=1)
    assert enc.position_mode == "relative" and not hasattr(enc, "input_layer")
    assert not any(k.startswith("input_layer") for k in enc.state_dict())


def test_kaldi_fbank_frontend_is_torchaudio_kaldi_fbank_and_streams_exactly():
    import torchaudio.compliance.kaldi as kaldi

    from espnet_freeze_omni.inference.streaming_frontend import streaming_frontend_for
    from espnet_freeze_omni.release.kaldi_fbank import KaldiFbankFrontend

    wav = torch.from_numpy(np.random.RandomState(0).randn(7000).astype(np.float32) * 0.1)
    front = KaldiFbankFrontend()
    feats, lens = front(wav[None], torch.tensor([7000]))
    ref = kaldi.fbank(wav[None] * 32768, dither=0, frame_length=25, frame_shift=10,
                      num_mel_bins=80)
    torch.testing.assert_close(feats[0], ref, atol=0, rtol=0)
    assert int(lens[0]) == ref.size(0) == 1 + (7000 - 400) // 160
    stream = streaming_frontend_for(front)
    pieces = [stream.push(wav[i:i + 613].numpy()) for i in range(0, 7000, 613)]
    pieces.append(stream.flush())
    torch.testing.assert_close(torch.cat(pieces, dim=1)[0], ref, atol=1e-4, rtol=1e-5)


def test_release_state_rule_checks_ignore_first_then_respond():
    from espnet_freeze_omni.inference.duplex_session import decide_state
    from espnet_freeze_omni.models.speech_input import (
        STATE_IGNORE, STATE_LISTEN, STATE_RESPOND)

    p = torch.tensor([0.45, 0.05, 0.5])  # argmax: ignore; release: neither > 0.5
    assert decide_state(p) == STATE_IGNORE
    assert decide_state(p, "release") == STATE_LISTEN
    assert decide_state(torch.tensor([0.1, 0.3, 0.6]), "release") == STATE_IGNORE
    assert decide_state(torch.tensor([0.1, 0.6, 0.3]), "release") == STATE_RESPOND


# ---------------------------------------------------------------------------- malformed dirs
def convert(work, release: Path, llm=None, tmp=None):
    from espnet_freeze_omni.release.convert import import_release

    return import_release(release, llm or work["llm"], (tmp or release) / "out.zip",
                          codec_dir=work["codec"], llm_dtype="float32")


def variant(work, tmp_path, audio_edit=None, yaml_edit=None, decoder_edit=None):
    gen = torch.Generator().manual_seed(0)
    audio = release_audio_llm_state(gen)
    decoder = release_decoder_state(gen)
    conf = train_yaml()
    if audio_edit:
        audio_edit(audio)
    if yaml_edit:
        yaml_edit(conf)
    if decoder_edit:
        decoder_edit(decoder)
    release = tmp_path / "release"
    write_release(release, audio_state=audio, yaml_conf=conf, decoder_state=decoder)
    return release


def test_missing_file_is_named(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    release = tmp_path / "release"
    shutil.copytree(work["release"], release)
    (release / "decoder" / "final.pt").unlink()
    with pytest.raises(ReleaseImportError, match=r"decoder/final\.pt: file not found"):
        convert(work, release)


def test_wrong_shape_names_file_tensor_and_both_shapes(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    def edit(s):
        s["encoder.enc.1.encoders.1.feed_forward.w_1.weight"] = torch.zeros(UNITS + 1, D)
    release = variant(work, tmp_path, audio_edit=edit)
    with pytest.raises(ReleaseImportError) as e:
        convert(work, release)
    msg = str(e.value)
    assert "audiollm/final.pt" in msg and "encoder.enc.1.encoders.1.feed_forward.w_1.weight" in msg
    assert f"({UNITS + 1}, {D})" in msg and f"({UNITS}, {D})" in msg


def test_decoder_wrong_shape_and_missing_key_are_named(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    def edit(s):
        del s["layers_prefix.1.mlp.up_proj.weight"]
    release = variant(work, tmp_path, decoder_edit=edit)
    with pytest.raises(ReleaseImportError, match=r"decoder/final\.pt: missing key\(s\) "
                                                 r"layers_prefix\.1\.mlp\.up_proj\.weight"):
        convert(work, release)


def test_another_llm_hidden_size_is_refused(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    with pytest.raises(ReleaseImportError, match=r"train\.yaml: model_conf\.llm_embed_dim = 128 "
                                                 r"but the LLM .* hidden size 96"):
        convert(work, work["release"], llm=work["other_llm"], tmp=tmp_path)


@pytest.mark.parametrize("edit,pattern", [
    (lambda c: c["model_conf"].update(adpter_type="cnn"), r"adpter_type = 'cnn'"),
    (lambda c: c["encoder_conf"]["para_conf"]["transformer"].update(
        {"transformer-pos-enc-class": "abs-enc"}), r"transformer-pos-enc-class = 'abs-enc'"),
    (lambda c: c["model_conf"].update(enc_out_dim=D, llm_embed_dim=LLM_HIDDEN * 4),
     r"two-conv adapter|llm_embed_dim"),
    (lambda c: c["model_conf"].update(task_type="prefix"), r"task_type = 'prefix'"),
])
def test_unsupported_variants_are_refused(work, tmp_path, edit, pattern):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    release = variant(work, tmp_path, yaml_edit=edit)
    with pytest.raises(ReleaseImportError, match=r"train\.yaml: .*" + pattern):
        convert(work, release)


def test_batchnorm_adapter_is_refused_naming_the_key(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    def edit(s):
        s["adpter.bn2.running_mean"] = torch.zeros(2 * D)
    release = variant(work, tmp_path, audio_edit=edit)
    with pytest.raises(ReleaseImportError, match=r"adpter\.bn2\.running_mean present"):
        convert(work, release)


def test_unused_key_is_an_error(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError

    def edit(s):
        s["encoder.enc.1.encoders.0.self_attn.extra_gate"] = torch.zeros(3)
    release = variant(work, tmp_path, audio_edit=edit)
    with pytest.raises(ReleaseImportError, match=r"audiollm/final\.pt: unused key.*extra_gate"):
        convert(work, release)


def test_release_codec_needs_one_of_ours(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError, import_release

    # the fake release's codec/ has a model.json but no final.pt
    with pytest.raises(ReleaseImportError, match=r"codec: no release codec \(codec/model\.json "
                                                 r"and codec/final\.pt\) and no codec_dir"):
        import_release(work["release"], work["llm"], tmp_path / "x.zip")


def test_cmvn_files_json_and_kaldi_text(tmp_path):
    from espnet_freeze_omni.release.convert import read_cmvn_file, write_stats

    mean, var, count = np.linspace(-3, 5, 80), np.linspace(0.5, 4, 80), 250.0
    (tmp_path / "j").write_text(json.dumps({"mean_stat": list(mean * count),
                                            "var_stat": list((var + mean ** 2) * count),
                                            "frame_num": count}))
    sums = " ".join(f"{v:.10f}" for v in mean * count)
    squares = " ".join(f"{v:.10f}" for v in (var + mean ** 2) * count)
    (tmp_path / "k").write_text(f" [\n  {sums} {count}\n  {squares} 0 ]\n")
    for name in ("j", "k"):
        m, istd = read_cmvn_file(tmp_path / name)
        np.testing.assert_allclose(m, mean, rtol=1e-8)
        np.testing.assert_allclose(istd, 1 / np.sqrt(var), rtol=1e-6)
    write_stats(tmp_path / "s.npz", mean, 1 / np.sqrt(var))
    from espnet2.layers.global_mvn import GlobalMVN

    mvn = GlobalMVN(tmp_path / "s.npz")
    np.testing.assert_allclose(mvn.mean.numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(mvn.std.numpy(), np.sqrt(var), rtol=1e-8)


# ---------------------------------------------------------------------------- decoder text
@pytest.mark.parametrize("text,expected", [
    ("Hello there, how are you", "Hello there, how are you。"),
    ("Steps: 1. open the door 2. go in.", "Steps:1:open the door 2:go in."),
    ("(a) list\n\tthis*", ",a, listthis。"),
    ("价格是3.5元、很便宜", "价格是3.5元，很便宜。"),
    ("第一步：1. 打开", "第一步：1：打开。"),
    ("It is 3.14 today;", "It is 3:14 today。"),
    ("Done!", "Done!"),
    ("", ""),
])
def test_release_text_normalisation(text, expected):
    from espnet_freeze_omni.release.text_norm import release_text_normalize

    assert release_text_normalize(text) == expected


def test_release_text_normalizer_has_the_token_splitter_interface(s2s):
    from espnet_freeze_omni.release.text_norm import ReleaseTextNormalizer

    tok = s2s.llm.tokenizer
    ids = tok.encode("the sky is blue", add_special_tokens=False)
    out = ReleaseTextNormalizer(tok).split(ids)
    assert tok.decode(out) == "the sky is blue。"
    # the imported model's speech decoder reads the answer that way (decoder_text_norm)
    assert isinstance(s2s.synthesizer.token_splitter, ReleaseTextNormalizer)


def test_cmvn_from_the_file_and_no_input_layer(work, tmp_path):
    """Without the checkpoint's CMVN buffers the global_cmvn file gives the stats; without
    enc.1.embed.* (transformer-input-layer: none) the encoder has no input layer."""
    import zipfile

    def edit(s):
        for key in [k for k in s if k.startswith(("encoder.global_cmvn.", "encoder.enc.1.embed."))]:
            del s[key]

    def no_input_layer(c):
        c["encoder_conf"]["para_conf"]["transformer"]["transformer-input-layer"] = "none"
    release = variant(work, tmp_path, audio_edit=edit, yaml_edit=no_input_layer)
    mean, istd = np.linspace(-2, 3, 80), np.linspace(0.2, 0.9, 80)
    count = 500.0
    (release / "audiollm" / "global_cmvn").write_text(json.dumps({
        "mean_stat": list(mean * count), "var_stat": list((mean ** 2 + istd ** -2) * count),
        "frame_num": count}))
    out = convert(work, release)
    with zipfile.ZipFile(out) as z:
        conf = yaml.safe_load(z.read("speech_input/config.yaml"))
        with z.open("speech_input/feats_stats.npz") as f:
            stats = dict(np.load(f))
        with z.open("speech_input/model.pth") as f:
            state = torch.load(f)
    assert conf["encoder_conf"]["input_layer"] == "none"
    assert conf["normalize_conf"]["stats_file"] == "speech_input/feats_stats.npz"
    assert not any(k.startswith("encoder.input_layer") for k in state)
    np.testing.assert_allclose(stats["sum"] / stats["count"], mean, rtol=1e-10)
    np.testing.assert_allclose(state["normalize.std"].numpy(), 1 / istd, rtol=1e-8)


# ---------------------------------------------------------------------------- the codec (TiCodec)
# a tiny TiCodec: 512-wide codebook (fixed in the release), channels 256 -> 128 (the global
# embedding's width: added after stage 0) -> 64, 4 * 3 = 12 samples per token
TICODEC_JSON = {"resblock": "1", "upsample_rates": [4, 3], "upsample_kernel_sizes": [8, 3],
                "upsample_initial_channel": 256, "resblock_kernel_sizes": [3, 5],
                "resblock_dilation_sizes": [[1, 2, 1], [1, 1, 1]], "n_codes": CODES,
                "n_code_groups": 1, "residul_layer": 1, "global_code_num": 8,
                "global_tokens": [3, 1, 4, 1, 5, 9, 2, 6], "sampling_rate": 24000,
                "global_feature_conv": [128, 64, 128, 3, 1], "segment_size": 48}
TI_SPT = 12


def release_codec_state(gen: torch.Generator, h=TICODEC_JSON, encoder=False):
    """A TiCodec checkpoint as the release stores it, written out by hand: every conv
    weight-normed (weight_g, weight_v; ConvTranspose1d weights are [in, out, k]), the
    quantizer's codebooks and, with `encoder`, the Encoder + GlobalTokenEncoder (needs four
    stages: the release's encoder ends in a fixed 512-wide conv_post)."""
    def r(*shape, scale=0.1):
        return torch.randn(*shape, generator=gen) * scale

    g = {}

    def wn(name, out_ch, in_ch, k, transposed=False):
        v_shape = (in_ch, out_ch, k) if transposed else (out_ch, in_ch, k)
        g[name + ".weight_v"] = r(*v_shape)
        g[name + ".weight_g"] = 1 + r(v_shape[0], 1, 1)
        g[name + ".bias"] = r(out_ch)

    ch = h["upsample_initial_channel"]
    wn("conv_pre", ch, 512, 7)
    kernels = h["resblock_kernel_sizes"]
    for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
        wn(f"ups.{i}", ch // 2, ch, k, transposed=True)
        ch //= 2
        for j, (rk, rd) in enumerate(zip(kernels, h["resblock_dilation_sizes"])):
            for n in range(len(rd)):
                for convs in ("convs1", "convs2"):
                    wn(f"resblocks.{i * len(kernels) + j}.{convs}.{n}", ch, ch, rk)
    wn("conv_post", 1, ch, 7)
    q = {"quantizer_modules.0.embedding.weight": r(h["n_codes"], 512, scale=1.0)}
    for j in range(h["global_code_num"]):
        q[f"quantizer_modules_globaltokens.{j}.embedding.weight"] = r(
            h["n_codes"], 128 // h["global_code_num"], scale=1.0)
    if not encoder:
        return {"generator": g, "quantizer": q}
    g, gen_part = {}, g
    wn("conv_pre", 32, 1, 7)
    ch = 32
    stages = list(zip(h["upsample_rates"], h["upsample_kernel_sizes"]))[::-1]
    blocks = list(zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]))[::-1]
    for i, (u, k) in enumerate(stages):
        wn(f"ups.{i}", 2 * ch, ch, k)
        ch *= 2
        for j, (rk, rd) in enumerate(blocks):
            m = i * len(blocks) + j
            for n in range(len(rd)):
                for convs in ("convs1", "convs2"):
                    wn(f"resblocks.{m}.{convs}.{n}", ch, ch, rk)
            g[f"normalize.{m}.weight"] = 1 + r(ch)
            g[f"normalize.{m}.bias"] = r(ch)
    g["conv_post.weight"], g["conv_post.bias"] = r(512, 512, 3, scale=0.05), r(512)
    g["linear.0.weight"], g["linear.0.bias"] = r(128, 128), r(128)  # unused by the release
    c_in, hid, c_out, k, _ = h["global_feature_conv"]
    for n, (a, b) in zip((0, 2, 4), ((c_in, hid), (hid, hid), (hid, c_out))):
        g[f"GlobalTokenEncoder.conv.{n}.weight"] = r(b, a, k, scale=0.2)
    g["GlobalTokenEncoder.fn.0.weight"] = r(c_out, c_out, scale=0.3)
    g["GlobalTokenEncoder.fn.0.bias"] = r(c_out)
    g["GlobalTokenEncoder.fn.2.weight"], g["GlobalTokenEncoder.fn.2.bias"] = 1 + r(c_out), r(c_out)
    g["GlobalTokenEncoder.fn.2.running_mean"] = r(c_out, scale=0.01)
    g["GlobalTokenEncoder.fn.2.running_var"] = 0.001 + torch.rand(c_out, generator=gen) * 0.01
    g["GlobalTokenEncoder.fn.2.num_batches_tracked"] = torch.tensor(3)
    return {"generator": gen_part, "quantizer": q, "encoder": g}


def write_release_codec(root: Path, state=None, h=None, seed=3):
    state = release_codec_state(torch.Generator().manual_seed(seed)) if state is None else state
    (root / "codec").mkdir(parents=True, exist_ok=True)
    (root / "codec" / "model.json").write_text(json.dumps(h or TICODEC_JSON))
    torch.save(state, root / "codec" / "final.pt")
    return state


def reference_decode(state, tokens: torch.Tensor, h=TICODEC_JSON) -> torch.Tensor:
    """The TiCodec decoder written out with torch's own weight_norm formula (torch._weight_norm
    over dim 0) and functional convs: (T,) tokens -> (T * 12,) samples."""
    import torch.nn.functional as F

    g = state["generator"]

    def w(name):
        return torch._weight_norm(g[name + ".weight_v"], g[name + ".weight_g"], 0)

    def lrelu(x):
        return F.leaky_relu(x, 0.1)

    q = state["quantizer"]
    x = q["quantizer_modules.0.embedding.weight"][tokens].T[None]  # (1, 512, T)
    glob = torch.cat([q[f"quantizer_modules_globaltokens.{j}.embedding.weight"][t]
                      for j, t in enumerate(h["global_tokens"])])  # (128,)
    x = F.conv1d(x, w("conv_pre"), g["conv_pre.bias"], padding=3)
    kernels = h["resblock_kernel_sizes"]
    for i, (u, k) in enumerate(zip(h["upsample_rates"], h["upsample_kernel_sizes"])):
        x = F.conv_transpose1d(lrelu(x), w(f"ups.{i}"), g[f"ups.{i}.bias"], stride=u,
                               padding=(k - u) // 2)
        outs = []
        for j, (rk, rd) in enumerate(zip(kernels, h["resblock_dilation_sizes"])):
            y, b = x, f"resblocks.{i * len(kernels) + j}"
            for n, d in enumerate(rd):
                t = F.conv1d(lrelu(y), w(f"{b}.convs1.{n}"), g[f"{b}.convs1.{n}.bias"],
                             dilation=d, padding=d * (rk - 1) // 2)
                t = F.conv1d(lrelu(t), w(f"{b}.convs2.{n}"), g[f"{b}.convs2.{n}.bias"],
                             padding=(rk - 1) // 2)
                y = y + t
            outs.append(y)
        x = sum(outs) / len(outs)
        if x.size(1) == glob.numel():
            x = x + glob[None, :, None]
    x = F.conv1d(lrelu(x), w("conv_post"), g["conv_post.bias"], padding=3)
    return torch.tanh(x)[0, 0]


@pytest.fixture(scope="module")
def ti_work(work, tmp_path_factory):
    """The fake release with a TiCodec codec/, imported without --codec_dir."""
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech
    from espnet_freeze_omni.release.convert import import_release

    root = tmp_path_factory.mktemp("ticodec_import")
    release = root / "release"
    shutil.copytree(work["release"], release)
    codec_state = write_release_codec(release)
    out = import_release(release, work["llm"], root / "ti_model.zip", llm_dtype="float32")
    s2s = Speech2Speech.from_pretrained(out, llm_path=work["llm"], cachedir=root / "cache",
                                        max_new_tokens=6, max_codec_tokens=30, seed=1)
    return dict(root=root, release=release, zip=out, state=codec_state, s2s=s2s)


def test_ticodec_is_converted_and_packed(ti_work):
    import zipfile

    from espnet_freeze_omni.codec.ticodec import TiCodec, token_reach

    with zipfile.ZipFile(ti_work["zip"]) as z:
        meta = yaml.safe_load(z.read("meta.yaml"))
        provenance = json.loads(z.read("release_import.json"))
        assert {"codec/config.yaml", "codec/ticodec.pth"} <= set(z.namelist())
    assert meta["yaml_files"]["codec_config"] == "codec/config.yaml"
    assert meta["files"]["codec_model"] == "codec/ticodec.pth"
    assert "TiCodec" in provenance["codec"] and "decoding only" in provenance["codec"]
    assert provenance["dropped"]["codec/final.pt"] == {"keys": [], "entries": []}
    codec = ti_work["s2s"].codec
    assert isinstance(codec, TiCodec)
    assert (codec.samples_per_token, codec.vocab_size, codec.sample_rate) == (TI_SPT, CODES, 24000)
    assert codec.context_tokens == token_reach(codec.conf) == 8
    # every generator / quantizer tensor lands once: g + v pairs become one weight
    src = ti_work["state"]
    ours = codec.model.state_dict()
    pairs = sum(k.endswith("weight_g") for k in src["generator"])
    assert len(ours) == len(src["generator"]) - pairs + len(src["quantizer"])
    torch.testing.assert_close(ours["quantizer.codebook.weight"],
                               src["quantizer"]["quantizer_modules.0.embedding.weight"],
                               atol=0, rtol=0)
    torch.testing.assert_close(
        ours["quantizer.global_codebooks.7.weight"],
        src["quantizer"]["quantizer_modules_globaltokens.7.embedding.weight"], atol=0, rtol=0)
    torch.testing.assert_close(ours["generator.resblocks.3.convs2.1.bias"],
                               src["generator"]["resblocks.3.convs2.1.bias"], atol=0, rtol=0)
    # the folded weight_norm is torch's weight_norm on the same g and v (conv and transposed)
    for name in ("ups.0", "resblocks.1.convs1.2", "conv_post"):
        v, g = src["generator"][name + ".weight_v"], src["generator"][name + ".weight_g"]
        if name.startswith("ups"):  # [in, out, k]
            conv = torch.nn.ConvTranspose1d(v.shape[0], v.shape[1], v.shape[2], 4)
        else:
            conv = torch.nn.Conv1d(v.shape[1], v.shape[0], v.shape[2])
        conv = torch.nn.utils.weight_norm(conv)
        with torch.no_grad():
            conv.weight_g.copy_(g)
            conv.weight_v.copy_(v)
        torch.nn.utils.remove_weight_norm(conv)  # sets weight from g and v
        torch.testing.assert_close(ours[f"generator.{name}.weight"], conv.weight.detach(),
                                   atol=1e-6, rtol=1e-6)


def test_ticodec_decode_equals_the_written_out_reference(ti_work):
    codec = ti_work["s2s"].codec
    tokens = torch.from_numpy(np.random.RandomState(5).randint(0, CODES, 23))
    wav = codec.decode(tokens.numpy())
    assert wav.shape == (23 * TI_SPT,) and wav.dtype == np.float32
    expected = reference_decode(ti_work["state"], tokens)
    assert expected.numel() == 23 * TI_SPT
    np.testing.assert_allclose(wav, expected.numpy(), atol=1e-5, rtol=0)
    assert float(np.abs(wav).max()) > 1e-2  # not a trivially silent output
    # the global tokens matter: other ones give other audio
    other = codec.model(tokens[None], torch.zeros(1, 8, dtype=torch.long))[0]
    assert float((other - torch.from_numpy(wav)).abs().max()) > 1e-3
    assert not codec.can_encode  # the fake release's checkpoint has no encoder entry
    with pytest.raises(NotImplementedError, match="this TiCodec has no encoder"):
        codec.encode(np.zeros(48, dtype=np.float32), 24000)


def test_ticodec_context_tokens_and_exact_packets(ti_work):
    from espnet_freeze_omni.codec.packets import PacketDecoder

    codec = ti_work["s2s"].codec
    c = codec.context_tokens
    rng = np.random.RandomState(2)
    tokens = rng.randint(0, CODES, 161)
    offline = codec.decode(tokens)
    # changing token 40 changes audio exactly within c tokens of it (on the wider side)
    changed = tokens.copy()
    changed[40] = (changed[40] + 1) % CODES
    diff = np.abs(codec.decode(changed) - offline).reshape(-1, TI_SPT).max(1)
    moved = np.flatnonzero(diff > 0) - 40
    assert moved.min() >= -c and moved.max() <= c and max(-moved.min(), moved.max()) == c
    # the default schedule's margin (4 tokens) is below the reach: not exact
    assert not PacketDecoder(codec).exact
    ctx = 2 * c + 2
    decoder = PacketDecoder(codec, first_packet=c + 4, lookahead=ctx, packet=2 * ctx,
                            overlap=ctx)
    assert decoder.exact
    packets = []
    for start in range(0, len(tokens), 7):
        packets += decoder.push(tokens[start:start + 7])
    packets += decoder.flush()
    assert len(packets) > 3
    np.testing.assert_allclose(np.concatenate(packets), offline, atol=1e-5, rtol=0)


def test_imported_ticodec_voices_the_answers(ti_work, monkeypatch):
    from espnet_freeze_omni.inference import duplex_session

    monkeypatch.setattr(duplex_session, "decide_state",
                        lambda probs, rule="argmax": duplex_session.STATE_RESPOND)
    session = ti_work["s2s"].session(vad=False)
    rng = np.random.RandomState(1)
    events = []
    for _ in range(8):
        events += session.feed((rng.randn(1600) * 0.1).astype(np.float32))
    events += session.flush()
    audio = [e.pcm for e in events if e.type == "audio"]
    assert audio, [e.type for e in events]
    assert sum(len(a) for a in audio) % TI_SPT == 0
    assert all(np.isfinite(a).all() for a in audio)


def _codec_variant(tmp_path, state_edit=None, json_edit=None, state=None, h=None):
    """A release codec dir (default: the decode-only tiny codec), edited."""
    import copy

    state = release_codec_state(torch.Generator().manual_seed(3)) if state is None else state
    h = copy.deepcopy(TICODEC_JSON if h is None else h)
    if state_edit:
        state_edit(state)
    if json_edit:
        json_edit(h)
    write_release_codec(tmp_path, state=state, h=h)
    return tmp_path / "codec"


@pytest.mark.parametrize("state_edit,json_edit,pattern", [
    (None, lambda h: h.pop("upsample_kernel_sizes"),
     r"codec/model\.json: missing key 'upsample_kernel_sizes'"),
    (None, lambda h: h.update(n_code_groups=2),
     r"codec/model\.json: n_code_groups = 2 is not implemented"),
    (None, lambda h: h.update(global_tokens=[1, 2]),
     r"codec/model\.json: global_tokens has 2 entries"),
    (lambda s: s["generator"].update({"ups.1.weight_v": torch.zeros(128, 64, 5)}), None,
     r"codec/final\.pt: tensor generator\.ups\.1\.weight_v has shape \(128, 64, 5\), our "
     r"generator\.ups\.1\.weight needs \(128, 64, 3\)"),
    (lambda s: s["quantizer"].update({"quantizer_modules.0.embedding.weight":
                                      torch.zeros(CODES, 256)}), None,
     r"codec/final\.pt: tensor quantizer\.quantizer_modules\.0\.embedding\.weight has shape "
     r"\(16, 256\)"),
    (lambda s: s["generator"].update({"resblocks.0.convs3.0.weight": torch.zeros(1)}), None,
     r"codec/final\.pt: unused key\(s\) .*generator\.resblocks\.0\.convs3\.0\.weight"),
    (lambda s: s["generator"].pop("conv_post.weight_g"), None,
     r"codec/final\.pt: missing key generator\.conv_post\.weight_g"),
    (lambda s: s["generator"].pop("resblocks.2.convs1.0.bias"), None,
     r"codec/final\.pt: missing key\(s\) generator\.resblocks\.2\.convs1\.0\.bias"),
    (lambda s: s.update(discriminator={"w": torch.zeros(1)}), None,
     r"codec/final\.pt: unused entry 'discriminator'"),
])
def test_malformed_release_codec_is_named(tmp_path, state_edit, json_edit, pattern):
    from espnet_freeze_omni.release.convert import ReleaseImportError, convert_codec

    codec = _codec_variant(tmp_path, state_edit, json_edit)
    with pytest.raises(ReleaseImportError, match=pattern):
        convert_codec(codec / "model.json", codec / "final.pt")


def test_release_codec_vocabulary_must_be_the_decoders(work, tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError, import_release

    release = tmp_path / "release"
    shutil.copytree(work["release"], release)
    h = dict(TICODEC_JSON, n_codes=CODES * 2)
    state = release_codec_state(torch.Generator().manual_seed(3), h)
    write_release_codec(release, state=state, h=h)
    with pytest.raises(ReleaseImportError, match=r"codec/model\.json: n_codes = 32, the "
                                                 r"release's decoder .* predicts 16"):
        import_release(release, work["llm"], tmp_path / "x.zip")


# ---------------------------------------------------------------------------- TiCodec encoding
# four stages (the release's Encoder doubles 32 channels per stage into a 512-wide conv_post),
# 2 * 2 * 3 * 2 = 24 samples per token; one residual kernel keeps the 512-channel stage small
TICODEC_ENC_JSON = dict(TICODEC_JSON, upsample_rates=[2, 2, 3, 2],
                        upsample_kernel_sizes=[4, 4, 3, 4], resblock_kernel_sizes=[3],
                        resblock_dilation_sizes=[[1, 2, 1]])
TI_ENC_SPT = 24


def reference_encode(enc, q, wav: torch.Tensor, h=TICODEC_ENC_JSON):
    """The release's encoding written out with functional ops: (L,) audio -> (features
    (512, T), local tokens (T,), global tokens (global_code_num,))."""
    import torch.nn.functional as F

    def w(name):
        return torch._weight_norm(enc[name + ".weight_v"], enc[name + ".weight_g"], 0)

    def lrelu(x, slope=0.1):
        return F.leaky_relu(x, slope)

    x = F.conv1d(wav[None, None], w("conv_pre"), enc["conv_pre.bias"], padding=3)
    stages = list(zip(h["upsample_rates"], h["upsample_kernel_sizes"]))[::-1]
    blocks = list(zip(h["resblock_kernel_sizes"], h["resblock_dilation_sizes"]))[::-1]
    glob = None
    for i, (u, k) in enumerate(stages):
        x = F.conv1d(lrelu(x), w(f"ups.{i}"), enc[f"ups.{i}.bias"], stride=u,
                     padding=(k - u) // 2)
        acc = None
        for j, (rk, rd) in enumerate(blocks):
            m, y = i * len(blocks) + j, x
            for n, d in enumerate(rd):
                b = f"resblocks.{m}"
                t = F.conv1d(lrelu(y), w(f"{b}.convs1.{n}"), enc[f"{b}.convs1.{n}.bias"],
                             dilation=d, padding=d * (rk - 1) // 2)
                y = y + F.conv1d(lrelu(t), w(f"{b}.convs2.{n}"), enc[f"{b}.convs2.{n}.bias"],
                                 padding=(rk - 1) // 2)
            acc = y if acc is None else acc + y
            acc = F.group_norm(acc, x.size(1) // 16, enc[f"normalize.{m}.weight"],
                               enc[f"normalize.{m}.bias"], eps=1e-6)
        x = acc / len(blocks)
        if i == len(stages) // 2 - 1:
            kernel, stride = h["global_feature_conv"][3:]
            z = x
            for n in (0, 2, 4):
                z = lrelu(F.conv1d(z, enc[f"GlobalTokenEncoder.conv.{n}.weight"], stride=stride,
                                   padding=(kernel - stride) // 2))
            z = lrelu(F.linear(z.mean(2), enc["GlobalTokenEncoder.fn.0.weight"],
                               enc["GlobalTokenEncoder.fn.0.bias"]))
            glob = F.batch_norm(z, enc["GlobalTokenEncoder.fn.2.running_mean"],
                                enc["GlobalTokenEncoder.fn.2.running_var"],
                                enc["GlobalTokenEncoder.fn.2.weight"],
                                enc["GlobalTokenEncoder.fn.2.bias"], training=False)[0]
    feats = F.conv1d(lrelu(x, 0.01), enc["conv_post.weight"], enc["conv_post.bias"],
                     padding=1)[0]

    def nearest(v, book):  # (N, D) against (V, D)
        return torch.cdist(v.double()[None], book.double()[None])[0].argmin(1)

    local = nearest(feats.t(), q["quantizer_modules.0.embedding.weight"])
    pieces = glob.reshape(h["global_code_num"], -1)
    globals_ = torch.stack([nearest(pieces[j:j + 1],
                                    q[f"quantizer_modules_globaltokens.{j}.embedding.weight"])[0]
                            for j in range(h["global_code_num"])])
    return feats, local, globals_


def _test_wav(n: int, seed=0) -> torch.Tensor:
    t = torch.arange(n, dtype=torch.float32) / 24000
    noise = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    return 0.3 * torch.sin(2 * math.pi * (300 + 900 * t) * t) + 0.05 * noise


@pytest.fixture(scope="module")
def ti_enc(tmp_path_factory):
    """A release codec/ with an encoder (TICODEC_ENC_JSON), converted."""
    from espnet_freeze_omni.release.convert import convert_codec

    root = tmp_path_factory.mktemp("ticodec_enc")
    gen = torch.Generator().manual_seed(4)
    state = release_codec_state(gen, TICODEC_ENC_JSON, encoder=True)
    wav = _test_wav(40 * TI_ENC_SPT)
    # local codebook rows near the encoder's outputs on `wav`, so the picks vary
    feats = reference_encode(state["encoder"], state["quantizer"], wav)[0].t()
    book = feats[torch.randint(0, feats.size(0), (CODES,), generator=gen)]
    state["quantizer"]["quantizer_modules.0.embedding.weight"] = (
        book + 0.3 * feats.std(0) * torch.randn(book.shape, generator=gen))
    write_release_codec(root, state=state, h=TICODEC_ENC_JSON)
    conf, ours, dropped, entries = convert_codec(root / "codec" / "model.json",
                                                 root / "codec" / "final.pt")
    return dict(root=root, state=state, wav=wav, conf=conf, ours=ours, dropped=dropped,
                entries=entries)


def test_ticodec_encoder_tensors_land_once(ti_enc):
    from espnet_freeze_omni.codec.ticodec import TiCodecModel

    src, ours = ti_enc["state"], ti_enc["ours"]
    assert ti_enc["conf"].can_encode and ti_enc["conf"].global_feature_conv == [128, 64, 128, 3, 1]
    assert sorted(ti_enc["dropped"]) == ["encoder.linear.0.bias", "encoder.linear.0.weight"]
    assert ti_enc["entries"] == []
    pairs = {part: sum(k.endswith("weight_g") for k in src[part]) for part in src}
    expected = sum(len(src[part]) - pairs[part] for part in src) - 2  # - linear.0.*
    assert len(ours) == expected == len(TiCodecModel(ti_enc["conf"]).state_dict())
    enc = {k[len("encoder."):]: v for k, v in ours.items() if k.startswith("encoder.")}
    for theirs, mine in (("normalize.3.weight", "normalize.3.weight"),
                         ("conv_post.weight", "conv_post.weight"),
                         ("GlobalTokenEncoder.conv.4.weight", "global_encoder.conv.4.weight"),
                         ("GlobalTokenEncoder.fn.2.running_var", "global_encoder.fn.2.running_var"),
                         ("GlobalTokenEncoder.fn.2.num_batches_tracked",
                          "global_encoder.fn.2.num_batches_tracked")):
        torch.testing.assert_close(enc[mine], src["encoder"][theirs], atol=0, rtol=0)
    e = src["encoder"]
    torch.testing.assert_close(enc["ups.2.weight"],
                               torch._weight_norm(e["ups.2.weight_v"], e["ups.2.weight_g"], 0),
                               atol=1e-6, rtol=1e-6)


def test_ticodec_encode_equals_the_written_out_reference(ti_enc, tmp_path):
    from espnet_freeze_omni.codec import load_codec
    from espnet_freeze_omni.codec.ticodec import TiCodec

    wav, src = ti_enc["wav"], ti_enc["state"]
    feats, local, glob = reference_encode(src["encoder"], src["quantizer"], wav)
    codec = TiCodec(ti_enc["conf"], ti_enc["ours"])
    assert codec.can_encode
    tokens = codec.encode(wav.numpy(), 24000)
    assert tokens.shape == (40,) and tokens.dtype == np.int64
    assert len(set(tokens.tolist())) > 4  # the picks vary
    np.testing.assert_array_equal(tokens, local.numpy())
    np.testing.assert_array_equal(codec.encode_global(wav.numpy(), 24000), glob.numpy())
    with torch.no_grad():
        mine_local, mine_glob, mine_feats = codec.model.encode(wav[None])
    torch.testing.assert_close(mine_feats[0], feats, atol=1e-4, rtol=1e-4)
    # saved and loaded as the packed model's codec dir (load_codec type ticodec)
    codec.save(tmp_path / "codec")
    again = load_codec({"type": "ticodec", "path": str(tmp_path / "codec")})
    assert again.can_encode
    np.testing.assert_array_equal(again.encode(wav.numpy(), 24000), tokens)
    # the decoder takes the tokens back, with the utterance's own global tokens or the fixed
    local2, glob2 = again.encode_with_global(wav.numpy(), 24000)
    np.testing.assert_array_equal(local2, tokens)
    out = again.model(torch.from_numpy(local2)[None], torch.from_numpy(glob2)[None])
    assert out.shape == (1, 40 * TI_ENC_SPT)
    # audio at another rate is resampled; a partial last token is zero-padded
    assert again.encode(wav[:500].numpy(), 24000).shape == (-(-500 // TI_ENC_SPT),)
    assert again.encode(wav[:640].numpy(), 16000).shape == (40,)  # 640 / 16 kHz = 960 / 24 kHz


def test_ticodec_encoding_is_utterance_global(ti_enc):
    from espnet_freeze_omni.codec.ticodec import TiCodec

    codec = TiCodec(ti_enc["conf"], ti_enc["ours"])
    wav = ti_enc["wav"].clone()
    wav[wav.numel() // 2:] *= 3  # a louder second half
    with torch.no_grad():
        whole = codec.model.encode(wav[None])[2]
        half = codec.model.encode(wav[None, :wav.numel() // 2])[2]
    # GroupNorm statistics span the utterance: the first half's features depend on the second
    assert float((whole[..., :half.size(-1)] - half).abs().max()) > 1e-3


def test_ticodec_odd_kernel_encoder_gives_one_token_per_frame(tmp_path):
    from espnet_freeze_omni.codec.ticodec import TiCodec
    from espnet_freeze_omni.release.convert import convert_codec

    h = dict(TICODEC_ENC_JSON, upsample_kernel_sizes=[4, 3, 3, 4])  # stage 2 -> 3: k - u odd
    state = release_codec_state(torch.Generator().manual_seed(5), h, encoder=True)
    write_release_codec(tmp_path, state=state, h=h)
    conf, ours, _, _ = convert_codec(tmp_path / "codec" / "model.json",
                                     tmp_path / "codec" / "final.pt")
    codec = TiCodec(conf, ours)
    wav = _test_wav(20 * TI_ENC_SPT)
    frames = conf.encoder_frames(wav.numel())
    assert frames < 20
    with torch.no_grad():
        assert codec.model.encode(wav[None])[0].shape == (1, frames)  # what the release gives
    assert codec.encode(wav.numpy(), 24000).shape == (20,)  # zeros appended, then cut


@pytest.mark.parametrize("state_edit,json_edit,pattern", [
    (None, lambda h: h.pop("global_feature_conv"),
     r"codec/model\.json: missing key 'global_feature_conv'"),
    (None, lambda h: h.update(global_feature_conv=[64, 64, 128, 3, 1]),
     r"codec/model\.json: global_feature_conv \[64, 64, 128, 3, 1\]: its input width must "
     r"be 128"),
    (lambda s: s["encoder"].pop("GlobalTokenEncoder.fn.2.running_var"), None,
     r"codec/final\.pt: missing key\(s\) encoder\.GlobalTokenEncoder\.fn\.2\.running_var"),
    (lambda s: s["encoder"].pop("ups.1.weight_v"), None,
     r"codec/final\.pt: missing key encoder\.ups\.1\.weight_v"),
    (lambda s: s["encoder"].update({"GlobalTokenEncoder.fn.1.weight": torch.zeros(1)}), None,
     r"codec/final\.pt: unused key\(s\) .*encoder\.GlobalTokenEncoder\.fn\.1\.weight"),
    (lambda s: s["encoder"].update({"conv_post.weight": torch.zeros(512, 256, 3)}), None,
     r"codec/final\.pt: tensor encoder\.conv_post\.weight has shape \(512, 256, 3\), our "
     r"encoder\.conv_post\.weight needs \(512, 512, 3\)"),
])
def test_malformed_release_codec_encoder_is_named(ti_enc, tmp_path, state_edit, json_edit,
                                                  pattern):
    from espnet_freeze_omni.release.convert import ReleaseImportError, convert_codec

    codec = _codec_variant(tmp_path, state_edit, json_edit, h=TICODEC_ENC_JSON,
                           state={part: dict(values) for part, values in ti_enc["state"].items()})
    with pytest.raises(ReleaseImportError, match=pattern):
        convert_codec(codec / "model.json", codec / "final.pt")


def test_two_stage_codec_with_an_encoder_is_refused(tmp_path):
    from espnet_freeze_omni.release.convert import ReleaseImportError, convert_codec

    state = release_codec_state(torch.Generator().manual_seed(3), TICODEC_JSON, encoder=True)
    write_release_codec(tmp_path, state=state)
    with pytest.raises(ReleaseImportError, match=r"codec/model\.json: upsample_rates \[4, 3\]: "
                                                 r"the release's Encoder .* only with 4 stages"):
        convert_codec(tmp_path / "codec" / "model.json", tmp_path / "codec" / "final.pt")


# ---------------------------------------------------------------------------- streaming alignment
def test_release_stream_alignment_leads_with_zero_samples_and_zero_frames():
    """RELEASE.md difference 4: 240 zero samples before the first window, 3 raw zero frames
    first (CMVN-normalized downstream), so the encoder's 16 + 3 windows are the release's
    3 previous + 16 new frames. The default alignment stays the offline features."""
    import torchaudio.compliance.kaldi as kaldi

    from espnet_freeze_omni.inference.streaming_frontend import streaming_frontend_for
    from espnet_freeze_omni.release.kaldi_fbank import KaldiFbankFrontend

    wav = torch.from_numpy(np.random.RandomState(3).randn(6000).astype(np.float32) * 0.1)

    def streamed(front, pieces=(0, 517, 1900, 1901, 4000, 6000)):
        stream = streaming_frontend_for(front)
        outs = []
        for _ in range(2):  # a second utterance after flush starts the same way
            chunks = [stream.push(wav[a:b].numpy()) for a, b in zip(pieces, pieces[1:])]
            chunks.append(stream.flush())
            outs.append(torch.cat(chunks, dim=1)[0])
        return outs

    def fbank(x):
        return kaldi.fbank(x[None] * 32768, dither=0, frame_length=25, frame_shift=10,
                           num_mel_bins=80)

    default = KaldiFbankFrontend()
    assert default.stream_alignment == "lookahead"
    for out in streamed(default):
        torch.testing.assert_close(out, fbank(wav), atol=1e-4, rtol=1e-5)
    release = KaldiFbankFrontend(stream_alignment="release")
    expected = torch.cat([torch.zeros(3, 80), fbank(torch.cat([torch.zeros(240), wav]))])
    for out in streamed(release):
        assert out.shape == (3 + 6000 // 160, 80)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-5)
    # offline features ignore the option
    torch.testing.assert_close(release(wav[None], torch.tensor([6000]))[0][0], fbank(wav),
                               atol=0, rtol=0)
    with pytest.raises(ValueError, match="stream_alignment must be one of"):
        KaldiFbankFrontend(stream_alignment="ahead")


def test_imported_config_selects_the_release_stream_alignment(s2s):
    assert s2s.listener.model.frontend.stream_alignment == "release"


# ---------------------------------------------------------------------------- LLM sampling
def _release_allowed(logits, temperature, top_k, top_p):
    """The token set and probabilities the release's rule leaves, by hand in float64."""
    p = np.exp((logits - logits.max()) / temperature)
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    keep = order[:top_k] if top_k else order
    q = np.zeros_like(p)
    q[keep] = p[keep] / p[keep].sum()
    kept, total = [], 0.0
    for i in np.argsort(-q, kind="stable"):
        total += q[i]
        if total > top_p and kept:
            break
        kept.append(int(i))
    out = np.zeros_like(q)
    out[kept] = q[kept] / q[kept].sum()
    return set(kept), out


@pytest.mark.parametrize("probs,temperature,top_k,top_p,allowed", [
    # cumulative 0.5, 0.75, 0.9: the token crossing 0.8 (index 2) is dropped
    ([0.5, 0.25, 0.15, 0.1], 1.0, 20, 0.8, {0, 1}),
    # the likeliest alone is above p: it is kept, alone
    ([0.05, 0.9, 0.05], 1.0, 20, 0.8, {1}),
    # top-k first: of 30 near-equal tokens only the 20 likeliest, then top-p over those
    (list(np.linspace(1.0, 1.3, 30)), 1.0, 20, 0.8, None),
    # the default temperature 0.8 sharpens before the cuts
    ([0.42, 0.3, 0.2, 0.08], 0.8, 20, 0.8, None),
])
def test_release_llm_sampling_follows_the_rule(probs, temperature, top_k, top_p, allowed):
    from espnet_freeze_omni.inference.duplex_session import pick_token

    logits = torch.log(torch.tensor(probs, dtype=torch.float64)).float()
    expected_set, expected = _release_allowed(logits.double().numpy(), temperature, top_k, top_p)
    if allowed is not None:
        assert expected_set == allowed
    gen = torch.Generator().manual_seed(0)
    draws = [pick_token(logits, "release", temperature, top_k, top_p, gen) for _ in range(3000)]
    counts = np.bincount(draws, minlength=len(probs)) / len(draws)
    assert set(np.flatnonzero(counts)) == expected_set
    np.testing.assert_allclose(counts, expected, atol=0.04)
    # the same seed, the same picks; greedy stays the argmax
    again = torch.Generator().manual_seed(0)
    assert [pick_token(logits, "release", temperature, top_k, top_p, again)
            for _ in range(50)] == draws[:50]
    assert pick_token(logits) == int(np.argmax(probs))


def test_session_options_llm_sampling_default_and_checks():
    from espnet_freeze_omni.inference.duplex_session import DuplexSession, SessionOptions

    options = SessionOptions().check()
    assert (options.llm_sampling, options.llm_temperature, options.llm_top_k,
            options.llm_top_p) == ("greedy", 0.8, 20, 0.8)
    for bad in (dict(llm_sampling="nucleus"), dict(llm_temperature=0.0), dict(llm_top_p=1.5)):
        with pytest.raises(ValueError, match="llm_"):
            SessionOptions(**bad).check()
    # a session picks with its options and its own generator
    session = DuplexSession.__new__(DuplexSession)
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1]))
    session.options, session.llm_generator = options, torch.Generator().manual_seed(1)
    assert {session.pick_token(logits) for _ in range(20)} == {0}
    session.options = SessionOptions(llm_sampling="release", llm_temperature=1.0).check()
    assert {session.pick_token(logits) for _ in range(200)} == {0, 1}
