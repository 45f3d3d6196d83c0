"""The speech-out ceiling (bin/speech_out_ceiling; recipe stage 15 makes it, stage 16 scores
it as qa_acc_speech_out_ceiling and RESULTS.md splits the speech-out gap with it).

The bin runs on the tiny untrained stage-3 speech-input model of test_speech2speech and on a
stand-in listener that reports how many samples it heard (an untrained CTC head may hear
nothing in anything, which would make a comparison of transcripts vacuous). The renders are
real espeak-ng audio. The driver's stage 16 runs on stand-in decoding outputs.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from test_recipe_helpers import bash, recipe_copy
from test_speech2speech import work  # noqa: F401 (fixtures)

from espnet_freeze_omni.bin import speech_out_ceiling
from espnet_freeze_omni.data.kaldi_table import read_kaldi_map

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TEXTS = {"d1-t1": "Anna lives in Paris.", "d1-t2": "", "d2-t1": "Tom is ten years old."}


def write_text(path, table):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k} {v}".rstrip() + "\n" for k, v in table.items()))
    return path


def decoder_wavs(wav_dir, seconds):
    """Noise at the codec's 24 kHz, as stage 15 writes the spoken answers."""
    wav_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for utt, s in seconds.items():
        soundfile.write(wav_dir / f"{utt}.wav",
                        (rng.randn(int(s * 24000)) * 0.1).astype(np.float32), 24000,
                        subtype="PCM_16")
    return wav_dir


class SampleCounter:
    """A listener that transcribes a wav as the number of samples it was given."""

    sample_rate = 16000
    template = object()  # "has an LLM"

    def ctc_transcribe(self, wav):
        assert wav.dtype == np.float32 and wav.ndim == 1
        return f"ctc heard {len(wav)}"

    def llm_transcribe(self, wav):
        return f"llm heard {len(wav)}"


@pytest.fixture
def counter(monkeypatch):
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    made = []

    def from_files(train_config, model_file, **kwargs):
        made.append((train_config, model_file, kwargs))
        return SampleCounter()

    monkeypatch.setattr(SpeechInputInference, "from_files", staticmethod(from_files))
    return made


def run(tmp_path, *extra, texts=TEXTS):
    out = tmp_path / "ceiling"
    args = ["--text", str(write_text(tmp_path / "text", texts)), "--train_config", "c.yaml",
            "--model_file", "m.pth", "--output_dir", str(out), "--nj", "1", *extra]
    assert speech_out_ceiling.main(args) == 0
    return out


def test_renders_the_voiced_texts_and_hears_them_at_the_listener_rate(tmp_path, counter):
    wav_dir = decoder_wavs(tmp_path / "wav", {"d1-t1": 1.5, "d1-t2": 0.05, "d2-t1": 2.0})
    out = run(tmp_path, "--decoder_wav_dir", str(wav_dir),
              "--decoder_asr_text", str(tmp_path / "decoder_asr_text"))
    # a data dir of the non-empty texts, rendered at the listener's 16 kHz
    assert read_kaldi_map(out / "text") == {u: t for u, t in TEXTS.items() if t}
    assert read_kaldi_map(out / "utt2spk") == {"d1-t1": "assistant", "d2-t1": "assistant"}
    renders = read_kaldi_map(out / "wav.scp")
    frames = {}
    for utt, path in renders.items():
        info = soundfile.info(path)
        assert info.samplerate == 16000 and info.channels == 1, utt
        assert info.duration > 0.5, utt
        frames[utt] = info.frames
    # every line of --text, in its order; an empty text is heard as nothing
    lines = (out / "asr_text").read_text().splitlines()
    assert lines == [f"d1-t1 ctc heard {frames['d1-t1']}", "d1-t2",
                     f"d2-t1 ctc heard {frames['d2-t1']}"]
    # the decoder's 24 kHz wavs reach the listener at 16 kHz; one under MIN_ASR_SECONDS is
    # heard as nothing, as stage 15 hears it
    assert (tmp_path / "decoder_asr_text").read_text().splitlines() == [
        "d1-t1 ctc heard 24000", "d1-t2", "d2-t1 ctc heard 32000"]
    assert counter[0][2]["device"] == "cpu"


