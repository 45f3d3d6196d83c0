"""Kaldi data dirs: every bad-input case is named (file, line, id) and nothing is dropped
silently when fixing."""
import numpy as np
import pytest
import soundfile

from espnet_freeze_omni.bin import fix_data_dir as fix_bin
from espnet_freeze_omni.bin import validate_data_dir as validate_bin
from espnet_freeze_omni.data import derive
from espnet_freeze_omni.data import kaldi_table as kt
from espnet_freeze_omni.data import validation


def make_dir(root, n=4, sample_rate=16000, texts=None):
    """A sound data dir of n utterances with real (short) wavs."""
    d = root / "data"
    wavs = root / "wav"
    d.mkdir(parents=True)
    wavs.mkdir()
    lines = {"wav.scp": [], "text": [], "utt2spk": [], "turn_info": []}
    for i in range(n):
        utt = f"spk{i % 2}-utt{i}"
        wav = wavs / f"{utt}.wav"
        soundfile.write(wav, (0.1 * np.sin(np.arange(1600) / 5)).astype("float32"), sample_rate)
        lines["wav.scp"].append(f"{utt} {wav}")
        lines["text"].append(f"{utt} {texts[i] if texts else f'hello number {i}'}")
        lines["utt2spk"].append(f"{utt} spk{i % 2}")
        lines["turn_info"].append(f"{utt} 1 0.05")
    for name, rows in lines.items():
        (d / name).write_text("".join(r + "\n" for r in sorted(rows)))
    kt.write_kaldi_map(d / "spk2utt", kt.utt2spk_to_spk2utt(kt.read_kaldi_map(d / "utt2spk")))
    return d


def kinds(problems):
    return sorted({p.kind for p in problems})


def dropped(d):
    lines = (d / ".backup" / "dropped.txt").read_text().splitlines()
    return dict(line.split("\t", 1) for line in lines if not line.startswith("#"))


def test_sound_dir_validates(tmp_path):
    d = make_dir(tmp_path)
    assert validation.validate_data_dir(d, check_audio=True, sample_rate=16000) == []
    assert validate_bin.main([str(d), "--check_audio", "true"]) == 0


def test_missing_required_file(tmp_path):
    d = make_dir(tmp_path)
    (d / "text").unlink()
    (p,) = validation.validate_data_dir(d)
    assert p.kind == "missing_file" and p.file.endswith("text")
    with pytest.raises(FileNotFoundError, match="text"):
        validation.fix_data_dir(d)


def test_id_missing_from_one_file(tmp_path, capsys):
    d = make_dir(tmp_path)
    (d / "text").write_text("".join(l for l in (d / "text").read_text().splitlines(True)
                                    if "utt1 " not in l))
    problems = validation.validate_data_dir(d)
    (p,) = [p for p in problems if p.kind == "missing"]
    assert p.utt_id == "spk1-utt1" and p.file.endswith("/text")
    assert "not in text" in str(p)
    report = validation.fix_data_dir(d)
    assert report.num_kept == 3 and list(report.dropped) == ["spk1-utt1"]
    assert "missing from text" in dropped(d)["spk1-utt1"]
    assert "spk1-utt1" not in (d / "wav.scp").read_text()
    assert "spk1-utt1" not in (d / "spk2utt").read_text()  # regenerated
    assert (d / ".backup" / "text").is_file()  # originals kept
    out = capsys.readouterr().out
    assert "kept 3 of 4" in out and "dropped.txt" in out
    assert validation.validate_data_dir(d) == []


def test_duplicate_ids(tmp_path):
    d = make_dir(tmp_path)
    text = (d / "text").read_text().splitlines(True)
    # utt0 twice with different content, utt1 (third line) twice identically
    text = [text[0], "spk0-utt0 another transcript\n"] + text[1:3] + [text[2]] + text[3:]
    (d / "text").write_text("".join(text))
    problems = [p for p in validation.validate_data_dir(d) if p.kind == "duplicate"]
    assert {(p.utt_id, p.line) for p in problems} == {("spk0-utt0", 2), ("spk1-utt1", 5)}
    assert "first at line 1" in str(problems[0])
    report = validation.fix_data_dir(d, verbose=False)
    assert list(report.dropped) == ["spk0-utt0"]
    assert "duplicate id in text (lines 1 and 2)" in dropped(d)["spk0-utt0"]
    assert report.deduplicated == {"text spk1-utt1": 1}
    assert (d / "text").read_text().count("spk1-utt1") == 1


