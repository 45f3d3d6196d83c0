"""Codec interface, embedded codec, packet streaming, token extraction, espnet gan_codec backend.

Everything speaks through espeak-ng on the spot; the embedded codec is trained with a tiny
codebook in a few seconds, espnet's SoundStream with conf/codec_soundstream_tiny.yaml for two
steps.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from espnet_freeze_omni.codec import load_codec
from espnet_freeze_omni.codec.abs_codec import AbsCodec
from espnet_freeze_omni.codec.embedded import EmbeddedCodec, train_embedded_codec
from espnet_freeze_omni.codec.packets import PacketDecoder, find_splice_point
from espnet_freeze_omni.data.espeak import SpokenUtterance, pick_voice, synthesize_datadir

REPO = Path(__file__).resolve().parents[1]
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck?",
    "Please call Stella and ask her to bring these things.",
    "A large size in stockings is hard to sell.",
    "The birch canoe slid on the smooth planks.",
]
VOCAB = 32  # small codebook: the test trains on ~15 s of speech


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """A Kaldi data dir of six espeak-ng utterances at 24 kHz."""
    root = tmp_path_factory.mktemp("codec_speech")
    utts = [SpokenUtterance(f"utt{i}", text, f"spk{i % 2}", **pick_voice(i))
            for i, text in enumerate(SENTENCES)]
    return synthesize_datadir(utts, root / "data", root / "wav", sample_rate=24000)


@pytest.fixture(scope="module")
def codec_dir(speech, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("codec") / "embedded"
    train_embedded_codec(speech / "wav.scp", out, vocab_size=VOCAB, kmeans_iters=4,
                         progress=False)
    return out


@pytest.fixture(scope="module")
def codec(codec_dir) -> EmbeddedCodec:
    return EmbeddedCodec.from_dir(codec_dir)


def _lines(path: Path):
    return Path(path).read_text().splitlines(keepends=True)


def _yaml(path: Path):
    return yaml.safe_load(Path(path).read_text())


def _wav(speech: Path, utt: str):
    path = dict(line.split() for line in _lines(speech / "wav.scp"))[utt]
    return sf.read(path, dtype="float32")


# --- the interface and the embedded codec ------------------------------------------------------
def test_embedded_codec_round_trip(codec, codec_dir, speech):
    assert isinstance(codec, AbsCodec)
    assert (codec.sample_rate, codec.token_rate, codec.samples_per_token) == (24000, 40, 600)
    assert codec.vocab_size == VOCAB
    saved = _yaml(codec_dir / "config.yaml")["training"]
    assert saved["codes_used"] == VOCAB and saved["utterances"] == len(SENTENCES)

    wav, sr = _wav(speech, "utt0")
    tokens = codec.encode(wav, sr)
    assert tokens.dtype == np.int64 and tokens.ndim == 1
    assert len(tokens) == math.ceil(len(wav) / 600)
    assert tokens.min() >= 0 and tokens.max() < VOCAB
    out = codec.decode(tokens)
    assert out.dtype == np.float32 and len(out) == len(tokens) * 600
    assert np.isfinite(out).all() and 0.01 < np.abs(out).max() < 10

    # list and tensor input decode alike; decoding is deterministic
    import torch

    np.testing.assert_array_equal(codec.decode(tokens.tolist()), out)
    np.testing.assert_array_equal(codec.decode(torch.from_numpy(tokens)), out)

    # other rates are resampled: 16 kHz audio of the same duration gives the same token count
    import torchaudio

    wav16 = torchaudio.functional.resample(torch.from_numpy(wav), 24000, 16000).numpy()
    assert abs(len(codec.encode(wav16, 16000)) - len(tokens)) <= 1

    # load_codec and from_dir agree
    again = load_codec({"type": "embedded", "path": str(codec_dir)})
    np.testing.assert_array_equal(again.encode(wav, sr), tokens)
    assert len(codec.encode(np.zeros(0, np.float32), 24000)) == 0
    assert len(codec.decode([])) == 0


def test_embedded_codec_keeps_speech_intelligible(codec, speech):
    """Sanity bound only (32 codes, 15 s of training speech); the 1024-code figures are in the
    closing notes of bin/codec_intelligibility.py runs."""
    from espnet_freeze_omni.scoring.codec_metrics import stoi

    wav, sr = _wav(speech, "utt1")
    out = codec.decode(codec.encode(wav, sr))[:len(wav)]
    assert stoi(wav, out, sr) > 0.5
    # and unrelated audio scores clearly lower
    assert stoi(wav, np.roll(out, len(out) // 2), sr) < 0.3


def test_tokens_out_of_range_are_rejected(codec):
    with pytest.raises(ValueError, match=r"id 32 at position 2"):
        codec.decode([0, 5, VOCAB, 1])
    with pytest.raises(ValueError, match=r"id -1 at position 0"):
        codec.decode(np.array([-1, 0]))
    with pytest.raises(ValueError, match="1-D"):
        codec.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"id 40 at position 1"):
        PacketDecoder(codec).push([3, 40])


def test_load_codec_rejects_unknown_types(tmp_path):
    with pytest.raises(ValueError, match="unknown codec type"):
        load_codec({"type": "soundstream"})
    with pytest.raises(ValueError, match="lacks"):
        load_codec({"type": "espnet_gan_codec", "model_file": "x.pth"})
    conf = tmp_path / "codec.yaml"
    conf.write_text("type: embedded\npath: /nonexistent\n")
    with pytest.raises(FileNotFoundError, match="not an embedded codec dir"):
        load_codec(str(conf))


# --- packets -----------------------------------------------------------------------------------
def test_packets_match_offline_decoding(codec, speech):
    wav, sr = _wav(speech, "utt3")
    tokens = codec.encode(wav, sr)
    assert len(tokens) > 110  # several packets
    offline = codec.decode(tokens)

    dec = PacketDecoder(codec)
    packets, arrivals = [], []
    for i, tok in enumerate(tokens, 1):
        new = dec.push(tok)
        arrivals += [i] * len(new)
        packets += new
    packets += dec.flush()
    # first packet once 20 + 10 look-ahead tokens are in, then every 40 tokens
    assert arrivals[:3] == [30, 70, 110]
    stream = np.concatenate(packets)
    assert len(stream) == len(offline)

    # joins lie within 5 tokens of the nominal boundaries 20, 60, 100, ...
    assert len(dec.splice_points) == len(packets) - 1
    for k, p in enumerate(dec.splice_points):
        assert abs(p - (20 + 40 * k) * 600) <= 5 * 600
    outside = ~dec.splice_mask(len(stream))
    assert outside.sum() > 0.9 * len(stream)
    np.testing.assert_allclose(stream[outside], offline[outside], atol=1e-5)
    # the embedded codec is local (context_tokens = 3 within the 4-token margin): joins match too
    assert dec.exact
    np.testing.assert_allclose(stream, offline, atol=1e-5)

    # the same result whatever the push sizes; a second stream after flush starts afresh
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(tokens)), size=6, replace=False))
    again = [p for chunk in np.split(tokens, cuts) for p in dec.push(chunk)] + dec.flush()
    np.testing.assert_allclose(np.concatenate(again), offline, atol=1e-5)


class _ToneCodec(AbsCodec):
    """Token t -> `samples_per_token` samples of amplitude t / 10 (context 0): audio whose
    quiet stretches are placed by hand."""

    sample_rate, samples_per_token, vocab_size, context_tokens = 24000, 12, 11, 0

    def _encode(self, wav):
        raise NotImplementedError

    def _decode(self, tokens):
        sign = np.resize([1.0, -1.0], self.samples_per_token)
        return np.concatenate([sign * t / 10 for t in tokens]).astype(np.float32)


def test_packets_match_offline_decoding_when_two_joins_meet():
    """Packets as short as their overlap: the quiet spot at the end of one join's search
    region is also the start of the next one's, so both joins want the same sample. The
    crossfades must neither repeat nor drop samples."""
    codec = _ToneCodec()
    dec = PacketDecoder(codec, first_packet=9, lookahead=18, packet=18, overlap=18)
    # 240-sample energy window = 20 tokens: silence on tokens 8..27 puts the only silent
    # window's centre at sample 216 = token 18, the end of the first join's region (9 +- 9
    # tokens) and the start of the second's (27 +- 9)
    tokens = np.full(80, 7)
    tokens[8:28] = 0
    offline = codec.decode(tokens)
    stream = np.concatenate([p for t in tokens for p in dec.push([t])] + dec.flush())
    assert dec.exact
    assert len(stream) == len(offline)
    np.testing.assert_allclose(stream, offline, atol=1e-6)


def test_short_streams_come_out_at_flush(codec, speech):
    wav, sr = _wav(speech, "utt2")
    tokens = codec.encode(wav, sr)[:25]
    dec = PacketDecoder(codec)
    assert dec.push(tokens) == []  # fewer than 20 + 10 tokens: nothing yet
    out = dec.flush()
    assert len(out) == 1
    np.testing.assert_allclose(out[0], codec.decode(tokens), atol=1e-6)
    assert dec.flush() == []


def test_splice_point_is_at_the_quietest_spot():
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 1, 6000).astype(np.float32)
    audio[3100:3400] *= 0.01
    p = find_splice_point(audio, 2000, 4000, window=240)
    assert 3100 + 120 <= p <= 3400 - 120


# --- token extraction --------------------------------------------------------------------------
def test_extract_codec_tokens_two_jobs(codec, codec_dir, speech, tmp_path):
    from espnet_freeze_omni.bin import extract_codec_tokens

    # a 16 kHz copy of one utterance checks resampling inside the jobs
    data = tmp_path / "data"
    data.mkdir()
    wav, sr = _wav(speech, "utt5")
    import torch
    import torchaudio

    sf.write(tmp_path / "utt5_16k.wav",
             torchaudio.functional.resample(torch.from_numpy(wav), sr, 16000).numpy(), 16000)
    lines = _lines(speech / "wav.scp")
    lines.append(f"utt9_16k {tmp_path / 'utt5_16k.wav'}\n")
    (data / "wav.scp").write_text("".join(lines))

    out = tmp_path / "dump"
    extract_codec_tokens.main(["--codec_dir", str(codec_dir), "--data_dir", str(data),
                               "--output_dir", str(out), "--nj", "2", "--no_progress"])
    rows = [line.split() for line in _lines(out / "codec_tokens")]
    assert [r[0] for r in rows] == [line.split()[0] for line in lines]
    shapes = dict(line.split() for line in _lines(out / "codec_tokens.shape"))
    for utt, *toks in rows:
        assert int(shapes[utt]) == len(toks) > 0
        assert all(0 <= int(t) < VOCAB for t in toks)
    first = rows[0]
    np.testing.assert_array_equal(np.array(first[1:], dtype=np.int64),
                                  codec.encode(*_wav(speech, first[0])))
    info = _yaml(out / "codec_info.yaml")
    assert (info["token_rate"], info["vocab_size"]) == (40, VOCAB)


def test_extract_codec_tokens_names_bad_audio(codec_dir, speech, tmp_path):
    from espnet_freeze_omni.bin import extract_codec_tokens

    data = tmp_path / "data"
    data.mkdir()
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 24000)
    first = _lines(speech / "wav.scp")[0]
    (data / "wav.scp").write_text(first + f"uttempty {empty}\n")
    with pytest.raises(RuntimeError, match=r"uttempty.*empty\.wav.*empty"):
        extract_codec_tokens.main(["--codec_dir", str(codec_dir), "--data_dir", str(data),
                                   "--output_dir", str(tmp_path / "dump"), "--nj", "1",
                                   "--no_progress"])
    (data / "wav.scp").write_text(first + f"uttgone {tmp_path / 'gone.wav'}\n")
    with pytest.raises(RuntimeError, match=r"uttgone.*gone\.wav"):
        extract_codec_tokens.main(["--codec_dir", str(codec_dir), "--data_dir", str(data),
                                   "--output_dir", str(tmp_path / "dump2"), "--nj", "2",
                                   "--no_progress"])


# --- espnet's gan_codec ------------------------------------------------------------------------
def test_espnet_gan_codec_backend(tmp_path):
    """Train conf/codec_soundstream_tiny.yaml for two steps with espnet2's own trainer, then
    use it through the AbsCodec interface."""
    from espnet2.bin.gan_codec_train import main as gan_codec_train

    utts = [SpokenUtterance(f"gan{i}", text, "spk", **pick_voice(i))
            for i, text in enumerate(["Hello there.", "Good morning.", "Thank you."])]
    data = synthesize_datadir(utts, tmp_path / "train", tmp_path / "wav", sample_rate=24000)
    for d in (data, tmp_path / "valid"):
        d.mkdir(exist_ok=True)
    (tmp_path / "valid" / "wav.scp").write_text(_lines(data / "wav.scp")[0])
    for d in (data, tmp_path / "valid"):
        with open(d / "audio_shape", "w") as f:
            for line in _lines(d / "wav.scp"):
                utt, path = line.split()
                assert sf.info(path).frames >= 6000  # the tiny config's crop length
                f.write(f"{utt} {sf.info(path).frames}\n")

    exp = tmp_path / "exp"
    gan_codec_train(cmd=[
        "--config", str(REPO / "conf" / "codec_soundstream_tiny.yaml"),
        "--output_dir", str(exp), "--ngpu", "0",
        "--train_data_path_and_name_and_type", f"{data / 'wav.scp'},audio,sound",
        "--train_shape_file", str(data / "audio_shape"),
        "--valid_data_path_and_name_and_type", f"{tmp_path / 'valid' / 'wav.scp'},audio,sound",
        "--valid_shape_file", str(tmp_path / "valid" / "audio_shape"),
    ])
    model_file = exp / "1epoch.pth"
    assert model_file.is_file()

    codec = load_codec({"type": "espnet_gan_codec", "train_config": str(exp / "config.yaml"),
                        "model_file": str(model_file)})
    assert (codec.sample_rate, codec.token_rate, codec.vocab_size) == (24000, 40, 1024)
    wav, sr = sf.read(str(next(iter(sorted((tmp_path / "wav").glob("*.wav"))))),
                      dtype="float32")
    tokens = codec.encode(wav, sr)
    assert len(tokens) == math.ceil(len(wav) / 600)
    assert tokens.dtype == np.int64 and 0 <= tokens.min() and tokens.max() < 1024
    out = codec.decode(tokens)
    assert out.dtype == np.float32 and len(out) == len(tokens) * 600
    with pytest.raises(ValueError, match="id 1024 at position 0"):
        codec.decode([1024])


def test_paper_soundstream_config_has_the_paper_interface():
    """conf/codec_soundstream_paper.yaml builds, with one 1024-code stream at 600 samples/token."""
    import torch
    from espnet2.tasks.gan_codec import GANCodecTask

    args = GANCodecTask.get_parser().parse_args(
        ["--config", str(REPO / "conf" / "codec_soundstream_paper.yaml")])
    model = GANCodecTask.build_model(args)
    assert model.meta_info() == {"fs": 24000, "num_streams": 1, "frame_shift": 600,
                                 "code_size_per_stream": [1024]}
    with torch.no_grad():
        codes = model.encode(torch.zeros(24000))
        assert codes.shape == (1, 1, 40)
        assert model.decode(codes).shape[-1] == 24000
