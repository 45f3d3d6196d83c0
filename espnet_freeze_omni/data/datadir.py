"""Kaldi-style data directories: read, write, validate, fix, subset, speed-perturb, filter.

A data dir (`data/<set>/`) holds plain-text tables, one `key value...` line each, sorted by key
in C (byte) order:

    wav.scp          <recording-id> <path>            or  <recording-id> <command> |
    text             <utt-id> <transcript>
    utt2spk          <utt-id> <speaker-id>
    spk2utt          <speaker-id> <utt-id> ...         (derived from utt2spk)
    segments         <utt-id> <recording-id> <start-s> <end-s>   (optional)
    turn_info        <utt-id> <label> <speech-end-s>  (optional; 1 = addressed to the
                                                       assistant, 2 = not addressed)
    duplex_info      <utt-id> <JSON object>           (optional; a duplex test item: its
                                                       scenario and times, see duplex_sets)
    utt2num_samples  <utt-id> <samples>               (optional, written by the audio dump)
    utt2dur          <utt-id> <seconds>               (optional)

Without `segments`, recording ids are utterance ids. Validation names the file, the line and
the utterance of every problem; fixing keeps the utterances that are sound in every file,
backs the originals up under `.backup/` and lists each dropped utterance with its reason in
`.backup/dropped.txt` (`<utt-id><TAB><reasons>` lines): nothing is dropped silently.
"""
from __future__ import annotations

import collections
import dataclasses
import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

# Tables keyed by utterance id and the number of value fields each line must carry
# (None: free text, possibly several words).
UTT_TABLES: Dict[str, Optional[int]] = {
    "text": None,
    "utt2spk": 1,
    "segments": 3,
    "turn_info": 2,
    "answer": None,   # stage-3 target: the frozen LLM's own answer (<none>: stay silent)
    "history": None,  # stage-3 context: JSON list of the dialog's earlier turns
    "duplex_info": None,  # duplex test sets: {"scenario", times in seconds} (duplex_sets)
    "utt2num_samples": 1,
    "utt2dur": 1,
}
REQUIRED = ("wav.scp", "text", "utt2spk")
NO_ANSWER = "<none>"  # the `answer` of speech not addressed to the assistant: stay silent
TURN_LABELS = {0: "keep listening", 1: "addressed (respond after the end)", 2: "not addressed"}


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing wrong in a data dir, located as precisely as possible."""

    kind: str  # missing_file, format, encoding, duplicate, unsorted, empty_text, missing,
    #            spk2utt, missing_audio, unreadable_audio, sample_rate
    file: str
    message: str
    line: Optional[int] = None
    utt_id: Optional[str] = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        who = f" [{self.utt_id}]" if self.utt_id is not None else ""
        return f"{where}:{who} {self.message}"


@dataclasses.dataclass
class Entry:
    key: str
    value: str  # everything after the key, stripped
    line: int


def _c_order(key: str) -> bytes:
    # Kaldi sorts with LC_ALL=C, i.e. by bytes; surrogateescape keeps undecodable ids stable
    return key.encode("utf-8", "surrogateescape")


def read_table(path: str | os.PathLike, name: Optional[str] = None
               ) -> Tuple[List[Entry], List[Problem]]:
    """Every non-empty line of a table as an Entry, plus the encoding/format problems seen.

    Lines that are not UTF-8 are still returned (decoded with surrogateescape so their id
    matches the other files) and reported as `encoding` problems.
    """
    path = Path(path)
    name = name or str(path)
    entries, problems = [], []
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    for lineno, raw in enumerate(raw_lines, 1):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            if lineno < len(raw_lines):  # the part after the final newline is not a line
                problems.append(Problem("format", name, "empty line", lineno))
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.decode("utf-8", "surrogateescape")
            key = line.split(maxsplit=1)[0]
            problems.append(Problem(
                "encoding", name,
                f"line is not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                lineno, key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")))
        parts = line.strip().split(maxsplit=1)
        entries.append(Entry(parts[0], parts[1].strip() if len(parts) > 1 else "", lineno))
    return entries, problems


def read_kaldi_map(path: str | os.PathLike) -> Dict[str, str]:
    """A table as {key: value}; raises on duplicate keys or undecodable lines."""
    entries, problems = read_table(path)
    bad = [p for p in problems if p.kind == "encoding"]
    if bad:
        raise ValueError(str(bad[0]))
    table: Dict[str, str] = {}
    for e in entries:
        if e.key in table:
            raise ValueError(f"{path}:{e.line}: duplicate id {e.key}")
        table[e.key] = e.value
    return table


def write_kaldi_map(path: str | os.PathLike, table: Mapping[str, str]) -> Path:
    """Write {key: value} sorted in C order (an empty value writes the key alone)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for key in sorted(table, key=_c_order):
            value = table[key]
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")
    return path


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, str]:
    spk2utts: Dict[str, List[str]] = collections.defaultdict(list)
    for utt in sorted(utt2spk, key=_c_order):
        spk2utts[utt2spk[utt]].append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utts.items()}


