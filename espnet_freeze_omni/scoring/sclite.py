"""Word/character error rates with NIST sclite (Debian package `sctk`), like espnet's asr.sh.

`score_error_rate` writes ref.trn / hyp.trn, runs
`sclite -r ref.trn trn -h hyp.trn trn -i rm -o all stdout`, keeps sclite's full report as
result.txt next to them and returns the numbers of its Sum/Avg line.
Texts are normalized first (`normalize.normalize_text`) unless told otherwise; for the
character error rate, word boundaries count as a `<space>` token (espnet's convention).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional

from espnet_freeze_omni.scoring.normalize import normalize_text

DEBIAN_SCLITE = "/usr/lib/sctk/bin/sclite"


def find_sclite() -> str:
    """sclite on PATH, else Debian's location; a clear error when neither exists."""
    found = shutil.which("sclite")
    if found:
        return found
    if os.access(DEBIAN_SCLITE, os.X_OK):
        return DEBIAN_SCLITE
    raise RuntimeError(
        "sclite was not found on PATH nor at /usr/lib/sctk/bin/sclite: install the "
        "Debian/Ubuntu package 'sctk' (apt-get install sctk) or put NIST SCTK's sclite on PATH"
    )


@dataclasses.dataclass
class ErrorRate:
    unit: str  # "word" or "char"
    num_sentences: int
    num_tokens: int  # reference words (or characters)
    correct: float  # percent of reference tokens
    substitutions: float
    deletions: float
    insertions: float
    error_rate: float  # percent: (S + D + I) / N
    sentence_error_rate: float
    result_txt: str  # sclite's full report


_SUM_AVG = re.compile(
    r"\|\s*Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|"
    r"\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\|"
)


def parse_sum_avg(result_txt: str | Path, unit: str = "word") -> ErrorRate:
    """Numbers of the Sum/Avg row of an sclite `-o all`/`-o sum` report."""
    text = Path(result_txt).read_text(encoding="utf-8", errors="replace")
    m = _SUM_AVG.search(text)
    if m is None:
        raise ValueError(f"{result_txt}: no Sum/Avg line in the sclite report")
    snt, tok, corr, sub, dele, ins, err, serr = m.groups()
    return ErrorRate(unit, int(snt), int(tok), float(corr), float(sub), float(dele),
                     float(ins), float(err), float(serr), str(result_txt))


def _tokens(text: str, unit: str, normalize: bool) -> str:
    if normalize:
        text = normalize_text(text)
    words = text.split()
    if unit == "word":
        return " ".join(words)
    if unit == "char":
        return " <space> ".join(" ".join(w) for w in words)
    raise ValueError(f"unit must be 'word' or 'char', got {unit!r}")


def write_trn(texts: Dict[str, str], path: str | Path, unit: str = "word",
              normalize: bool = True, utt2spk: Optional[Dict[str, str]] = None) -> Path:
    """One `tokens (speaker-uttid)` line per utterance, sorted by id."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as f:
        for utt in sorted(texts):
            # sclite's "rm" id format reads the speaker up to the first '-'
            spk = (utt2spk or {}).get(utt, "spk").replace("-", "_")
            f.write(f"{_tokens(texts[utt], unit, normalize)} ({spk}-{utt})\n")
    return path


def score_error_rate(
    refs: Dict[str, str],
    hyps: Dict[str, str],
    out_dir: str | Path,
    unit: str = "word",
    normalize: bool = True,
    utt2spk: Optional[Dict[str, str]] = None,
) -> ErrorRate:
    """Score hyps against refs with sclite; ids missing from hyps count as empty output."""
    if not refs:
        raise ValueError("no reference utterances to score")
    extra = sorted(set(hyps) - set(refs))
    if extra:
        raise ValueError(f"{len(extra)} hypotheses have no reference, e.g. {extra[:3]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_trn = write_trn(refs, out_dir / "ref.trn", unit, normalize, utt2spk)
    hyp_trn = write_trn({u: hyps.get(u, "") for u in refs}, out_dir / "hyp.trn", unit,
                        normalize, utt2spk)
    result_txt = out_dir / "result.txt"
    with open(result_txt, "w", encoding="utf-8") as out:
        proc = subprocess.run(
            [find_sclite(), "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn",
             "-i", "rm", "-o", "all", "stdout"],
            stdout=out, stderr=subprocess.PIPE, text=True,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"sclite failed (exit {proc.returncode}): {proc.stderr.strip()}")
    rate = parse_sum_avg(result_txt, unit)
    summary = dataclasses.asdict(rate)
    summary["num_missing_hyps"] = len(set(refs) - set(hyps))
    (out_dir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    return rate

