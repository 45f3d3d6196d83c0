"""Bad input, named and lossless (issue 28, item 3): one table of broken inputs.

Each row builds its broken input on the spot in tmp_path, runs the entry point a user would
hit (the data-dir validator and fixer, load_audio, the length filter, the Kaldi table
readers, the training Tasks, the packed-model loader) and checks

  (a) the kind of message: the exception type (exactly) or the printed report, and a regex
      that names the file and the line / utterance / tensor where there is one;
  (b) that nothing valid was lost: the fixer keeps every sound utterance as it was and lists
      exactly the dropped ids, originals are backed up, inputs are left unchanged.

Rows with `error=None` are inputs that are *accepted*: the regex is matched against what the
entry point returns (a report, the filtered-out list, a description of the audio it gave).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import pytest
import soundfile
import torch
import yaml

from espnet_freeze_omni.data import kaldi_table
from espnet_freeze_omni.data.audio import AudioError, load_audio
from espnet_freeze_omni.data.derive import filter_by_length

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
RATE = 16000
UTTS = [f"utt{i}" for i in range(4)]
TEXT = {u: f"hello number {i}" for i, u in enumerate(UTTS)}
SPEAKER = {u: f"spk{i % 2}" for i, u in enumerate(UTTS)}
LLM_TEXTS = ["hello number one", "what color is the sky", "the sky is blue"]
CODEC_VOCAB = yaml.safe_load((CONF / "speech_output_stage2_tiny.yaml").read_text())[
    "speech_decoder_conf"]["vocab_size"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------------- the table
@dataclasses.dataclass
class Setup:
    run: Callable[[], Optional[str]]  # the entry point; returns a report when it accepts
    fmt: Dict[str, object]  # values for the pattern's {names} (regex-escaped when filled in)
    after: Optional[Callable[[], None]] = None  # the lossless checks


@dataclasses.dataclass
class Case:
    id: str
    make: Callable[[Path, "Env"], Setup]
    error: Optional[type]  # the exact exception type; None: accepted, pattern on the report
    pattern: str


def fill(pattern: str, fmt: Dict[str, object]) -> str:
    return pattern.format(**{k: re.escape(str(v)) for k, v in fmt.items()})


# ---------------------------------------------------------------------------- inputs
def noise(seconds: float = 0.25, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).randn(int(RATE * seconds)) * 0.1).astype(np.float32)


def make_data_dir(root: Path) -> Path:
    """A sound 4-utterance data dir (16 kHz PCM wavs) with turn_info."""
    d, wavs = root / "data", root / "wav"
    d.mkdir(parents=True)
    wavs.mkdir()
    for i, u in enumerate(UTTS):
        soundfile.write(wavs / f"{u}.wav", noise(seed=i), RATE, subtype="PCM_16")
    kaldi_table.write_kaldi_map(d / "wav.scp", {u: str(wavs / f"{u}.wav") for u in UTTS})
    kaldi_table.write_kaldi_map(d / "text", TEXT)
    kaldi_table.write_kaldi_map(d / "utt2spk", SPEAKER)
    kaldi_table.write_kaldi_map(d / "spk2utt", kaldi_table.utt2spk_to_spk2utt(SPEAKER))
    kaldi_table.write_turn_info(d / "turn_info", {u: (1, 0.2) for u in UTTS})
    return d


def set_line(path: Path, key: str, line: Optional[bytes]) -> int:
    """Replace (or, with None, remove) the line of `key`; returns its 1-based line number."""
    lines = path.read_bytes().split(b"\n")[:-1]
    at = next(i for i, raw in enumerate(lines) if raw.split(b" ", 1)[0] == key.encode())
    if line is None:
        del lines[at]
    else:
        lines[at] = line
    path.write_bytes(b"\n".join(lines) + b"\n")
    return at + 1


def point_wav(d: Path, utt: str, spec: str) -> int:
    return set_line(d / "wav.scp", utt, f"{utt} {spec}".encode())


def write_garbage(path: Path) -> Path:
    path.write_bytes(b"this is not audio at all")
    return path


def write_truncated(path: Path) -> Path:
    soundfile.write(path, noise(), RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: 44 + (len(data) - 44) // 3])  # a third of the samples
    return path


def write_nan(path: Path) -> Path:
    wav = noise()
    wav[5] = np.nan
    soundfile.write(path, wav, RATE, subtype="FLOAT")
    return path


def snapshot(d: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}


def run_cli(main, argv) -> tuple:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(argv)
    return rc, out.getvalue()


# ---------------------------------------------------------------------------- data dirs
def datadir_case(case_id: str, breaker, pattern: str, dropped, check_audio: bool = True,
                 deduplicated: bool = False) -> Case:
    """validate_data_dir reports the problem (exit 1); fix_data_dir then drops exactly
    `dropped`, keeps every other utterance as it was, backs the originals up, and the
    result validates."""
    from espnet_freeze_omni.bin import fix_data_dir, validate_data_dir

    opts = ["--check_audio", str(check_audio).lower(), "--sample_rate", str(RATE)]

    def make(tmp: Path, env: "Env") -> Setup:
        d = make_data_dir(tmp)
        fmt = dict(breaker(d, tmp) or {})
        fmt.update(dir=d, scp=d / "wav.scp", text=d / "text")
        broken = snapshot(d)

        def run() -> str:
            rc, out = run_cli(validate_data_dir.main, [str(d), *opts])
            assert rc == 1, out
            return out

        def after() -> None:
            assert snapshot(d) == broken, "validation changed the data dir"
            rc, summary = run_cli(fix_data_dir.main, [str(d), *opts])
            assert rc == 0
            backup = d / ".backup"
            for name, content in broken.items():
                assert (backup / name).read_bytes() == content, f"{name} not backed up as it was"
            listed = [line.split("\t")[0] for line in
                      (backup / "dropped.txt").read_text().splitlines()]
            assert listed == sorted(dropped), summary
            kept = [u for u in UTTS if u not in dropped]
            assert kaldi_table.read_kaldi_map(d / "text") == {u: TEXT[u] for u in kept}
            assert kaldi_table.read_kaldi_map(d / "utt2spk") == {u: SPEAKER[u] for u in kept}
            assert list(kaldi_table.read_turn_info(d / "turn_info")) == kept
            assert sorted(kaldi_table.read_wav_scp(d / "wav.scp")) == kept
            if deduplicated:
                assert "removed identical duplicate lines" in summary, summary
            rc, out = run_cli(validate_data_dir.main, [str(d), *opts])
            assert rc == 0, out

        return Setup(run, fmt, after)

    return Case(case_id, make, None, pattern)


def _wav(name: str, writer):
    def breaker(d: Path, tmp: Path):
        path = writer(tmp / name)
        return dict(wav=path, line=point_wav(d, "utt1", str(path)))
    return breaker


def _pipe(command: str):
    def breaker(d: Path, tmp: Path):
        return dict(line=point_wav(d, "utt1", f"{command} |"))
    return breaker


def _without(table: str, utt: str = "utt2"):
    def breaker(d: Path, tmp: Path):
        set_line(d / table, utt, None)
        return dict(table=d / table)
    return breaker


def _replace(table: str, utt: str, line: bytes):
    def breaker(d: Path, tmp: Path):
        return dict(table=d / table, line=set_line(d / table, utt, line))
    return breaker


def _duplicate(same: bool):
    def breaker(d: Path, tmp: Path):
        lines = (d / "text").read_text().splitlines()
        lines.insert(2, "utt1 " + (TEXT["utt1"] if same else "something else"))
        (d / "text").write_text("\n".join(lines) + "\n")
    return breaker


def _rate(rate: int):
    def breaker(d: Path, tmp: Path):
        path = tmp / "8k.wav"
        soundfile.write(path, noise()[: rate // 4], rate, subtype="PCM_16")
        return dict(wav=path, line=point_wav(d, "utt1", str(path)))
    return breaker


DATADIR_CASES = [
    datadir_case("datadir-audio-unreadable", _wav("junk.wav", write_garbage),
                 r"{scp}:{line}: \[utt1\] audio {wav}: cannot be read", ["utt1"]),
    datadir_case("datadir-audio-empty-0-bytes",
                 _wav("empty.wav", lambda p: (p.write_bytes(b""), p)[1]),
                 r"{scp}:{line}: \[utt1\] audio {wav}: is an empty file \(0 bytes\)", ["utt1"]),
    datadir_case("datadir-audio-truncated-wav", _wav("cut.wav", write_truncated),
                 r"{scp}:{line}: \[utt1\] audio {wav}: is truncated \(its header promises "
                 r"8000 bytes of audio, the file holds 2666\)", ["utt1"]),
    datadir_case("datadir-audio-nan", _wav("nan.wav", write_nan),
                 r"{scp}:{line}: \[utt1\] audio {wav}: holds 1 NaN/inf sample value\(s\) "
                 r"\(the first at sample 5\)", ["utt1"]),
    datadir_case("datadir-audio-wrong-sample-rate", _rate(8000),
                 r"{scp}:{line}: \[utt1\] audio {wav}: sample rate 8000 Hz, expected 16000 Hz",
                 ["utt1"]),
    datadir_case("datadir-audio-missing-file",
                 lambda d, tmp: dict(wav=tmp / "gone.wav",
                                     line=point_wav(d, "utt1", str(tmp / "gone.wav"))),
                 r"{scp}:{line}: \[utt1\] audio {wav}: does not exist", ["utt1"],
                 check_audio=False),
    datadir_case("datadir-pipe-false", _pipe("false"),
                 r"{scp}:{line}: \[utt1\] audio command 'false': cannot be read \(command "
                 r"failed \(exit 1\)", ["utt1"]),
    datadir_case("datadir-pipe-writes-nothing", _pipe("true"),
                 r"{scp}:{line}: \[utt1\] audio command 'true': cannot be read \(command wrote "
                 r"nothing to stdout\)", ["utt1"]),
    datadir_case("datadir-id-missing-from-text", _without("text"),
                 r"{table}: \[utt2\] utterance is in utt2spk, turn_info, wav.scp but not in "
                 r"text", ["utt2"]),
    datadir_case("datadir-id-missing-from-utt2spk", _without("utt2spk"),
                 r"{table}: \[utt2\] utterance is in text, turn_info, wav.scp but not in "
                 r"utt2spk", ["utt2"]),
    datadir_case("datadir-id-missing-from-wav.scp", _without("wav.scp"),
                 r"{table}: \[utt2\] utterance is in text, utt2spk, turn_info but not in "
                 r"wav.scp", ["utt2"]),
    datadir_case("datadir-id-missing-from-turn_info", _without("turn_info"),
                 r"{table}: \[utt2\] utterance is in text, utt2spk, wav.scp but not in "
                 r"turn_info", ["utt2"]),
    datadir_case("datadir-duplicate-id-different-content", _duplicate(same=False),
                 r"{text}:3: \[utt1\] duplicate id \(first at line 2, different content\)",
                 ["utt1"]),
    datadir_case("datadir-duplicate-id-identical-line-is-kept", _duplicate(same=True),
                 r"{text}:3: \[utt1\] duplicate id \(first at line 2, identical line\)", [],
                 deduplicated=True),
    datadir_case("datadir-text-not-utf8",
                 _replace("text", "utt1", b"utt1 caf\xe9 au lait"),
                 r"{table}:{line}: \[utt1\] line is not valid UTF-8 \(byte 0xe9 at column 9\)",
                 ["utt1"]),
    datadir_case("datadir-empty-transcript", _replace("text", "utt3", b"utt3"),
                 r"{table}:{line}: \[utt3\] empty transcript", ["utt3"]),
    datadir_case("datadir-turn-info-bad-label", _replace("turn_info", "utt0", b"utt0 7 0.2"),
                 r"{table}:{line}: \[utt0\] turn label must be one of \[0, 1, 2\], got 7",
                 ["utt0"]),
]


# ---------------------------------------------------------------------------- load_audio
def audio_case(case_id: str, writer, error: Optional[type], pattern: str,
               expect: Optional[Callable[[np.ndarray, Path], str]] = None) -> Case:
    """load_audio(spec, 16000, utt) as every reader of audio calls it; the source file is
    left as it was."""
    def make(tmp: Path, env: "Env") -> Setup:
        spec = writer(tmp)
        path = Path(spec) if not spec.endswith("|") else None
        before = path.read_bytes() if path is not None else None

        def run() -> str:
            wav = load_audio(spec, RATE, "uttX")
            return expect(wav, tmp) if expect else f"accepted: {len(wav)} samples"

        def after() -> None:
            if path is not None:
                assert path.read_bytes() == before

        return Setup(run, dict(spec=spec), after)

    return Case(case_id, make, error, pattern)


def _file(name: str, writer):
    return lambda tmp: str(writer(tmp / name))


def _stereo(tmp: Path) -> str:
    left, right = noise(seed=1), noise(seed=2)
    soundfile.write(tmp / "stereo.wav", np.stack([left, right], 1), RATE, subtype="FLOAT")
    return str(tmp / "stereo.wav")


def _downmixed(wav: np.ndarray, tmp: Path) -> str:
    np.testing.assert_allclose(wav, (noise(seed=1) + noise(seed=2)) / 2, atol=1e-6)
    return f"mono {wav.shape}"


def _at_8k(tmp: Path) -> str:
    soundfile.write(tmp / "8k.wav", noise(0.5)[:4000], 8000, subtype="PCM_16")
    return str(tmp / "8k.wav")


def _one_sample(tmp: Path) -> str:
    soundfile.write(tmp / "one.wav", np.array([0.5], np.float32), RATE, subtype="PCM_16")
    return str(tmp / "one.wav")


AUDIO_CASES = [
    audio_case("load_audio-unreadable", _file("junk.wav", write_garbage), AudioError,
               r"^utterance uttX: audio {spec}: cannot be read \("),
    audio_case("load_audio-empty-0-bytes",
               _file("empty.wav", lambda p: (p.write_bytes(b""), p)[1]), AudioError,
               r"^utterance uttX: audio {spec}: is an empty file \(0 bytes\)$"),
    audio_case("load_audio-truncated-wav", _file("cut.wav", write_truncated), AudioError,
               r"^utterance uttX: audio {spec}: is truncated \(its header promises 8000 bytes"),
    audio_case("load_audio-nan", _file("nan.wav", write_nan), AudioError,
               r"^utterance uttX: audio {spec}: holds 1 NaN/inf sample value\(s\) \(the first "
               r"at sample 5\)$"),
    audio_case("load_audio-pipe-false", lambda tmp: "false |", AudioError,
               r"^utterance uttX: audio command 'false': cannot be read \(command failed "
               r"\(exit 1\)"),
    audio_case("load_audio-pipe-writes-nothing", lambda tmp: "true |", AudioError,
               r"^utterance uttX: audio command 'true': cannot be read \(command wrote nothing "
               r"to stdout\)$"),
    # accepted: resampled, never decoded as if it were 16 kHz
    audio_case("load_audio-8khz-is-resampled", _at_8k, None, r"^8000 samples at 16 kHz$",
               lambda wav, tmp: f"{len(wav)} samples at 16 kHz"),
    # accepted: both channels' speech kept (averaged)
    audio_case("load_audio-stereo-is-downmixed", _stereo, None, r"^mono \(4000,\)$",
               _downmixed),
    # accepted by the reader: one sample is audio; the length filter (below) refuses it
    audio_case("load_audio-one-sample", _one_sample, None, r"^1 sample\(s\)$",
               lambda wav, tmp: f"{len(wav)} sample(s)"),
]


# ---------------------------------------------------------------------------- length filter
def length_case(case_id: str, writer, error: Optional[type], pattern: str,
                utt2num_samples: Optional[bytes] = None) -> Case:
    """Stage 4's filter (scripts/data/filter_by_length.py, the driver's 0.1 s / 20 s) on a
    dump whose utt1 is `writer`'s audio; utt2num_samples as format_wav_scp.sh writes it."""
    def make(tmp: Path, env: "Env") -> Setup:
        d = make_data_dir(tmp)
        fmt = {}
        if writer is not None:
            path = writer(tmp)
            point_wav(d, "utt1", path)
        frames = {u: soundfile.info(p).frames
                  for u, p in kaldi_table.read_wav_scp(d / "wav.scp").items()}
        kaldi_table.write_kaldi_map(d / "utt2num_samples", {u: str(n) for u, n in frames.items()})
        if utt2num_samples is not None:
            fmt["line"] = set_line(d / "utt2num_samples", "utt1", utt2num_samples)
        fmt["table"] = d / "utt2num_samples"
        src = snapshot(d)
        dst = tmp / "filtered"

        def run() -> str:
            report = filter_by_length(d, dst, RATE, 0.1, 20.0)
            assert report.num_kept == len(UTTS) - 1
            return (dst / "filtered_out.txt").read_text()

        def after() -> None:
            assert snapshot(d) == src
            if error is None:
                kept = [u for u in UTTS if u != "utt1"]
                assert kaldi_table.read_kaldi_map(dst / "text") == {u: TEXT[u] for u in kept}
                assert sorted(kaldi_table.read_wav_scp(dst / "wav.scp")) == kept

        return Setup(run, fmt, after)

    return Case(case_id, make, error, pattern)