def read_turn_info(path: str | os.PathLike) -> Dict[str, Tuple[int, float]]:
    """turn_info as {utt: (label, speech_end_seconds)}."""
    out = {}
    for key, value in read_kaldi_map(path).items():
        label, end = value.split()
        out[key] = (int(label), float(end))
    return out


def write_turn_info(path: str | os.PathLike, turns: Mapping[str, Tuple[int, float]]) -> Path:
    return write_kaldi_map(path, {u: f"{lab} {end:.2f}" for u, (lab, end) in turns.items()})


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
def _check_value(name: str, e: Entry) -> Optional[str]:
    """Why a line's value is malformed for its table, or None when it is fine."""
    if name == "wav.scp":
        return None if e.value else "no audio path or command"
    if name == "text":
        return None  # an empty transcript is its own problem kind
    fields = e.value.split()
    want = UTT_TABLES.get(name)
    if name == "spk2utt":
        return None if fields else "speaker without utterances"
    if want is not None and len(fields) != want:
        return f"expected {want} field(s) after the id, found {len(fields)}"
    try:
        if name == "segments":
            start, end = float(fields[1]), float(fields[2])
            if not 0 <= start < end:
                return f"segment times must satisfy 0 <= start < end, got {start} {end}"
        elif name == "turn_info":
            label, end = int(fields[0]), float(fields[1])
            if label not in TURN_LABELS:
                return f"turn label must be one of {sorted(TURN_LABELS)}, got {label}"
            if end < 0:
                return f"speech end must be >= 0 seconds, got {end}"
        elif name == "duplex_info":
            from espnet_freeze_omni.data.duplex_sets import check_duplex_info

            return check_duplex_info(e.value)
        elif name == "utt2num_samples" and int(fields[0]) <= 0:
            return f"number of samples must be > 0, got {fields[0]}"
        elif name == "utt2dur" and float(fields[0]) <= 0:
            return f"duration must be > 0, got {fields[0]}"
    except ValueError as err:
        return f"malformed number ({err})"
    return None


@dataclasses.dataclass
class _Table:
    name: str
    entries: List[Entry]
    problems: List[Problem]
    bad_keys: Dict[str, str]  # key -> reason it must be dropped
    first: Dict[str, Entry]  # key -> its first entry
    identical_duplicates: Dict[str, int]  # key -> number of extra identical copies
    unsorted: bool


def _inspect_table(data_dir: Path, name: str) -> _Table:
    path = data_dir / name
    entries, problems = read_table(path, str(path))
    bad: Dict[str, str] = {}
    first: Dict[str, Entry] = {}
    identical: Dict[str, int] = collections.Counter()
    unsorted = False
    prev: Optional[Entry] = None
    key_at_line = {e.line: e.key for e in entries}
    for p in problems:
        if p.kind == "encoding" and p.line in key_at_line:
            bad.setdefault(key_at_line[p.line], f"{name} line {p.line} is not valid UTF-8")
    for e in entries:
        shown_key = _c_order(e.key).decode("utf-8", "replace")
        reason = _check_value(name, e)
        if reason:
            problems.append(Problem("format", str(path), reason, e.line, shown_key))
            bad.setdefault(e.key, f"{name} line {e.line}: {reason}")
        if name == "text" and not e.value:
            problems.append(Problem("empty_text", str(path), "empty transcript", e.line,
                                    shown_key))
            bad.setdefault(e.key, f"empty transcript in text line {e.line}")
        if e.key in first:
            earlier = first[e.key]
            same = earlier.value == e.value
            problems.append(Problem(
                "duplicate", str(path),
                f"duplicate id (first at line {earlier.line}"
                + (", identical line)" if same else ", different content)"),
                e.line, shown_key))
            if same:
                identical[e.key] += 1
            else:
                bad.setdefault(e.key, f"duplicate id in {name} (lines {earlier.line} and "
                                      f"{e.line}) with different content")
        else:
            first[e.key] = e
        if prev is not None and not unsorted and _c_order(e.key) < _c_order(prev.key):
            unsorted = True
            problems.append(Problem(
                "unsorted", str(path),
                f"id {shown_key} comes after {prev.key}: the file is not sorted "
                "(LC_ALL=C sort); fix_data_dir sorts it", e.line, shown_key))
        prev = e
    return _Table(name, entries, problems, bad, first, dict(identical), unsorted)


