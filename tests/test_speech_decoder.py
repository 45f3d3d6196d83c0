"""SpeechDecoder and synthesis: sizes, the one NAR/AR mask, prefix, K/V cache, sampling."""
import numpy as np
import pytest
import torch

from espnet_freeze_omni.inference.speech_synthesis import (
    generate_codec_tokens,
    sample_codec_token,
)
from espnet_freeze_omni.speech_decoder.decoder import (
    SpeechDecoder,
    build_decoder_attention_mask,
)

TINY = dict(hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2,
            num_pre_layers=1, dropout_rate=0.0)



pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

def tiny_decoder(use_prefix=False, seed=0, llm_hidden_size=64):
    torch.manual_seed(seed)
    return SpeechDecoder(llm_hidden_size=llm_hidden_size, use_prefix=use_prefix, **TINY).eval()


def test_paper_size_on_meta_device():
    with torch.device("meta"):
        dec = SpeechDecoder(llm_hidden_size=3584, use_prefix=True)
    n = sum(p.numel() for p in dec.parameters())
    assert 160e6 < n < 170e6, n  # ~165M: 2 pre + 4 shared + 4 prefix layers of 896
    assert dec.frames_per_llm_vector == 4
    assert dec.num_embeddings == 1028
    assert (dec.bos_id, dec.sos_id, dec.eos_id, dec.pad_id) == (1024, 1025, 1026, 1027)
    assert len(dec.layers) == 4 and len(dec.layers_pre_nn) == 2 and len(dec.layers_prefix) == 4
    cfg = dec.layers[0].self_attn.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (896, 14, 4864)
    assert cfg.attention_dropout == 0.1
    # Names as in the authors' release (importing their checkpoint is a renaming).
    names = set(dec.state_dict())
    for name in ("embedding.weight", "norm.weight", "out_fnn.weight", "out_fnn.bias",
                 "layers.0.self_attn.q_proj.weight", "layers_pre_nn.1.mlp.gate_proj.weight",
                 "layers_prefix.3.post_attention_layernorm.weight"):
        assert name in names


def test_llm_hidden_not_multiple_of_decoder_hidden_names_both():
    with pytest.raises(ValueError, match=r"3500.*896"):
        SpeechDecoder(llm_hidden_size=3500, hidden_size=896)
    dec = tiny_decoder()
    with pytest.raises(ValueError, match="64.*48"):
        dec.llm_to_frames(torch.zeros(1, 3, 48), torch.tensor([3]))


def test_llm_vector_becomes_r_decoder_frames():
    dec = tiny_decoder()
    x = torch.arange(2 * 3 * 64, dtype=torch.float32).view(2, 3, 64)
    frames, lens = dec.llm_to_frames(x, torch.tensor([3, 1]))
    assert frames.shape == (2, 6, 32) and lens.tolist() == [6, 2]
    assert torch.equal(frames[0, 1], x[0, 0, 32:]) and torch.equal(frames[0, 2], x[0, 1, :32])


def test_one_mask_bidirectional_text_causal_codec():
    m = build_decoder_attention_mask(
        text_lens=torch.tensor([2]), text_max=3, codec_lens=torch.tensor([3]), codec_max=3,
        prefix_lens=torch.tensor([1]), prefix_max=2,
    )[0, 0] == 0
    # keys: p0 p1(pad) | t0 t1 t2(pad) | c0 c1 c2
    expect = torch.tensor([
        [1, 0, 1, 1, 0, 0, 0, 0],  # t0: prefix + all valid text, no codec
        [1, 0, 1, 1, 0, 0, 0, 0],  # t1
        [0, 0, 0, 0, 1, 0, 0, 0],  # t2 is padding: sees only itself
        [1, 0, 1, 1, 0, 1, 0, 0],  # c0: prefix + text + itself
        [1, 0, 1, 1, 0, 1, 1, 0],  # c1: causal
        [1, 0, 1, 1, 0, 1, 1, 1],  # c2
    ], dtype=torch.bool)
    assert torch.equal(m, expect)


def test_text_is_seen_bidirectionally_and_codec_causally():
    dec = tiny_decoder()
    text = torch.randn(1, 4, 64)
    codec = torch.randint(0, 1024, (1, 6))
    lens_t, lens_c = torch.tensor([4]), torch.tensor([6])
    logits, _ = dec(text, lens_t, codec, lens_c)
    text2 = text.clone()
    text2[0, -1] += 1.0  # the LAST text token changes the FIRST codec prediction (NAR)
    logits2, _ = dec(text2, lens_t, codec, lens_c)
    assert not torch.allclose(logits[0, 0], logits2[0, 0])
    codec2 = codec.clone()
    codec2[0, 4] = (codec[0, 4] + 1) % 1024  # a later code never changes earlier outputs (AR)
    logits3, _ = dec(text, lens_t, codec2, lens_c)
    assert torch.allclose(logits[0, :5], logits3[0, :5], atol=1e-6)
    assert not torch.allclose(logits[0, 5], logits3[0, 5])