def _ten_minutes(tmp: Path) -> str:
    # 10 minutes of 16 kHz silence, 19 MB: the header alone says how long it is, so the
    # validator (header only for PCM) and the filter (utt2num_samples) never decode it
    soundfile.write(tmp / "long.wav", np.zeros(RATE * 600, np.int16), RATE, subtype="PCM_16")
    return str(tmp / "long.wav")


LENGTH_CASES = [
    length_case("length-filter-one-sample", _one_sample, None, r"^utt1\t0.00 s < min 0.1 s\n$"),
    length_case("length-filter-ten-minutes", _ten_minutes, None,
                r"^utt1\t600.00 s > max 20.0 s\n$"),
    length_case("length-filter-non-integer-num-samples", None, ValueError,
                r"^{table}:{line}: \[utt1\] number of samples is not an integer: '4000.5'$",
                utt2num_samples=b"utt1 4000.5"),
]


# ---------------------------------------------------------------------------- kaldi tables
def table_case(case_id: str, reader: str, table: str, content: bytes, error: type,
               pattern: str) -> Case:
    def make(tmp: Path, env: "Env") -> Setup:
        path = tmp / table
        path.write_bytes(content)

        def after() -> None:
            assert path.read_bytes() == content

        return Setup(lambda: getattr(kaldi_table, reader)(path), dict(path=path), after)

    return Case(case_id, make, error, pattern)


