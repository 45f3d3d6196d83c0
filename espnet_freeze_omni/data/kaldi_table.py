"""Kaldi-style tables: the one reader and writer of `key value...` files.

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

Without `segments`, recording ids are utterance ids. Every reader here names the file and the
line of what it cannot use; `validation.py` checks and fixes whole data dirs on top of
`read_table`.
"""
from __future__ import annotations

import collections
import dataclasses
import os
import re
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

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
    """One thing wrong in a table or data dir, located as precisely as possible."""

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


def c_order(key: str) -> bytes:
    """Sort key of Kaldi's `LC_ALL=C sort`, i.e. bytes; surrogateescape keeps undecodable
    ids stable."""
    return key.encode("utf-8", "surrogateescape")


def shown_id(key: str) -> str:
    """An id as it can be printed (undecodable bytes replaced)."""
    return c_order(key).decode("utf-8", "replace")


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
                lineno, shown_id(key)))
        parts = line.strip().split(maxsplit=1)
        entries.append(Entry(parts[0], parts[1].strip() if len(parts) > 1 else "", lineno))
    return entries, problems


def read_kaldi_map(path: str | os.PathLike, need_value: bool = False) -> Dict[str, str]:
    """A table as {key: value} in file order; raises on duplicate keys, undecodable lines
    and, with `need_value`, on a key without a value."""
    entries, problems = read_table(path)
    bad = [p for p in problems if p.kind == "encoding"]
    if bad:
        raise ValueError(str(bad[0]))
    table: Dict[str, str] = {}
    for e in entries:
        if e.key in table:
            raise ValueError(f"{path}:{e.line}: duplicate id {e.key}")
        if need_value and not e.value:
            raise ValueError(f"{path}:{e.line}: [{e.key}] nothing after the id")
        table[e.key] = e.value
    return table


def read_wav_scp(path: str | os.PathLike) -> Dict[str, str]:
    """wav.scp as {recording id: path or 'command |'}, in file order; an id without audio,
    a duplicate id or an undecodable line is an error naming file and line."""
    return read_kaldi_map(path, need_value=True)


def write_kaldi_map(path: str | os.PathLike, table: Mapping[str, str]) -> Path:
    """Write {key: value} sorted in C order (an empty value writes the key alone)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for key in sorted(table, key=c_order):
            value = table[key]
            f.write(f"{key} {value}\n" if value != "" else f"{key}\n")
    return path


def utt2spk_to_spk2utt(utt2spk: Mapping[str, str]) -> Dict[str, str]:
    spk2utts: Dict[str, List[str]] = collections.defaultdict(list)
    for utt in sorted(utt2spk, key=c_order):
        spk2utts[utt2spk[utt]].append(utt)
    return {spk: " ".join(utts) for spk, utts in spk2utts.items()}


def read_turn_info(path: str | os.PathLike) -> Dict[str, Tuple[int, float]]:
    """turn_info as {utt: (label, speech_end_seconds)}; a malformed line is an error naming
    file, line and utterance."""
    table = read_kaldi_map(path)
    line_of = {e.key: e.line for e in read_table(path)[0]}
    out = {}
    for key, value in table.items():
        try:
            label, end = value.split()
            out[key] = (int(label), float(end))
        except ValueError:
            raise ValueError(f"{path}:{line_of[key]}: [{shown_id(key)}] expected <label> "
                             f"<speech-end-seconds>, got {value!r}") from None
    return out


def write_turn_info(path: str | os.PathLike, turns: Mapping[str, Tuple[int, float]]) -> Path:
    return write_kaldi_map(path, {u: f"{lab} {end:.2f}" for u, (lab, end) in turns.items()})


def utterance_tables(data_dir: str | os.PathLike) -> List[str]:
    """The per-utterance tables a data dir has: the known ones (UTT_TABLES order), then any
    other `utt2*` file, sorted."""
    data_dir = Path(data_dir)
    names = [n for n in UTT_TABLES if (data_dir / n).is_file()]
    names += sorted(p.name for p in data_dir.glob("utt2*")
                    if p.is_file() and p.name not in UTT_TABLES)
    return names


def read_keys(key_file: str | os.PathLike, table: Mapping[str, str],
              table_path: str | os.PathLike) -> List[str]:
    """The ids of a key file (its first column, in order; how recipes split a set over
    jobs), each checked to be in `table` (read from `table_path`)."""
    entries, problems = read_table(key_file)
    bad = [p for p in problems if p.kind == "encoding"]
    if bad:
        raise ValueError(str(bad[0]))
    for e in entries:
        if e.key not in table:
            raise KeyError(f"utterance {e.key} ({key_file}:{e.line}) is not in {table_path}")
    return [e.key for e in entries]


# espnet's readers of these types (`read_2columns_text` and friends) open the file as UTF-8
# and stop at the first bad line with a bare UnicodeDecodeError / "invalid literal for
# int()" / unpacking error that names neither file nor line.
LOADER_TABLE_TYPES = ("text", "text_int", "sound")
_INTEGERS = re.compile(r"[+-]?\d+(?: [+-]?\d+)*")


def check_loader_table(path: str | os.PathLike, type_: str) -> List[Problem]:
    """What espnet's `type_` loader would fail on in a table, each named by file, line and
    id: lines that are not UTF-8, empty lines and, for `text_int`, lines whose value is not
    one space-separated integer after another (including a missing value)."""
    path = str(path)
    if not os.path.isfile(path):
        return [Problem("missing_file", path, f"no such file (a `{type_}` table)")]
    entries, problems = read_table(path)
    if type_ == "text_int":
        for e in entries:
            shown = shown_id(e.key)
            if not e.value:
                problems.append(Problem("format", path, "no integers after the id", e.line,
                                        shown))
                continue
            if _INTEGERS.fullmatch(e.value):
                continue  # the common case, at C speed (codec token files are large)
            for k, field in enumerate(e.value.split(" "), 1):
                try:
                    int(field)  # what espnet's loader calls, e.g. "1_000" passes
                except ValueError:
                    problems.append(Problem(
                        "format", path, f"field {k} is not an integer: {field!r} (text_int "
                        "values are integers separated by single spaces)", e.line, shown))
                    break
    return problems


def describe_problems(problems: List[Problem], limit: int = 50) -> str:
    """Problems as indented lines, at most `limit` of them."""
    listing = "\n".join(f"  {p}" for p in problems[:limit])
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return listing + more


def check_data_tables(data_path_and_name_and_type, types=LOADER_TABLE_TYPES) -> None:
    """Check every table a training job lists (`--*_data_path_and_name_and_type`) whose
    type is in `types` before espnet reads it; ValueError listing every problem."""
    problems: List[Problem] = []
    listed = dict.fromkeys((path, type_) for path, _name, type_ in data_path_and_name_and_type
                           or [])  # train and valid may name the same file
    for path, type_ in listed:
        if type_ in types:
            problems += check_loader_table(path, type_)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in the training data tables; fix them "
                         "(python -m espnet_freeze_omni.bin.fix_data_dir for a data dir):\n"
                         + describe_problems(problems))