def test_padded_batch_equals_single_utterances():
    dec = tiny_decoder(use_prefix=True)
    text = torch.randn(2, 5, 64)
    codec = torch.randint(0, 1024, (2, 7))
    prefix = torch.randn(2, 6, 64)
    tl, cl, pl = torch.tensor([5, 3]), torch.tensor([4, 7]), torch.tensor([6, 2])
    logits, target = dec(text, tl, codec, cl, prefix, pl)
    assert logits.shape == (2, 8, 1028)
    assert target[0].tolist() == codec[0, :4].tolist() + [dec.eos_id] + [dec.pad_id] * 3
    assert target[1].tolist() == codec[1].tolist() + [dec.eos_id]
    one, _ = dec(text[:1], tl[:1], codec[:1, :4], cl[:1], prefix[:1], pl[:1])
    two, _ = dec(text[1:, :3], tl[1:], codec[1:], cl[1:], prefix[1:, :2], pl[1:])
    assert torch.allclose(one, logits[:1, :5], atol=1e-5)
    assert torch.allclose(two, logits[1:], atol=1e-5)


def test_prefix_changes_the_output():
    dec = tiny_decoder(use_prefix=True)
    text = torch.randn(1, 4, 64)
    codec = torch.randint(0, 1024, (1, 5))
    lens = (torch.tensor([4]), torch.tensor([5]))
    a, _ = dec(text, lens[0], codec, lens[1], torch.randn(1, 4, 64), torch.tensor([4]))
    b, _ = dec(text, lens[0], codec, lens[1], torch.randn(1, 4, 64), torch.tensor([4]))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(ValueError, match="prefix"):
        dec(text, lens[0], codec, lens[1])


@pytest.mark.parametrize("use_prefix,restart", [(False, False), (True, False), (True, True)])
def test_cached_greedy_decode_equals_uncached(use_prefix, restart):
    dec = tiny_decoder(use_prefix=use_prefix, seed=1)
    dec.restart_codec_positions = restart
    text = torch.randn(1, 5, 64)
    prefix = torch.randn(1, 5, 64) if use_prefix else None
    kw = dict(top_k=1, max_tokens=40, min_tokens=40)
    cached = list(generate_codec_tokens(dec, text, prefix, use_cache=True, **kw))
    uncached = list(generate_codec_tokens(dec, text, prefix, use_cache=False, **kw))
    assert len(cached) == 40
    assert cached == uncached
    # logits too, not only the argmax
    logits, cache, pos = dec.prefill(text, prefix)
    for t in cached[:5]:
        logits = dec.step(torch.tensor([[t]]), pos, cache)
        pos += 1
    ref = dec.logits_uncached(text, torch.tensor(cached[:5]), prefix)
    assert torch.allclose(logits, ref, atol=1e-5)


def test_top_k_sampling_eos_and_max_tokens():
    dec = tiny_decoder()
    logits = torch.full((1, dec.num_embeddings), -10.0)
    logits[0, [dec.bos_id, dec.sos_id, dec.pad_id]] = 100.0  # never produced
    logits[0, 7], logits[0, 9], logits[0, 3] = 5.0, 4.9, 1.0
    gen = torch.Generator().manual_seed(0)
    picks = {sample_codec_token(logits, dec, top_k=2, generator=gen) for _ in range(200)}
    assert picks == {7, 9}
    assert sample_codec_token(logits, dec, top_k=1) == 7
    logits[0, dec.eos_id] = 50.0
    assert sample_codec_token(logits, dec, top_k=1) == dec.eos_id
    assert sample_codec_token(logits, dec, top_k=1, allow_eos=False) == 7

    # EOS stops generation (and is not yielded); max_tokens bounds it.
    with torch.no_grad():
        dec.out_fnn.bias[dec.eos_id] = 1e4
    assert list(generate_codec_tokens(dec, torch.randn(1, 3, 64), top_k=2)) == []
    out = list(generate_codec_tokens(dec, torch.randn(1, 3, 64), top_k=2, min_tokens=3))
    assert len(out) == 3
    with torch.no_grad():
        dec.out_fnn.bias[dec.eos_id] = -1e4
    out = list(generate_codec_tokens(dec, torch.randn(1, 3, 64), top_k=3, max_tokens=25))
    assert len(out) == 25 and all(0 <= t < 1024 for t in out)