def test_voice_options_and_the_llm_listener(tmp_path, counter):
    texts = {"u1": "Raser Theeth has a cat named Tidoun."}
    slow = run(tmp_path / "slow", "--speed", "100", "--trailing_silence", "0", texts=texts)
    fast = run(tmp_path / "fast", "--speed", "300", "--trailing_silence", "0",
               "--listener", "llm", texts=texts)
    n_slow = soundfile.info(read_kaldi_map(slow / "wav.scp")["u1"]).frames
    n_fast = soundfile.info(read_kaldi_map(fast / "wav.scp")["u1"]).frames
    assert n_fast < 0.6 * n_slow  # the speed reached espeak-ng
    assert (fast / "asr_text").read_text() == f"u1 llm heard {n_fast}\n"
    padded = run(tmp_path / "padded", "--speed", "300", "--trailing_silence", "0.5",
                 texts=texts)
    assert soundfile.info(read_kaldi_map(padded / "wav.scp")["u1"]).frames \
        == pytest.approx(n_fast + 8000, abs=2)


def test_errors_name_what_is_wrong(tmp_path, counter):
    wav_dir = decoder_wavs(tmp_path / "wav", {"d1-t1": 1.0})  # d2-t1 has no wav
    with pytest.raises(FileNotFoundError, match=r"no wav for 1 voiced utterance.*d2-t1\.wav"):
        run(tmp_path, "--decoder_wav_dir", str(wav_dir),
            "--decoder_asr_text", str(tmp_path / "x"),
            texts={"d1-t1": "Anna lives in Paris.", "d2-t1": "Tom is ten."})
    with pytest.raises(SystemExit, match="together"):
        run(tmp_path, "--decoder_wav_dir", str(wav_dir))
    SampleCounter.template = None
    try:
        with pytest.raises(SystemExit, match="m.pth has none"):
            run(tmp_path, "--listener", "llm")
    finally:
        SampleCounter.template = object()


def test_nothing_voiced_gives_empty_outputs(tmp_path, counter):
    out = run(tmp_path, texts={})
    assert (out / "asr_text").read_text() == "" and (out / "wav.scp").read_text() == ""


def test_non_printing_characters_are_not_spoken(tmp_path, counter):
    """An undertrained LLM's answers hold NUL bytes and other control characters, which no
    command line takes: espeak-ng gets the rest, a text of nothing else is not rendered."""
    out = run(tmp_path / "garbage", texts={"u1": "Anna\x00lives\x16 in\u200b Paris.\ufffd",
                                           "u2": "\x00\x01 \x7f"})
    assert read_kaldi_map(out / "text") == {"u1": "Anna lives in Paris.\ufffd"}
    heard = (out / "asr_text").read_text().splitlines()
    assert heard[0].startswith("u1 ctc heard ") and heard[1] == "u2"


def test_the_real_listener_is_stage_15s(work, tmp_path):
    """With the tiny speech-input model: the transcripts are the model's own CTC of the
    renders and of the 24 kHz decoder wavs resampled as stage 15 resamples them."""
    from espnet_freeze_omni.data.audio import load_audio, resample
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    wav_dir = decoder_wavs(tmp_path / "wav", {"d1-t1": 1.5, "d1-t2": 0.5, "d2-t1": 2.0})
    model = work["speech_input"]
    out = run(tmp_path, "--train_config", str(model.parent / "config.yaml"),
              "--model_file", str(model), "--llm_path", str(work["llm"]),
              "--decoder_wav_dir", str(wav_dir),
              "--decoder_asr_text", str(tmp_path / "decoder_asr_text"))
    listener = SpeechInputInference.from_files(model.parent / "config.yaml", model,
                                               llm_path=work["llm"])
    renders = read_kaldi_map(out / "wav.scp")
    heard = read_kaldi_map(out / "asr_text")
    assert sorted(heard) == sorted(TEXTS) and heard["d1-t2"] == ""
    for utt, path in renders.items():
        expected = " ".join(listener.ctc_transcribe(load_audio(path, 16000, utt)).split())
        assert heard[utt] == expected, utt
    heard = read_kaldi_map(tmp_path / "decoder_asr_text")
    for utt in TEXTS:
        wav, rate = soundfile.read(wav_dir / f"{utt}.wav", dtype="float32")
        expected = listener.ctc_transcribe(resample(wav, rate, 16000))
        assert heard[utt] == " ".join(expected.split()), utt


