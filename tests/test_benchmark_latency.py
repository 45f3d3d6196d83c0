"""benchmark_latency: the latency breakdown through the DuplexSession, on small runs.

Only what the benchmark writes is checked (every stage has its P50/P90, the stages come in
order, a real PNG, one RTF per concurrency), never how fast anything is: speed figures are
printed, not asserted. Bad arguments must fail with a message that says what is wrong.
"""
from __future__ import annotations

import json

import pytest
import torch

from test_speech2speech import pack, work  # noqa: F401 (fixtures, helper)

from espnet_freeze_omni.bin.benchmark_latency import SEGMENTS, STAGES, TOTALS, main

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_tiny_shapes_write_every_stage_in_order(tmp_path):
    out = tmp_path / "out"
    main(["--shapes", "tiny", "--dialogues", "3", "--concurrency", "1", "2",
          "--answer_tokens", "16", "--threads", "1", "--work_dir", str(tmp_path / "work"),
          "--out_dir", str(out)])
    result = json.loads((out / "latency.json").read_text())
    assert result["dialogues"] == 3 and result["answered"] == 3
    assert result["never_decided"] == 0 and result["interrupted"] == 0
    assert any("scripted" in line for line in result["scripted"])
    for stage in STAGES:
        summary = result["stages"][stage]
        assert summary["n"] == 3 and summary["p50"] is not None and summary["p90"] is not None
        assert summary["p50"] <= summary["p90"]
    for a, b, _ in SEGMENTS + TOTALS:
        summary = result["segments"][f"{a}->{b}"]
        assert summary["p50"] is not None and summary["p90"] is not None
    for record in result["records"]:
        stages = record["stages_ms"]
        times = [stages[name] for name in STAGES]
        assert times == sorted(times), (record["name"], stages)
        assert stages["decision"] >= 320.0  # the scripted decision waits 0.32 s of silence
        assert record["answer_tokens"] == 16
        assert set(record["answer_compute_s"]) >= {"llm", "decoder_prefill", "decoder", "codec"}
    assert [row["sessions"] for row in result["concurrency"]] == [1, 2]
    assert all(row["rtf"] > 0 and row["answered"] == row["sessions"]
               for row in result["concurrency"])
    assert 0.99 < sum(share["share"] for share in result["compute"].values()) < 1.01

    png = out / "latency.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.shape[0] > 400 and image.shape[1] > 800


def test_packed_model_path_times_answers_and_counts_undecided_turns(work, tmp_path,
                                                                   monkeypatch):  # noqa: F811
    """--model_file: the model's own state head takes the turns; a turn_info beside the
    wav.scp gives the speech ends and keeps side talk out. The fixture's head decides every
    turn (a respond bias); the same model with its head held at "listen" never decides,
    which the benchmark must count (and still write its files)."""
    from espnet_freeze_omni.inference.speech2speech import Speech2Speech
    from espnet_freeze_omni.models.speech_input import STATE_LISTEN

    zip_path = tmp_path / "packed" / "model.zip"
    pack(work, zip_path, ["--yaml", f"codec_conf={work['codec']}/codec_conf.yaml"])
    data = tmp_path / "data"
    data.mkdir()
    lines = (work["data"] / "wav.scp").read_text().splitlines()[:3]
    (data / "wav.scp").write_text("\n".join(lines) + "\n")
    utts = [line.split()[0] for line in lines]
    (data / "turn_info").write_text(f"{utts[0]} 1 0.5\n{utts[1]} 2 0.6\n{utts[2]} 1 0.7\n")

    def run(out):
        main(["--model_file", str(zip_path), "--llm_path", str(work["llm"]),
              "--cachedir", str(tmp_path / "cache"), "--wav_scp", str(data / "wav.scp"),
              "--dialogues", "2", "--warmup", "0", "--vad", "off", "--tail_seconds", "1.0",
              "--threads", "1", "--out_dir", str(out)])
        assert (out / "latency.png").read_bytes()[:8] == PNG_SIGNATURE
        result = json.loads((out / "latency.json").read_text())
        assert [r["name"] for r in result["records"]] == [utts[0], utts[2]]  # no side talk
        assert [r["speech_end_s"] for r in result["records"]] == [0.5, 0.7]
        return result

    answering = run(tmp_path / "answering")
    assert answering["never_decided"] == 0
    assert all(r["decided"] for r in answering["records"])

    loaded = Speech2Speech.from_pretrained.__func__

    def listening_head(cls, *args, **kwargs):
        s2s = loaded(cls, *args, **kwargs)
        with torch.no_grad():
            s2s.listener.model.predictor_head.bias[STATE_LISTEN] += 1000.0
        return s2s

    monkeypatch.setattr(Speech2Speech, "from_pretrained", classmethod(listening_head))
    listening = run(tmp_path / "listening")
    assert listening["never_decided"] == 2 and listening["answered"] == 0
    assert listening["segments"]["speech_end->first_pcm"]["p50"] is None


@pytest.mark.parametrize("argv, message", [
    (["--shapes", "paper"], "needs --device cuda"),
    (["--model_file", "/nonexistent/model.zip", "--wav_scp", "/nonexistent/wav.scp"],
     "--model_file /nonexistent/model.zip: no such file"),
    (["--model_file", __file__], "needs --wav_scp"),
    (["--shapes", "tiny", "--dialogues", "0"], "--dialogues must be >= 1"),
])
def test_bad_arguments_are_refused_with_a_message(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--out_dir", str(tmp_path / "out")])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--shapes", "paper", "--device", "cuda", "--out_dir", str(tmp_path / "out")])
    assert "CUDA is not available" in capsys.readouterr().err