TABLE_CASES = [
    table_case("wav.scp-duplicate-id", "read_wav_scp", "wav.scp",
               b"a /x/a.wav\nb /x/b.wav\nb /x/c.wav\n", ValueError,
               r"^{path}:3: duplicate id b$"),
    table_case("wav.scp-id-without-audio", "read_wav_scp", "wav.scp",
               b"a /x/a.wav\nb\n", ValueError, r"^{path}:2: \[b\] nothing after the id$"),
    table_case("wav.scp-not-utf8", "read_wav_scp", "wav.scp",
               b"a /x/a.wav\nb /x/\xff.wav\n", ValueError,
               r"^{path}:2: \[b\] line is not valid UTF-8 \(byte 0xff at column 6\)$"),
    table_case("turn_info-malformed", "read_turn_info", "turn_info",
               b"a 1 0.5\nb yes 0.5\n", ValueError,
               r"^{path}:2: \[b\] expected <label> <speech-end-seconds>, got 'yes 0.5'$"),
]


# ---------------------------------------------------------------------------- training
class Env:
    """Tiny LLMs (by hidden size), a CTC token list and feature stats, made on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.llms: Dict[int, Path] = {}
        self.tokens = root / "tokens.txt"
        chars = sorted({c for t in TEXT.values() for c in t if c != " "})
        self.tokens.write_text("\n".join(["<blank>", "<unk>", "<space>", *chars, "<sos/eos>"])
                               + "\n")
        self.stats = root / "feats_stats.npz"
        np.savez(self.stats, count=np.array(100.0), sum=np.zeros(80),
                 sum_square=np.full(80, 100.0))

    def llm(self, hidden: int) -> Path:
        if hidden not in self.llms:
            from espnet_freeze_omni.llm.tiny import build_tiny_llm

            self.llms[hidden] = build_tiny_llm(self.root / f"llm{hidden}", LLM_TEXTS,
                                               family="qwen2", hidden_size=hidden)
        return self.llms[hidden]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Env(tmp_path_factory.mktemp("bad_input_env"))


def si_cmd(env: Env, d: Path, out: Path, stage: int, *extra: str) -> list:
    """speech_input_train arguments for data dir `d` (train and valid)."""
    data = []
    for split in ("train", "valid"):
        data += [f"--{split}_data_path_and_name_and_type", f"{d}/wav.scp,speech,sound",
                 f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text",
                 f"--{split}_shape_file", f"{d}/wav.scp"]
    return ["--config", str(CONF / f"speech_input_stage{stage}_tiny.yaml"), *data,
            "--token_list", str(env.tokens), "--normalize_conf", f"stats_file={env.stats}",
            "--output_dir", str(out), "--ngpu", "0", "--batch_type", "unsorted",
            "--batch_size", "2", "--num_att_plot", "0", "--max_epoch", "1", *extra]


def so_data(d: Path) -> Path:
    """text + codec_tokens for speech-output training (4 utterances, codes in range)."""
    d.mkdir(parents=True, exist_ok=True)
    kaldi_table.write_kaldi_map(d / "text", {u: f"the sky is blue {i}"
                                            for i, u in enumerate(UTTS)})
    kaldi_table.write_kaldi_map(d / "codec_tokens", {
        u: " ".join(str((7 * i + k) % CODEC_VOCAB) for k in range(9 + i))
        for i, u in enumerate(UTTS)})
    return d


def so_cmd(env: Env, d: Path, out: Path, stage: int, llm: Path, *extra: str) -> list:
    data = []
    for split in ("train", "valid"):
        data += [f"--{split}_data_path_and_name_and_type", f"{d}/text,text,text",
                 f"--{split}_data_path_and_name_and_type",
                 f"{d}/codec_tokens,codec_tokens,text_int",
                 f"--{split}_shape_file", f"{d}/text"]
    return ["--config", str(CONF / f"speech_output_stage{stage}_tiny.yaml"),
            "--llm_conf", f"path={llm}", "--output_dir", str(out), "--ngpu", "0",
            "--max_epoch", "1", "--batch_type", "unsorted", "--batch_size", "2",
            "--num_att_plot", "0", "--use_matplotlib", "false", "--use_tensorboard", "false",
            *data, *extra]


def save_stage(task, argv: list, path: Path) -> Path:
    """A checkpoint as espnet's trainer saves it (a state_dict, config.yaml beside it) of
    the model `argv` builds."""
    from espnet2.utils.yaml_no_alias_safe_dump import yaml_no_alias_safe_dump

    args = task.get_parser().parse_args(argv)
    torch.manual_seed(0)
    torch.save(task.build_model(args).state_dict(), path)
    with open(path.parent / "config.yaml", "w", encoding="utf-8") as f:
        yaml_no_alias_safe_dump(vars(args), f, indent=4, sort_keys=False)
    return path


def si_text_case(case_id: str, utt: str, line: Optional[bytes], pattern: str,
                 blank_line: bool = False) -> Case:
    """speech_input_train on a set whose `text` has a bad line: refused before the model is
    built, naming file and line; the file is left as it was."""
    from espnet_freeze_omni.bin import speech_input_train

    def make(tmp: Path, env: Env) -> Setup:
        d = make_data_dir(tmp)
        fmt = dict(text=d / "text")
        if blank_line:
            lines = (d / "text").read_bytes().split(b"\n")
            lines.insert(2, b"")
            (d / "text").write_bytes(b"\n".join(lines))
            fmt["line"] = 3
        else:
            fmt["line"] = set_line(d / "text", utt, line)
        before = snapshot(d)

        def after() -> None:
            assert snapshot(d) == before

        return Setup(lambda: speech_input_train.main(si_cmd(env, d, tmp / "exp", 1)), fmt, after)

    return Case(case_id, make, ValueError, pattern)


def so_codec_case(case_id: str, edit: Callable[[Path], int], error: type, pattern: str,
                  llm_hidden: int = 128) -> Case:
    """speech_output_train on codec_tokens with a bad line; the file is left as it was."""
    from espnet_freeze_omni.bin import speech_output_train

    def make(tmp: Path, env: Env) -> Setup:
        d = so_data(tmp / "data")
        line = edit(d / "codec_tokens")
        before = snapshot(d)

        def after() -> None:
            assert snapshot(d) == before

        return Setup(lambda: speech_output_train.main(
            so_cmd(env, d, tmp / "exp", 2, env.llm(llm_hidden))),
            dict(codec=d / "codec_tokens", line=line), after)

    return Case(case_id, make, error, pattern)


def _codec_line(utt: str, value: Optional[bytes]):
    return lambda path: set_line(path, utt, utt.encode() + value if value is not None else None)


def _codec_blank(path: Path) -> int:
    lines = path.read_bytes().split(b"\n")
    lines.insert(1, b"")
    path.write_bytes(b"\n".join(lines))
    return 2


TRAIN_TEXT_CASES = [
    si_text_case("train-text-not-utf8", "utt1", b"utt1 hello \xff number",
                 r"{text}:{line}: \[utt1\] line is not valid UTF-8 \(byte 0xff at column 12\)"),
    si_text_case("train-text-empty-line", "", None, r"{text}:{line}: empty line",
                 blank_line=True),
    so_codec_case("codec-tokens-id-without-codes", _codec_line("utt1", b""), ValueError,
                  r"{codec}:{line}: \[utt1\] no integers after the id"),
    so_codec_case("codec-tokens-not-integer", _codec_line("utt2", b" 3 4 x 5"), ValueError,
                  r"{codec}:{line}: \[utt2\] field 3 is not an integer: 'x'"),
    so_codec_case("codec-tokens-double-space", _codec_line("utt2", b" 3  5"), ValueError,
                  r"{codec}:{line}: \[utt2\] field 2 is not an integer: ''"),
    so_codec_case("codec-tokens-empty-line", _codec_blank, ValueError,
                  r"{codec}:{line}: empty line"),
    so_codec_case("codec-tokens-not-utf8", _codec_line("utt0", b" 1 2 \xfe"), ValueError,
                  r"{codec}:{line}: \[utt0\] line is not valid UTF-8"),
    # unknown tokens: a code the codec does not have, named by utterance at its batch
    so_codec_case("codec-tokens-outside-vocabulary",
                  _codec_line("utt3", f" 1 {CODEC_VOCAB} 2".encode()), ValueError,
                  rf"utterance utt3: codec token {CODEC_VOCAB} is outside the codec vocabulary "
                  rf"\[0, {CODEC_VOCAB}\)"),
    so_codec_case("codec-tokens-negative", _codec_line("utt3", b" 1 -4 2"), ValueError,
                  r"utterance utt3: codec token -4 is outside the codec vocabulary"),
]


# --init_param from a stage that does not fit: an error naming the file and the tensors
def init_param_case(case_id: str, task: str, src_argv, dst_argv, pattern: str,
                    stage: int = 3) -> Case:
    """A stage-2 checkpoint of the model `src_argv` builds, then stage-3 training with
    `dst_argv` and --init_param it (for speech_output the argv lists start with the LLM)."""
    def make(tmp: Path, env: Env) -> Setup:
        from espnet_freeze_omni.bin import speech_input_train, speech_output_train
        from espnet_freeze_omni.tasks.speech_input import SpeechInputTask
        from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

        ckpt = tmp / "stage2" / "valid.loss.best.pth"
        ckpt.parent.mkdir()
        if task == "speech_input":
            d = make_data_dir(tmp)
            save_stage(SpeechInputTask, si_cmd(env, d, tmp / "s2", 2, *src_argv(env)), ckpt)
            cmd = si_cmd(env, d, tmp / "s3", stage, *dst_argv(env), "--init_param", str(ckpt))
            main = speech_input_train.main
        else:
            d = so_data(tmp / "data")
            save_stage(SpeechOutputTask, so_cmd(env, d, tmp / "s2", 2, *src_argv(env)), ckpt)
            cmd = so_cmd(env, d, tmp / "s3", stage, *dst_argv(env), "--init_param", str(ckpt))
            main = speech_output_train.main
        before = ckpt.read_bytes()

        def after() -> None:
            assert ckpt.read_bytes() == before
            assert not list((tmp / "s3").glob("*epoch.pth")), "training went on"

        return Setup(lambda: main(cmd), dict(ckpt=ckpt, config=ckpt.parent / "config.yaml",
                                             llm256=env.root / "llm256",
                                             llm128=env.root / "llm128"), after)

    return Case(case_id, make, ValueError, pattern)


def _llm(hidden: int, *more: str):
    return lambda env: ["--llm_conf", f"path={env.llm(hidden)}", *more]


INIT_PARAM_CASES = [
    init_param_case("init_param-stage2-from-another-llm-hidden-size", "speech_input",
                    _llm(48), _llm(64),
                    r"--init_param {ckpt} does not fit the SpokenDialogModel .*\n(.*\n)*"
                    r"  adapter.project.weight: shape \(48, 288\) in the checkpoint, "
                    r"\(64, 288\) in the model"),
    init_param_case("init_param-deeper-adapter-than-the-checkpoint", "speech_input",
                    _llm(64, "--speech_adapter_conf", "num_layers=1"), _llm(64),
                    r"--init_param {ckpt} does not fit (.*\n)*  adapter.more_convs.0.weight: "
                    r"in the model but not in the checkpoint, which has other parts of adapter"),
    init_param_case("init_param-shallower-adapter-than-the-checkpoint", "speech_input",
                    _llm(64), _llm(64, "--speech_adapter_conf", "num_layers=1"),
                    r"--init_param {ckpt} does not fit (.*\n)*  adapter.more_convs.0.weight: "
                    r"in the checkpoint but not in the model"),
    init_param_case("init_param-speech-output-from-another-llm-hidden-size", "speech_output",
                    lambda env: [env.llm(256)], lambda env: [env.llm(128)],
                    r"--init_param {ckpt} does not fit the SpeechOutputModel (.*\n)*  "
                    r"LLM: {config} trained around the LLM at {llm256} \(hidden size 256\); "
                    r"this run's LLM at {llm128} has hidden size 128"),
]


def llm_dir_case(case_id: str, llm: Callable[[Path, Env], Path], error: type, pattern: str,
                 extra=()) -> Case:
    """speech_input_train stage 2 with a bad --llm_conf path (tests/test_speech_input_train.py
    checks the same through the spoken corpus)."""
    from espnet_freeze_omni.bin import speech_input_train

    def make(tmp: Path, env: Env) -> Setup:
        d = make_data_dir(tmp)
        path = llm(tmp, env)
        return Setup(lambda: speech_input_train.main(si_cmd(
            env, d, tmp / "exp", 2, "--llm_conf", f"path={path}", *extra)), dict(llm=path))

    return Case(case_id, make, error, pattern)


def _not_a_causal_lm(tmp: Path, env: Env) -> Path:
    (tmp / "folder").mkdir()
    (tmp / "folder" / "notes.txt").write_text("hello")
    return tmp / "folder"


LLM_CASES = [
    llm_dir_case("llm-dir-missing", lambda tmp, env: tmp / "no_such_llm", FileNotFoundError,
                 r"{llm}"),
    llm_dir_case("llm-dir-not-a-causal-lm", _not_a_causal_lm, ValueError, r"{llm}"),
    llm_dir_case("llm-hidden-size-mismatch", lambda tmp, env: env.llm(64), ValueError,
                 r"llm_embed_dim=999 does not match the hidden size 64 of the LLM at {llm}",
                 extra=("--speech_adapter_conf", "llm_embed_dim=999")),
]


# ---------------------------------------------------------------------------- packed model
def write_zip(path: Path, members: Dict[str, bytes], meta: Optional[dict]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        if meta is not None:
            z.writestr("meta.yaml", yaml.safe_dump(meta))
        for name, data in members.items():
            z.writestr(name, data)
    return path


def packed_case(case_id: str, drop_member: Optional[str] = None, drop_key: Optional[str] = None,
                meta: bool = True, not_zip: bool = False, error: type = ValueError,
                pattern: str = "") -> Case:
    """Speech2Speech.from_pretrained on a zip laid out as scripts/utils/pack_model.py lays it
    out (stand-in members: every case fails before any is loaded); the zip is unchanged."""
    def make(tmp: Path, env: Env) -> Setup:
        from espnet_freeze_omni.inference.speech2speech import Speech2Speech

        input_conf = dict(normalize="global_mvn",
                          normalize_conf=dict(stats_file="stats/feats_stats.npz"),
                          llm_conf=dict(path="/elsewhere/llm"))
        yaml_files = {"speech_input_config": "speech_input/config.yaml",
                      "speech_output_config": "speech_output/config.yaml",
                      "codec_config": "codec/config.yaml"}
        files = {"speech_input_model": "speech_input/valid.loss.best.pth",
                 "speech_output_model": "speech_output/valid.loss.best.pth",
                 "codec_model": "codec/codebook.npz", "feats_stats": "stats/feats_stats.npz"}
        members = {"speech_input/config.yaml": yaml.safe_dump(input_conf).encode(),
                   "speech_output/config.yaml": b"model: freeze_omni\n",
                   "codec/config.yaml": b"codec: embedded\n"}
        members.update({name: b"stand-in" for name in files.values()})
        fmt = {}
        if drop_member:
            members.pop(drop_member)
            fmt["member"] = Path(drop_member).name
        if drop_key:
            files.pop(drop_key, None)
            yaml_files.pop(drop_key, None)
            members = {k: v for k, v in members.items() if not k.startswith("stats/")} \
                if drop_key == "feats_stats" else members
        zip_path = tmp / "freeze_omni_model.zip"
        if not_zip:
            zip_path.write_bytes(b"PK? no, a text file")
        else:
            write_zip(zip_path, members, dict(files=files, yaml_files=yaml_files,
                                              timestamp=1.0) if meta else None)
        before = zip_path.read_bytes()
        fmt["zip"] = zip_path

        def after() -> None:
            assert zip_path.read_bytes() == before

        return Setup(lambda: Speech2Speech.from_pretrained(
            zip_path, llm_path=env.root, cachedir=tmp / "cache"), fmt, after)

    return Case(case_id, make, error, pattern)


PACKED_CASES = [
    packed_case("packed-zip-missing-member", drop_member="speech_output/valid.loss.best.pth",
                error=FileNotFoundError,
                pattern=r"^{zip}: meta.yaml lists files the archive does not hold: "
                        r"speech_output_model \({member}\)"),
    packed_case("packed-zip-without-meta.yaml", meta=False,
                pattern=r"^{zip} has no meta.yaml: not made by espnet's pack$"),
    packed_case("packed-zip-not-a-zip", not_zip=True, pattern=r"^{zip} is not a zip file"),
    packed_case("packed-zip-without-a-required-key", drop_key="speech_output_model",
                pattern=r"^{zip} lacks \['speech_output_model'\]: pack it with "),
    packed_case("packed-zip-without-feature-stats", drop_key="feats_stats",
                error=FileNotFoundError,
                pattern=r"^{zip} lacks feats_stats, the feature statistics its speech-input "
                        r"config normalizes with"),
]


# ---------------------------------------------------------------------------- more rows
def _ten_minutes_validated(tmp: Path, env: Env) -> Setup:
    """Accepted with a bounded cost: the validator reads a PCM file's header only."""
    import time

    from espnet_freeze_omni.bin import validate_data_dir

    d = make_data_dir(tmp)
    point_wav(d, "utt1", _ten_minutes(tmp))
    before = snapshot(d)

    def run() -> str:
        start = time.perf_counter()
        rc, out = run_cli(validate_data_dir.main, [str(d), "--check_audio", "true",
                                                   "--sample_rate", str(RATE)])
        assert rc == 0, out
        assert time.perf_counter() - start < 5.0, "the 10-minute file was decoded"
        return out

    def after() -> None:
        assert snapshot(d) == before

    return Setup(run, dict(dir=d), after)