def _audio_reader(spec: str) -> Tuple[str, Callable[[], Tuple[int, int]]]:
    """(what to call the source, a function returning (sample_rate, num_frames))."""
    import soundfile

    spec = spec.strip()
    if spec.endswith("|"):
        command = spec[:-1].strip()

        def read_pipe() -> Tuple[int, int]:
            proc = subprocess.run(["bash", "-c", command], capture_output=True)
            if proc.returncode != 0:
                raise RuntimeError(f"command failed (exit {proc.returncode}): "
                                   f"{proc.stderr.decode(errors='replace').strip()[-200:]}")
            data, sr = soundfile.read(io.BytesIO(proc.stdout), dtype="int16")
            return sr, len(data)

        return f"command '{command}'", read_pipe

    def read_file() -> Tuple[int, int]:
        info = soundfile.info(spec)
        return info.samplerate, info.frames

    return spec, read_file


def _check_audio(data_dir: Path, wav: Dict[str, Entry], rec_to_utts: Dict[str, List[str]],
                 check_audio: bool, sample_rate: Optional[int]) -> Tuple[List[Problem],
                                                                          Dict[str, str]]:
    problems: List[Problem] = []
    bad: Dict[str, str] = {}
    name = str(data_dir / "wav.scp")
    for rec, entry in wav.items():
        spec = entry.value
        utts = rec_to_utts.get(rec, [rec])
        if not spec.endswith("|") and len(spec.split()) == 1 and not os.path.exists(spec):
            msg = f"audio file does not exist: {spec}"
            problems.append(Problem("missing_audio", name, msg, entry.line, rec))
            for u in utts:
                bad.setdefault(u, f"{msg} (wav.scp line {entry.line})")
            continue
        if not check_audio:
            continue
        what, read = _audio_reader(spec)
        try:
            sr, frames = read()
        except Exception as err:  # soundfile raises several types; all mean "unreadable"
            msg = f"cannot read audio {what}: {str(err).strip()[:200]}"
            problems.append(Problem("unreadable_audio", name, msg, entry.line, rec))
            for u in utts:
                bad.setdefault(u, f"{msg} (wav.scp line {entry.line})")
            continue
        if frames == 0:
            msg = f"audio {what} has no samples"
            problems.append(Problem("unreadable_audio", name, msg, entry.line, rec))
            for u in utts:
                bad.setdefault(u, msg)
        elif sample_rate is not None and sr != sample_rate:
            msg = f"audio {what} is {sr} Hz, expected {sample_rate} Hz"
            problems.append(Problem("sample_rate", name, msg, entry.line, rec))
            for u in utts:
                bad.setdefault(u, f"{msg} (wav.scp line {entry.line})")
    return problems, bad


@dataclasses.dataclass
class _Inspection:
    problems: List[Problem]
    tables: Dict[str, _Table]
    bad: Dict[str, List[str]]  # utt -> reasons to drop it
    keep: List[str]  # utterances sound in every table, C-sorted


