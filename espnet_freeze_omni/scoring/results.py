"""Collect every score of a recipe into exp/results.json and an espnet-style RESULTS.md.

Each scorer run leaves one `metric.json` under `<score_root>/<test_set>/<metric>/` (see
`write_metric`); `write_results` gathers them, so stages can be scored independently and a
missing decode simply shows as "n/a". Top-level figures in results.json come from the
primary test set (the first of `test_sets` that has the metric); every test set has its
own table in RESULTS.md. The state head's rates on each QA test set (TURN_RATES, from its
turn_end_f1 details) are `turn_rates` in results.json and one table in RESULTS.md.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

# metric -> (what it is, unit); the order is the order of results.json and RESULTS.md
METRICS: Dict[str, tuple] = {
    "asr_wer_ctc": ("ASR word error rate, streaming encoder + CTC head", "WER %"),
    "asr_wer_llm": ("ASR word error rate, encoder + adapter + frozen LLM", "WER %"),
    "qa_acc_text_in": ("QA accuracy, text question into the frozen LLM (backbone)", "acc %"),
    "qa_acc_speech_in": ("QA accuracy, spoken question, text answer", "acc %"),
    "qa_acc_speech_out": ("QA accuracy, spoken question, spoken answer transcribed by ASR",
                          "acc %"),
    # the listener's own limit on qa_acc_speech_out (bin/speech_out_ceiling): what it would be
    # if the speech decoder spoke the same texts as espeak-ng speaks the assistant's voice
    "qa_acc_speech_out_ceiling": ("QA accuracy, the spoken answers' texts re-spoken by "
                                  "espeak-ng in the assistant's training voice, transcribed "
                                  "by the same ASR (the ceiling of qa_acc_speech_out)", "acc %"),
    "speech_out_cer": ("character error rate of the spoken answers vs their text (turns the "
                       "state head did not ignore)", "CER %"),
    "turn_end_f1": ("turn-end detection F1 (respond-now events)", "F1 %"),
    # duplex test sets (scoring/duplex.py, after Full-Duplex-Bench v1): rates are shares of
    # the scenario's items (0-1), latencies P50 seconds
    "duplex_pause_tor": ("pause handling: take-over rate, the assistant starts a turn before "
                         "the user's paused turn has ended (lower is better)", "rate"),
    "duplex_smooth_tor": ("smooth turn-taking: take-over rate after the user's turn "
                          "(higher is better)", "rate"),
    "duplex_smooth_latency": ("smooth turn-taking: user speech end -> assistant audio onset, "
                              "P50", "s"),
    "duplex_interrupt_tor": ("user interruption: take-over rate, the assistant stops and "
                             "answers the interrupting question (higher is better)", "rate"),
    "duplex_interrupt_stop_latency": ("user interruption: interruption start -> the answer "
                                      "being heard stops, P50", "s"),
    "duplex_interrupt_latency": ("user interruption: interruption end -> the new answer's "
                                 "audio onset, P50", "s"),
    "duplex_side_talk_ignored": ("side talk: share of items the assistant does not answer "
                                 "(higher is better)", "rate"),
    "duplex_side_talk_over_answer_kept": ("side talk over an answer: share of items in "
                                          "which the answer being given is not dropped and "
                                          "the side talk is not answered (higher is better)",
                                          "rate"),
}
ERROR_RATE_METRICS = ("asr_wer_ctc", "asr_wer_llm", "speech_out_cer")
QA_METRICS = ("qa_acc_text_in", "qa_acc_speech_in", "qa_acc_speech_out",
              "qa_acc_speech_out_ceiling")
DUPLEX_METRICS = tuple(m for m in METRICS if m.startswith("duplex_"))
# the state head's plain rates on a QA test set (percent), from the details of its
# turn_end_f1 (scoring/turn_end.py): results.json key -> (details key, what it is)
TURN_RATES: Dict[str, tuple] = {
    "turn_answered": ("answered", "share of the addressed questions the state head said "
                      "respond to (higher is better)"),
    "turn_premature": ("premature", "share of the addressed questions answered before the "
                       "reference speech end: the user cut off (lower is better)"),
    "turn_never_decided": ("never_decided", "share of the addressed questions the state head "
                           "never judged finished: silence (lower is better)"),
    "side_talk_ignored": ("not_addressed_ignored", "share of the side talk the state head did "
                          "not respond to (higher is better)"),
}


def write_metric(out_dir: str | os.PathLike, metric: str, test_set: str, value: float,
                 scorer: str, scorer_name: str = "", details: Optional[dict] = None) -> Path:
    """One figure with its scorer (short id + full description) and details, where
    `write_results` will find it."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    out = Path(out_dir) / "metric.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(dict(metric=metric, test_set=test_set, value=round(value, 2),
                                   unit=METRICS[metric][1], scorer=scorer,
                                   scorer_name=scorer_name or scorer,
                                   details=details or {}), indent=2, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    return out


def collect_metrics(score_root: str | os.PathLike) -> Dict[str, Dict[str, dict]]:
    """{test_set: {metric: metric.json contents}} for every metric.json under score_root."""
    found: Dict[str, Dict[str, dict]] = {}
    for path in sorted(Path(score_root).glob("**/metric.json")):
        m = json.loads(path.read_text(encoding="utf-8"))
        m["path"] = str(path)
        found.setdefault(m["test_set"], {})[m["metric"]] = m
    return found


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(repo: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(repo_dir: Optional[str | os.PathLike] = None) -> dict:
    repo = Path(repo_dir or Path(__file__).resolve().parents[2])
    commit = _git(repo, "rev-parse", "HEAD")
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now().astimezone().strftime("%a %b %d %H:%M:%S %Z %Y"),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "espnet": _version("espnet"),
        "transformers": _version("transformers"),
        "espnet_freeze_omni": _version("espnet_freeze_omni"),
        "git_commit": (commit or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "git_commit_date": _git(repo, "log", "-1", "--format=%cd") or "unknown",
    }


def _per_item(metric: dict) -> Dict[str, dict]:
    path = Path(metric.get("path", "")).parent / "per_item.jsonl"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return {item["id"]: item for item in map(json.loads, filter(str.strip, f))}


def _differing_answers(text_in: dict, speech_in: dict) -> List[dict]:
    """The modality-gap items: where the speech-in answer differs from the text-in answer
    of the same frozen LLM (both kept, with the references and both verdicts)."""
    by_text, by_speech = _per_item(text_in), _per_item(speech_in)
    items = []
    for utt in sorted(set(by_text) & set(by_speech)):
        t, sp = by_text[utt], by_speech[utt]
        if " ".join(str(t.get("response", "")).split()) != " ".join(str(sp.get("response", "")).split()):
            items.append(dict(id=utt, question=t.get("question"), answers=t.get("answers"),
                              text_in=t.get("response"), speech_in=sp.get("response"),
                              text_in_correct=t.get("correct"), speech_in_correct=sp.get("correct")))
    return items


def build_results(found: Dict[str, Dict[str, dict]], test_sets: Sequence[str] = (),
                  env: Optional[dict] = None) -> dict:
    order = list(test_sets) + sorted(t for t in found if t not in test_sets)
    order = [t for t in order if t in found]
    results: dict = {}
    for metric in METRICS:
        results[metric] = None
        for t in order:
            if metric in found[t]:
                results[metric] = found[t][metric]["value"]
                results[f"{metric}_test_set"] = t
                break
    results["modality_gap"] = []
    for t in order:
        m = found[t]
        if "qa_acc_text_in" not in m:
            continue
        text_in = m["qa_acc_text_in"]["value"]
        gap = {"test_set": t, "text_in": text_in}
        for cond in ("speech_in", "speech_out"):
            key = f"qa_acc_{cond}"
            if key in m:
                gap[cond] = m[key]["value"]
                gap[f"gap_{cond}"] = round(text_in - m[key]["value"], 2)
        # the speech-out gap in three parts: the speech-in gap (the voiced texts are the
        # speech-in answers), what the listener loses on the assistant's own voice (speech in
        # - ceiling) and what the speech decoder loses beyond that (ceiling - speech out)
        if "qa_acc_speech_out_ceiling" in m:
            ceiling = m["qa_acc_speech_out_ceiling"]["value"]
            gap["speech_out_ceiling"] = ceiling
            if "speech_in" in gap:
                gap["gap_listener"] = round(gap["speech_in"] - ceiling, 2)
            if "speech_out" in gap:
                gap["gap_decoder"] = round(ceiling - gap["speech_out"], 2)
        if "qa_acc_speech_in" in m:
            gap["items"] = _differing_answers(m["qa_acc_text_in"], m["qa_acc_speech_in"])
        results["modality_gap"].append(gap)
    # {test set: {turn_answered, turn_premature, turn_never_decided, side_talk_ignored,
    # num_addressed, num_side_talk}} for every set whose turn_end_f1 has the rates
    results["turn_rates"] = {}
    for t in order:
        d = found[t].get("turn_end_f1", {}).get("details", {})
        if all(key in d for key, _ in TURN_RATES.values()):
            results["turn_rates"][t] = {name: round(d[key], 2)
                                        for name, (key, _) in TURN_RATES.items()}
            results["turn_rates"][t].update(num_addressed=d.get("num_addressed"),
                                            num_side_talk=d.get("num_not_addressed"))
    results["scorers"] = {m["scorer"]: m.get("scorer_name", m["scorer"])
                          for t in found.values() for m in t.values()}
    results["per_test_set"] = {t: {k: {kk: vv for kk, vv in v.items() if kk != "path"}
                                   for k, v in found[t].items()} for t in order}
    results["environment"] = env if env is not None else environment()
    return results


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))


