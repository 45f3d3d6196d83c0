"""The one audio reader (data/audio.py): every source comes out mono at the rate asked for,
and every error names the utterance and the file. Also the decoding bin that used to read
a wav at whatever rate it had (bin/speech_input_inference)."""
import numpy as np
import pytest
import soundfile

from espnet_freeze_omni.data import audio
from espnet_freeze_omni.data.kaldi_table import read_keys, read_wav_scp


def tone(seconds, rate, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def wavs(tmp_path):
    """One second of a 440 Hz tone at 16 kHz, at 8 kHz, and in stereo at 44.1 kHz."""
    paths = {"at16k": tmp_path / "a16.wav", "at8k": tmp_path / "a8.wav",
             "stereo44k": tmp_path / "a44.wav"}
    soundfile.write(paths["at16k"], tone(1.0, 16000), 16000)
    soundfile.write(paths["at8k"], tone(1.0, 8000), 8000)
    soundfile.write(paths["stereo44k"], np.stack([tone(1.0, 44100), tone(1.0, 44100)], 1), 44100)
    return paths


def test_load_audio_downmixes_and_resamples(wavs):
    for utt, path in wavs.items():
        wav = audio.load_audio(str(path), 16000, utt)
        assert wav.dtype == np.float32 and wav.ndim == 1 and len(wav) == 16000, utt
        # the tone survives at its pitch: a wrong rate would move the spectral peak
        peak = np.argmax(np.abs(np.fft.rfft(wav))) * 16000 / len(wav)
        assert abs(peak - 440) < 5, (utt, peak)
    same, rate = audio.read_audio(str(wavs["at16k"]))
    assert rate == 16000 and np.array_equal(same, audio.load_audio(str(wavs["at16k"]), 16000))


def test_a_pipe_is_a_source(wavs):
    spec = f"sox {wavs['at8k']} -t wav - |"
    assert audio.check_audio(spec, 8000) is None
    assert len(audio.load_audio(spec, 16000, "piped")) == 16000


def test_errors_name_the_utterance_and_the_file(tmp_path):
    empty, broken = tmp_path / "empty.wav", tmp_path / "broken.wav"
    soundfile.write(empty, np.zeros(0, np.float32), 16000)
    broken.write_bytes(b"not audio")
    cases = {"gone": (tmp_path / "gone.wav", "does not exist"),
             "empty": (empty, "is empty"), "broken": (broken, "cannot be read")}
    for utt, (path, what) in cases.items():
        with pytest.raises(audio.AudioError, match=rf"utterance {utt}: audio {path}: {what}"):
            audio.load_audio(str(path), 16000, utt)
    with pytest.raises(audio.AudioError, match="command 'false': cannot be read"):
        audio.read_audio("false |", "piped")


def test_check_sound_scp_names_line_utterance_and_file(tmp_path, wavs):
    scp = tmp_path / "wav.scp"
    scp.write_text(f"ok {wavs['at16k']}\nslow {wavs['at8k']}\ngone {tmp_path}/gone.wav\n"
                   "piped false |\n")
    problems = audio.check_sound_scp(scp, 16000)  # pipes are left to espnet's loader
    assert [(p.line, p.utt_id, p.kind) for p in problems] == [
        (2, "slow", "sample_rate"), (3, "gone", "missing_audio")]
    assert str(problems[0]) == (f"{scp}:2: [slow] audio {wavs['at8k']}: sample rate 8000 Hz, "
                                "expected 16000 Hz")


def test_one_table_reader_for_wav_scp_and_key_files(tmp_path):
    scp = tmp_path / "wav.scp"
    scp.write_text("b /x/b.wav\na /x/a.wav\n")
    assert list(read_wav_scp(scp)) == ["b", "a"]  # file order
    keys = tmp_path / "keys"
    keys.write_text("a\nc extra\n")
    with pytest.raises(KeyError, match=rf"utterance c \({keys}:2\) is not in {scp}"):
        read_keys(keys, read_wav_scp(scp), scp)
    scp.write_text("a /x/a.wav\nb\n")
    with pytest.raises(ValueError, match=rf"{scp}:2: \[b\] nothing after the id"):
        read_wav_scp(scp)


def test_speech_input_decoding_hears_every_file_at_the_model_rate(tmp_path, wavs, monkeypatch):
    """bin/speech_input_inference once fed an 8 kHz or 44.1 kHz wav to a 16 kHz model as it
    was: half or 2.8 times the samples, the speech at the wrong pitch and speed, and no
    word said. It must hear one second as one second of 16 kHz mono."""
    from espnet_freeze_omni.bin import speech_input_inference as bin_
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    heard = {}

    class Decoder:  # the real loader, a stand-in model that reports what it got
        sample_rate = 16000
        load = SpeechInputInference.load

        def ctc_transcribe(self, wav):
            heard[len(heard)] = wav
            return f"{len(wav)} samples"

    monkeypatch.setattr(bin_.SpeechInputInference, "from_files", lambda *a, **k: Decoder())
    scp = tmp_path / "wav.scp"
    scp.write_text("".join(f"{utt} {path}\n" for utt, path in wavs.items()))
    out = tmp_path / "out"
    bin_.main(["--train_config", "unused.yaml", "--model_file", "unused.pth",
               "--wav_scp", str(scp), "--mode", "ctc", "--output_dir", str(out)])
    assert read_wav_scp(out / "text") == {utt: "16000 samples" for utt in sorted(wavs)}
    assert all(w.ndim == 1 and w.dtype == np.float32 for w in heard.values())