def test_tokens_stream_into_pcm_packets():
    from espnet_freeze_omni.codec.abs_codec import AbsCodec
    from espnet_freeze_omni.inference.speech_synthesis import stream_pcm

    class ToneCodec(AbsCodec):  # 40 Hz tokens, 24 kHz, a tone per code
        def _encode(self, wav):
            return np.zeros(len(wav) // 600, dtype=np.int64)

        def _decode(self, tokens):
            t = np.arange(600) / 24000.0
            return np.concatenate([np.sin(2 * np.pi * (100 + k) * t) for k in tokens]) * 0.1

    dec = tiny_decoder()
    tokens = generate_codec_tokens(dec, torch.randn(1, 4, 64), top_k=2, max_tokens=100,
                                   min_tokens=100, generator=torch.Generator().manual_seed(0))
    packets = list(stream_pcm(ToneCodec(), tokens))
    assert len(packets) >= 2 and all(p.dtype == np.float32 for p in packets)
    total = sum(len(p) for p in packets)
    assert abs(total - 100 * 600) <= 600  # the whole segment comes out, spliced


def test_normalize_llm_frames_gives_unit_rms_frames_and_adds_no_weights():
    """Small LLM vectors come out as unit-RMS frames, each scaled on its own (so the
    decoder's output no longer depends on the LLM's embedding scale); no new weights."""
    torch.manual_seed(0)
    plain = SpeechDecoder(llm_hidden_size=64, **TINY).eval()
    torch.manual_seed(0)
    normed = SpeechDecoder(llm_hidden_size=64, normalize_llm_frames=True, **TINY).eval()
    assert set(plain.state_dict()) == set(normed.state_dict())
    x = torch.randn(2, 3, 64) * torch.tensor([0.1, 0.5, 3.0])[None, :, None]
    lens = torch.tensor([3, 2])
    frames, frame_lens = normed.llm_to_frames(x, lens)
    assert torch.equal(frame_lens, lens * 2)
    rms = frames.pow(2).mean(-1).sqrt()
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)
    raw, _ = plain.llm_to_frames(x, lens)
    assert torch.equal(raw, x.reshape(2, 6, 32))  # off: the release's plain reshape
    codec, codec_lens = torch.randint(0, 1024, (2, 5)), torch.tensor([5, 4])
    a, _ = normed(x, lens, codec, codec_lens)
    b, _ = normed(x * 40.0, lens, codec, codec_lens)
    assert torch.allclose(a, b, atol=1e-3)
    c, _ = plain(x, lens, codec, codec_lens)
    d, _ = plain(x * 40.0, lens, codec, codec_lens)
    assert not torch.allclose(c, d, atol=1e-2)


def test_codec_input_corruption_only_in_training_and_never_touches_targets():
    torch.manual_seed(0)
    dec = SpeechDecoder(llm_hidden_size=64, codec_input_corruption=0.5, **TINY)
    text, codec = torch.randn(2, 4, 64), torch.randint(0, 1024, (2, 9))
    lens = (torch.tensor([4, 3]), torch.tensor([9, 6]))
    dec.eval()
    clean, target_eval = dec(text, lens[0], codec, lens[1])
    again, _ = dec(text, lens[0], codec, lens[1])
    assert torch.equal(clean, again)  # eval: deterministic, no corruption
    dec.train()
    noisy, target_train = dec(text, lens[0], codec, lens[1])
    assert torch.equal(target_train, target_eval)
    # the first output depends on [SOS] only; later ones see corrupted inputs
    assert torch.allclose(noisy[:, 0], clean[:, 0], atol=1e-5)
    assert not torch.allclose(noisy[0, 1:], clean[0, 1:], atol=1e-3)
    with pytest.raises(ValueError, match="codec_input_corruption"):
        SpeechDecoder(llm_hidden_size=64, codec_input_corruption=1.0, **TINY)


