"""Spoken question sets as Kaldi data dirs: the paper's QA test sets, and spoken dialog turns.

Readers, one per distributed format (SPEC §4 evaluates on the first three):

    llama_questions  a TSV with the columns `Questions`, `Answer`, `Wav Filename` beside its
                     recordings (300 16 kHz wavs; the file names are relative to the TSV)
    web_questions    a JSON list of {"qText": ..., "answers": [...]}
    triviaqa         JSON lines {"question": ..., "answer": {"aliases": [...], "value": ...}}
                     (the Hugging Face / official layout) or {"question": ..., "answers": [...]};
                     a single JSON document (a list, or {"Data": [...]}) and capitalized keys
                     (`Question`, `Answer`, `Aliases`, `Value`) are read too
    dialogs          the project's dialog JSON lines {"id", "turns": [{"role", "content"}]}:
                     every user turn, as utterance `<dialog id>-t<k>` (the convention of
                     bin/dialog_turns and the driver's stage 9); no reference answers

Every set becomes

    <data_dir>/wav.scp, text (the question), utt2spk, spk2utt (one speaker per utterance:
               the sets carry no speaker labels), turn_info (`<utt> 1 <speech end s>`: every
               question is addressed to the assistant)
    <refs>     JSON lines {"id", "question", "answers"}, what stage 16 scores against
               (scoring.qa_containment.load_references)

Audio is written as 16-bit mono wav at one sample rate with some trailing silence (so that a
streaming model hears the user stop, as the state head needs). A set's own recordings are
converted with sox; questions without one are spoken by a TTS command the user names,
`--tts_cmd 'my_tts --text {text} --out {wav}'` (any sample rate; sox converts it), or by
default with the project's espeak-ng synthesis (data.espeak.synthesize). Finished wavs are
kept, so an interrupted run picks up where it stopped. Errors name the file and the row.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shlex
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from espnet_freeze_omni.data.espeak import convert_to_wav, pick_voice, synthesize
from espnet_freeze_omni.data.kaldi_table import (
    utt2spk_to_spk2utt,
    write_kaldi_map,
    write_turn_info,
)
from espnet_freeze_omni.data.speech_end import speech_end_seconds
from espnet_freeze_omni.scoring.normalize import normalized_words

LLAMA_QUESTIONS_COLUMNS = ("Questions", "Answer", "Wav Filename")


class QASetError(ValueError):
    """A problem in an input file, located by file and row."""


@dataclasses.dataclass(frozen=True)
class SpokenQuestion:
    utt_id: str
    question: str
    answers: Tuple[str, ...]  # empty for dialog turns (nothing to score against)
    audio: Optional[Path]  # the set's own recording; None: synthesize the question
    where: str  # "<file>: line N" / "row N" / "item N", for error messages


# --------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------
def _get(record: dict, *names: str):
    """The first of `names` present in `record`, matching keys case-insensitively."""
    lowered = {str(k).lower(): v for k, v in record.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _clean(text) -> str:
    return " ".join(str(text).split())


def _answers(value, where: str) -> Tuple[str, ...]:
    """Answer aliases from a string, a list, or {"aliases": [...], "value": ...} (TriviaQA's
    normalized_* variants add nothing: the scorer normalizes)."""
    if isinstance(value, dict):
        aliases = [_get(value, "value")] + list(_get(value, "aliases") or [])
        value = [a for a in aliases if a is not None]
    elif isinstance(value, (str, int, float)):
        value = [value]
    if not isinstance(value, list):
        raise QASetError(f"{where}: answers must be a string, a list or "
                         f"{{aliases, value}}, got {type(value).__name__}")
    out: List[str] = []
    for a in value:
        a = _clean(a)
        if a and normalized_words(a) and a not in out:
            out.append(a)
    if not out:
        # an answer without words would count as contained in every response
        raise QASetError(f"{where}: no reference answer with a word in it ({value!r})")
    return tuple(out)


def _question(value, where: str) -> str:
    if not isinstance(value, str) or not _clean(value):
        raise QASetError(f"{where}: empty or missing question")
    return _clean(value)


def read_json_records(path: str | os.PathLike) -> List[Tuple[str, dict]]:
    """[(where, record)] of a JSON list, a {"Data": [...]} document, or JSON lines."""
    path = Path(path)
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.strip()
    doc = None
    if stripped.startswith("["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise QASetError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from e
    elif stripped.startswith("{"):
        try:  # one document holding the list ({"Data": [...]}), or else JSON lines
            inner = _get(json.loads(text), "data", "questions")
            doc = inner if isinstance(inner, list) else None
        except json.JSONDecodeError:
            doc = None  # several objects: JSON lines, checked line by line below
    records: List[Tuple[str, object]] = []
    if doc is not None:
        records = [(f"{path}: item {i}", r) for i, r in enumerate(doc, 1)]
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((f"{path}: line {lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise QASetError(f"{path}: line {lineno}: not valid JSON ({e.msg})") from e
    for where, record in records:
        if not isinstance(record, dict):
            raise QASetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if not records:
        raise QASetError(f"{path}: no records")
    return records  # type: ignore[return-value]


def _numbered(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


def read_llama_questions(path: str | os.PathLike, prefix: str = "llama_questions"
                         ) -> List[SpokenQuestion]:
    """The TSV (or the folder holding exactly one .tsv); wav names are relative to it.
    A row with an empty `Wav Filename` is synthesized; a named file that is missing is an
    error."""
    path = Path(path)
    if path.is_dir():
        tsvs = sorted(path.glob("*.tsv"))
        if len(tsvs) != 1:
            raise QASetError(f"{path}: expected one .tsv file in the folder, found "
                             f"{[p.name for p in tsvs] or 'none'}")
        path = tsvs[0]
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.strip() for h in next(reader, [])]
        lowered = [h.lower() for h in header]
        missing = [c for c in LLAMA_QUESTIONS_COLUMNS if c.lower() not in lowered]
        if missing:
            raise QASetError(f"{path}: line 1: the header lacks column(s) {missing} "
                             f"(found {header})")
        col = {c: lowered.index(c.lower()) for c in LLAMA_QUESTIONS_COLUMNS}
        items = []
        for lineno, row in enumerate(reader, 2):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path}: line {lineno}"
            if len(row) < len(header):
                raise QASetError(f"{where}: {len(row)} column(s), the header has {len(header)}")
            question = _question(row[col["Questions"]], where)
            answers = _answers(row[col["Answer"]], where)
            wav_name = row[col["Wav Filename"]].strip()
            audio = None
            if wav_name:
                audio = Path(wav_name) if Path(wav_name).is_absolute() else path.parent / wav_name
                if not audio.is_file():
                    raise QASetError(f"{where}: Wav Filename {wav_name}: no such file {audio}")
            items.append(SpokenQuestion(_numbered(prefix, len(items) + 1), question, answers,
                                        audio, where))
    if not items:
        raise QASetError(f"{path}: no questions")
    return items


def read_web_questions(path: str | os.PathLike, prefix: str = "web_questions"
                       ) -> List[SpokenQuestion]:
    items = []
    for where, record in read_json_records(path):
        question = _question(_get(record, "qText", "question", "utterance"), where)
        answers = _get(record, "answers", "answer")
        if answers is None:
            raise QASetError(f"{where}: no 'answers'")
        items.append(SpokenQuestion(_numbered(prefix, len(items) + 1), question,
                                    _answers(answers, where), None, where))
    return items


def read_triviaqa(path: str | os.PathLike, prefix: str = "triviaqa") -> List[SpokenQuestion]:
    items = []
    for where, record in read_json_records(path):
        question = _question(_get(record, "question"), where)
        answers = _get(record, "answers", "answer")
        if answers is None:
            raise QASetError(f"{where}: no 'answer' or 'answers'")
        items.append(SpokenQuestion(_numbered(prefix, len(items) + 1), question,
                                    _answers(answers, where), None, where))
    return items


def read_dialog_questions(path: str | os.PathLike, prefix: str = "") -> List[SpokenQuestion]:
    """Every user turn of dialog JSON lines, as `<id>-t<k>` (prefix: prepended to the id)."""
    items, seen = [], set()
    for where, record in read_json_records(path):
        dialog_id, turns = record.get("id"), record.get("turns")
        if not dialog_id or not isinstance(turns, list):
            raise QASetError(f"{where}: a dialog needs an 'id' and a 'turns' list")
        if dialog_id in seen:
            raise QASetError(f"{where}: duplicate dialog id {dialog_id}")
        seen.add(dialog_id)
        k = 0
        for turn in turns:
            if not isinstance(turn, dict) or turn.get("role") not in ("user", "assistant",
                                                                       "system"):
                raise QASetError(f"{where}: every turn needs a role user/assistant/system")
            if turn["role"] == "user":
                k += 1
                utt = f"{prefix}{'-' if prefix else ''}{dialog_id}-t{k}"
                items.append(SpokenQuestion(utt, _question(turn.get("content"),
                                                           f"{where}: user turn {k}"),
                                            (), None, f"{where}: user turn {k}"))
    return items


READERS: Dict[str, Callable[..., List[SpokenQuestion]]] = {
    "llama_questions": read_llama_questions,
    "web_questions": read_web_questions,
    "triviaqa": read_triviaqa,
    "dialogs": read_dialog_questions,
}


# --------------------------------------------------------------------------------------
# audio
# --------------------------------------------------------------------------------------
def check_tts_cmd(tts_cmd: str) -> None:
    for field in ("{text}", "{wav}"):
        if field not in tts_cmd:
            raise ValueError(f"--tts_cmd must contain {field} (e.g. 'my_tts --text {{text}} "
                             f"--out {{wav}}'), got: {tts_cmd}")


def _run_tts(tts_cmd: str, text: str, wav: Path) -> None:
    command = tts_cmd.replace("{text}", shlex.quote(text)).replace("{wav}", shlex.quote(str(wav)))
    proc = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the TTS command failed (exit {proc.returncode}): {command}\n"
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    if not wav.is_file() or wav.stat().st_size == 0:
        raise RuntimeError(f"the TTS command wrote no audio to {{wav}}: {command}")


def speak_question(item: SpokenQuestion, wav: Path, tts_cmd: Optional[str] = None,
                   sample_rate: int = 16000, trailing_silence: float = 1.0,
                   voice_index: Optional[int] = None) -> Path:
    """The item's audio at `wav`: its own recording converted, else synthesized.
    Written to a temporary name first, so an existing `wav` is always complete."""
    wav.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(suffix=".wav", prefix=f".{item.utt_id}.", dir=wav.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if item.audio is not None:
            convert_to_wav(item.audio, tmp, sample_rate, trailing_silence)
        elif tts_cmd:
            raw = tmp.with_suffix(".tts.wav")
            try:
                _run_tts(tts_cmd, item.question, raw)
                convert_to_wav(raw, tmp, sample_rate, trailing_silence)
            finally:
                raw.unlink(missing_ok=True)
        else:
            voice = pick_voice(voice_index) if voice_index is not None else {}
            synthesize(item.question, tmp, sample_rate=sample_rate,
                       trailing_silence=trailing_silence, **voice)
        tmp.replace(wav)
    except Exception as e:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"{item.where}: utterance {item.utt_id}: {e}") from e
    return wav


# --------------------------------------------------------------------------------------
# data dir + references
# --------------------------------------------------------------------------------------
def write_references(items: Sequence[SpokenQuestion], path: str | os.PathLike) -> Path:
    """JSON lines {"id", "question", "answers"} (scoring.qa_containment.load_references)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for item in sorted(items, key=lambda i: i.utt_id):
            f.write(json.dumps(dict(id=item.utt_id, question=item.question,
                                    answers=list(item.answers)), ensure_ascii=False) + "\n")
    return path


