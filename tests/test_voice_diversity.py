"""The embedded recipe's diverse voice pool and its on-the-fly noise and reverberation
(espnet's CommonPreprocessor fed by data/augment.py): what issue 26 added so that the model
hears more than six voices, without touching a held-out test condition."""
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_freeze_omni.data import augment
from espnet_freeze_omni.data.espeak import (DIVERSE_BASE, DIVERSE_PITCHES, DIVERSE_SPEEDS,
                                            TRAINING_ACCENTS, UNSEEN_TEST_CONDITIONS,
                                            diverse_pool_size, diverse_voices, pick_voice,
                                            synthesize, voice_index, voice_parts)
from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor
from espnet_freeze_omni.data.synthetic_world import (ASSISTANT_VOICE, CorpusSizes,
                                                     check_held_out, generate_corpus,
                                                     held_out_overlaps, training_conditions)

REPO = Path(__file__).resolve().parents[1]
RATE = 16000


# ------------------------------------------------------------------ the diverse pool
def test_diverse_pool_spans_voices_speeds_and_pitches_and_holds_nothing_out():
    pool = diverse_voices()
    held_variants = {voice_parts(v)[1] for v in UNSEEN_TEST_CONDITIONS.voices} - {None}
    held_plain = {v for v in UNSEEN_TEST_CONDITIONS.voices if voice_parts(v)[1] is None}
    assert len(pool) == len(set(pool)) >= 200
    assert {voice_parts(v)[0] for v in pool} == set(TRAINING_ACCENTS)
    assert not {voice_parts(v)[1] for v in pool} & held_variants
    assert not {voice_parts(v)[0] for v in pool} & held_plain
    # every index of the pool is a distinct (voice, speed, pitch) inside the stated ranges
    rng = random.Random(0)
    picks = [pick_voice(DIVERSE_BASE + rng.randrange(diverse_pool_size())) for _ in range(3000)]
    assert all(DIVERSE_SPEEDS[0] <= p["speed"] <= DIVERSE_SPEEDS[1] for p in picks)
    assert all(DIVERSE_PITCHES[0] <= p["pitch"] <= DIVERSE_PITCHES[1] for p in picks)
    assert len({p["voice"] for p in picks}) > 0.9 * len(pool)
    assert {p["speed"] for p in picks} >= set(range(DIVERSE_SPEEDS[0], DIVERSE_SPEEDS[1] + 1, 10))
    last = DIVERSE_BASE + diverse_pool_size() - 1
    assert pick_voice(last) == dict(voice=pool[-1], speed=DIVERSE_SPEEDS[1],
                                    pitch=DIVERSE_PITCHES[1])
    with pytest.raises(ValueError, match="past the diverse pool"):
        pick_voice(last + 1)
    # the held-out speeds and pitches lie outside the ranges
    for held, (lo, hi) in ((UNSEEN_TEST_CONDITIONS.speeds, DIVERSE_SPEEDS),
                           (UNSEEN_TEST_CONDITIONS.pitches, DIVERSE_PITCHES)):
        assert all(x < lo or x > hi for x in held)


def test_voice_index_maps_one_draw_to_either_pool():
    assert voice_index(12345, "classic") == 12345 < DIVERSE_BASE
    diverse = voice_index(12345, "diverse")
    assert diverse >= DIVERSE_BASE and diverse == voice_index(12345, "diverse")
    assert voice_index(12346, "diverse") != diverse
    with pytest.raises(ValueError, match="voice pool must be one of"):
        voice_index(1, "huge")


def test_diverse_corpus_has_the_same_texts_many_voices_and_no_held_out_condition():
    sizes = CorpusSizes(num_train=2000, num_spoken_qa_train=3000, num_tts_train=2500)
    classic = generate_corpus(0, sizes)
    diverse = generate_corpus(0, sizes, voice_pool="diverse")
    for name in classic.spoken:
        assert [u.text for u in classic.spoken[name]] == [u.text for u in diverse.spoken[name]]
        assert [u.utt_id for u in classic.spoken[name]] == \
            [u.utt_id for u in diverse.spoken[name]]
    seen = training_conditions(diverse)
    assert len(seen["voices"]) > 250 and len(training_conditions(classic)["voices"]) == 6
    assert len(seen["speeds"]) > 70 and len(seen["pitches"]) > 35
    assert held_out_overlaps(diverse) == []
    check_held_out(diverse)
    # the listener of the spoken answers hears the assistant's voice in training
    train = [pick_voice(u.voice_index) for u in diverse.spoken["train"]]
    share = sum(v == ASSISTANT_VOICE for v in train) / len(train)
    assert 0.05 < share < 0.2
    # the TTS sets keep the one assistant voice
    assert {str(pick_voice(u.voice_index)) for u in diverse.spoken["tts_train"]} == \
        {str(ASSISTANT_VOICE)}
    with pytest.raises(ValueError, match="voice_pool must be one of"):
        generate_corpus(0, CorpusSizes(num_train=3), voice_pool="many")