def _train_on_bad_audio(tmp: Path, env: Env) -> Setup:
    """speech_input_train's up-front audio check lists every bad file before the model is
    built (espnet would read NaN into the loss, and a truncated file as a shorter one)."""
    from espnet_freeze_omni.bin import speech_input_train

    d = make_data_dir(tmp)
    nan, cut = write_nan(tmp / "nan.wav"), write_truncated(tmp / "cut.wav")
    fmt = dict(scp=d / "wav.scp", nan=nan, cut=cut, nan_line=point_wav(d, "utt0", str(nan)),
               cut_line=point_wav(d, "utt3", str(cut)))
    before = snapshot(d)

    def after() -> None:
        assert snapshot(d) == before
        assert not (tmp / "exp" / "config.yaml").exists(), "went on to build the model"

    return Setup(lambda: speech_input_train.main(si_cmd(env, d, tmp / "exp", 1)), fmt, after)


def _unknown_characters(tmp: Path, env: Env) -> Setup:
    """Characters outside the CTC token list: <unk> in the CTC target (espnet's convention),
    while the LLM target, in the LLM's byte-level tokens, keeps every character."""
    from espnet_freeze_omni.data.speech_input_preprocessor import SpeechInputPreprocessor
    from espnet_freeze_omni.llm.frozen_llm import load_llm_tokenizer

    def run() -> str:
        pre = SpeechInputPreprocessor(train=False, llm_path=str(env.llm(64)), token_type="char",
                                      token_list=str(env.tokens))
        out = pre("uttU", {"speech": noise(), "text": "hello ünïcode"})
        unk = env.tokens.read_text().split().index("<unk>")
        llm_text = load_llm_tokenizer(str(env.llm(64))).decode(out["llm_target"].tolist())
        return f"{int((out['text'] == unk).sum())} <unk> in the CTC target; LLM target {llm_text!r}"

    return Setup(run, {})