@pytest.mark.parametrize("use_prefix", [False, True])
def test_self_sampling_feeds_the_decoders_own_argmax_in_training_only(use_prefix):
    """With probability 1 every codec input is the argmax of a teacher-forced pass, so the
    training pass must equal a pass over [SOS, those argmaxes]; eval stays teacher-forced."""
    torch.manual_seed(0)
    dec = SpeechDecoder(llm_hidden_size=64, use_prefix=use_prefix, **TINY)
    dec.codec_input_self_sampling = 1.0
    text, codec = torch.randn(2, 4, 64), torch.randint(0, 1024, (2, 9))
    tl, cl = torch.tensor([4, 3]), torch.tensor([9, 6])
    prefix = dict(prefix=torch.randn(2, 5, 64), prefix_lens=torch.tensor([5, 2])) if use_prefix else {}
    dec.eval()
    clean, target_eval = dec(text, tl, codec, cl, **prefix)
    own = clean[:, :-1, :1024].argmax(-1)  # what the decoder predicts for each true code
    # the padded tail of the shorter item is never an input
    own = torch.where(torch.arange(9)[None] < cl[:, None], own, codec)
    assert not torch.equal(own, codec)
    expected, _ = dec(text, tl, own, cl, **prefix)
    dec.train()
    mixed, target_train = dec(text, tl, codec, cl, **prefix)
    assert torch.equal(target_train, target_eval)  # targets stay the true codes
    for b in range(2):
        n = int(cl[b]) + 1
        assert torch.allclose(mixed[b, :n], expected[b, :n], atol=1e-5)
    with pytest.raises(ValueError, match="codec_input_self_sampling"):
        SpeechDecoder(llm_hidden_size=64, codec_input_self_sampling=1.5, **TINY)


def _guided_decoder(attn_implementation="sdpa", seed=0):
    torch.manual_seed(seed)
    return SpeechDecoder(
        llm_hidden_size=64, guided_attention_layers=[1], guided_attention_heads=1,
        guided_attention_sigma=0.2, attn_implementation=attn_implementation, **TINY,
    ).eval()


def test_guided_attention_loss_matches_the_layers_own_attention():
    """The loss recomputes head 0 of layer 1; check it against eager attention weights."""
    dec = _guided_decoder("eager")
    text, codec = torch.randn(2, 3, 64), torch.randint(0, 1024, (2, 6))
    tl, cl = torch.tensor([3, 2]), torch.tensor([6, 4])
    captured = {}
    hook = dec.layers[1].self_attn.register_forward_hook(
        lambda mod, args, out: captured.__setitem__("w", out[1])
    )
    with torch.no_grad():
        logits, _, loss = dec(text, tl, codec, cl, return_guided_attention_loss=True)
        hook.remove()
        plain, _ = dec(text, tl, codec, cl)
    assert torch.allclose(logits, plain)  # the loss does not change the pass itself

    text_max = 3 * 2 + 1  # BOS + 2 frames per LLM vector
    text_lens, codec_lens = tl * 2 + 1, cl + 1
    w = captured["w"][:, 0, text_max:, :text_max]  # head 0: codec queries, text keys
    total, rows = 0.0, 0
    for b in range(2):
        T, N = int(text_lens[b]), int(codec_lens[b])
        a = w[b, :N, :T]
        a = a / a.sum(-1, keepdim=True)  # within the text only
        n = torch.arange(N)[:, None] / N
        t = torch.arange(T)[None, :] / T
        penalty = 1 - torch.exp(-((n - t) ** 2) / (2 * 0.2**2))
        total += float((a * penalty).sum())
        rows += N
    assert float(loss) == pytest.approx(total / rows, rel=1e-4)


