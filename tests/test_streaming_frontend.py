"""StreamingFrontend: piece-by-piece features equal the offline DefaultFrontend's."""
import math

import numpy as np
import pytest
import torch

from espnet2.asr.frontend.abs_frontend import AbsFrontend
from espnet2.asr.frontend.default import DefaultFrontend

from espnet_freeze_omni.inference.streaming_frontend import (
    StreamingFrontend,
    UtteranceTooShortError,
)

FS = 16000
# conf/speech_input_stage3_tiny.yaml's frontend_conf
CONF = dict(fs=FS, n_fft=512, win_length=400, hop_length=160, n_mels=80)


def make_frontend(**overrides):
    return DefaultFrontend(**{**CONF, **overrides}).eval()


@pytest.fixture(scope="module")
def frontend():
    return make_frontend()


def offline(frontend, wav):
    with torch.no_grad():
        feats, lens = frontend(wav[None], torch.tensor([len(wav)]))
    assert int(lens[0]) == feats.shape[1]
    return feats[0]


def stream(sf, wav, sizes):
    """Push wav in pieces of the given sizes (cycled), then flush; return all frames."""
    outs, pos, i = [], 0, 0
    while pos < len(wav):
        n = sizes[i % len(sizes)]
        out = sf.push(wav[pos:pos + n])
        assert out.dim() == 3 and out.shape[0] == 1 and out.shape[2] == sf.n_mels
        outs.append(out)
        pos += n
        i += 1
    outs.append(sf.flush())
    return torch.cat(outs, dim=1)[0]


def assert_same(streamed, expected):
    assert streamed.shape == expected.shape
    assert (streamed - expected).abs().max().item() <= 1e-5


def noise(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(n, generator=g)


def speechlike(n):
    """Harmonics of a gliding pitch, syllable-like envelope, then exact digital silence."""
    t = torch.arange(n, dtype=torch.float64) / FS
    f0 = 120 + 40 * torch.sin(2 * math.pi * 1.5 * t)
    phase = 2 * math.pi * torch.cumsum(f0, 0) / FS
    x = sum(torch.sin(k * phase) / k for k in range(1, 8))
    x = x * (0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t)) ** 2
    x[int(0.8 * n):] = 0.0  # log(clamp(0)) frames must match too
    return (0.3 * x).float()


def random_sizes(seed, count=200, high=900):
    rng = np.random.default_rng(seed)
    return [int(s) for s in rng.integers(1, high, size=count)]


SPLITS = {
    "whole": [10 ** 9],
    "10ms": [160],
    "160ms": [2560],
    "odd": [1, 7, 333, 1001, 255, 2],
    "random": random_sizes(1234),
}


@pytest.mark.parametrize("split", SPLITS, ids=list(SPLITS))
@pytest.mark.parametrize("signal", ["noise", "speechlike"])
def test_any_split_matches_offline(frontend, split, signal):
    wav = noise(21_937) if signal == "noise" else speechlike(16_160)
    sf = StreamingFrontend(frontend)
    assert_same(stream(sf, wav, SPLITS[split]), offline(frontend, wav))


def test_one_sample_pieces_short_signal(frontend):
    wav = speechlike(2_000)
    assert_same(stream(StreamingFrontend(frontend), wav, [1]), offline(frontend, wav))


@pytest.mark.parametrize("length", [257, 300, 511, 512, 513, 672, 673, 1600, 1601, 1759])
def test_lengths_near_frame_edges(frontend, length):
    wav = noise(length, seed=length)
    expected = offline(frontend, wav)
    for sizes in ([length], [1, 100], [256, 1]):
        assert_same(stream(StreamingFrontend(frontend), wav, sizes), expected)


def test_numpy_input(frontend):
    wav = noise(5_000, seed=3)
    sf = StreamingFrontend(frontend)
    outs = [sf.push(wav[i:i + 999].numpy()) for i in range(0, len(wav), 999)]
    assert_same(torch.cat(outs + [sf.flush()], dim=1)[0], offline(frontend, wav))


def test_frames_are_emitted_as_soon_as_final(frontend):
    sf = StreamingFrontend(frontend)
    pad, n_fft, hop = 256, 512, 160
    wav = noise(4_000, seed=5)
    for end in range(1, len(wav) + 1):
        sf.push(wav[end - 1:end])
        # frame t covers original samples [t*hop - pad, t*hop - pad + n_fft)
        expected = (end + pad - n_fft) // hop + 1 if end > pad and end + pad >= n_fft else 0
        assert sf.num_frames == expected
    sf.flush()
    assert sf.num_frames == 0