def test_unsorted_file_is_sorted_and_reported(tmp_path):
    d = make_dir(tmp_path)
    rows = (d / "utt2spk").read_text().splitlines(True)
    (d / "utt2spk").write_text("".join(reversed(rows)))
    (p,) = validation.validate_data_dir(d)
    assert p.kind == "unsorted" and p.file.endswith("utt2spk") and p.line == 2
    report = validation.fix_data_dir(d, verbose=False)
    assert report.sorted_files == ["utt2spk"] and report.num_dropped == 0
    assert (d / "utt2spk").read_text().splitlines() == sorted(r.strip() for r in rows)
    assert validation.validate_data_dir(d) == []


def test_empty_transcript(tmp_path):
    d = make_dir(tmp_path)
    rows = (d / "text").read_text().splitlines(True)
    rows[1] = "spk0-utt2   \n"
    (d / "text").write_text("".join(rows))
    (p,) = validation.validate_data_dir(d)
    assert (p.kind, p.line, p.utt_id) == ("empty_text", 2, "spk0-utt2")
    validation.fix_data_dir(d, verbose=False)
    assert dropped(d) == {"spk0-utt2": "empty transcript in text line 2"}


def test_non_utf8_text_names_file_and_line(tmp_path):
    d = make_dir(tmp_path)
    rows = (d / "text").read_bytes().split(b"\n")
    rows[1] = rows[1].split(b" ")[0] + b" caf\xe9 latin-1"
    (d / "text").write_bytes(b"\n".join(rows))
    (p,) = validation.validate_data_dir(d)
    assert (p.kind, p.line, p.utt_id) == ("encoding", 2, "spk0-utt2")
    assert p.file.endswith("/text") and "0xe9" in p.message
    validation.fix_data_dir(d, verbose=False)
    assert dropped(d) == {"spk0-utt2": "text line 2 is not valid UTF-8"}
    assert validation.validate_data_dir(d) == []


def test_non_utf8_utterance_id_is_dropped_too(tmp_path):
    d = make_dir(tmp_path)
    with open(d / "utt2spk", "ab") as f:
        f.write(b"zz\xff-utt spk9\n")
    problems = validation.validate_data_dir(d)
    assert "encoding" in kinds(problems)
    report = validation.fix_data_dir(d, verbose=False)
    assert report.num_kept == 4 and report.num_dropped == 1
    assert validation.validate_data_dir(d) == []


def test_unreadable_and_missing_audio(tmp_path):
    d = make_dir(tmp_path)
    wav = kt.read_kaldi_map(d / "wav.scp")
    open(wav["spk1-utt1"], "wb").write(b"this is not audio")
    missing = wav["spk1-utt3"] + ".gone"
    kt.write_kaldi_map(d / "wav.scp", {**wav, "spk1-utt3": missing})
    assert kinds(validation.validate_data_dir(d)) == ["missing_audio"]  # existence is always checked
    problems = validation.validate_data_dir(d, check_audio=True)
    bad = {p.utt_id: p for p in problems}
    assert bad["spk1-utt1"].kind == "unreadable_audio" and wav["spk1-utt1"] in str(bad["spk1-utt1"])
    assert bad["spk1-utt3"].kind == "missing_audio" and missing in str(bad["spk1-utt3"])
    validation.fix_data_dir(d, check_audio=True, verbose=False)
    reasons = dropped(d)
    assert set(reasons) == {"spk1-utt1", "spk1-utt3"}
    assert "cannot be read" in reasons["spk1-utt1"] and "does not exist" in reasons["spk1-utt3"]


