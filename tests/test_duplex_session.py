"""DuplexSession: the live dialogue loop on untrained tiny models.

The models are test_speech2speech's (built through the Tasks, saved as the trainer saves
them); their state head is untrained, so turn-taking is either manual (`commit()`) or
scripted (the state head's logits replaced by a schedule on the audio clock). What is
checked is computation: the session's answers equal the offline ones, the K/V cache holds
every turn once, barge-in cuts and keeps the voiced part, bad input is refused.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from test_speech2speech import s2s, work  # noqa: F401 (fixtures)

from espnet_freeze_omni.inference.duplex_runner import render_output, run_duplex, speech_spans
from espnet_freeze_omni.models.speech_input import STATE_IGNORE, STATE_LISTEN, STATE_RESPOND

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RATE = 16000


def noise(seconds: float, seed: int, scale: float = 0.1) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(seconds * RATE)) * scale).astype(np.float32)


def feed_in(session, wav, piece: int):
    events = []
    for start in range(0, len(wav), piece):
        events += session.feed(wav[start:start + piece])
    return events


def of(events, kind):
    return [e for e in events if e.type == kind]


def answer_ids(events, answer_id=1):
    return [e.data["token_id"] for e in events
            if e.type == "text" and e.data["answer_id"] == answer_id]


@pytest.fixture
def scripted_head(s2s, monkeypatch):
    """Replace the state head by a schedule: [(start_s, end_s, state)] on the session's
    audio clock (listen elsewhere), or a function of the session giving the state."""
    model = s2s.listener.model
    schedule = []
    sessions = []
    make_session = s2s.session

    def logits(hidden):
        session = sessions[-1]
        if callable(schedule[0] if schedule else None):
            state = schedule[0](session)
        else:
            state = STATE_LISTEN
            for lo, hi, s in schedule:
                if lo <= session.audio_time < hi:
                    state = s
        out = torch.full(hidden.shape[:-1] + (3,), -5.0)
        out[..., state] = 5.0
        return out

    def tracked(**options):  # sessions made by anyone (the decoder too) follow the script
        sessions.append(make_session(**options))
        return sessions[-1]

    monkeypatch.setattr(model, "state_logits", logits)
    monkeypatch.setattr(s2s, "session", tracked)

    def make(script, **options):
        schedule[:] = script if isinstance(script, list) else [script]
        return tracked(**options) if options is not None else None
    return make


# ---------------------------------------------------------------------------- equality
@pytest.mark.parametrize("piece", [160, 2560, 4001, 12345])
def test_committed_answer_equals_offline_answer(s2s, work, piece):
    import soundfile

    wav, _ = soundfile.read(work["data"] / "wav" / "solo.wav", dtype="float32")
    expected = s2s.answer(wav)
    session = s2s.session(vad=False, turn_detection="manual")
    events = feed_in(session, wav, piece)
    assert not of(events, "turn_ended")  # manual: only commit() ends a turn
    events += session.commit() + session.flush()
    assert answer_ids(events) == expected.token_ids
    done = of(events, "answer_done")
    assert len(done) == 1 and done[0].data["status"] == "completed"
    assert done[0].data["text"] == expected.text
    # the audio is the answer voiced (same tokens, same seed -> same length as speak())
    audio = np.concatenate([e.pcm for e in of(events, "audio")])
    assert len(audio) > 0 and len(audio) % s2s.codec.samples_per_token == 0


def test_state_probabilities_equal_listen(s2s, work):
    import soundfile

    wav, _ = soundfile.read(work["data"] / "wav" / "d1-t1.wav", dtype="float32")
    offline = s2s.listen(wav)
    session = s2s.session(vad=False, turn_detection="manual")
    events = feed_in(session, wav, 777) + session.flush()
    states = [e.data["state"] for e in of(events, "state")]
    names = {STATE_LISTEN: "listen", STATE_RESPOND: "respond", STATE_IGNORE: "ignore"}
    # the session reads every whole chunk while streaming (the final partial one is judged
    # only when a turn is committed)
    assert states == [names[s] for s in offline.states[:len(states)]]
    assert len(states) >= len(offline.states) - 1
    # and at the times listen() reports a decision: chunk end + look-ahead
    chunk, lookahead = session.chunk_samples, s2s.listener.chunk_lookahead_samples
    for e in of(events, "state"):
        assert round(e.audio_time * RATE) == (e.data["chunk"] + 1) * chunk + lookahead
    decided = [e for e in of(events, "state") if e.data["state"] != "listen"]
    if decided and offline.decision_time is not None:
        assert decided[0].audio_time == pytest.approx(offline.decision_time)


def test_history_is_the_kv_of_each_turn_once(s2s, work):
    """Two committed turns: the cache holds system + (prompt, audio, suffix, answer, closing)
    per turn, and turn 2's answer equals an offline prefill of exactly that sequence."""
    import soundfile

    from espnet_freeze_omni.inference.speech_input_inference import greedy_continue

    wavs = [soundfile.read(work["data"] / "wav" / f"d1-t{i}.wav", dtype="float32")[0]
            for i in (1, 2)]
    session = s2s.session(vad=False, turn_detection="manual", barge_in=False)
    events = feed_in(session, wavs[0], 3000) + session.commit()
    tick = np.zeros(session.chunk_samples, dtype=np.float32)
    while session.answer is not None:  # the answer plays out; the tick that ends it opens
        events += session.feed(tick)   # the next turn, which therefore starts with it
    events += feed_in(session, wavs[1], 3000) + session.commit()
    # turn 2 heard that tick, and the pre-roll before it (silence: tick_offset samples)
    wavs[1] = np.concatenate([np.zeros(session.tick_offset, np.float32), tick, wavs[1]])
    events += session.flush()
    first, second = answer_ids(events, 1), answer_ids(events, 2)

    model, llm, template = s2s.listener.model, s2s.llm, s2s.template
    with torch.no_grad():
        pieces = [llm.embed_tokens(torch.tensor([template.prefix_ids()]))[0]]
        for k, wav in enumerate(wavs):
            speech = torch.tensor(wav)[None]
            audio, _, _, _ = model.audio_embeddings(speech, torch.tensor([speech.size(1)]))
            pieces += [model.before_audio(1, "cpu")[0], audio[0],
                       llm.embed_tokens(torch.tensor([template.suffix_ids()]))[0]]
            if k == 0:
                closing = template.answer_end_ids() + template.next_turn_ids()
                pieces.append(llm.embed_tokens(torch.tensor([first + closing]))[0])
        offline_second = greedy_continue(llm, torch.cat(pieces)[None], session.max_new_tokens)
    assert first == s2s.answer(wavs[0]).token_ids
    assert second == offline_second
    expected_length = sum(p.size(0) for p in pieces) + len(second) + len(closing)
    assert session.history_length == expected_length
    assert len(session.turns) == 2
    assert sum(t.length for t in session.turns) + session.system_embeds.size(0) \
        == expected_length