def _inspect(data_dir: Path, check_audio: bool, sample_rate: Optional[int]) -> _Inspection:
    problems: List[Problem] = []
    if not data_dir.is_dir():
        return _Inspection([Problem("missing_file", str(data_dir), "no such data directory")],
                           {}, {}, [])
    for name in REQUIRED:
        if not (data_dir / name).is_file():
            problems.append(Problem("missing_file", str(data_dir / name), "required file is "
                                    "missing"))
    if problems:
        return _Inspection(problems, {}, {}, [])

    utt_tables = [n for n in UTT_TABLES if (data_dir / n).is_file()]
    utt_tables += sorted(p.name for p in data_dir.glob("utt2*")
                         if p.is_file() and p.name not in UTT_TABLES)
    tables = {n: _inspect_table(data_dir, n) for n in ["wav.scp"] + utt_tables}
    for t in tables.values():
        problems.extend(t.problems)
    bad: Dict[str, List[str]] = collections.defaultdict(list)
    has_segments = "segments" in tables
    rec_to_utts: Dict[str, List[str]] = collections.defaultdict(list)

    for name in utt_tables:
        for key, reason in tables[name].bad_keys.items():
            bad[key].append(reason)
    wav_table = tables["wav.scp"]
    if has_segments:
        for utt, e in tables["segments"].first.items():
            rec_to_utts[e.value.split()[0]].append(utt)
        for rec, reason in wav_table.bad_keys.items():
            for u in rec_to_utts.get(rec, []):
                bad[u].append(f"recording {rec}: {reason}")
    else:
        for key, reason in wav_table.bad_keys.items():
            bad[key].append(reason)

    # every utterance must appear in every per-utterance table (and its audio in wav.scp)
    per_utt = {n: set(tables[n].first) for n in utt_tables}
    if not has_segments:
        per_utt["wav.scp"] = set(wav_table.first)
    all_utts = set().union(*per_utt.values())
    for utt in sorted(all_utts, key=_c_order):
        absent = [n for n, keys in per_utt.items() if utt not in keys]
        if absent:
            present = [n for n in per_utt if n not in absent]
            for n in absent:
                problems.append(Problem(
                    "missing", str(data_dir / n),
                    f"utterance is in {', '.join(present)} but not in {n}", None, utt))
            bad[utt].append(f"missing from {', '.join(absent)}")
    if has_segments:
        for utt, e in tables["segments"].first.items():
            rec = e.value.split()[0]
            if rec not in wav_table.first:
                problems.append(Problem(
                    "missing", str(data_dir / "segments"),
                    f"recording {rec} is not in wav.scp", e.line, utt))
                bad[utt].append(f"its recording {rec} is not in wav.scp")

    audio_problems, audio_bad = _check_audio(data_dir, wav_table.first, rec_to_utts,
                                             check_audio, sample_rate)
    problems.extend(audio_problems)
    for u, reason in audio_bad.items():
        bad[u].append(reason)

    keep = sorted((u for u in all_utts if u not in bad), key=_c_order)

    # spk2utt must be exactly what utt2spk implies
    spk2utt_path = data_dir / "spk2utt"
    utt2spk = {k: e.value for k, e in tables["utt2spk"].first.items()}
    if not spk2utt_path.is_file():
        problems.append(Problem("missing_file", str(spk2utt_path),
                                "spk2utt is missing; fix_data_dir regenerates it"))
    else:
        entries, spk_problems = read_table(spk2utt_path)
        problems.extend(spk_problems)
        given = {e.key: sorted(e.value.split(), key=_c_order) for e in entries}
        implied = {s: u.split() for s, u in utt2spk_to_spk2utt(utt2spk).items()}
        if given != implied:
            differing = sorted(set(given) ^ set(implied)
                               | {s for s in given if s in implied and given[s] != implied[s]})
            problems.append(Problem(
                "spk2utt", str(spk2utt_path),
                f"does not match utt2spk (speakers {', '.join(differing[:5])}"
                f"{'...' if len(differing) > 5 else ''}); fix_data_dir regenerates it"))
    return _Inspection(problems, tables, dict(bad), keep)


def validate_data_dir(path: str | os.PathLike, check_audio: bool = False,
                      sample_rate: Optional[int] = None) -> List[Problem]:
    """Every problem found in a data dir; an empty list means it is sound.

    Always checked: required files, UTF-8, line formats, duplicate and missing ids across
    wav.scp/text/utt2spk/segments/turn_info/utt2*, empty transcripts, sort order, spk2utt,
    existence of plain audio paths. With check_audio, every recording is opened with
    soundfile (pipes in wav.scp are run) and, given sample_rate, its rate is compared.
    """
    return _inspect(Path(path), check_audio, sample_rate).problems