def test_memory_is_bounded(frontend):
    sf = StreamingFrontend(frontend)
    wav = noise(48_000, seed=7)
    for i in range(0, len(wav), 37):
        sf.push(wav[i:i + 37])
        # white-box: under n_fft samples of the padded signal plus the reflection tail
        assert sf._buf.numel() < 512
        assert sf._tail.numel() <= 257


def test_flush_then_reuse(frontend):
    sf = StreamingFrontend(frontend)
    first, second = noise(9_001, seed=11), speechlike(7_777)
    assert_same(stream(sf, first, [480]), offline(frontend, first))
    assert sf.num_frames == 0
    assert_same(stream(sf, second, [333]), offline(frontend, second))


def test_reset_drops_the_partial_utterance(frontend):
    sf = StreamingFrontend(frontend)
    sf.push(noise(3_000, seed=1))
    assert sf.num_frames > 0
    sf.reset()
    assert sf.num_frames == 0
    wav = noise(4_321, seed=2)
    assert_same(stream(sf, wav, [1000]), offline(frontend, wav))


def test_flush_without_audio_returns_no_frames(frontend):
    sf = StreamingFrontend(frontend)
    assert sf.push(torch.zeros(0)).shape == (1, 0, 80)
    assert sf.flush().shape == (1, 0, 80)


@pytest.mark.parametrize("length", [1, 100, 256])
def test_too_short_utterance_raises_like_offline(frontend, length):
    wav = noise(length)
    with pytest.raises(RuntimeError):  # torch's reflect pad refuses it offline
        offline(frontend, wav)
    sf = StreamingFrontend(frontend)
    assert sf.push(wav).shape == (1, 0, 80)
    with pytest.raises(UtteranceTooShortError, match="too short"):
        sf.flush()
    # the failed flush still ended the utterance
    wav2 = noise(3_000, seed=9)
    assert_same(stream(sf, wav2, [700]), offline(frontend, wav2))


@pytest.mark.parametrize("overrides", [
    dict(center=False),
    dict(n_fft=400, win_length=None, hop_length=128),
    dict(n_fft=256, win_length=200, hop_length=300),  # hop > n_fft: samples skipped
    dict(n_fft=255, win_length=None, hop_length=100),  # odd n_fft
    dict(window=None, n_fft=256, win_length=None, hop_length=64),
], ids=["center_false", "no_win_length", "hop_gt_n_fft", "odd_n_fft", "no_window"])
@pytest.mark.filterwarnings("ignore:A window was not provided")  # torch's, offline too
def test_other_stft_settings(overrides):
    fe = make_frontend(**overrides)
    wav = noise(6_011, seed=4)
    expected = offline(fe, wav)
    for sizes in ([97, 1000], random_sizes(5)):
        assert_same(stream(StreamingFrontend(fe), wav, sizes), expected)


def test_center_false_too_short_raises():
    sf = StreamingFrontend(make_frontend(center=False))
    sf.push(noise(511))
    with pytest.raises(UtteranceTooShortError, match="center=False"):
        sf.flush()


class _OtherFrontend(AbsFrontend):
    def output_size(self):
        return 80

    def forward(self, input, input_lengths):
        return input, input_lengths


class _SubclassedFrontend(DefaultFrontend):
    pass


def test_unsupported_frontends_get_a_clear_error():
    with pytest.raises(ValueError, match="only espnet2.asr.frontend.default.DefaultFrontend"):
        StreamingFrontend(_OtherFrontend())
    with pytest.raises(ValueError, match="_SubclassedFrontend"):
        StreamingFrontend(_SubclassedFrontend(**CONF))
    with pytest.raises(ValueError, match="apply_stft=False"):
        StreamingFrontend(make_frontend(apply_stft=False))
    enh = make_frontend(frontend_conf=dict(use_wpe=True, wlayers=1, wunits=8, wprojs=8))
    with pytest.raises(ValueError, match="enhancement"):
        StreamingFrontend(enh)


def test_multichannel_pieces_are_refused(frontend):
    sf = StreamingFrontend(frontend)
    with pytest.raises(ValueError, match="1-D"):
        sf.push(torch.zeros(160, 2))


def test_attributes(frontend):
    sf = StreamingFrontend(frontend)
    assert (sf.sample_rate, sf.hop_length, sf.n_mels, sf.num_frames) == (16000, 160, 80, 0)
