"""StreamingVAD on espeak-ng speech: segment positions, split invariance, input checks."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from espnet_freeze_omni.data.espeak import synthesize
from espnet_freeze_omni.inference.vad import StreamingVAD, VADEvent, load_model

SR = 16000
TOLERANCE = int(0.2 * SR)
STARTED, STOPPED = "speech_started", "speech_stopped"


def _speech_bounds(x: np.ndarray) -> tuple:
    """First and last sample of the audible part of a synthesized utterance."""
    loud = np.flatnonzero(np.abs(x) > 0.02 * np.abs(x).max())
    return int(loud[0]), int(loud[-1]) + 1


@pytest.fixture(scope="module")
def dialog(tmp_path_factory):
    """1 s silence, utterance, 1.5 s silence, utterance, 1 s silence (int16) + true bounds."""
    root = tmp_path_factory.mktemp("vad")
    a = synthesize("what color is the sky over paris today", root / "a.wav")
    b = synthesize("anna lives in a small house near the river", root / "b.wav",
                   voice="en-gb", speed=180)
    parts, truth, pos = [], [], 0
    for gap, wav in ((1.0, a), (1.5, b), (1.0, None)):
        parts.append(np.zeros(int(gap * SR), dtype=np.int16))
        pos += len(parts[-1])
        if wav is not None:
            x, sr = soundfile.read(wav, dtype="int16")
            assert sr == SR
            lo, hi = _speech_bounds(x.astype(np.float32))
            truth.append((pos + lo, pos + hi))
            parts.append(x)
            pos += len(x)
    return np.concatenate(parts), truth


def _run(vad: StreamingVAD, audio: np.ndarray, sizes) -> list:
    events, i = [], 0
    for n in sizes:
        events += vad.push(audio[i:i + n])
        i += n
    assert i >= len(audio)
    return events + vad.flush()


def _chunks(total: int, n: int):
    return [n] * (total // n + 1)


def test_two_segments_where_the_speech_is(dialog):
    pcm, truth = dialog
    audio = pcm.astype(np.float32) / 32768
    vad = StreamingVAD()
    events = _run(vad, audio, _chunks(len(audio), 2560))
    assert [e.kind for e in events] == [STARTED, STOPPED, STARTED, STOPPED], events
    for (start, stop), (lo, hi) in zip(zip(events[::2], events[1::2]), truth):
        assert abs(start.sample - lo) <= TOLERANCE, (start, lo)
        assert abs(stop.sample - hi) <= TOLERANCE, (stop, hi)
    assert all(isinstance(e, VADEvent) for e in events)
    assert not vad.in_speech
    assert vad.num_windows == -(-len(audio) // vad.window)  # the tail was scored at flush


def test_events_do_not_depend_on_the_split(dialog):
    pcm, _ = dialog
    audio = pcm.astype(np.float32) / 32768
    rng = np.random.default_rng(0)
    odd = [int(n) | 1 for n in rng.integers(1, 3000, size=len(audio) // 700)]
    runs = {}
    for name, sizes in (("160 ms", _chunks(len(audio), 2560)), ("10 ms", _chunks(len(audio), 160)),
                        ("odd", odd), ("all at once", [len(audio)])):
        vad = StreamingVAD(history_windows=10_000)
        runs[name] = (_run(vad, audio, sizes), vad.probabilities)
    ref_events, ref_probs = runs["160 ms"]
    assert len(ref_events) == 4
    for name, (events, probs) in runs.items():
        assert events == ref_events, name
        assert probs == ref_probs, name
    # int16 input is the same audio; so is a read-only array with a negative stride
    assert _run(StreamingVAD(), pcm, _chunks(len(pcm), 2560)) == ref_events
    backwards = audio[::-1].copy()[::-1]
    backwards.flags.writeable = False
    assert _run(StreamingVAD(), backwards, [len(audio)]) == ref_events


def test_silence_and_low_noise_give_no_event():
    rng = np.random.default_rng(1)
    for audio in (np.zeros(3 * SR, dtype=np.float32),
                  (0.003 * rng.standard_normal(3 * SR)).astype(np.float32)):
        vad = StreamingVAD()
        assert _run(vad, audio, _chunks(len(audio), 2560)) == []
        assert not vad.in_speech
        assert max(vad.probabilities) < vad.threshold


def test_flush_closes_an_open_segment_and_reset_starts_over(dialog):
    pcm, truth = dialog
    audio = pcm.astype(np.float32) / 32768
    cut = (truth[0][0] + truth[0][1]) // 2  # the stream ends in the middle of the first utterance
    vad = StreamingVAD()
    events = vad.push(audio[:cut])
    assert [e.kind for e in events] == [STARTED] and vad.in_speech
    (stop,) = vad.flush()  # at the end (the zero-padded last window may score as silence)
    assert stop.kind == STOPPED and cut - vad.window <= stop.sample <= cut
    with pytest.raises(RuntimeError, match="reset"):
        vad.push(audio[:100])
    vad.reset()
    assert vad.num_samples == 0 and vad.last_probability is None
    full = _run(vad, audio, [len(audio)])
    assert full == _run(StreamingVAD(), audio, [len(audio)])
    # the stream ends 0.25 s into the silence after the first utterance (< min_silence_s):
    # the segment is closed where that silence began, as the full stream closes it later
    vad.reset()
    events = vad.push(audio[:truth[0][1] + int(0.25 * SR)])
    assert [e.kind for e in events] == [STARTED] and vad.in_speech
    assert vad.flush() == [full[1]]


def test_bad_input_is_refused_and_leaves_the_stream_intact():
    vad = StreamingVAD()
    good = np.zeros(1000, dtype=np.float32)
    vad.push(good)
    bad = good.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vad.push(bad)
    bad[7] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        vad.push(bad)
    with pytest.raises(ValueError, match="1-D"):
        vad.push(np.zeros((2, 512), dtype=np.float32))
    with pytest.raises(ValueError, match="int16"):
        vad.push(np.zeros(512, dtype=np.int32))
    assert vad.num_samples == 1000
    assert vad.push(torch.zeros(100)) == [] and vad.push([]) == []
    assert vad.num_samples == 1100 and vad.num_windows == 2


def test_options_model_and_memory():
    threads = torch.get_num_threads()
    model = load_model()
    assert torch.get_num_threads() == threads  # importing silero_vad sets it to 1
    vad = StreamingVAD(model=model, history_windows=5)
    with pytest.raises(ValueError, match="already used"):
        StreamingVAD(model=model)
    vad.push(np.zeros(20 * 512 + 17, dtype=np.float32))
    assert len(vad.probabilities) == 5 and vad.last_probability == vad.probabilities[-1]
    assert len(vad._buffer) == 17
    del vad
    StreamingVAD(model=model)  # free again once its user is gone
    for kwargs in (dict(threshold=1.0), dict(sample_rate=22050), dict(min_silence_s=-1),
                   dict(neg_threshold=0.9)):
        with pytest.raises(ValueError):
            StreamingVAD(**kwargs)  # checked before any model is loaded