def test_guided_attention_loss_trains_only_the_guided_layer_towards_the_diagonal():
    dec = _guided_decoder().train()
    text, codec = torch.randn(2, 4, 64), torch.randint(0, 1024, (2, 12))
    tl, cl = torch.tensor([4, 4]), torch.tensor([12, 12])
    _, _, loss = dec(text, tl, codec, cl, return_guided_attention_loss=True)
    loss.backward()
    assert dec.layers[1].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert dec.layers[1].self_attn.v_proj.weight.grad is None  # only where it looks
    assert dec.layers[1].mlp.up_proj.weight.grad is None
    assert dec.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0  # what feeds the keys/queries
    opt = torch.optim.Adam(dec.parameters(), lr=1e-2)
    first = loss.item()
    for _ in range(40):
        opt.zero_grad()
        _, _, loss = dec(text, tl, codec, cl, return_guided_attention_loss=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    with pytest.raises(ValueError, match="guided_attention_layers"):
        SpeechDecoder(llm_hidden_size=64, guided_attention_layers=[2], **TINY)


def test_restarted_codec_positions_make_the_codec_part_independent_of_text_length():
    """With restart_codec_positions the codec part starts at position 0 whatever the text
    length, so moving the text by whole frames changes only the relative offsets."""
    dec = tiny_decoder(seed=2)
    text = torch.randn(1, 3, 64)
    codec = torch.randint(0, 1024, (1, 6))
    lens = (torch.tensor([3]), torch.tensor([6]))
    before, _ = dec(text, *lens[:1], codec, lens[1])
    dec.restart_codec_positions = True
    after, _ = dec(text, *lens[:1], codec, lens[1])
    assert not torch.allclose(before, after, atol=1e-4)
    logits, _, pos = dec.prefill(text)
    assert pos == 1
    assert torch.allclose(logits, after[:, 0], atol=1e-5)


@pytest.mark.parametrize("use_prefix,restart", [(False, False), (True, False), (True, True)])
def test_condition_dropout_trains_the_context_that_guidance_decodes_against(use_prefix, restart):
    """A hidden answer is trained on BOS alone at the positions `prefill(None)` uses, and
    the rest of the batch keeps its text; guidance decodes the same with and without cache."""
    dec = tiny_decoder(use_prefix=use_prefix, seed=3)
    dec.restart_codec_positions = restart
    dec.condition_dropout = 0.5
    batch, n_text, n_codec = 16, 5, 6
    text = torch.randn(batch, n_text, 64)
    codec = torch.randint(0, 1024, (batch, n_codec))
    lens = torch.full((batch,), n_text), torch.full((batch,), n_codec)
    prefix = ((torch.randn(batch, n_text, 64), torch.full((batch,), n_text)) if use_prefix
              else (None, None))
    dec.train()
    torch.manual_seed(11)
    with torch.no_grad():
        trained, _ = dec(text, lens[0], codec, lens[1], *prefix)
    dec.eval()
    with torch.no_grad():
        shown, _ = dec(text, lens[0], codec, lens[1], *prefix)
    hidden_rows = [b for b in range(batch) if not torch.allclose(trained[b], shown[b], atol=1e-5)]
    assert 0 < len(hidden_rows) < batch  # about half, drawn per answer
    for b in hidden_rows:
        for t in range(n_codec + 1):  # position t is predicted from [SOS, c_1 .. c_t]
            ref = dec.logits_uncached(None, codec[b, :t])
            assert torch.allclose(trained[b, t], ref[0], atol=1e-4), (b, t)
    # what the hidden rows were trained on does not depend on their text
    other = text.clone()
    other[hidden_rows] = torch.randn(len(hidden_rows), n_text, 64)
    dec.train()
    torch.manual_seed(11)
    with torch.no_grad():
        again, _ = dec(other, lens[0], codec, lens[1], *prefix)
    assert torch.allclose(again[hidden_rows], trained[hidden_rows], atol=1e-5)

    one_text = text[:1]
    one_prefix = prefix[0][:1] if use_prefix else None
    kw = dict(top_k=1, max_tokens=30, min_tokens=30, guidance_scale=3.0)
    cached = list(generate_codec_tokens(dec, one_text, one_prefix, use_cache=True, **kw))
    uncached = list(generate_codec_tokens(dec, one_text, one_prefix, use_cache=False, **kw))
    assert cached == uncached


def test_guidance_scale_moves_the_pick_away_from_the_text_free_prediction():
    dec = tiny_decoder(seed=4)
    text = torch.randn(1, 4, 64)
    cond = dec.prefill(text)[0].log_softmax(-1)
    free = dec.prefill(None)[0].log_softmax(-1)
    for scale in (1.0, 2.5):
        guided = cond + (scale - 1.0) * (cond - free)
        guided[0, [dec.bos_id, dec.sos_id, dec.pad_id]] = float("-inf")
        expect = int(guided.argmax())
        got = list(generate_codec_tokens(dec, text, top_k=1, max_tokens=1, guidance_scale=scale))
        assert got == ([] if expect == dec.eos_id else [expect])
    # scale 1 is the decoder as it is, bit for bit
    kw = dict(top_k=2, max_tokens=20, min_tokens=20)
    a = list(generate_codec_tokens(dec, text, generator=torch.Generator().manual_seed(0), **kw))
    b = list(generate_codec_tokens(dec, text, generator=torch.Generator().manual_seed(0),
                                   guidance_scale=1.0, **kw))
    assert a == b
    with pytest.raises(ValueError, match="guidance_scale"):
        list(generate_codec_tokens(dec, text, guidance_scale=0.0))
    with pytest.raises(ValueError, match="condition_dropout"):
        SpeechDecoder(llm_hidden_size=64, condition_dropout=1.0, **TINY)
