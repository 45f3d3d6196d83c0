"""StreamingChunkEncoder: shapes, masks, streaming == offline, bounded state, paper size."""
import pytest
import torch
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet2.legacy.nets.pytorch_backend.transformer.subsampling import TooShortUttError

from espnet_freeze_omni.encoder import StreamingChunkEncoder, chunk_attention_mask

FEAT_DIM = 16


def tiny_encoder(**overrides) -> StreamingChunkEncoder:
    conf = dict(
        input_size=FEAT_DIM,
        output_size=32,
        attention_heads=4,
        linear_units=64,
        num_blocks=2,
        chunk_size=4,
        left_chunks=2,
    )
    conf.update(overrides)
    torch.manual_seed(0)
    return StreamingChunkEncoder(**conf)


def stream(encoder, feats, piece, **state_kwargs):
    state = encoder.init_streaming_state(feats.size(0), **state_kwargs)
    outputs = []
    for start in range(0, feats.size(1), piece):
        out, state = encoder.forward_chunk(feats[:, start : start + piece], state)
        outputs.append(out)
    out, state = encoder.forward_chunk(feats[:, :0], state, is_final=True)
    outputs.append(out)
    return torch.cat(outputs, dim=1), state


def test_is_espnet_encoder_with_release_names():
    encoder = tiny_encoder()
    assert isinstance(encoder, AbsEncoder)
    assert encoder.output_size() == 32
    assert encoder.chunk_frames == 16
    names = set(encoder.state_dict())
    for name in [
        "embed.conv.0.weight",
        "embed.conv.2.weight",
        "embed.out.0.weight",
        "encoders.1.self_attn.linear_q.weight",
        "encoders.1.self_attn.linear_k.weight",
        "encoders.1.self_attn.linear_v.weight",
        "encoders.1.self_attn.linear_out.weight",
        "encoders.1.self_attn.linear_pos.weight",
        "encoders.1.self_attn.pos_bias_u",
        "encoders.1.self_attn.pos_bias_v",
        "encoders.1.feed_forward.w_1.weight",
        "encoders.1.feed_forward.w_2.weight",
        "encoders.1.norm1.weight",
        "encoders.1.norm2.weight",
        "after_norm.weight",
    ]:
        assert name in names, name


@pytest.mark.parametrize("num_frames", [7, 16, 19, 100, 103])
def test_output_lengths(num_frames):
    encoder = tiny_encoder().eval()
    ys, olens, states = encoder(torch.randn(1, num_frames, FEAT_DIM), torch.tensor([num_frames]))
    expected = ((num_frames - 1) // 2 - 1) // 2
    assert ys.shape == (1, expected, 32)
    assert olens.tolist() == [expected]
    assert states is None


def test_too_short_raises_espnet_error():
    encoder = tiny_encoder().eval()
    with pytest.raises(TooShortUttError):
        encoder(torch.randn(1, 6, FEAT_DIM), torch.tensor([6]))


def test_chunk_attention_mask():
    mask = chunk_attention_mask(6, chunk_size=2, left_chunks=1).int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)
    assert chunk_attention_mask(5, chunk_size=0, left_chunks=-1).all()
    assert chunk_attention_mask(9, chunk_size=2, left_chunks=-1).int().tril().sum() > 0
    assert not chunk_attention_mask(9, chunk_size=2, left_chunks=-1)[0, 2]


# 16k and 16k + 7 input frames (multiple / not of the chunk), a short one, and one long enough
# that the left context slides many times (left_chunks=2 -> an 8-frame cache).
@pytest.mark.parametrize("num_frames", [16 * 6, 16 * 6 + 7, 16 * 2 + 3, 16 * 12 + 11])
@pytest.mark.parametrize("piece", [16, 5])
def test_streaming_equals_chunk_masked_offline(num_frames, piece):
    encoder = tiny_encoder().eval()
    feats = torch.randn(1, num_frames, FEAT_DIM)
    with torch.inference_mode():
        offline, _, _ = encoder(feats, torch.tensor([num_frames]))
        streamed, _ = stream(encoder, feats, piece)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-4


