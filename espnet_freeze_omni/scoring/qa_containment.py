"""Spoken/text QA accuracy by answer containment, exactly as SPEC §4 defines it.

An item is correct when every word of ANY reference answer appears among the words of the
response, after both are normalized (`normalize.normalize_text`: lower-case, punctuation
stripped, apostrophes kept). Numbers are also tried as words on both sides ("42" and
"forty two" match each other). Word order and repetitions do not matter.

Report the scorer's name (`SCORER_NAME`) next to every figure: an LLM-judge scorer gives
very different numbers on the same responses.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from espnet_freeze_omni.scoring.normalize import normalized_words, normalize_text
from espnet_freeze_omni.scoring.numbers import digits_to_words

SCORER_ID = "answer_containment"
SCORER_NAME = (
    "answer containment (SPEC §4): lower-case, punctuation stripped except apostrophes, "
    "correct if every word of any reference answer is in the response, numbers also as words"
)


def _word_sets(text: str) -> List[Set[str]]:
    """The text's words as written, and with digits spelled out."""
    plain = normalize_text(text)
    return [set(plain.split()), set(digits_to_words(plain).split())]


def _answer_variants(answer: str) -> List[List[str]]:
    plain = normalize_text(answer)
    variants = [plain.split(), digits_to_words(plain).split()]
    return [v for v in variants if v]


def is_correct(response: str, answers: Sequence[str]) -> bool:
    """True when every word of some reference answer occurs in the response."""
    response_sets = _word_sets(response)
    for answer in answers:
        for words in _answer_variants(answer):
            if any(all(w in rs for w in words) for rs in response_sets):
                return True
    return False


@dataclasses.dataclass
class QAItem:
    id: str
    question: str
    answers: List[str]
    response: Optional[str]  # None: the system gave no response for this id
    correct: bool


@dataclasses.dataclass
class QAScore:
    scorer: str
    scorer_name: str
    accuracy: float  # percent
    num_items: int
    num_correct: int
    num_missing: int
    items: List[QAItem]

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("items")
        return d


def load_references(path: str | Path) -> List[dict]:
    """JSON lines {"id", "question", "answers": [aliases]}; every answer must have a word."""
    refs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            ref = json.loads(line)
            for key in ("id", "answers"):
                if key not in ref:
                    raise ValueError(f"{path}:{lineno}: reference has no '{key}'")
            if isinstance(ref["answers"], str):
                ref["answers"] = [ref["answers"]]
            if not ref["answers"] or any(not normalized_words(a) for a in ref["answers"]):
                # an answer without words would be "contained" in every response
                raise ValueError(f"{path}:{lineno}: id {ref['id']}: empty reference answer")
            refs.append(ref)
    ids = [r["id"] for r in refs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate reference ids")
    return refs


def load_responses(path: str | Path) -> Dict[str, str]:
    """Responses as a Kaldi text file (`id response words...`) or JSON lines
    ({"id", "response"} or {"id", "text"})."""
    path = Path(path)
    responses: Dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if path.suffix in (".jsonl", ".json"):
                obj = json.loads(line)
                key, text = obj["id"], obj.get("response", obj.get("text", ""))
            else:
                key, _, text = line.partition(" ")
            if key in responses:
                raise ValueError(f"{path}:{lineno}: duplicate response id {key}")
            responses[key] = text
    return responses


def score_qa(references: Iterable[dict], responses: Dict[str, str]) -> QAScore:
    """Score every reference; a reference without a response counts as wrong (and missing)."""
    items = []
    for ref in references:
        response = responses.get(ref["id"])
        correct = response is not None and is_correct(response, ref["answers"])
        items.append(QAItem(ref["id"], ref.get("question", ""), list(ref["answers"]),
                            response, correct))
    num_correct = sum(i.correct for i in items)
    return QAScore(
        scorer=SCORER_ID,
        scorer_name=SCORER_NAME,
        accuracy=100.0 * num_correct / len(items) if items else 0.0,
        num_items=len(items),
        num_correct=num_correct,
        num_missing=sum(i.response is None for i in items),
        items=items,
    )


def write_qa_score(score: QAScore, out_dir: str | Path) -> Path:
    """out_dir/result.json (summary) and out_dir/per_item.jsonl (one line per question)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "per_item.jsonl", "w", encoding="utf-8") as f:
        for item in score.items:
            f.write(json.dumps(dataclasses.asdict(item), ensure_ascii=False) + "\n")
    result = out_dir / "result.json"
    result.write_text(json.dumps(score.summary(), indent=2, ensure_ascii=False) + "\n",
                      encoding="utf-8")
    return result
