"""Checking and fixing Kaldi-style data dirs (tables in `kaldi_table.py`).

Validation names the file, the line and the utterance of every problem; fixing keeps the
utterances that are sound in every file, backs the originals up under `.backup/` and lists
each dropped utterance with its reason in `.backup/dropped.txt` (`<utt-id><TAB><reasons>`
lines): nothing is dropped silently.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from espnet_freeze_omni.data.audio import check_audio as check_source
from espnet_freeze_omni.data.duplex_sets import check_duplex_info
from espnet_freeze_omni.data.kaldi_table import (
    REQUIRED,
    TURN_LABELS,
    UTT_TABLES,
    Entry,
    Problem,
    c_order,
    read_kaldi_map,
    read_table,
    shown_id,
    utt2spk_to_spk2utt,
    utterance_tables,
    write_kaldi_map,
)


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
        shown_key = shown_id(e.key)
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
        if prev is not None and not unsorted and c_order(e.key) < c_order(prev.key):
            unsorted = True
            problems.append(Problem(
                "unsorted", str(path),
                f"id {shown_key} comes after {prev.key}: the file is not sorted "
                "(LC_ALL=C sort); fix_data_dir sorts it", e.line, shown_key))
        prev = e
    return _Table(name, entries, problems, bad, first, dict(identical), unsorted)


def _check_audio(data_dir: Path, wav: Dict[str, Entry], rec_to_utts: Dict[str, List[str]],
                 check_audio: bool, sample_rate: Optional[int]) -> Tuple[List[Problem],
                                                                          Dict[str, str]]:
    """Problems of the recordings and, for each utterance they carry, why it must go.
    Plain paths are always checked to exist; with check_audio each source is opened."""
    problems: List[Problem] = []
    bad: Dict[str, str] = {}
    name = str(data_dir / "wav.scp")
    for rec, entry in wav.items():
        found = check_source(entry.value, sample_rate, open_audio=check_audio,
                             run_pipe=check_audio)
        if found is None:
            continue
        kind, msg = found
        problems.append(Problem(kind, name, msg, entry.line, rec))
        for u in rec_to_utts.get(rec, [rec]):
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

    utt_tables = utterance_tables(data_dir)
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
    for utt in sorted(all_utts, key=c_order):
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

    keep = sorted((u for u in all_utts if u not in bad), key=c_order)

    # spk2utt must be exactly what utt2spk implies
    spk2utt_path = data_dir / "spk2utt"
    utt2spk = {k: e.value for k, e in tables["utt2spk"].first.items()}
    if not spk2utt_path.is_file():
        problems.append(Problem("missing_file", str(spk2utt_path),
                                "spk2utt is missing; fix_data_dir regenerates it"))
    else:
        entries, spk_problems = read_table(spk2utt_path)
        problems.extend(spk_problems)
        given = {e.key: sorted(e.value.split(), key=c_order) for e in entries}
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
                shown = shown_id(utt)
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
                         ("does not exist", "missing audio"), ("cannot be read", "unreadable audio"),
                         ("(0 samples)", "unreadable audio"), ("(0 bytes)", "unreadable audio"),
                         ("truncated", "unreadable audio"), ("NaN/inf", "unreadable audio")):
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

    dropped = {u: ins.bad.get(u, ["unknown"]) for u in sorted(all_utts - keep, key=c_order)}
    with open(backup / "dropped.txt", "w", encoding="utf-8", errors="replace") as f:
        for utt, reasons in dropped.items():
            shown = shown_id(utt)
            f.write(f"{shown}\t{'; '.join(reasons)}\n")
    report = FixReport(str(data_dir), len(all_utts), len(keep), dropped, sorted_files, dedup,
                       ["spk2utt"], str(backup))
    (backup / "summary.txt").write_text(report.summary() + "\n", encoding="utf-8")
    if verbose:
        print(report.summary(), flush=True)
    return report