def prepare_question_set(items: Sequence[SpokenQuestion], data_dir: str | os.PathLike,
                         wav_dir: Optional[str | os.PathLike] = None,
                         refs: Optional[str | os.PathLike] = None,
                         tts_cmd: Optional[str] = None, sample_rate: int = 16000,
                         trailing_silence: float = 1.0, vary_voices: bool = False,
                         num_workers: int = 2, progress: bool = False) -> Dict[str, int]:
    """Speak/convert every question and write the Kaldi data dir (+ refs when given).

    vary_voices: with the default espeak-ng synthesis, cycle voices, speeds and pitches
    (training sets); otherwise one clean voice (test sets, comparable across systems).
    Returns counts: questions, recorded (own audio), synthesized, reused (wav already there).
    """
    ids = [i.utt_id for i in items]
    if len(set(ids)) != len(ids):
        dup = sorted({u for u in ids if ids.count(u) > 1})[:5]
        raise QASetError(f"duplicate utterance ids {dup}")
    if not items:
        raise QASetError("no questions to prepare")
    if tts_cmd:
        check_tts_cmd(tts_cmd)
    data_dir = Path(data_dir)
    wav_dir = Path(wav_dir) if wav_dir else data_dir / "wav"
    wav_dir = wav_dir.resolve()
    targets = {i.utt_id: wav_dir / f"{i.utt_id}.wav" for i in items}
    todo = [(n, i) for n, i in enumerate(items) if not targets[i.utt_id].is_file()]

    def job(pair):
        n, item = pair
        return speak_question(item, targets[item.utt_id], tts_cmd, sample_rate,
                              trailing_silence, n if vary_voices else None)

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results: Iterable = pool.map(job, todo)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(todo), desc=f"speaking {data_dir}")
        for _ in results:
            pass

    data_dir.mkdir(parents=True, exist_ok=True)
    utt2spk = {u: u for u in ids}
    write_kaldi_map(data_dir / "wav.scp", {u: str(p) for u, p in targets.items()})
    write_kaldi_map(data_dir / "text", {i.utt_id: i.question for i in items})
    write_kaldi_map(data_dir / "utt2spk", utt2spk)
    write_kaldi_map(data_dir / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    write_turn_info(data_dir / "turn_info",
                    {u: (1, speech_end_seconds(p)) for u, p in targets.items()})
    if refs is not None:
        write_references(items, refs)
    recorded = sum(i.audio is not None for i in items)
    return dict(questions=len(items), recorded=recorded,
                synthesized=sum(i.audio is None for _, i in todo),
                reused=len(items) - len(todo))