def test_wrong_sample_rate(tmp_path):
    d = make_dir(tmp_path)
    wav = kt.read_kaldi_map(d / "wav.scp")
    soundfile.write(wav["spk0-utt0"], np.zeros(800, dtype="float32"), 8000)
    assert validation.validate_data_dir(d, check_audio=True) == []  # no rate asked for
    (p,) = validation.validate_data_dir(d, check_audio=True, sample_rate=16000)
    assert p.kind == "sample_rate" and "8000 Hz, expected 16000" in p.message
    assert fix_bin.main([str(d), "--check_audio", "true", "--sample_rate", "16000"]) == 0
    assert list(dropped(d)) == ["spk0-utt0"]


def test_pipe_audio_is_checked_by_running_it(tmp_path):
    d = make_dir(tmp_path)
    wav = kt.read_kaldi_map(d / "wav.scp")
    wav["spk0-utt0"] = f"sox {wav['spk0-utt0']} -t wav - speed 1.1 |"
    wav["spk0-utt2"] = "false |"
    kt.write_kaldi_map(d / "wav.scp", wav)
    (p,) = validation.validate_data_dir(d, check_audio=True, sample_rate=16000)
    assert p.utt_id == "spk0-utt2" and p.kind == "unreadable_audio"


def test_spk2utt_mismatch_and_malformed_lines(tmp_path):
    d = make_dir(tmp_path)
    (d / "spk2utt").write_text("spk0 spk0-utt0\n")
    with open(d / "turn_info", "a") as f:
        f.write("spk9-utt9 7 1.0\n")
    problems = validation.validate_data_dir(d)
    assert {"spk2utt", "format", "missing"} <= set(kinds(problems))
    fmt = next(p for p in problems if p.kind == "format")
    assert fmt.line == 5 and fmt.utt_id == "spk9-utt9" and "turn label" in fmt.message
    report = validation.fix_data_dir(d, verbose=False)
    assert report.num_kept == 4 and "spk9-utt9" in report.dropped
    assert validation.validate_data_dir(d) == []


def test_segments(tmp_path):
    d = make_dir(tmp_path, n=2)
    wav = kt.read_kaldi_map(d / "wav.scp")
    kt.write_kaldi_map(d / "wav.scp", {"rec": wav["spk0-utt0"]})
    (d / "segments").write_text("spk0-utt0 rec 0.00 0.05\nspk1-utt1 nowhere 0.0 0.05\n")
    (p,) = [p for p in validation.validate_data_dir(d) if p.kind == "missing"]
    assert p.utt_id == "spk1-utt1" and "recording nowhere" in p.message
    validation.fix_data_dir(d, verbose=False)
    assert list(dropped(d)) == ["spk1-utt1"]
    assert validation.validate_data_dir(d, check_audio=True) == []


def test_perturb_speed_and_filter_by_length(tmp_path):
    d = make_dir(tmp_path, n=2)
    dst = tmp_path / "sp"
    derive.perturb_speed(d, dst, [0.9, 1.0, 1.1])
    wav = kt.read_kaldi_map(dst / "wav.scp")
    assert len(wav) == 6 and wav["sp0.9-spk0-utt0"].endswith("speed 0.9 |")
    assert kt.read_kaldi_map(dst / "utt2spk")["sp1.1-spk1-utt1"] == "sp1.1-spk1"
    assert kt.read_turn_info(dst / "turn_info")["sp0.9-spk0-utt0"] == (1, 0.06)
    assert validation.validate_data_dir(dst, check_audio=True, sample_rate=16000) == []

    samples = {"spk0-utt0": "800", "spk1-utt1": "480000"}  # 0.05 s and 30 s
    kt.write_kaldi_map(d / "utt2num_samples", samples)
    report = derive.filter_by_length(d, tmp_path / "filtered", 16000, 0.01, 20)
    assert report.too_long == ["spk1-utt1"] and report.num_kept == 1
    assert "30.00 s > max 20" in (tmp_path / "filtered" / "filtered_out.txt").read_text()
    assert validation.validate_data_dir(tmp_path / "filtered") == []