# --------------------------------------------------------------------------------------
# fixing
# --------------------------------------------------------------------------------------
@dataclasses.dataclass
class FixReport:
    data_dir: str
    num_before: int
    num_kept: int
    dropped: Dict[str, List[str]]  # utt -> reasons
    sorted_files: List[str]
    deduplicated: Dict[str, int]  # "file id" -> extra identical lines removed
    regenerated: List[str]
    backup_dir: str

    @property
    def num_dropped(self) -> int:
        return len(self.dropped)

    def summary(self) -> str:
        lines = [f"fix_data_dir {self.data_dir}: kept {self.num_kept} of {self.num_before} "
                 f"utterances, dropped {self.num_dropped}"]
        if self.dropped:
            kinds = collections.Counter(_reason_kind(r[0]) for r in self.dropped.values())
            lines.append("  dropped: " + ", ".join(f"{n} {k}" for k, n in kinds.most_common()))
            for utt in list(self.dropped)[:5]:
                shown = _c_order(utt).decode("utf-8", "replace")
                lines.append(f"    {shown}: {'; '.join(self.dropped[utt])}")
            if len(self.dropped) > 5:
                lines.append(f"    ... ({len(self.dropped) - 5} more)")
            lines.append(f"  every dropped utterance and why: {self.backup_dir}/dropped.txt")
        if self.sorted_files:
            lines.append(f"  sorted: {', '.join(self.sorted_files)}")
        if self.deduplicated:
            lines.append(f"  removed identical duplicate lines: "
                         f"{', '.join(f'{k} (x{n})' for k, n in self.deduplicated.items())}")
        if self.regenerated:
            lines.append(f"  regenerated: {', '.join(self.regenerated)}")
        lines.append(f"  originals backed up in {self.backup_dir}/")
        return "\n".join(lines)


def _reason_kind(reason: str) -> str:
    for needle, kind in (("UTF-8", "non-UTF-8"), ("empty transcript", "empty transcript"),
                         ("duplicate", "duplicate id"), ("missing from", "missing in a file"),
                         ("not in wav.scp", "missing recording"), ("Hz", "wrong sample rate"),
                         ("does not exist", "missing audio"), ("cannot read", "unreadable audio"),
                         ("no samples", "unreadable audio")):
        if needle in reason:
            return kind
    return "malformed line"