def test_diverse_voices_really_sound_different(tmp_path):
    """espeak-ng falls back to the plain voice without a word for a variant it cannot
    apply (as en-gb does): each sampled variant must change the audio of its accent."""
    rng = random.Random(1)
    pool = [v for v in diverse_voices() if "+" in v]
    text = "The capital of Brelia is Storkan."
    plain = {}
    for accent in TRAINING_ACCENTS:
        synthesize(text, tmp_path / f"{accent}.wav", accent)
        plain[accent] = soundfile.read(str(tmp_path / f"{accent}.wav"))[0]
    for i, voice in enumerate(rng.sample(pool, 12)):
        synthesize(text, tmp_path / f"v{i}.wav", voice)
        audio = soundfile.read(str(tmp_path / f"v{i}.wav"))[0]
        ref = plain[voice_parts(voice)[0]]
        assert audio.shape != ref.shape or not np.allclose(audio, ref), voice


# ------------------------------------------------------------------ noise and RIRs
def _speech_wavs(tmp_path, count=3):
    wavs = []
    for i in range(count):
        wavs.append(str(synthesize(f"Hello number {i}, where is the station?",
                                   tmp_path / "speech" / f"s{i}.wav", "en-us")))
    return wavs


def test_augmentation_data_kinds_lists_and_signals(tmp_path):
    wavs = _speech_wavs(tmp_path)
    out = tmp_path / "augment"
    scps = augment.make_augmentation_data(out, seed=3, babble_wavs=wavs, num_per_kind=2,
                                          num_rirs=3, noise_seconds=4.0)
    noise = dict(line.split(None, 1) for line in scps["noise"].read_text().splitlines())
    rirs = dict(line.split(None, 1) for line in scps["rirs"].read_text().splitlines())
    kinds = {k.rstrip("0123456789") for k in noise if not k.startswith("espnet_")}
    assert kinds == {"brown", "hum", "babble"}
    assert sum(k.startswith("espnet_") for k in noise) == 2  # the wheel's noise samples
    assert sum(k.startswith("espnet_") for k in rirs) == 2  # and its RIRs
    assert len(rirs) == 3 + 2
    for path in list(noise.values()) + list(rirs.values()):
        assert Path(path).is_absolute() and Path(path).is_file()
    for key, path in noise.items():
        audio, rate = soundfile.read(path)
        assert rate == RATE and audio.ndim == 1
        # every noise covers the speech it is laid on (espnet pads a short one with zeros)
        assert len(audio) >= 4.0 * RATE, key
        assert np.std(audio) > 0.01, key
    # brown noise: most of its power below 200 Hz (white noise would have ~2.5 % there)
    brown, _ = soundfile.read(noise["brown1"])
    spectrum = np.abs(np.fft.rfft(brown)) ** 2
    freqs = np.fft.rfftfreq(len(brown), 1 / RATE)
    assert spectrum[freqs < 200].sum() > 0.5 * spectrum.sum()
    # a synthesized RIR: the direct path first, the tail 60 dB down by its RT60
    key = next(k for k in rirs if k.startswith("synthetic_rt60_0.20"))
    rir, _ = soundfile.read(rirs[key])
    assert np.argmax(np.abs(rir)) == 0 and len(rir) == int(0.2 * RATE)
    tail = rir[int(0.15 * RATE):]
    assert np.max(np.abs(tail)) < 0.05
    # the same seed writes the same noise
    again = augment.make_augmentation_data(tmp_path / "again", seed=3, babble_wavs=wavs,
                                           num_per_kind=2, num_rirs=3, noise_seconds=4.0,
                                           espnet_samples=False)
    first = soundfile.read(noise["hum2"])[0]
    second = soundfile.read(str(Path(again["noise"]).parent / "noise" / "hum2.wav"))[0]
    assert np.array_equal(first, second)


def test_training_noise_is_never_a_held_out_noise():
    augment.check_not_held_out()  # brown, hum, babble: none held out
    with pytest.raises(ValueError, match="held-out test noise"):
        augment.check_not_held_out(("brown", "white"))


def test_babble_refuses_audio_it_cannot_use(tmp_path):
    soundfile.write(str(tmp_path / "s8k.wav"), np.zeros(8000), 8000)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"s8k\.wav: babble speech must be 16000 Hz"):
        augment.babble_noise(RATE, rng, [str(tmp_path / "s8k.wav")])
    with pytest.raises(ValueError, match="wav list is empty"):
        augment.babble_noise(RATE, rng, [])


