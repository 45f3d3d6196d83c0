"""qa_test_unseen: the qa_test questions and side talk in voices, speeds, pitches and noise
that no training set uses; and the state head's answered / premature / never-decided rates."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import validation
from espnet_freeze_omni.data.espeak import (UNSEEN_TEST_CONDITIONS, VOICES, HeldOutConditions,
                                            make_noise, pick_voice, synthesize, voice_parts)
from espnet_freeze_omni.data.synthetic_world import (SPOKEN_SETS, UNSEEN_TEST_SET, CorpusSizes,
                                                     check_held_out, generate_corpus,
                                                     make_corpus, training_conditions,
                                                     unseen_test_plan)
from espnet_freeze_omni.scoring import results, turn_end

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "egs2" / "synthetic_dialog" / "freeze_omni1"
# 8 questions + 4 side talk: seed 0 draws every noise condition at least once
TINY = CorpusSizes(num_train=3, num_dev=1, num_test=1, num_qa_train=12, num_qa_test=8,
                   num_spoken_qa_train=1, num_side_talk_train=1, num_side_talk_test=4,
                   num_countries=3, num_people=6, num_tts_train=2, num_tts_dev=1,
                   num_repeat_train=3, num_paused_qa_train=1)
C = UNSEEN_TEST_CONDITIONS


# ------------------------------------------------------------------ the held-out split
def test_held_out_conditions_never_occur_in_training():
    """Checked against what the corpus really speaks (every spoken set, the recipe's sizes)
    and against everything pick_voice can give, not against a copy of the training lists."""
    corpus = generate_corpus(0, CorpusSizes(num_train=2000, num_spoken_qa_train=3000,
                                            num_tts_train=2500))
    seen = training_conditions(corpus)
    every_pick = [pick_voice(i) for i in range(5000)]
    seen_voices = seen["voices"] | {v["voice"] for v in every_pick} | set(VOICES)
    seen_speeds = seen["speeds"] | {v["speed"] for v in every_pick}
    seen_pitches = seen["pitches"] | {v["pitch"] for v in every_pick}
    seen_variants = {voice_parts(v)[1] for v in seen_voices} - {None}
    seen_accents = {voice_parts(v)[0] for v in seen_voices}
    assert len(seen_voices) >= 2 and seen_variants  # the comparison has something to compare
    for voice in C.voices:
        accent, variant = voice_parts(voice)
        assert voice not in seen_voices, voice
        if variant is None:
            assert accent not in seen_accents, voice
        else:
            assert variant not in seen_variants, voice
    for held, used in ((C.speeds, seen_speeds), (C.pitches, seen_pitches)):
        assert all(x < min(used) or x > max(used) for x in held), (held, sorted(used))
    # the corpus adds no noise to any set; the held-out noise is synthesized noise
    assert {kind for kind, _ in C.noises} - {"clean"} == {"white", "pink"}
    assert all(0 < snr <= 30 for kind, snr in C.noises if kind != "clean")  # light noise
    check_held_out(corpus)  # what make_corpus runs: no overlap, no error


def test_an_overlap_is_refused():
    corpus = generate_corpus(0, TINY)
    bad = HeldOutConditions(voices=("en-029", "en-us", "en-gb-scotland+f3"),
                            speeds=(150, 230), pitches=(50,), noises=(("white", 20.0),))
    with pytest.raises(ValueError, match="UNSEEN_TEST_CONDITIONS") as e:
        check_held_out(corpus, bad)
    message = str(e.value)
    for part in ("voice en-us is a training voice", "variant +f3", "speed 150", "pitch 50"):
        assert part in message, message
    assert "en-029" not in message and "230" not in message


def test_held_out_voices_are_real_espeak_voices(tmp_path):
    """espeak-ng falls back to the plain voice for an unknown +variant without a word: each
    accent and variant must be installed, and each variant must change the audio."""
    listed = subprocess.run(["espeak-ng", "--voices=en"], capture_output=True, text=True,
                            check=True).stdout.split("\n")[1:]
    accents = {line.split()[1] for line in listed if line.strip()}
    variant_files = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True,
                                   text=True, check=True).stdout
    variants = {line.split()[-1].split("/")[-1] for line in variant_files.split("\n")[1:]
                if "!v/" in line}
    for voice in C.voices:
        accent, variant = voice_parts(voice)
        assert accent in accents, voice
        if variant is not None:
            assert variant in variants, voice
            a = synthesize("Where does Nedul live?", tmp_path / "a.wav", voice=voice)
            b = synthesize("Where does Nedul live?", tmp_path / "b.wav", voice=accent)
            assert a.read_bytes() != b.read_bytes(), voice


def test_noise_is_repeatable_and_pink_is_pink():
    white, pink = make_noise("white", 32000, (0, 1)), make_noise("pink", 32000, (0, 1))
    assert np.array_equal(white, make_noise("white", 32000, (0, 1)))
    assert not np.array_equal(white, make_noise("white", 32000, (0, 2)))
    for x in (white, pink):
        assert np.mean(x ** 2) == pytest.approx(1.0)
    low = lambda x: np.sum(np.abs(np.fft.rfft(x))[1:1600] ** 2) / np.sum(np.abs(np.fft.rfft(x)) ** 2)
    assert low(pink) > 0.5 > 0.2 > low(white)  # 1/f: most power below 800 Hz (of 8 kHz)
    with pytest.raises(ValueError, match="white or pink"):
        make_noise("brown", 10, 0)


# ------------------------------------------------------------------ the spoken set
def read_all(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen")
    with_set = make_corpus(root / "with", seed=0, sizes=TINY, num_workers=2)
    make_corpus(root / "without", seed=0, sizes=TINY, num_workers=2, unseen_test=False)
    return root, with_set


def test_other_sets_are_byte_identical_with_or_without_it(corpora):
    root, _ = corpora
    a, b = read_all(root / "with"), read_all(root / "without")
    unseen = {k for k in a if UNSEEN_TEST_SET in k}
    assert unseen and not any(UNSEEN_TEST_SET in k for k in b)
    assert set(a) - unseen == set(b)
    for key in b:
        if key == "local/world/README.txt":  # the unseen set's files are listed after the rest
            assert a[key].startswith(b[key]) and len(a[key]) > len(b[key])
        elif key.endswith("wav.scp"):  # absolute paths under each root
            assert a[key].replace(str(root / "with").encode(), b"R") == \
                b[key].replace(str(root / "without").encode(), b"R"), key
        else:
            assert a[key] == b[key], key
    assert {s for s in SPOKEN_SETS} <= {p.name for p in (root / "without").iterdir()}


def test_same_questions_and_references_as_qa_test_in_held_out_conditions(corpora):
    root, corpus = corpora
    qa, un = root / "with" / "qa_test", root / "with" / UNSEEN_TEST_SET
    assert validation.validate_data_dir(un, check_audio=True, sample_rate=16000) == []
    assert kt.read_kaldi_map(un / "text") == kt.read_kaldi_map(qa / "text")
    world = root / "with" / "local" / "world"
    assert (world / f"{UNSEEN_TEST_SET}_refs.jsonl").read_bytes() == \
        (world / "qa_test_refs.jsonl").read_bytes()
    refs = [json.loads(line) for line in (world / f"{UNSEEN_TEST_SET}_refs.jsonl").open()]
    assert {r["id"] for r in refs} < set(kt.read_kaldi_map(un / "text"))  # + side talk
    # every utterance in held-out conditions, its speaker naming them; all noises drawn
    plan = {u.utt_id: u for u in corpus.unseen_test}
    assert set(plan) == set(kt.read_kaldi_map(un / "text"))
    assert {u.noise for u in plan.values()} == {"clean", "white", "pink"}
    assert len({u.voice for u in plan.values()}) == min(len(plan), len(C.voices))
    utt2spk = kt.read_kaldi_map(un / "utt2spk")
    for utt, u in plan.items():
        assert u.voice in C.voices and u.speed in C.speeds and u.pitch in C.pitches
        assert (u.noise, u.snr_db) in C.noises
        assert utt2spk[utt] == u.condition and u.voice.replace("+", "_") in u.condition
    tsv = (world / f"utterances_{UNSEEN_TEST_SET}.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in tsv] == [u.utt_id for u in corpus.unseen_test]
    # same labels as qa_test, other audio, the speech end measured on the clean speech
    ref_turns, turns = kt.read_turn_info(qa / "turn_info"), kt.read_turn_info(un / "turn_info")
    assert set(turns) == set(ref_turns)
    qa_wav, un_wav = kt.read_kaldi_map(qa / "wav.scp"), kt.read_kaldi_map(un / "wav.scp")
    for utt, u in plan.items():
        assert turns[utt][0] == ref_turns[utt][0] == u.label
        assert Path(un_wav[utt]).read_bytes() != Path(qa_wav[utt]).read_bytes(), utt
        audio, sr = soundfile.read(un_wav[utt], dtype="float64")
        end = turns[utt][1]
        assert 0.3 < end <= len(audio) / sr - u.trailing_silence + 0.02, utt
        tail = audio[int((end + 0.1) * sr):]
        if u.noise == "clean":
            assert np.max(np.abs(tail)) < 1e-3, utt  # the padded silence is silent
        else:  # noise over the trailing silence too, at the SNR stated
            clean = synthesize(u.text, root / "clean.wav", u.voice, u.speed, u.pitch,
                               trailing_silence=u.trailing_silence)
            clean_audio, _ = soundfile.read(str(clean), dtype="float64")
            assert len(clean_audio) == len(audio)
            assert np.sqrt(np.mean(tail ** 2)) > 1e-3, utt
            speech = np.mean(clean_audio[:int(end * sr)] ** 2)
            snr = 10 * np.log10(speech / np.mean((audio - clean_audio) ** 2))
            assert snr == pytest.approx(u.snr_db, abs=0.5), utt


def test_the_plan_is_deterministic_and_seeded():
    corpus = generate_corpus(0, TINY)
    assert unseen_test_plan(corpus, 0) == unseen_test_plan(corpus, 0)
    other = unseen_test_plan(generate_corpus(1, TINY), 1)
    assert [(u.speed, u.pitch, u.noise) for u in unseen_test_plan(corpus, 0)] != \
        [(u.speed, u.pitch, u.noise) for u in other]


def test_data_sh_makes_only_the_unseen_set(tmp_path, corpora):
    """`local/data.sh --sets qa_test_unseen` in a recipe copy: that set alone, the same bytes
    as the full corpus build gives it."""
    root, _ = corpora
    (tmp_path / "egs2").mkdir()
    (tmp_path / "egs2" / "TEMPLATE").symlink_to(REPO / "egs2" / "TEMPLATE")
    (tmp_path / "conf").symlink_to(REPO / "conf")
    recipe = tmp_path / "egs2" / "synthetic_dialog" / "freeze_omni1"
    shutil.copytree(RECIPE, recipe, symlinks=True,
                    ignore=shutil.ignore_patterns("data", "dump", "exp", "RESULTS.md"))
    opts = " ".join(f"--{k} {v}" for k, v in TINY.__dict__.items() if k != "max_turns")
    proc = subprocess.run(["bash", "-c", f"local/data.sh {opts} --sets {UNSEEN_TEST_SET}"],
                          cwd=recipe, capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (recipe / "data").iterdir()) == ["local", UNSEEN_TEST_SET]
    made = recipe / "data" / UNSEEN_TEST_SET
    for name in ("text", "utt2spk", "spk2utt", "turn_info"):
        assert (made / name).read_bytes() == (root / "with" / UNSEEN_TEST_SET / name).read_bytes()
    full = kt.read_kaldi_map(root / "with" / UNSEEN_TEST_SET / "wav.scp")
    for utt, path in kt.read_kaldi_map(made / "wav.scp").items():
        assert Path(path).read_bytes() == Path(full[utt]).read_bytes(), utt
    run_sh = (recipe / "run.sh").read_text()
    assert f'--qa_test_sets "qa_test {UNSEEN_TEST_SET}"' in run_sh
    refs = run_sh.split("--qa_test_refs ")[1].split()[0].strip('"')
    for s in ("qa_test", UNSEEN_TEST_SET):  # the driver's qa_refs_of: {set} -> the set
        assert (recipe / refs.replace("{set}", s)).is_file(), s


def test_recipe_readme_names_every_held_out_condition():
    readme = (RECIPE / "README.md").read_text()
    section = readme.split("## Held-out voices")[1].split("\n## ")[0]
    for x in (*C.voices, *map(str, C.speeds), *map(str, C.pitches)):
        assert f"`{x}`" in section, x
    for kind, snr in C.noises:
        assert kind in section and (snr is None or f"{snr:g} dB" in section), kind


# ------------------------------------------------------------------ the state head's rates
def test_turn_rates_on_hand_made_turn_info(tmp_path):
    from espnet_freeze_omni.bin import score_qa, write_results

    # 5 questions (speech ends 2.0 s), 2 side talk
    (tmp_path / "ref").write_text("".join(f"{u} 1 2.00\n" for u in "abcde") +
                                  "s1 2 1.50\ns2 2 1.50\n")
    (tmp_path / "hyp").write_text(
        "a 1 2.30\n"    # answered after the end
        "b 1 1.20\n"    # answered while the user still talks: premature
        "c 0 -1\n"      # never decided
        "e 2 2.10\n"    # judged not addressed: not answered, but decided
        "s1 1 1.80\n"   # answered side talk
        "s2 2 1.00\n")  # "d" has no line: never decided
    out = tmp_path / "scores" / UNSEEN_TEST_SET / "turn_end_f1"
    assert score_qa.main(["--ref_turn_info", str(tmp_path / "ref"), "--hyp_turn_info",
                          str(tmp_path / "hyp"), "--out_dir", str(out), "--metric",
                          "turn_end_f1", "--test_set", UNSEEN_TEST_SET]) == 0
    details = json.loads((out / "metric.json").read_text())["details"]
    assert (details["num_answered"], details["num_premature"], details["num_never_decided"]) \
        == (2, 1, 2)
    assert write_results.main(["--score_root", str(tmp_path / "scores"), "--results_json",
                               str(tmp_path / "results.json"), "--results_md",
                               str(tmp_path / "RESULTS.md")]) == 0
    r = json.loads((tmp_path / "results.json").read_text())["turn_rates"][UNSEEN_TEST_SET]
    assert r == dict(turn_answered=40.0, turn_premature=20.0, turn_never_decided=40.0,
                     side_talk_ignored=50.0, num_addressed=5, num_side_talk=2)
    md = (tmp_path / "RESULTS.md").read_text()
    assert f"|{UNSEEN_TEST_SET}|5|40.00|20.00|40.00|2|50.00|" in md
    assert "`turn_premature`" in md


def test_a_response_at_the_speech_end_is_not_premature():
    ref = {"a": (1, 2.0), "b": (1, 2.0), "c": (1, 2.0), "s": (2, 1.0)}
    s = turn_end.score_turn_end(ref, {"a": (1, 2.0), "b": (1, 1.99), "c": (1, 5.0)})
    assert (s.answered, s.never_decided, s.num_premature) == (100.0, 0.0, 1)
    assert s.premature == pytest.approx(100 / 3)
    assert s.not_addressed_ignored == 100.0  # no prediction on side talk: silence
    with pytest.raises(ValueError, match="predicted label of a must be 0, 1 or 2"):
        turn_end.score_turn_end(ref, {"a": (3, 2.0)})


def test_older_metric_files_without_rates_give_none(tmp_path):
    results.write_metric(tmp_path / "qa_test" / "turn_end_f1", "turn_end_f1", "qa_test", 80.0,
                         "turn_end_event_f1", details={"precision": 80.0})
    r = results.build_results(results.collect_metrics(tmp_path), ["qa_test"], env={})
    assert r["turn_rates"] == {}
