"""Turn-end detection scored as events: precision, recall and F1 of "respond now" decisions.

Reference and prediction are both turn_info tables (`utt_id label seconds`):
- reference: label 1 = addressed to the assistant, the user stops speaking at `seconds`;
  label 2 = not addressed (side talk), the assistant must stay silent;
- prediction: label 1 = the model decided to respond at `seconds` (stream time);
  label 2 = it judged the speech not addressed; 0 = it never decided.

A response (predicted 1) on an addressed utterance is a hit when it comes no earlier than
`early_tolerance` before the speech end (earlier cuts the user off) and no later than
`late_tolerance` after it. Every predicted response that is not a hit is a false positive;
every addressed utterance without a hit is a false negative (so a response outside the
window counts as both). An utterance with no prediction counts as "never decided".

Besides the event F1, the state head's plain rates (percent), without tolerance windows:
- answered: share of the addressed utterances it said respond to (predicted 1, at any time);
- premature: share of the addressed utterances it said respond to before the reference
  speech end (predicted time < speech end: the user would be cut off); a subset of answered;
- never_decided: share of the addressed utterances with predicted label 0 or no prediction
  (in a live dialogue: silence); the rest of the addressed ones it judged not addressed;
- side talk ignored: share of the not-addressed utterances it did not respond to
  (`not_addressed_ignored`).
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Dict, List, Mapping, Optional, Tuple

SCORER_ID = "turn_end_event_f1"


@dataclasses.dataclass
class TurnEndScore:
    scorer: str
    early_tolerance: float
    late_tolerance: float
    precision: float  # percent
    recall: float
    f1: float
    true_positives: int
    false_positives: int
    false_negatives: int
    num_addressed: int
    num_not_addressed: int
    not_addressed_ignored: float  # percent of side-talk utterances left unanswered
    mean_latency: Optional[float]  # seconds from speech end to response, over hits
    num_missing_predictions: int
    outcomes: Dict[str, str]  # utt -> hit / early / late / missed / answered_side_talk / ignored
    # plain rates of the state head on the addressed utterances, percent (module docstring)
    answered: float = 0.0
    premature: float = 0.0
    never_decided: float = 0.0
    num_answered: int = 0
    num_premature: int = 0
    num_never_decided: int = 0

    def summary(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("outcomes")
        return d


def score_turn_end(
    reference: Mapping[str, Tuple[int, float]],
    predicted: Mapping[str, Tuple[int, float]],
    early_tolerance: float = 0.16,
    late_tolerance: float = 1.0,
) -> TurnEndScore:
    extra = sorted(set(predicted) - set(reference))
    if extra:
        raise ValueError(f"{len(extra)} predictions have no reference, e.g. {extra[:3]}")
    tp = fp = fn = 0
    latencies: List[float] = []
    outcomes: Dict[str, str] = {}
    addressed = not_addressed = ignored = 0
    answered = premature = never_decided = 0
    for utt, (ref_label, ref_end) in sorted(reference.items()):
        pred_label, pred_time = predicted.get(utt, (0, -1.0))
        if pred_label not in (0, 1, 2):
            raise ValueError(f"predicted label of {utt} must be 0, 1 or 2, got {pred_label}")
        if ref_label == 1:
            addressed += 1
            answered += pred_label == 1
            premature += pred_label == 1 and pred_time < ref_end
            never_decided += pred_label == 0
            if pred_label != 1:
                fn += 1
                outcomes[utt] = "missed"
            elif pred_time < ref_end - early_tolerance:
                fp += 1
                fn += 1
                outcomes[utt] = "early"
            elif pred_time > ref_end + late_tolerance:
                fp += 1
                fn += 1
                outcomes[utt] = "late"
            else:
                tp += 1
                latencies.append(pred_time - ref_end)
                outcomes[utt] = "hit"
        elif ref_label == 2:
            not_addressed += 1
            if pred_label == 1:
                fp += 1
                outcomes[utt] = "answered_side_talk"
            else:
                ignored += 1
                outcomes[utt] = "ignored"
        else:
            raise ValueError(f"reference label of {utt} must be 1 or 2, got {ref_label}")
    precision = 100.0 * tp / (tp + fp) if tp + fp else 0.0
    recall = 100.0 * tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return TurnEndScore(
        scorer=SCORER_ID,
        early_tolerance=early_tolerance,
        late_tolerance=late_tolerance,
        precision=precision,
        recall=recall,
        f1=f1,
        true_positives=tp,
        false_positives=fp,
        false_negatives=fn,
        num_addressed=addressed,
        num_not_addressed=not_addressed,
        not_addressed_ignored=100.0 * ignored / not_addressed if not_addressed else 0.0,
        mean_latency=statistics.fmean(latencies) if latencies else None,
        num_missing_predictions=len(set(reference) - set(predicted)),
        outcomes=outcomes,
        answered=_percent(answered, addressed),
        premature=_percent(premature, addressed),
        never_decided=_percent(never_decided, addressed),
        num_answered=answered,
        num_premature=premature,
        num_never_decided=never_decided,
    )


def _percent(count: int, total: int) -> float:
    return 100.0 * count / total if total else 0.0