# ---------------------------------------------------------------------------- turn-taking
def test_respond_threshold_takes_the_turn_from_a_less_sure_head(s2s, monkeypatch):
    """p = (listen 0.6, respond 0.3, ignore 0.1) after every chunk: argmax never answers;
    respond_threshold 0.25 answers at the first chunk, 0.35 still never."""
    probs = torch.tensor([0.6, 0.3, 0.1]).log()
    monkeypatch.setattr(s2s.listener.model, "state_logits",
                        lambda hidden: probs.expand(*hidden.shape[:-1], 3).clone())
    wav = noise(1.0, 21)
    for threshold, answered in ((None, False), (0.35, False), (0.25, True)):
        session = s2s.session(vad=False, respond_threshold=threshold, max_new_tokens=4)
        events = feed_in(session, wav, 1600)
        ended = of(events, "turn_ended")
        assert bool(ended) == answered, threshold
        if answered:  # at the first chunk the head reads
            assert ended[0].time == of(events, "state")[0].time
    with pytest.raises(ValueError, match="respond_threshold"):
        s2s.session(vad=False, respond_threshold=0.0)


def _tick_end_at_or_after(session, t: float) -> float:
    """The first tick end at or after `t` s: ticks end tick_offset + k * chunk samples in."""
    rate, chunk, offset = session.sample_rate, session.chunk_samples, session.tick_offset
    return (offset + math.ceil((t * rate - offset) / chunk) * chunk) / rate


def test_state_head_turns_and_barge_in(s2s, scripted_head):
    """respond at 1.1 s answers; respond at 2.0 s (while it speaks) interrupts it: the audio
    stops there, the voiced part stays in the history, the new turn is answered. (The head is
    read at tick ends; each window of the script holds one.)"""
    session = scripted_head([(1.1, 1.26, STATE_RESPOND), (2.0, 2.16, STATE_RESPOND)],
                            vad=False, max_new_tokens=40)
    first, second = _tick_end_at_or_after(session, 1.1), _tick_end_at_or_after(session, 2.0)
    s2s.synthesizer.max_tokens = 120  # 3 s of speech per segment: still talking at 2 s
    try:
        events, track = run_duplex(session, noise(4.0, 1))
    finally:
        s2s.synthesizer.max_tokens = 30
    turns = of(events, "turn_ended")
    assert [e.time for e in turns] == pytest.approx([first, second])
    cut = of(events, "interrupted")
    assert len(cut) == 1 and cut[0].data["answer_id"] == 1
    assert cut[0].time == pytest.approx(second)
    # the first answer's audio is heard from its decision until the barge-in, not after
    spans = speech_spans(events)
    assert spans[0][2] == 1 and spans[0][0] == pytest.approx(first)
    assert spans[0][1] == pytest.approx(second)
    assert spans[1][2] == 2 and spans[1][0] >= second
    assert len(track) == 4 * s2s.sample_rate
    rate = s2s.sample_rate
    assert np.abs(track[:int(first * rate)]).max() == 0  # silent before the first answer
    # history: turn 1 keeps the tokens voiced when the barge-in branch opened
    first_turn = session.turns[0]
    closing = s2s.template.answer_end_ids() + s2s.template.next_turn_ids()
    kept = first_turn.assistant_ids[:-len(closing)]
    assert first_turn.assistant_ids[-len(closing):] == closing
    assert kept == answer_ids(events, 1)[:len(kept)]
    assert len(kept) > 0  # its first segment was playing when the user came in
    assert of(events, "answer_done")[-1].data["answer_id"] == 2


def test_the_state_head_judges_a_chunk_as_soon_as_its_audio_is_in(s2s):
    """A chunk is complete `chunk_lookahead_samples` past its end (the STFT window and the
    subsampling convs): one sample short of that the head has judged nothing, with it the
    chunk, and every later chunk exactly one chunk of audio later; not a tick later."""
    lookahead = s2s.listener.chunk_lookahead_samples
    session = s2s.session(vad=False, turn_detection="manual")
    chunk, rate = session.chunk_samples, session.sample_rate
    assert 0 < lookahead < chunk and session.tick_offset == lookahead
    wav = noise(1.0, 7)
    assert not of(session.feed(wav[:chunk + lookahead - 1]), "state")
    (state,) = of(session.feed(wav[chunk + lookahead - 1:chunk + lookahead]), "state")
    assert state.data["chunk"] == 0
    assert state.audio_time == pytest.approx((chunk + lookahead) / rate)
    end = 2 * chunk + lookahead
    assert not of(session.feed(wav[chunk + lookahead:end - 1]), "state")
    (state,) = of(session.feed(wav[end - 1:end]), "state")
    assert state.data["chunk"] == 1


def test_a_branch_opened_at_speech_start_judges_its_chunks_at_tick_ends(s2s, spoken):
    """With VAD a turn opens mid-stream on the replayed ticks: it starts the look-ahead
    before them, so the tick that opens it already completes one chunk per tick heard
    (replayed ones included), and the head judges every chunk at the end of its tick."""
    first, _ = spoken
    session = s2s.session(vad=True, turn_detection="manual", vad_replay_s=0.32)
    wav = np.concatenate([np.zeros(int(0.77 * RATE), np.float32), first,
                          np.zeros(RATE, np.float32)])
    events = feed_in(session, wav, 320)
    started = of(events, "speech_started")[0]
    opened = [e for e in of(events, "state") if e.audio_time == started.audio_time]
    assert [e.data["chunk"] for e in opened] == [0, 1, 2]  # 2 replayed ticks + this one
    offset, chunk = session.tick_offset, session.chunk_samples
    for e in of(events, "state"):
        assert (round(e.audio_time * RATE) - offset) % chunk == 0