MORE_CASES = [
    Case("datadir-ten-minutes-accepted-header-only", _ten_minutes_validated, None,
         r"validate_data_dir {dir}: OK"),
    Case("train-audio-nan-and-truncated", _train_on_bad_audio, RuntimeError,
         r"2 audio problem\(s\) found before training(.*\n)*  {scp}:{nan_line}: \[utt0\] "
         r"audio {nan}: holds 1 NaN/inf(.*\n)*  {scp}:{cut_line}: \[utt3\] audio {cut}: is "
         r"truncated"),
    Case("ctc-unknown-characters-become-unk", _unknown_characters, None,
         r"^4 <unk> in the CTC target; LLM target 'hello ünïcode"),
]


CASES = (DATADIR_CASES + AUDIO_CASES + LENGTH_CASES + TABLE_CASES + TRAIN_TEXT_CASES
         + INIT_PARAM_CASES + LLM_CASES + PACKED_CASES + MORE_CASES)


def test_the_table_has_at_least_30_distinct_cases():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 30


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_bad_input(case: Case, tmp_path, env):
    setup = case.make(tmp_path, env)
    pattern = fill(case.pattern, setup.fmt)
    if case.error is None:
        report = setup.run()
        assert re.search(pattern, report), f"{pattern!r} not in:\n{report}"
    else:
        with pytest.raises(Exception) as err:
            setup.run()
        assert type(err.value) is case.error, repr(err.value)
        assert re.search(pattern, str(err.value)), f"{pattern!r} not in:\n{err.value}"
    if setup.after is not None:
        setup.after()