def fix_data_dir(path: str | os.PathLike, check_audio: bool = False,
                 sample_rate: Optional[int] = None, verbose: bool = True) -> FixReport:
    """Make a data dir sound: keep the utterances valid in every file, sorted.

    Originals go to `<dir>/.backup/`, every dropped utterance with its reasons to
    `<dir>/.backup/dropped.txt`, spk2utt is regenerated from utt2spk, and a summary is
    printed (verbose) and returned.
    """
    data_dir = Path(path)
    ins = _inspect(data_dir, check_audio, sample_rate)
    missing = [p for p in ins.problems if p.kind == "missing_file" and "spk2utt" not in p.file]
    if missing:
        raise FileNotFoundError("; ".join(str(p) for p in missing))
    tables = ins.tables
    backup = data_dir / ".backup"
    backup.mkdir(exist_ok=True)
    for p in data_dir.iterdir():
        if p.is_file():
            shutil.copy2(p, backup / p.name)

    keep = set(ins.keep)
    has_segments = "segments" in tables
    all_utts = set()
    for name, t in tables.items():
        if name != "wav.scp" or not has_segments:
            all_utts |= set(t.first)
    sorted_files = [n for n, t in tables.items() if t.unsorted]
    dedup = {f"{n} {k}": c for n, t in tables.items() for k, c in t.identical_duplicates.items()}

    for name, t in tables.items():
        if name == "wav.scp" and has_segments:
            recs = {tables["segments"].first[u].value.split()[0] for u in keep}
            rows = {k: e.value for k, e in t.first.items() if k in recs}
        else:
            rows = {k: e.value for k, e in t.first.items() if k in keep}
        write_kaldi_map(data_dir / name, rows)
    utt2spk = {k: e.value for k, e in tables["utt2spk"].first.items() if k in keep}
    write_kaldi_map(data_dir / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    if (data_dir / "spk2gender").is_file():
        genders = read_kaldi_map(data_dir / "spk2gender")
        write_kaldi_map(data_dir / "spk2gender",
                        {s: g for s, g in genders.items() if s in set(utt2spk.values())})

    dropped = {u: ins.bad.get(u, ["unknown"]) for u in sorted(all_utts - keep, key=_c_order)}
    with open(backup / "dropped.txt", "w", encoding="utf-8", errors="replace") as f:
        for utt, reasons in dropped.items():
            shown = _c_order(utt).decode("utf-8", "replace")
            f.write(f"{shown}\t{'; '.join(reasons)}\n")
    report = FixReport(str(data_dir), len(all_utts), len(keep), dropped, sorted_files, dedup,
                       ["spk2utt"], str(backup))
    (backup / "summary.txt").write_text(report.summary() + "\n", encoding="utf-8")
    if verbose:
        print(report.summary(), flush=True)
    return report


# --------------------------------------------------------------------------------------
# derived data dirs
# --------------------------------------------------------------------------------------
def _optional_tables(data_dir: Path) -> List[str]:
    names = [n for n in UTT_TABLES if (data_dir / n).is_file()]
    names += sorted(p.name for p in data_dir.glob("utt2*")
                    if p.is_file() and p.name not in UTT_TABLES)
    return names


def subset_data_dir(src: str | os.PathLike, dst: str | os.PathLike,
                    utts: Iterable[str]) -> Path:
    """Copy the listed utterances (and their recordings) of src into dst."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    keep = set(utts)
    names = _optional_tables(src)
    for name in names:
        table = read_kaldi_map(src / name)
        write_kaldi_map(dst / name, {k: v for k, v in table.items() if k in keep})
    wav = read_kaldi_map(src / "wav.scp")
    if "segments" in names:
        recs = {v.split()[0] for k, v in read_kaldi_map(src / "segments").items() if k in keep}
    else:
        recs = keep
    write_kaldi_map(dst / "wav.scp", {k: v for k, v in wav.items() if k in recs})
    utt2spk = read_kaldi_map(dst / "utt2spk")
    write_kaldi_map(dst / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    return dst


def _sox_speed_pipe(spec: str, factor: float) -> str:
    spec = spec.strip()
    # -R: repeatable dither (see espeak.convert_to_wav), so a perturbed copy is the same every run
    source = f"{spec[:-1].strip()} | sox -R -t wav - " if spec.endswith("|") else f"sox -R {spec} "
    return f"{source}-t wav - speed {factor} |"


def perturb_speed(src: str | os.PathLike, dst: str | os.PathLike,
                  factors: Sequence[float]) -> Path:
    """Kaldi-style speed perturbation: one copy of src per factor, ids prefixed `sp<f>-`.

    Audio stays lazy: wav.scp entries become `sox ... speed <f> |` pipes (tempo and pitch
    change together, the sample rate is kept); segment times and turn_info speech ends are
    divided by the factor. A factor of 1.0 copies the originals with their ids unchanged.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = _optional_tables(src)
    tables = {n: read_kaldi_map(src / n) for n in names + ["wav.scp"]}
    out: Dict[str, Dict[str, str]] = {n: {} for n in tables}
    for factor in factors:
        prefix = "" if float(factor) == 1.0 else f"sp{factor}-"
        for name, table in tables.items():
            for key, value in table.items():
                new = value
                if name == "wav.scp" and prefix:
                    new = _sox_speed_pipe(value, factor)
                elif name == "utt2spk" and prefix:
                    new = prefix + value
                elif name == "segments" and prefix:
                    rec, start, end = value.split()
                    new = (f"{prefix}{rec} {float(start) / factor:.2f} "
                           f"{float(end) / factor:.2f}")
                elif name == "turn_info" and prefix:
                    label, end = value.split()
                    new = f"{label} {float(end) / factor:.2f}"
                elif name == "utt2num_samples" and prefix:
                    new = str(int(round(int(value) / factor)))
                elif name == "utt2dur" and prefix:
                    new = f"{float(value) / factor:.3f}"
                out[name][prefix + key] = new
    for name, table in out.items():
        write_kaldi_map(dst / name, table)
    write_kaldi_map(dst / "spk2utt", utt2spk_to_spk2utt(out["utt2spk"]))
    return dst


@dataclasses.dataclass
class LengthFilterReport:
    num_before: int
    too_short: List[str]
    too_long: List[str]
    no_length: List[str]

    @property
    def num_kept(self) -> int:
        return self.num_before - len(self.too_short) - len(self.too_long) - len(self.no_length)


def filter_by_length(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int,
                     min_seconds: float, max_seconds: float) -> LengthFilterReport:
    """Copy src to dst keeping utterances with min <= duration <= max (utt2num_samples);
    the removed ones are listed with their duration in dst/filtered_out.txt."""
    src, dst = Path(src), Path(dst)
    num_samples = read_kaldi_map(src / "utt2num_samples")
    utts = list(read_kaldi_map(src / "utt2spk"))
    short, long_, none, keep, lines = [], [], [], [], []
    for u in utts:
        if u not in num_samples:
            none.append(u)
            lines.append(f"{u}\tno length in utt2num_samples")
            continue
        dur = int(num_samples[u]) / sample_rate
        if dur < min_seconds:
            short.append(u)
            lines.append(f"{u}\t{dur:.2f} s < min {min_seconds} s")
        elif dur > max_seconds:
            long_.append(u)
            lines.append(f"{u}\t{dur:.2f} s > max {max_seconds} s")
        else:
            keep.append(u)
    subset_data_dir(src, dst, keep)
    for extra in ("feats_type", "audio_format"):
        if (src / extra).is_file():
            shutil.copy2(src / extra, dst / extra)
    (dst / "filtered_out.txt").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return LengthFilterReport(len(utts), short, long_, none)


# --------------------------------------------------------------------------------------
# spoken turns (synthesized questions / side talk with turn_info)
# --------------------------------------------------------------------------------------
def speech_end_seconds(wav_path: str | os.PathLike, frame_seconds: float = 0.01,
                       relative_threshold: float = 0.02) -> float:
    """End of the last 10 ms frame whose RMS exceeds 2% of the loudest frame's: the
    moment the speaker stops, ignoring the synthesizer's and the padded trailing silence."""
    import numpy as np
    import soundfile

    audio, sr = soundfile.read(str(wav_path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    hop = max(1, int(sr * frame_seconds))
    n = len(mono) // hop
    if n == 0:
        return 0.0
    rms = np.sqrt((mono[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    loud = np.nonzero(rms > max(rms.max() * relative_threshold, 1e-5))[0]
    return 0.0 if len(loud) == 0 else round((loud[-1] + 1) * hop / sr, 2)


@dataclasses.dataclass(frozen=True)
class SpokenTurn:
    """A user turn to synthesize: label 1 = addressed to the assistant, 2 = side talk."""

    utt_id: str
    text: str
    label: int
    voice_index: int  # picks voice, speed and pitch (espeak.pick_voice)
    trailing_silence: float  # seconds after the speech, so the turn end is learnable
    pause: Optional[Tuple[int, float]] = None  # (words before it, seconds): see espeak


def synthesize_turn_datadir(turns: Sequence[SpokenTurn], data_dir: str | os.PathLike,
                            wav_dir: str | os.PathLike, sample_rate: int = 16000,
                            num_workers: int = 2) -> Path:
    """Speak turns with espeak-ng into a data dir plus `turn_info` (label, speech end)."""
    from espnet_freeze_omni.data.espeak import SpokenUtterance, pick_voice, synthesize_datadir

    utts = []
    for t in turns:
        v = pick_voice(t.voice_index)
        speaker = f"{v['voice']}-s{v['speed']}-p{v['pitch']}".replace("+", "_")
        utts.append(SpokenUtterance(t.utt_id, t.text, speaker, trailing_silence=
                                    t.trailing_silence, pause=t.pause, **v))
    data_dir = Path(data_dir)
    synthesize_datadir(utts, data_dir, wav_dir, sample_rate=sample_rate,
                       num_workers=num_workers)
    wav = read_kaldi_map(data_dir / "wav.scp")
    write_turn_info(data_dir / "turn_info",
                    {t.utt_id: (t.label, speech_end_seconds(wav[t.utt_id])) for t in turns})
    return data_dir