def test_side_talk_during_an_answer_does_not_interrupt(s2s, scripted_head):
    session = scripted_head([(1.1, 1.2, STATE_RESPOND), (1.5, 1.7, STATE_IGNORE)],
                            vad=False, max_new_tokens=40)
    events, _ = run_duplex(session, noise(3.0, 2))
    assert len(of(events, "turn_ended")) == 1
    assert of(events, "ignored") and not of(events, "interrupted")
    done = of(events, "answer_done")
    assert [d.data["status"] for d in done] == ["completed"]


def test_results_do_not_depend_on_the_feed_size(s2s, scripted_head):
    runs = []
    for piece in (0.01, 0.16, 0.333):
        session = scripted_head([(1.1, 1.2, STATE_RESPOND), (2.0, 2.1, STATE_RESPOND)],
                                vad=False, max_new_tokens=20)
        session.reseed("same")
        events, track = run_duplex(session, noise(3.0, 3), feed_seconds=piece)
        runs.append(([(e.type, round(e.time, 3)) for e in events if e.type != "state"],
                     track))
    for events, track in runs[1:]:
        assert events == runs[0][0]
        np.testing.assert_array_equal(track, runs[0][1])


def test_measured_clock_adds_compute_time(s2s, scripted_head):
    session = scripted_head([(1.1, 1.2, STATE_RESPOND)], vad=False, clock="measured")
    events, track = run_duplex(session, noise(2.5, 4))
    done = of(events, "answer_done")[0]
    timings = done.data["timings"]
    assert timings["first_token"] > 0 and timings["first_pcm"] >= timings["first_token"]
    assert done.data["compute"]["llm"] > 0
    first_audio = of(events, "audio")[0]
    assert first_audio.data["play_at"] > 1.12  # compute delays the first sound
    assert len(track) == int(2.5 * s2s.sample_rate)