def render_markdown(results: dict, title: str = "RESULTS", exp_dir: str = "exp") -> str:
    env = results["environment"]
    lines = [f"<!-- Generated by write_results (freeze_omni.sh stage 16); do not edit by hand -->",
             f"# {title}", "", "## Environments",
             f"- date: `{env['date']}`",
             f"- system information: `{env['os']}`",
             f"- python version: `{env['python']}`",
             f"- espnet version: `espnet {env['espnet']}`",
             f"- pytorch version: `pytorch {env['torch']}`",
             f"- transformers version: `transformers {env['transformers']}`",
             f"- Git hash: `{env['git_commit']}`",
             f"  - Commit date: `{env['git_commit_date']}`", "",
             f"## {exp_dir}", ""]
    for test_set, metrics in results["per_test_set"].items():
        lines += [f"### {test_set}", ""]
        rates = [m for m in ERROR_RATE_METRICS if m in metrics]
        if rates:
            lines += ["|metric|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
                      "|---|---|---|---|---|---|---|---|---|"]
            for m in rates:
                d = metrics[m]["details"]
                lines.append(
                    f"|{m} ({metrics[m]['unit']})|{d.get('num_sentences', 'n/a')}|"
                    f"{d.get('num_tokens', 'n/a')}|{_fmt(d.get('correct'))}|"
                    f"{_fmt(d.get('substitutions'))}|{_fmt(d.get('deletions'))}|"
                    f"{_fmt(d.get('insertions'))}|{_fmt(metrics[m]['value'])}|"
                    f"{_fmt(d.get('sentence_error_rate'))}|")
            lines.append("")
        qas = [m for m in QA_METRICS if m in metrics]
        if qas:
            lines += ["|metric|items|correct|missing|accuracy %|scorer|", "|---|---|---|---|---|---|"]
            for m in qas:
                d = metrics[m]["details"]
                lines.append(f"|{m}|{d.get('num_items', 'n/a')}|{d.get('num_correct', 'n/a')}|"
                             f"{d.get('num_missing', 'n/a')}|{_fmt(metrics[m]['value'])}|"
                             f"{metrics[m]['scorer']}|")
            lines.append("")
        if "turn_end_f1" in metrics:
            d = metrics["turn_end_f1"]["details"]
            lines += ["|metric|precision|recall|F1|side talk ignored %|mean latency s|window s|",
                      "|---|---|---|---|---|---|---|",
                      f"|turn_end_f1|{_fmt(d.get('precision'))}|{_fmt(d.get('recall'))}|"
                      f"{_fmt(metrics['turn_end_f1']['value'])}|"
                      f"{_fmt(d.get('not_addressed_ignored'))}|{_fmt(d.get('mean_latency'))}|"
                      f"-{d.get('early_tolerance')}/+{d.get('late_tolerance')}|", ""]
        duplex = [m for m in DUPLEX_METRICS if m in metrics]
        if duplex:
            lines += ["|duplex metric|value|unit|items|measured|P90 s|better|",
                      "|---|---|---|---|---|---|---|"]
            for m in duplex:
                d = metrics[m]["details"]
                lines.append(f"|{m}|{_fmt(metrics[m]['value'])}|{metrics[m]['unit']}|"
                             f"{d.get('num_items', 'n/a')}|"
                             f"{d.get('num_measured', d.get('num_hits', 'n/a'))}|"
                             f"{_fmt(d.get('p90')) if 'p90' in d else '-'}|"
                             f"{d.get('better', '')}|")
            lines += ["", "(duplex: rates are shares of the scenario's items, `measured` the "
                      "items counted or timed; definitions in scoring/duplex.py)", ""]
    if results["modality_gap"]:
        lines += ["### modality gap (text-in accuracy minus speech accuracy)", "",
                  "|test set|text in|speech in|gap|speech out|gap|speech out ceiling|"
                  "of the gap: listener|of the gap: decoder|",
                  "|---|---|---|---|---|---|---|---|---|"]
        for g in results["modality_gap"]:
            lines.append(f"|{g['test_set']}|{_fmt(g['text_in'])}|{_fmt(g.get('speech_in'))}|"
                         f"{_fmt(g.get('gap_speech_in'))}|{_fmt(g.get('speech_out'))}|"
                         f"{_fmt(g.get('gap_speech_out'))}|{_fmt(g.get('speech_out_ceiling'))}|"
                         f"{_fmt(g.get('gap_listener'))}|{_fmt(g.get('gap_decoder'))}|")
        lines.append("")
        if any("speech_out_ceiling" in g for g in results["modality_gap"]):
            lines += ["speech out ceiling: the voiced answer texts re-spoken by espeak-ng in the "
                      "assistant's training voice, through the same listener "
                      "(`qa_acc_speech_out_ceiling`). The speech-out gap is the speech-in gap + "
                      "listener (speech in - ceiling: the listener on the assistant's own "
                      "voice) + decoder (ceiling - speech out: the speech decoder's share).", ""]
        for g in results["modality_gap"]:
            if "items" in g:
                lines.append(f"{g['test_set']}: {len(g['items'])} item(s) where the speech-in "
                             "answer differs from the text-in answer (listed in results.json, "
                             "`modality_gap[].items`)")
        lines.append("")
    if results.get("turn_rates"):
        lines += ["### state head on the QA test sets (% of the addressed questions; side talk: "
                  "% of side talk)", "",
                  "|test set|addressed|answered|premature|never decided|side talk|"
                  "side talk ignored|", "|---|---|---|---|---|---|---|"]
        for t, r in results["turn_rates"].items():
            lines.append(f"|{t}|{_fmt(r['num_addressed'])}|{_fmt(r['turn_answered'])}|"
                         f"{_fmt(r['turn_premature'])}|{_fmt(r['turn_never_decided'])}|"
                         f"{_fmt(r['num_side_talk'])}|{_fmt(r['side_talk_ignored'])}|")
        lines += [""] + [f"- `{name}`: {what}" for name, (_, what) in TURN_RATES.items()] + [
            "- premature: decision time (stream seconds from the turn start) before the speech "
            "end of data/<set>/turn_info, no tolerance", ""]
    if results["scorers"]:
        lines += ["Scorers:"] + [f"- `{k}`: {v}" for k, v in sorted(results["scorers"].items())]
        lines.append("")
    if not results["per_test_set"]:
        lines += ["No scores found yet: run the decoding (stage 15) and scoring (stage 16).", ""]
    return "\n".join(lines)


def write_results(score_root: str | os.PathLike, results_json: str | os.PathLike,
                  results_md: str | os.PathLike, test_sets: Sequence[str] = (),
                  title: str = "RESULTS", exp_dir: str = "exp",
                  env: Optional[dict] = None) -> dict:
    results = build_results(collect_metrics(score_root), test_sets, env)
    Path(results_json).parent.mkdir(parents=True, exist_ok=True)
    Path(results_json).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n",
                                  encoding="utf-8")
    Path(results_md).write_text(render_markdown(results, title, exp_dir), encoding="utf-8")
    return results
