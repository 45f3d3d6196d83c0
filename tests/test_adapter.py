"""ConvAdapter: lengths, masking, release names, streaming == offline."""
import pytest
import torch

from espnet_freeze_omni.adapter import ConvAdapter

ENC_DIM, LLM_DIM = 12, 20


def tiny_adapter(num_layers: int = 1) -> ConvAdapter:
    torch.manual_seed(0)
    return ConvAdapter(ENC_DIM, LLM_DIM, num_layers=num_layers).eval()


def test_shapes_names_and_lengths():
    adapter = tiny_adapter()
    assert adapter.output_size() == LLM_DIM
    assert {"conv1d2.weight", "bn2.weight", "project.weight"} <= set(adapter.state_dict())
    assert isinstance(adapter.relu2, torch.nn.GELU)
    for frames in [1, 2, 7, 8]:
        y, y_lens = adapter(torch.randn(1, frames, ENC_DIM), torch.tensor([frames]))
        assert y.shape == (1, (frames + 1) // 2, LLM_DIM)
        assert y_lens.tolist() == [(frames + 1) // 2]


@pytest.mark.parametrize("num_layers", [1, 2])
def test_is_causal(num_layers):
    adapter = tiny_adapter(num_layers)
    x = torch.randn(1, 10, ENC_DIM)
    changed = x.clone()
    changed[:, 6:] += 1.0  # output t sees inputs 2t-4 .. 2t (and earlier ones with more layers)
    with torch.inference_mode():
        a, _ = adapter(x, torch.tensor([10]))
        b, _ = adapter(changed, torch.tensor([10]))
    assert torch.equal(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3:], b[:, 3:])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_padding_is_masked(num_layers):
    adapter = tiny_adapter(num_layers)
    a, b = torch.randn(1, 11, ENC_DIM), torch.randn(1, 6, ENC_DIM)
    batch = torch.full((2, 11, ENC_DIM), 50.0)
    batch[0], batch[1, :6] = a[0], b[0]
    with torch.inference_mode():
        y, y_lens = adapter(batch, torch.tensor([11, 6]))
        ya, _ = adapter(a, torch.tensor([11]))
        yb, _ = adapter(b, torch.tensor([6]))
    assert y_lens.tolist() == [6, 3]
    assert (y[0] - ya[0]).abs().max() <= 1e-5
    assert (y[1, :3] - yb[0]).abs().max() <= 1e-5
    assert y[1, 3:].abs().max() == 0.0


@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("frames", [16, 17])
@pytest.mark.parametrize("piece", [1, 2, 3, 4, 5])
def test_streaming_equals_offline(frames, piece, num_layers):
    adapter = tiny_adapter(num_layers)
    x = torch.randn(2, frames, ENC_DIM)
    with torch.inference_mode():
        offline, _ = adapter(x, torch.tensor([frames, frames]))
        cache = adapter.init_cache(batch_size=2)
        outputs = []
        for start in range(0, frames, piece):
            out, cache = adapter.forward_chunk(x[:, start : start + piece], cache)
            outputs.append(out)
            assert cache[0].size(2) <= adapter.kernel_size - 1
            assert len(cache) == num_layers
            assert all(c.size(2) == adapter.kernel_size - 1 for c in cache[1:])
        streamed = torch.cat(outputs, dim=1)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-5


def test_one_encoder_chunk_gives_two_llm_embeddings():
    adapter = tiny_adapter()
    cache = adapter.init_cache()
    with torch.inference_mode():
        for _ in range(5):
            out, cache = adapter.forward_chunk(torch.randn(1, 4, ENC_DIM), cache)
            assert out.shape == (1, 2, LLM_DIM)


def test_more_layers_see_further_back_and_keep_the_release_names():
    """Extra layers widen what one LLM embedding sees (each adds k - 1 = 4 of its 12.5 Hz
    inputs, i.e. 8 encoder frames) and add their own parameters beside the release's."""
    one, three = tiny_adapter(1), tiny_adapter(3)
    assert set(one.state_dict()) < set(three.state_dict())
    assert {"more_convs.0.weight", "more_norms.1.weight"} <= set(three.state_dict())
    x = torch.randn(1, 40, ENC_DIM)
    changed = x.clone()
    changed[:, :2] += 1.0  # output t reads encoder frames 2t-4 .. 2t: frames 0-1 reach t <= 2
    with torch.inference_mode():
        for adapter, reach in ((one, 3), (three, 3 + 2 * 4)):
            a, _ = adapter(x, torch.tensor([40]))
            b, _ = adapter(changed, torch.tensor([40]))
            moved = (a - b).abs().amax(dim=2)[0] > 0
            assert moved[:reach].all() and not moved[reach:].any(), moved.tolist()


def test_bad_layer_count_is_refused():
    with pytest.raises(ValueError, match="num_layers must be >= 1, got 0"):
        ConvAdapter(ENC_DIM, LLM_DIM, num_layers=0)