# ---------------------------------------------------------------------------- control rows
def test_init_param_of_the_next_stage_fits(env, tmp_path):
    """The check refuses only what does not fit: stage 1 -> 2 -> 3 (speech input) and
    2 -> 3 (speech output) add modules and are accepted."""
    from espnet_freeze_omni.tasks.init_param_check import init_param_mismatches
    from espnet_freeze_omni.tasks.speech_input import SpeechInputTask
    from espnet_freeze_omni.tasks.speech_output import SpeechOutputTask

    d = make_data_dir(tmp_path)
    llm = ["--llm_conf", f"path={env.llm(64)}"]
    models = {}
    for stage in (1, 2, 3):
        args = SpeechInputTask.get_parser().parse_args(
            si_cmd(env, d, tmp_path / "o", stage, *(llm if stage > 1 else [])))
        models[stage] = SpeechInputTask.build_model(args)
    for src, dst in ((1, 2), (2, 3)):
        ckpt = tmp_path / f"si{src}.pth"
        torch.save(models[src].state_dict(), ckpt)
        assert init_param_mismatches(models[dst], str(ckpt)) == []
    # espnet's <file>:<src_key>:<dst_key>:<excludes> form is read the same way
    assert init_param_mismatches(models[3], f"{tmp_path / 'si2.pth'}:adapter:adapter") == []
    out = {}
    for stage in (2, 3):
        args = SpeechOutputTask.get_parser().parse_args(
            so_cmd(env, so_data(tmp_path / "so"), tmp_path / "o", stage, env.llm(128)))
        out[stage] = SpeechOutputTask.build_model(args)
    torch.save(out[2].state_dict(), tmp_path / "so2.pth")
    assert init_param_mismatches(out[3], str(tmp_path / "so2.pth"),
                                 SpeechOutputTask.init_param_new_modules) == []