def test_narrow_subsampling_channels_stream_like_offline():
    # Tiny CPU configs narrow the subsampling convs; the streaming path must follow.
    encoder = tiny_encoder(subsampling_channels=8).eval()
    assert encoder.embed.conv[0].out_channels == 8
    assert encoder.embed.out[0].in_features == 8 * (((FEAT_DIM - 1) // 2 - 1) // 2)
    assert tiny_encoder().embed.conv[0].out_channels == 32  # default: d, as the release
    feats = torch.randn(1, 16 * 3 + 5, FEAT_DIM)
    with torch.inference_mode():
        offline, _, _ = encoder(feats, torch.tensor([feats.size(1)]))
        streamed, _ = stream(encoder, feats, 5)
    assert (streamed - offline).abs().max().item() <= 1e-4


@pytest.mark.parametrize("chunk_size,left_chunks", [(1, 3), (3, 0), (2, -1)])
def test_streaming_other_contexts_and_batch(chunk_size, left_chunks):
    encoder = tiny_encoder().eval()
    feats = torch.randn(2, 77, FEAT_DIM)
    with torch.inference_mode():
        offline, _, _ = encoder(
            feats, torch.tensor([77, 77]), chunk_size=chunk_size, left_chunks=left_chunks
        )
        streamed, _ = stream(encoder, feats, 7, chunk_size=chunk_size, left_chunks=left_chunks)
    assert (streamed - offline).abs().max().item() <= 1e-4


def test_streaming_state_stays_bounded():
    encoder = tiny_encoder().eval()
    state = encoder.init_streaming_state()
    window = encoder.chunk_frames + 3
    emitted = 0
    with torch.inference_mode():
        for _ in range(60):
            out, state = encoder.forward_chunk(torch.randn(1, 16, FEAT_DIM), state)
            emitted += out.size(1)
            assert state.pending.size(1) < window
            for k, v in state.kv_cache:
                assert k.size(2) <= encoder.left_chunks * encoder.chunk_size
                assert v.shape == k.shape
    assert state.cache_frames() == encoder.left_chunks * encoder.chunk_size
    # Each 16-frame piece completes one chunk once the first 3 context frames are there.
    assert emitted == state.num_frames_out == 59 * encoder.chunk_size


def test_chunk_outputs_do_not_see_the_future_but_full_context_does():
    feats = torch.randn(1, 64, FEAT_DIM)
    changed = feats.clone()
    changed[:, 40:] += 1.0  # frames 40.. only reach encoder frames >= 9 (third chunk on)
    streaming = tiny_encoder().eval()
    full = tiny_encoder(full_context=True).eval()
    with torch.inference_mode():
        a, _, _ = streaming(feats, torch.tensor([64]))
        b, _, _ = streaming(changed, torch.tensor([64]))
        assert torch.allclose(a[:, :8], b[:, :8])
        assert not torch.allclose(a[:, 8:], b[:, 8:])
        a, _, _ = full(feats, torch.tensor([64]))
        b, _, _ = full(changed, torch.tensor([64]))
        assert not torch.allclose(a[:, :8], b[:, :8])
        # A chunk_size <= 0 override means full context; a chunk override makes a
        # full-context model chunked, and only then can it stream.
        c, _, _ = streaming(feats, torch.tensor([64]), chunk_size=0)
        assert torch.allclose(a, c, atol=1e-5)
        d, _, _ = full(feats, torch.tensor([64]), chunk_size=4)
        e, _, _ = streaming(feats, torch.tensor([64]))
        assert torch.allclose(d, e, atol=1e-5)
    with pytest.raises(ValueError):
        full.init_streaming_state()
    assert full.init_streaming_state(chunk_size=4).chunk_size == 4


def test_position_term_matters():
    encoder = tiny_encoder(full_context=True).eval()
    feats = torch.randn(1, 60, FEAT_DIM)
    with torch.inference_mode():
        before, _, _ = encoder(feats, torch.tensor([60]))
        for layer in encoder.encoders:
            layer.self_attn.linear_pos.weight.mul_(3.0)
        after, _, _ = encoder(feats, torch.tensor([60]))
    assert not torch.allclose(before, after, atol=1e-3)


@pytest.mark.parametrize("full_context", [False, True])
def test_padded_batch_equals_single(full_context):
    encoder = tiny_encoder(full_context=full_context).eval()
    long, short = torch.randn(1, 90, FEAT_DIM), torch.randn(1, 53, FEAT_DIM)
    batch = torch.zeros(2, 90, FEAT_DIM)
    batch[0], batch[1, :53] = long[0], short[0]
    batch[1, 53:] = 100.0  # garbage in the padding must not leak
    with torch.inference_mode():
        ys, olens, _ = encoder(batch, torch.tensor([90, 53]))
        ys_long, _, _ = encoder(long, torch.tensor([90]))
        ys_short, _, _ = encoder(short, torch.tensor([53]))
    assert olens.tolist() == [ys_long.size(1), ys_short.size(1)]
    assert (ys[0] - ys_long[0]).abs().max() <= 1e-5
    assert (ys[1, : olens[1]] - ys_short[0]).abs().max() <= 1e-5
    assert ys[1, olens[1] :].abs().max() == 0.0


def test_dynamic_chunk_training_samples_and_trains():
    encoder = tiny_encoder(dynamic_chunk_training=True)
    encoder.train()
    torch.manual_seed(1)
    contexts = [encoder.attention_context() for _ in range(200)]
    chunk_sizes = {chunk for chunk, _ in contexts}
    assert 0 in chunk_sizes  # full context
    assert chunk_sizes - {0} <= set(range(1, 26)) and len(chunk_sizes) > 10
    feats = torch.randn(2, 80, FEAT_DIM)
    ys, olens, _ = encoder(feats, torch.tensor([80, 61]))
    ys[0].sum().backward()
    assert encoder.encoders[0].self_attn.pos_bias_u.grad is not None
    encoder.eval()
    assert encoder.attention_context() == (4, 2)


def test_paper_config_size():
    with torch.device("meta"):
        encoder = StreamingChunkEncoder(
            input_size=80,
            output_size=1024,
            attention_heads=16,
            linear_units=4096,
            num_blocks=24,
        )
    num_params = sum(p.numel() for p in encoder.parameters())
    assert 350e6 <= num_params <= 360e6, num_params
    assert encoder.chunk_frames == 16