# ---------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_a_message(s2s):
    session = s2s.session(vad=False, turn_detection="manual")
    bad = noise(0.5, 5)
    bad[100] = np.nan
    with pytest.raises(ValueError, match="sample 100 .*NaN or inf"):
        session.feed(bad)
    with pytest.raises(ValueError, match="mono"):
        session.feed(np.zeros((800, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="float or int16"):
        session.feed(np.zeros(800, dtype=np.int32))
    with pytest.raises(ValueError, match="no user audio"):
        session.commit()
    # nothing of the refused pieces was used: the session goes on as new
    events = session.feed((noise(0.5, 6) * 32767).astype(np.int16)) + session.commit()
    assert len(of(events, "turn_ended")) == 1
    session.flush()
    with pytest.raises(RuntimeError, match="after flush"):
        session.feed(np.zeros(160, dtype=np.float32))
    with pytest.raises(RuntimeError, match="already"):
        session.flush()
    with pytest.raises(ValueError, match="turn_detection"):
        s2s.session(turn_detection="sometimes")
    with pytest.raises(ValueError, match="max_context_tokens"):
        s2s.session(vad=False, max_context_tokens=50)


def test_text_turn_answers_like_the_text_in_model_and_extends_the_same_cache(s2s, work):
    """A typed turn alone answers as answer_text(); after a spoken turn it continues the
    spoken turn's K/V (checked against an offline prefill of exactly that sequence)."""
    import soundfile

    from espnet_freeze_omni.inference.speech_input_inference import greedy_continue

    question = "what color is the sky"
    alone = s2s.session(vad=False, turn_detection="manual")
    events = alone.text_turn(question) + alone.flush()
    assert of(events, "turn_ended")[0].data["text"] == question
    assert answer_ids(events) == s2s.answer_text(question).token_ids
    assert of(events, "answer_done")[0].data["status"] == "completed"
    assert of(events, "audio")  # voiced like any answer

    wav, _ = soundfile.read(work["data"] / "wav" / "d1-t1.wav", dtype="float32")
    session = s2s.session(vad=False, turn_detection="manual", barge_in=False)
    events = feed_in(session, wav, 3000) + session.commit()
    tick = np.zeros(session.chunk_samples, dtype=np.float32)
    while session.answer is not None:  # the spoken turn's answer plays out
        events += session.feed(tick)
    events += session.text_turn(question) + session.flush()
    first, second = answer_ids(events, 1), answer_ids(events, 2)
    model, llm, template = s2s.listener.model, s2s.llm, s2s.template
    with torch.no_grad():
        speech = torch.tensor(wav)[None]
        audio, _, _, _ = model.audio_embeddings(speech, torch.tensor([speech.size(1)]))
        suffix = llm.embed_tokens(torch.tensor([template.suffix_ids()]))[0]
        closing = template.answer_end_ids() + template.next_turn_ids()
        pieces = [llm.embed_tokens(torch.tensor([template.prefix_ids()]))[0],
                  model.before_audio(1, "cpu")[0], audio[0], suffix,
                  llm.embed_tokens(torch.tensor([first + closing]))[0],
                  llm.embed_tokens(torch.tensor([template.question_ids(question)]))[0], suffix]
        expected = greedy_continue(llm, torch.cat(pieces)[None], session.max_new_tokens)
    assert first == s2s.answer(wav).token_ids
    assert second == expected
    assert session.history_length == sum(p.size(0) for p in pieces) + len(second) + len(closing)


def test_text_turn_cuts_the_answer_in_progress_and_refuses_bad_text(s2s, work):
    import soundfile

    wav, _ = soundfile.read(work["data"] / "wav" / "solo.wav", dtype="float32")
    session = s2s.session(vad=False, turn_detection="manual", max_new_tokens=40)
    events = feed_in(session, wav, 4000) + session.commit()
    events += session.feed(np.zeros(session.chunk_samples, dtype=np.float32))
    # (on the audio clock the answer is generated at once: it is still being played)
    assert session.answer is not None and session.playback_end > session.clock
    events += session.text_turn("where does anna live") + session.flush()
    cut = of(events, "interrupted")
    assert len(cut) == 1 and cut[0].data["answer_id"] == 1
    assert cut[0].data["voiced_tokens"] <= len(answer_ids(events, 1))
    done = {e.data["answer_id"]: e.data["status"] for e in of(events, "answer_done")}
    assert done[2] == "completed"
    # the history keeps the first answer as far as it was voiced
    closing = len(s2s.template.answer_end_ids() + s2s.template.next_turn_ids())
    assert len(session.turns) == 2
    assert len(session.turns[0].assistant_ids) - closing == cut[0].data["voiced_tokens"]
    with pytest.raises(RuntimeError, match="after flush"):
        session.text_turn("hello")
    fresh = s2s.session(vad=False, turn_detection="manual")
    with pytest.raises(ValueError, match="empty"):
        fresh.text_turn("   ")
    with pytest.raises(ValueError, match="tokens long"):
        fresh.text_turn("word " * (fresh.max_turn_positions + 10))
    assert not fresh.turns and fresh.answer is None  # nothing of the refused turns was kept


def test_silence_and_a_long_monologue_stay_bounded(s2s, scripted_head):
    """60 s of speech-like noise that the head never judges finished: the turn's cache is
    bounded by max_turn_seconds, no answer comes."""
    session = scripted_head([], vad=False, max_turn_seconds=5.0)
    events = feed_in(session, noise(60.0, 7), 8000) + session.flush()
    assert not of(events, "turn_ended")
    branch = session.listening
    assert branch.num_audio <= session.max_turn_positions
    assert session.stats["turns_trimmed"] >= 1
    limit = session.system_embeds.size(0) + session.model.prompt_embeddings.num_embeddings \
        + session.max_turn_positions
    assert s2s.llm.cache_length(branch.cache) <= limit
    silent = s2s.session(vad=False, turn_detection="manual")
    events = feed_in(silent, np.zeros(3 * RATE, dtype=np.float32), 1600) + silent.flush()
    assert not of(events, "text")


def test_context_limit_drops_the_oldest_turns(s2s, work):
    import soundfile

    wav, _ = soundfile.read(work["data"] / "wav" / "solo.wav", dtype="float32")
    probe = s2s.session(vad=False, turn_detection="manual", max_turn_seconds=1.0)
    limit = probe.system_embeds.size(0) + 2 * probe._turn_budget + 5
    session = s2s.session(vad=False, turn_detection="manual", max_turn_seconds=1.0,
                          max_context_tokens=limit)
    for _ in range(4):
        feed_in(session, wav[:RATE], 4000)
        session.commit()
    session.flush()
    assert session.stats["turns_dropped"] >= 1
    assert session.history_length <= limit


# ---------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def packed(work, tmp_path_factory):
    from test_speech2speech import pack

    zip_path = tmp_path_factory.mktemp("packed") / "model.zip"
    pack(work, zip_path, ["--codec_dir", str(work["codec"])])
    return zip_path


def test_cli_multi_turn_and_duplex(work, packed, tmp_path):
    import json

    import soundfile

    from espnet_freeze_omni.bin import speech2speech

    # a stereo 44.1 kHz turn is converted; a 16 kHz mono one is taken as it is
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([noise(1.2, 8), noise(1.2, 9)], axis=1)[::1], 44100)
    common = ["--model_file", str(packed), "--llm_path", str(work["llm"]),
              "--cachedir", str(tmp_path / "cache"), "--max_new_tokens", "8", "--vad", "false"]
    out = tmp_path / "turns"
    speech2speech.main(common + ["--wav", str(stereo), "--wav",
                                 str(work["data"] / "wav" / "solo.wav"),
                                 "--output_dir", str(out), "--turn_detection", "manual"])
    answers = (out / "answers.txt").read_text().splitlines()
    assert [a.split(" ", 1)[0] for a in answers] == ["1", "2"]
    assert all(len(a.split(" ", 1)) == 2 for a in answers)  # manual turns: committed, answered
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert [e["type"] for e in events].count("turn_ended") == 2
    for n in (1, 2):
        pcm, rate = soundfile.read(out / f"turn{n}.wav")
        assert rate == 24000 and len(pcm) > 0

    duplex_in = tmp_path / "input.wav"
    soundfile.write(duplex_in, noise(3.3, 10), 16000)
    duplex_out = tmp_path / "out" / "output.wav"
    speech2speech.main(common + ["--duplex_input", str(duplex_in),
                                 "--duplex_output", str(duplex_out)])
    pcm, rate = soundfile.read(duplex_out)
    assert rate == 24000 and len(pcm) == int(3.3 * 24000)
    assert (tmp_path / "out" / "output.events.jsonl").is_file()

    # session options the CLI passes through (a release model's decision rule and sampling)
    from espnet_freeze_omni.inference.duplex_session import SessionOptions

    opts = speech2speech.session_options(speech2speech.get_parser().parse_args(
        common + ["--wav", "q.wav", "--state_rule", "release", "--llm_sampling", "release",
                  "--llm_top_k", "5", "--llm_temperature", "0.7"]))
    checked = SessionOptions(**opts).check()
    assert (checked.state_rule, checked.llm_sampling, checked.llm_top_k,
            checked.llm_temperature) == ("release", "release", 5, 0.7)

    with pytest.raises(SystemExit, match="not found"):
        speech2speech.main(common + ["--wav", str(tmp_path / "missing.wav"),
                                     "--output_dir", str(out)])
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(RuntimeError, match="bad.wav"):
        speech2speech.main(common + ["--wav", str(bad), "--output_dir", str(out)])


# ---------------------------------------------------------------------------- VAD
@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    import soundfile

    from espnet_freeze_omni.data.espeak import synthesize

    root = tmp_path_factory.mktemp("duplex_vad")
    first = soundfile.read(synthesize("what color is the sky over paris", root / "a.wav"),
                           dtype="float32")[0]
    second = soundfile.read(synthesize("and where does anna live", root / "b.wav"),
                            dtype="float32")[0]
    return first, second


def test_vad_gates_the_llm_and_replays_the_speech_start(s2s, spoken):
    first, _ = spoken
    wav = np.concatenate([np.zeros(RATE), first, np.zeros(int(1.5 * RATE))]).astype(np.float32)
    session = s2s.session(vad=True, turn_detection="vad", vad_replay_s=0.48)
    events, _ = run_duplex(session, wav)
    started, stopped = of(events, "speech_started"), of(events, "speech_stopped")
    assert len(started) == 1 and len(stopped) == 1
    assert 0.8 < started[0].data["at"] < 1.2
    # nothing is listened to before the speech starts, and the replay comes first
    states = of(events, "state")
    assert states and states[0].audio_time >= started[0].audio_time
    ended = of(events, "turn_ended")
    assert len(ended) == 1 and ended[0].time >= stopped[0].time
    speech_and_replay = stopped[0].data["at"] - started[0].data["at"] + 0.48
    assert ended[0].data["heard_seconds"] >= speech_and_replay - 0.2
    ticks = int(np.ceil(len(wav) / session.chunk_samples))
    assert session.stats["ticks_heard"] < ticks - 6  # the silences were not fed
    assert of(events, "answer_done")


def test_a_pause_inside_a_turn_continues_the_same_turn(s2s, spoken, scripted_head):
    """speech, a 1.2 s pause (the VAD stops and starts again), more speech: one branch hears
    it all (the pause replayed up to vad_replay_s), a scripted head answers at the end."""
    first, second = spoken
    pause = np.zeros(int(1.2 * RATE), dtype=np.float32)
    wav = np.concatenate([np.zeros(RATE), first, pause, second,
                          np.zeros(int(1.5 * RATE))]).astype(np.float32)
    loud = np.flatnonzero(np.abs(wav) > 0.02 * np.abs(wav).max())
    end_of_speech = (loud[-1] + 1) / RATE
    session = scripted_head([(end_of_speech + 0.1, end_of_speech + 0.3, STATE_RESPOND)],
                            vad=True, vad_replay_s=0.96, vad_min_silence_s=0.5)
    events, _ = run_duplex(session, wav)
    assert len(of(events, "speech_started")) == 2
    ended = of(events, "turn_ended")
    assert len(ended) == 1
    assert ended[0].data["opened_at"] < 1.5  # the turn opened at the first speech start
    spoken_span = ended[0].time - ended[0].data["opened_at"]
    assert ended[0].data["heard_seconds"] == pytest.approx(spoken_span + 0.96, abs=0.35)
    assert len(session.turns) == 1


# ---------------------------------------------------------------------------- decoding
def test_recipe_decoding_runs_each_dialog_through_one_session(s2s, work, scripted_head):
    """Stage 15 (history_mode session): turn N of a dialog is answered from the K/V of the
    dialog's earlier audio turns and the model's own answers, the state head taking turns;
    the same as running the dialog through a session by hand."""
    import io

    import soundfile

    from espnet_freeze_omni.bin.speech2speech_inference import Questions, TestSetDecoder
    from espnet_freeze_omni.inference.duplex_runner import run_turn

    def heard_enough(session):  # a new turn (not a barge-in) ends after 0.8 s
        branch = session.listening
        done = branch.fork_voiced is None and branch.fed_samples >= 0.8 * RATE
        return STATE_RESPOND if done else STATE_LISTEN

    scripted_head(heard_enough)
    wavs = {u: str(work["data"] / "wav" / f"{u}.wav") for u in ("d1-t1", "d1-t2", "d1-t3")}
    decoder = TestSetDecoder(s2s, wavs, Questions(None, work["data"]), "session", 1,
                             session_conf=dict(vad=False))
    files = {n: io.StringIO() for n in ("speech_in", "speech_out", "speech_out_asr", "turn")}
    wav_dir = work["root"] / "session_wavs"
    wav_dir.mkdir(exist_ok=True)
    for utt in ("d1-t2", "d1-t3"):  # d1-t1 is run as the history of d1-t2
        decoder.decode_utterance(utt, ["speech_in", "speech_out", "turn"], files, wav_dir)

    session = s2s.session(vad=False)
    by_hand = {}
    for utt in wavs:
        session.reseed(utt)
        by_hand[utt] = run_turn(session, soundfile.read(wavs[utt], dtype="float32")[0])
    lines = dict(line.split(" ", 1) for line in files["speech_in"].getvalue().splitlines())
    assert sorted(lines) == ["d1-t2", "d1-t3"]
    for utt in ("d1-t2", "d1-t3"):
        assert lines[utt] == " ".join(by_hand[utt].answer_text.split())
        assert by_hand[utt].decision == STATE_RESPOND and not by_hand[utt].committed
        np.testing.assert_array_equal(
            soundfile.read(wav_dir / f"{utt}.wav", dtype="float32")[0],
            soundfile.read(io.BytesIO(_wav_bytes(by_hand[utt].pcm)), dtype="float32")[0])
    turn_lines = files["turn"].getvalue().splitlines()
    assert [t.split()[:2] for t in turn_lines] == [["d1-t2", "1"], ["d1-t3", "1"]]
    # seconds after the turn's start (a branch opened while the answer before it played may
    # have heard some of that silence already)
    assert all(0.0 < float(t.split()[2]) <= 1.3 for t in turn_lines)
    # the K/V kept the earlier turns (the script may also answer a silence between turns)
    assert len(session.turns) >= 3


def _wav_bytes(pcm):
    import io

    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, np.clip(pcm, -1, 1), 24000, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def test_commit_after_silence_answers_an_undecided_turn(s2s, spoken, scripted_head):
    first, _ = spoken
    wav = np.concatenate([np.zeros(RATE), first, np.zeros(3 * RATE)]).astype(np.float32)
    waiting = scripted_head([], vad=True, vad_min_silence_s=0.5)  # the head never decides
    events, _ = run_duplex(waiting, wav)
    assert not of(events, "turn_ended")
    fallback = scripted_head([], vad=True, vad_min_silence_s=0.5, commit_after_silence_s=1.0)
    events, _ = run_duplex(fallback, wav)
    stopped, ended = of(events, "speech_stopped"), of(events, "turn_ended")
    assert len(ended) == 1 and ended[0].data["forced"]
    assert ended[0].audio_time - stopped[0].data["at"] == pytest.approx(1.0, abs=0.17)
    with pytest.raises(ValueError, match="commit_after_silence_s"):
        s2s.session(vad=False, commit_after_silence_s=1.0)


def test_interrupt_on_speech_stops_the_answer_at_the_speech_start(s2s, spoken, scripted_head):
    """interrupt_on_speech: the answer stops when the VAD hears the user start, before the
    state head has said anything about the new speech; without it and without the pause
    (the paper) the same speech without a "respond" leaves the answer playing."""
    first, second = spoken
    gap = np.zeros(int(0.6 * RATE), dtype=np.float32)
    wav = np.concatenate([np.zeros(RATE), first, gap, second,
                          np.zeros(2 * RATE)]).astype(np.float32)
    first_end = (RATE + len(first)) / RATE
    second_start = first_end + len(gap) / RATE
    script = [(first_end + 0.1, first_end + 0.3, STATE_RESPOND)]

    s2s.synthesizer.max_tokens = 120  # 3 s of speech per segment: still talking then
    try:
        playing = scripted_head(script, vad=True, vad_replay_s=0.32, max_new_tokens=40,
                                vad_min_silence_s=0.3, pause_on_speech=False)
        events, _ = run_duplex(playing, wav)
        stopping = scripted_head(script, vad=True, vad_replay_s=0.32, max_new_tokens=40,
                                 vad_min_silence_s=0.3, interrupt_on_speech=True)
        stopped_events, _ = run_duplex(stopping, wav)
    finally:
        s2s.synthesizer.max_tokens = 30
    assert len(of(events, "turn_ended")) == 1 and not of(events, "interrupted")
    spans = speech_spans(events)
    assert spans and spans[0][1] > second_start + 0.5  # still speaking over the second turn

    events = stopped_events
    started = [e for e in of(events, "speech_started") if e.data["at"] > second_start - 0.3]
    cut = of(events, "interrupted")
    assert len(started) == 1 and len(cut) == 1
    assert 0.0 <= cut[0].time - started[0].time < 0.2  # at the tick the VAD fired
    assert cut[0].time - second_start < 0.6
    assert len(of(events, "turn_ended")) == 1  # nothing ended the new speech's turn
    # the voiced part stays in the history; the heard audio stops at the cut
    assert all(hi <= cut[0].time + 1e-6 for _, hi, _ in speech_spans(events))
    assert stopping.turns[0].assistant_ids[:cut[0].data["voiced_tokens"]] == \
        answer_ids(events)[:cut[0].data["voiced_tokens"]]
    with pytest.raises(ValueError, match="interrupt_on_speech"):
        s2s.session(vad=False, interrupt_on_speech=True)


def _speech_over_an_answer(spoken):
    """Question 1 at 1 s, then 0.6 s later (over the answer to it) speech 2, then silence;
    returns the input and the times of question 1's end, speech 2's start and end."""
    first, second = spoken
    gap = np.zeros(int(0.6 * RATE), dtype=np.float32)
    wav = np.concatenate([np.zeros(RATE), first, gap, second,
                          np.zeros(int(2.5 * RATE))]).astype(np.float32)
    first_end = (RATE + len(first)) / RATE
    second_start = first_end + len(gap) / RATE
    return wav, first_end, second_start, second_start + len(second) / RATE


def _heard_answer_audio(events, answer_id, rate):
    """The answer's audio as the listener heard it, in play order (heard_packets)."""
    from espnet_freeze_omni.inference.duplex_runner import heard_packets

    pieces = []
    for a, start, end, i in heard_packets(events):
        whole = end >= events[i].data["play_at"] + events[i].data["duration"] - 1e-9
        if a == answer_id:
            pieces.append((start, events[i].pcm if whole
                           else events[i].pcm[:int(round((end - start) * rate))]))
    return np.concatenate([pcm for _, pcm in sorted(pieces, key=lambda p: p[0])])


def test_side_talk_over_an_answer_pauses_it_and_it_resumes_whole(s2s, spoken, scripted_head):
    """pause_on_speech (the default): the answer's sound stops at the tick the VAD hears
    the user start; the state head says "ignore", and the answer plays on from where it
    paused: heard end to end it is exactly the answer played without the pause."""
    wav, first_end, second_start, _ = _speech_over_an_answer(spoken)
    script = [(first_end + 0.1, first_end + 0.3, STATE_RESPOND),
              (second_start + 0.6, second_start + 0.8, STATE_IGNORE)]
    options = dict(vad=True, vad_replay_s=0.32, max_new_tokens=40, vad_min_silence_s=0.3)
    s2s.synthesizer.max_tokens = 120  # 3 s of speech per segment: still talking then
    try:
        plain_events, _ = run_duplex(scripted_head(script, pause_on_speech=False, **options),
                                     wav)
        session = scripted_head(script, **options)
        events, track = run_duplex(session, wav)
    finally:
        s2s.synthesizer.max_tokens = 30
    rate = s2s.sample_rate
    assert not of(plain_events, "paused")
    paused, resumed = of(events, "paused"), of(events, "resumed")
    started = [e for e in of(events, "speech_started") if e.data["at"] > second_start - 0.3]
    ignored = of(events, "ignored")
    assert len(paused) == len(resumed) == len(started) == len(ignored) == 1
    assert 0.0 <= paused[0].time - started[0].time < 0.2  # at the tick the VAD fired
    assert resumed[0].time == ignored[0].time  # side talk: it plays on at once
    assert resumed[0].data["paused_seconds"] == pytest.approx(
        resumed[0].time - paused[0].time, abs=1e-3)
    assert not of(events, "interrupted") and len(of(events, "turn_ended")) == 1
    done = of(events, "answer_done")
    assert [d.data["status"] for d in done] == ["completed"]
    # silence from the pause to the resumption, sound right before and after it
    p, r = int(round(paused[0].time * rate)), int(round(resumed[0].time * rate))
    assert np.abs(track[p + 1:r - 1]).max() == 0.0
    assert np.abs(track[p - rate // 10:p]).max() > 0 and np.abs(track[r:r + rate // 10]).max() > 0
    # nothing lost, nothing said twice: heard in order it is the whole unpaused answer (the
    # events' play times are rounded to 0.1 ms, so the cut is read to within 2 samples)
    whole = _heard_answer_audio(plain_events, 1, rate)
    after = np.concatenate([e.pcm for e in events[events.index(resumed[0]):]
                            if e.type == "audio" and e.data["answer_id"] == 1])
    before = _heard_answer_audio(events[:events.index(paused[0]) + 1], 1, rate)
    np.testing.assert_array_equal(after, whole[len(whole) - len(after):])
    np.testing.assert_array_equal(before, whole[:len(before)])
    assert abs(len(before) + len(after) - len(whole)) <= 2
    assert answer_ids(events) == answer_ids(plain_events)
    assert session.answer is None and session.paused_at is None  # played out, retired


def test_a_barge_in_stops_the_answer_where_it_paused(s2s, spoken, scripted_head):
    """Speech over the answer pauses it; the state head says "respond" at the end of the
    interruption: the answer is cut where it paused (its sound stopped then, not at the
    decision), the history keeps what was voiced by then, and the new turn is answered."""
    wav, first_end, second_start, second_end = _speech_over_an_answer(spoken)
    script = [(first_end + 0.1, first_end + 0.3, STATE_RESPOND),
              (second_end, second_end + 0.3, STATE_RESPOND)]
    s2s.synthesizer.max_tokens = 120
    try:  # (the VAD's 0.5 s wait: the state head hears the silence after the interruption)
        session = scripted_head(script, vad=True, vad_replay_s=0.32, max_new_tokens=40,
                                vad_min_silence_s=0.5)
        events, _ = run_duplex(session, wav)
    finally:
        s2s.synthesizer.max_tokens = 30
    (paused,), (cut,) = of(events, "paused"), of(events, "interrupted")
    assert cut.data["paused_at"] == pytest.approx(paused.time)
    assert cut.time > second_end and paused.time - second_start < 0.4
    assert not of(events, "resumed")
    first_span = [s for s in speech_spans(events) if s[2] == 1]
    assert first_span[0][1] == pytest.approx(paused.time)  # the sound stopped at the pause
    assert cut.data["voiced_tokens"] == paused.data["voiced_tokens"]
    assert cut.data["voiced_text"] == paused.data["voiced_text"]
    voiced = cut.data["voiced_tokens"]
    closing = s2s.template.answer_end_ids() + s2s.template.next_turn_ids()
    assert session.turns[0].assistant_ids == answer_ids(events)[:voiced] + closing
    ended = of(events, "turn_ended")
    assert len(ended) == 2 and of(events, "answer_done")[-1].data["answer_id"] == 2


def test_an_answer_finished_while_paused_is_done_after_its_held_audio(s2s, spoken,
                                                                      scripted_head):
    """With the answer generated by pump() (a server), an answer that finishes while paused
    sends `answer_done` only after its held audio has gone out again; flush() resumes it."""
    wav, first_end, second_start, _ = _speech_over_an_answer(spoken)
    session = scripted_head([(first_end + 0.1, first_end + 0.3, STATE_RESPOND)], vad=True,
                            vad_replay_s=0.32, max_new_tokens=40, vad_min_silence_s=3.0,
                            answer_in_feed=False)
    decided, over = int((first_end + 0.5) * RATE), int((second_start + 0.3) * RATE)
    events = feed_in(session, wav[:decided], RATE // 50)
    assert of(events, "turn_ended") and not of(events, "audio")  # feed() only listens
    while not of(events, "audio"):
        events += session.pump(budget_seconds=0.001)  # (at least one step per call)
    events += feed_in(session, wav[decided:over], RATE // 50)
    assert of(events, "audio") and len(of(events, "paused")) == 1
    events += session.pump(budget_seconds=30.0)  # the rest, while paused
    assert session.answer is not None and not session.answer.generating
    assert not of(events, "answer_done") and session.answer.held
    sent = sum(len(e.pcm) for e in of(events, "audio"))
    events += session.flush()
    kinds = [e.type for e in events]
    assert kinds.index("resumed") < kinds.index("answer_done")
    last_audio = max(i for i, k in enumerate(kinds) if k == "audio")
    assert last_audio < kinds.index("answer_done")
    assert sum(len(e.pcm) for e in of(events, "audio")) > sent  # the held audio went out


def test_an_answer_done_but_still_playing_pauses_and_resumes(s2s, spoken, scripted_head):
    """A server generates answers faster than they play: `answer_done` has gone out, the
    listener is still hearing the answer when the user speaks over it. It pauses all the
    same (its unplayed audio taken back), side talk resumes it (the audio sent again) and
    no second `answer_done` comes: heard end to end it is the whole answer."""
    wav, first_end, second_start, _ = _speech_over_an_answer(spoken)
    script = [(first_end + 0.1, first_end + 0.3, STATE_RESPOND),
              (second_start + 0.6, second_start + 0.8, STATE_IGNORE)]
    options = dict(vad=True, vad_replay_s=0.32, max_new_tokens=40, vad_min_silence_s=0.3,
                   answer_in_feed=False)
    decided = int((first_end + 0.5) * RATE)
    s2s.synthesizer.max_tokens = 120
    try:
        runs = []
        for pause in (False, True):
            session = scripted_head(script, pause_on_speech=pause, **options)
            events = feed_in(session, wav[:decided], RATE // 50)
            events += session.pump(budget_seconds=60.0)  # all of it, long before it plays
            assert of(events, "answer_done") and session.answer is not None
            assert session.playback_end > second_start + 1.0  # still playing then
            events += feed_in(session, wav[decided:], RATE // 50) + session.flush()
            runs.append(events)
    finally:
        s2s.synthesizer.max_tokens = 30
    plain, events = runs
    rate = s2s.sample_rate
    (paused,), (resumed,) = of(events, "paused"), of(events, "resumed")
    assert paused.data["taken_back_seconds"] > 0.5
    kinds = [e.type for e in events]
    assert kinds.index("answer_done") < kinds.index("paused") < kinds.index("resumed")
    assert [d.data["status"] for d in of(events, "answer_done")] == ["completed"]
    assert not of(events, "interrupted") and len(of(events, "turn_ended")) == 1
    resent = [e for e in events[kinds.index("resumed"):] if e.type == "audio"]
    assert sum(len(e.pcm) for e in resent) == pytest.approx(
        paused.data["taken_back_seconds"] * rate, abs=2)
    whole = _heard_answer_audio(plain, 1, rate)
    heard = _heard_answer_audio(events, 1, rate)
    assert abs(len(heard) - len(whole)) <= 2
    np.testing.assert_array_equal(np.concatenate([e.pcm for e in resent]),
                                  whole[len(whole) - sum(len(e.pcm) for e in resent):])


def test_respond_waits_while_the_vad_still_hears_the_user(s2s, spoken, scripted_head):
    """A head that says respond in the middle of the question (one that judges the end from
    the words may, in the last phoneme) does not end the turn while the VAD still hears the
    user: the turn ends at the first chunk after the speech stops. Without VAD it ends at
    once (control)."""
    first, _ = spoken
    wav = np.concatenate([np.zeros(RATE), first, np.zeros(2 * RATE)]).astype(np.float32)
    # the speech end: the last audible sample (espeak's recording ends in silence)
    first_end = (RATE + np.nonzero(np.abs(first) > 0.02)[0][-1]) / RATE
    script = [(1.0 + len(first) / RATE / 2, 9.0, STATE_RESPOND)]
    held = scripted_head(script, vad=True, vad_replay_s=0.32)
    events, _ = run_duplex(held, wav)
    (ended,) = of(events, "turn_ended")
    said = [e for e in of(events, "state") if e.data["state"] == "respond"]
    assert said[0].audio_time < first_end - 0.3  # it said so early...
    assert first_end <= ended.audio_time < first_end + 0.5  # ...the turn ended after the speech
    assert held.stats["respond_held_in_speech"] >= 2
    plain = scripted_head(script, vad=False)
    ended = of(run_duplex(plain, wav)[0], "turn_ended")[0]
    assert ended.audio_time < first_end - 0.3


def test_vad_lets_the_state_head_hear_two_seconds_of_silence(s2s, spoken, scripted_head):
    """With the state head taking turns the VAD waits 2 s (the authors' setting) before it
    says the speech stopped, and the LLM hears that silence: a head that needs 1 s of it
    still answers. With turn_detection="vad" the VAD's own turn end comes after 0.5 s."""
    first, _ = spoken
    wav = np.concatenate([np.zeros(RATE), first, np.zeros(3 * RATE)]).astype(np.float32)
    first_end = (RATE + len(first)) / RATE
    session = scripted_head([(first_end + 1.0, first_end + 1.3, STATE_RESPOND)], vad=True)
    assert session.options.vad_min_silence_s == 2.0
    events, _ = run_duplex(session, wav)
    ended = of(events, "turn_ended")
    assert len(ended) == 1 and not ended[0].data["forced"]
    assert ended[0].time == pytest.approx(first_end + 1.0, abs=0.35)
    assert s2s.session(vad=True, turn_detection="vad").options.vad_min_silence_s == 0.5


def test_commit_after_the_head_decided_in_the_last_tick(s2s, spoken, scripted_head):
    """commit() listens to the audio not yet making up a tick first; a decision the state
    head takes there is kept (respond: answered once), an "ignore" there is overruled by
    the explicit commit."""
    first, _ = spoken
    wav = np.concatenate([np.zeros(RATE), first]).astype(np.float32)
    for state in (STATE_RESPOND, STATE_IGNORE):
        session = scripted_head(lambda sess, state=state: state if sess._pending.size == 0
                                and sess.consumed == len(wav) else STATE_LISTEN, vad=False)
        events = feed_in(session, wav, 999)
        assert not of(events, "turn_ended") and len(session._pending) > 0
        events += session.commit()
        ended = of(events, "turn_ended")
        assert len(ended) == 1 and ended[0].data["forced"] == (state == STATE_IGNORE)
        assert len(session.turns) == 1


def test_speech_resuming_in_the_vads_silence_is_a_new_turn(s2s, spoken, scripted_head):
    """The state head answers the first question 0.2 s after it ends; the second starts
    0.8 s later, inside the 2 s the VAD waits before it says the speech stopped, so the VAD
    reports no new start: the session still opens a new turn when the speech resumes, and
    the head's respond at the second question's end answers it."""
    first, second = spoken
    gap = np.zeros(int(0.8 * RATE), dtype=np.float32)
    wav = np.concatenate([np.zeros(RATE), first, gap, second,
                          np.zeros(3 * RATE)]).astype(np.float32)
    first_end = (RATE + len(first)) / RATE
    second_start = first_end + len(gap) / RATE
    second_end = second_start + len(second) / RATE
    session = scripted_head([(first_end + 0.2, first_end + 0.4, STATE_RESPOND),
                             (second_end + 0.3, second_end + 0.5, STATE_RESPOND)], vad=True)
    events, _ = run_duplex(session, wav)
    assert len(of(events, "speech_started")) == 1  # one VAD segment for both questions
    ended = of(events, "turn_ended")
    assert len(ended) == 2
    assert ended[0].time == pytest.approx(first_end + 0.2, abs=0.2)
    assert ended[1].time == pytest.approx(second_end + 0.3, abs=0.2)
    # the second turn opened when its speech came, not in the silence before it
    assert second_start - 0.1 <= ended[1].data["opened_at"] <= second_start + 0.5
    assert len(session.turns) == 2 and of(events, "answer_done")[-1].data["answer_id"] == 2