# ---------------------------------------------------------------- stage 16 and RESULTS.md
def test_results_split_the_speech_out_gap(tmp_path):
    from espnet_freeze_omni.scoring import results

    root = tmp_path / "scores"
    for test_set, values in (("qa_test", (90.0, 80.0, 35.0, 50.0)),
                             ("qa_other", (90.0, 60.0, 20.0, None))):
        for metric, value in zip(("text_in", "speech_in", "speech_out", "speech_out_ceiling"),
                                 values):
            if value is not None:
                results.write_metric(root / test_set / f"qa_acc_{metric}", f"qa_acc_{metric}",
                                     test_set, value, "answer_containment", "containment",
                                     {"num_items": 20, "num_correct": int(value / 5),
                                      "num_missing": 0})
    out = results.write_results(root, tmp_path / "results.json", tmp_path / "RESULTS.md",
                                ["qa_test", "qa_other"])
    assert out["qa_acc_speech_out_ceiling"] == 50.0
    gap = {g["test_set"]: g for g in out["modality_gap"]}
    g = gap["qa_test"]
    assert (g["speech_out_ceiling"], g["gap_listener"], g["gap_decoder"]) == (50.0, 30.0, 15.0)
    # the speech-out gap is the speech-in gap plus the listener's and the decoder's shares
    assert g["gap_speech_out"] == g["gap_speech_in"] + g["gap_listener"] + g["gap_decoder"]
    assert not {"speech_out_ceiling", "gap_listener", "gap_decoder"} & set(gap["qa_other"])
    md = (tmp_path / "RESULTS.md").read_text()
    assert "|qa_acc_speech_out_ceiling|20|10|0|50.00|answer_containment|" in md
    assert md.index("|qa_acc_speech_out|") < md.index("|qa_acc_speech_out_ceiling|")
    assert ("|test set|text in|speech in|gap|speech out|gap|speech out ceiling|"
            "of the gap: listener|of the gap: decoder|") in md
    assert "|qa_test|90.00|80.00|10.00|35.00|55.00|50.00|30.00|15.00|" in md
    assert "|qa_other|90.00|60.00|30.00|20.00|70.00|n/a|n/a|n/a|" in md
    assert "speech out ceiling: the voiced answer texts re-spoken by espeak-ng" in md


def test_driver_stage_16_scores_the_ceiling(tmp_path):
    """Stage 16 on stand-in stage-15 outputs: the ceiling of qa_test is scored with the same
    references as qa_acc_speech_out; qa_test_unseen has none and says why."""
    recipe = recipe_copy(tmp_path, "synthetic_dialog")
    refs = [{"id": "q1-t1", "question": "Where does Anna live?", "answers": ["Paris"]},
            {"id": "q2-t1", "question": "How old is Tom?", "answers": ["ten"]}]
    world = recipe / "data/local/world"
    world.mkdir(parents=True)
    for qa_set in ("qa_test", "qa_test_unseen"):
        (world / f"{qa_set}_refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in refs))
        dec = recipe / "exp/decode" / qa_set
        (dec / "speech_out").mkdir(parents=True)
        write_text(dec / "speech_out/text", {"q1-t1": "Anna lives in Paris.",
                                             "q2-t1": "Tom is ten years old."})
        write_text(dec / "speech_out/asr_text", {"q1-t1": "Ana lives in Parus.",
                                                 "q2-t1": "Tom is ten years old."})
    (recipe / "exp/decode/qa_test/speech_out_ceiling").mkdir()
    write_text(recipe / "exp/decode/qa_test/speech_out_ceiling/asr_text",
               {"q1-t1": "Anna lives in Paris.", "q2-t1": "Tom is ten years old."})
    proc = bash("./run.sh --stage 16 --stop_stage 16", recipe)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "qa_test_unseen: qa_acc_speech_out_ceiling is n/a: stage 15 made no" in proc.stdout
    assert "qa_test: qa_acc_speech_out_ceiling is n/a" not in proc.stdout
    r = json.loads((recipe / "exp/results.json").read_text())
    assert r["qa_acc_speech_out"] == 50.0 and r["qa_acc_speech_out_ceiling"] == 100.0
    assert r["qa_acc_speech_out_ceiling_test_set"] == "qa_test"
    assert "qa_acc_speech_out_ceiling" not in r["per_test_set"]["qa_test_unseen"]
    assert "|qa_acc_speech_out_ceiling|2|2|0|100.00|" in (recipe / "RESULTS.md").read_text()
    proc = bash("./run.sh --stage 16 --stop_stage 16 --speech_out_ceiling maybe", recipe)
    assert proc.returncode == 1
    assert "--speech_out_ceiling must be auto, true or false, not 'maybe'" in proc.stdout