def test_preprocessor_adds_noise_and_reverb_in_training_only(tmp_path):
    """Through espnet's CommonPreprocessor options, as the recipe passes them: training
    examples change (still mono, same length), validation/inference examples do not."""
    wavs = _speech_wavs(tmp_path, count=2)
    scps = augment.make_augmentation_data(tmp_path / "augment", seed=0, babble_wavs=wavs,
                                          num_per_kind=1, num_rirs=2, noise_seconds=4.0)
    token_list = tmp_path / "tokens.txt"
    token_list.write_text("\n".join(["<blank>", "<unk>", "h", "i", "<sos/eos>"]) + "\n")
    conf = dict(noise_scp=str(scps["noise"]), noise_apply_prob=1.0, noise_db_range="10_10",
                rir_scp=str(scps["rirs"]), rir_apply_prob=1.0)
    speech, _ = soundfile.read(wavs[0])
    for train in (True, False):
        pp = SpeechInputPreprocessor(train=train, token_type="char",
                                     token_list=str(token_list), **conf)
        np.random.seed(0)
        out = pp("utt1", {"speech": speech.copy(), "text": "hi"})["speech"]
        assert out.ndim == 1 and out.shape == speech.shape
        if train:
            # noise fills the silence after the speech, where the clean audio is all zeros
            silent = np.abs(speech) < 1e-4
            assert silent.sum() > 0.1 * RATE
            assert np.std(out[silent]) > 1e-3
            assert not np.allclose(out, speech)
        else:
            assert np.array_equal(out, speech)


def test_make_augmentation_data_command(tmp_path):
    wavs = _speech_wavs(tmp_path, count=2)
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"s{i} {w}\n" for i, w in enumerate(wavs)))
    proc = subprocess.run(
        [sys.executable, "-m",
         "espnet_freeze_omni.bin.make_augmentation_data", "--out", str(tmp_path / "aug"),
         "--babble_wav_scp", str(scp), "--num_per_kind", "1", "--num_rirs", "1"],
        capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "noise.scp: 5 noise wavs" in proc.stdout  # brown, hum, babble + 2 of the wheel
    assert "rirs.scp: 3 rirs wavs" in proc.stdout


def test_the_recipes_augmentation_options_reach_espnets_preprocessor(tmp_path, monkeypatch):
    """run.sh's --preprocessor_conf words, parsed as espnet parses them (NestedDictAction
    reads each value as YAML: an unquoted 5_30 would be the integer 530), build a training
    preprocessor over the lists local/data.sh writes."""
    from espnet2.utils.nested_dict_action import NestedDictAction
    import argparse

    run_sh = REPO / "egs2" / "synthetic_dialog" / "freeze_omni1" / "run.sh"
    words = subprocess.run(
        ["bash", "-c", 'eval "$(grep "^augment_args" "$1")"; printf "%s\\n" ${augment_args}',
         "_", str(run_sh)], capture_output=True, text=True, check=True).stdout.split()
    assert words and words[0] == "--preprocessor_conf"
    parser = argparse.ArgumentParser()
    parser.add_argument("--preprocessor_conf", action=NestedDictAction, default={})
    conf = parser.parse_args(words).preprocessor_conf
    assert conf["noise_scp"] == "data/local/augment/noise.scp"
    assert conf["rir_scp"] == "data/local/augment/rirs.scp"
    assert isinstance(conf["noise_db_range"], str)
    assert 0 < conf["noise_apply_prob"] <= 1 and 0 < conf["rir_apply_prob"] <= 1

    monkeypatch.chdir(tmp_path)
    wavs = _speech_wavs(tmp_path, count=2)
    augment.make_augmentation_data("data/local/augment", babble_wavs=wavs, num_per_kind=1,
                                   num_rirs=1, noise_seconds=4.0)
    token_list = tmp_path / "tokens.txt"
    token_list.write_text("\n".join(["<blank>", "<unk>", "h", "i", "<sos/eos>"]) + "\n")
    pp = SpeechInputPreprocessor(train=True, token_type="char", token_list=str(token_list),
                                 **conf)
    lo, hi = (float(x) for x in conf["noise_db_range"].split("_"))
    assert (pp.noise_db_low, pp.noise_db_high) == (lo, hi) and 0 <= lo < hi <= 40
    assert len(pp.noises) == 5 and len(pp.rirs) == 3
    speech, _ = soundfile.read(wavs[0])
    out = pp("utt1", {"speech": speech.copy(), "text": "hi"})["speech"]
    assert out.shape == speech.shape
