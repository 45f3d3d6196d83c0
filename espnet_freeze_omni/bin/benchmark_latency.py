#!/usr/bin/env python3
"""Latency of a spoken answer through the DuplexSession: the authors' breakdown, measured.

Each dialogue is one session (`clock="measured"`: event times include this machine's compute
as a single worker would spend it) fed a spoken question as a microphone would deliver it,
followed by silence. From its events, per dialogue (seconds after the end of the speech):

    speech end -> state-head decision (turn_ended) -> first text segment complete
        -> speech decoder prefilled (first codec token) -> first codec packet's tokens
        -> first PCM packet decoded

printed as P50 / P90 / mean per segment, with speech end -> first PCM and decision -> first
PCM, beside the authors' table (GPU server, P50: user done -> first text segment 468 ms,
segment -> decoder prefill 15, prefill -> first codec packet 235, codec tokens -> first PCM
11, total 753). Also printed: where the compute goes (the answers' `compute` per stage, and
listening), and the real-time factor of N sessions served round-robin by one process.
Written to --out_dir: latency.json (every figure) and latency.png (stacked P50 bars, boxes).

    # random weights at the tiny shapes, built on the spot (nothing downloaded)
    python -m espnet_freeze_omni.bin.benchmark_latency --shapes tiny --dialogues 20 \\
        --concurrency 1 2 4
    # a trained packed model, on its own test questions (the state head takes the turns)
    python -m espnet_freeze_omni.bin.benchmark_latency --model_file exp/packed/model.zip \\
        --llm_path exp/llm --wav_scp dump/raw16k/qa_test/wav.scp
    # random weights at the paper's shapes (Qwen2-7B in bf16): one GPU
    python -m espnet_freeze_omni.bin.benchmark_latency --shapes paper --device cuda

Random weights cannot hold a dialogue, so there the benchmark scripts what they cannot do,
without changing what is computed: the state head runs, but its decision is replaced by
"respond at the first chunk end >= speech end + --respond_delay (0.32 s, the training
target's delay)"; the LLM runs every step, but its pick is restricted to plain word tokens,
with a comma / full stop every --segment_tokens tokens (the segment shape) and the end of
the turn after --answer_tokens; the speech decoder samples as usual but may not stop before
--codec_tokens_per_token codec tokens per text token. The output says so. With a trained
model nothing is scripted, and dialogues the state head never decided are counted.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml
from espnet2.utils.nested_dict_action import NestedDictAction

from espnet_freeze_omni.inference.random_model import (
    CONF_DIR,
    QUESTIONS,
    SHAPES,
    build_random_s2s,
    describe_shapes,
)
from espnet_freeze_omni.scoring.machine import device_name

SAMPLE_RATE = 16000

# Stage stamps of a dialogue, in seconds after the end of the user's speech (in this order).
STAGES = ("decision", "first_segment", "decoder_prefill", "first_packet_tokens", "first_pcm")
EXTRA_STAGES = ("first_token", "first_play")  # in the JSON too
# (from, to, label): the breakdown, then the totals.
SEGMENTS = (
    ("speech_end", "decision", "speech end -> state-head decision"),
    ("decision", "first_segment", "decision -> first text segment"),
    ("first_segment", "decoder_prefill", "first segment -> decoder prefill"),
    ("decoder_prefill", "first_packet_tokens", "decoder prefill -> first codec packet"),
    ("first_packet_tokens", "first_pcm", "codec packet tokens -> first PCM"),
)
TOTALS = (
    ("speech_end", "first_segment", "speech end -> first text segment"),
    ("speech_end", "first_pcm", "speech end -> first PCM"),
    ("decision", "first_packet_tokens", "decision -> first codec packet"),
    ("decision", "first_pcm", "decision -> first PCM"),
)
# The authors' latency table (Freeze-Omni, GPU server), P50 in ms; "user done" = speech end.
AUTHORS_P50_MS = {
    "speech_end->first_segment": 468.0,
    "first_segment->decoder_prefill": 15.0,
    "decoder_prefill->first_packet_tokens": 235.0,
    "first_packet_tokens->first_pcm": 11.0,
    "speech_end->first_pcm": 753.0,
}
# The authors' own loop at the tiny shapes (2 threads, no vocoder): decision -> first packet.
AUTHORS_TINY_LOOP_MS = 96.0
TINY_GOAL_RATIO = 0.7
TRAINED_GOALS_MS = {"decision->first_pcm": 150.0, "speech_end->first_pcm": 500.0}

# ---------------------------------------------------------------------------- statistics
def summarize(values_ms: Sequence[float]) -> Dict[str, float]:
    values = np.asarray([v for v in values_ms if v is not None and math.isfinite(v)])
    if not len(values):
        return dict(n=0, p50=None, p90=None, mean=None, min=None, max=None)
    return dict(n=int(len(values)), p50=float(np.percentile(values, 50)),
                p90=float(np.percentile(values, 90)), mean=float(values.mean()),
                min=float(values.min()), max=float(values.max()))


# ---------------------------------------------------------------------------- dialogues
@dataclasses.dataclass
class Dialogue:
    """One user turn to answer: 16 kHz input (speech + silence) and where the speech ends."""

    name: str
    wav: np.ndarray
    speech_end: float

    @property
    def duration(self) -> float:
        return len(self.wav) / SAMPLE_RATE


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(round(seconds * SAMPLE_RATE)), dtype=np.float32)


def synthesized_dialogues(count: int, work: Path, inputs: str, lead: float, tail: float,
                          seed: int) -> Tuple[List[Dialogue], str]:
    """Spoken questions (espeak-ng, varied voices) or noise bursts; (dialogues, description)."""
    import shutil

    if inputs == "auto":
        inputs = "espeak" if shutil.which("espeak-ng") and shutil.which("sox") else "noise"
    dialogues = []
    if inputs == "espeak":
        from espnet_freeze_omni.data.audio import load_audio
        from espnet_freeze_omni.data.espeak import pick_voice, synthesize
        from espnet_freeze_omni.data.speech_end import speech_end

        for i in range(count):
            text = QUESTIONS[i % len(QUESTIONS)]
            path = synthesize(text, work / "inputs" / f"q{i:03d}.wav", sample_rate=SAMPLE_RATE,
                              **pick_voice(i))
            speech = load_audio(str(path), SAMPLE_RATE)
            end = speech_end(speech, SAMPLE_RATE)
            speech = speech[:int(round(end * SAMPLE_RATE))]  # espeak's own trailing silence
            dialogues.append(Dialogue(f"q{i:03d}", np.concatenate(
                [silence(lead), speech, silence(tail)]), lead + len(speech) / SAMPLE_RATE))
        return dialogues, f"espeak-ng questions (varied voices), {lead:.2f} s lead, " \
                          f"{tail:.2f} s silence after"
    rng = np.random.RandomState(seed)
    for i in range(count):
        burst = (rng.randn(int(rng.uniform(1.0, 2.5) * SAMPLE_RATE)) * 0.1).astype(np.float32)
        dialogues.append(Dialogue(f"n{i:03d}", np.concatenate(
            [silence(lead), burst, silence(tail)]), lead + len(burst) / SAMPLE_RATE))
    return dialogues, f"noise bursts of 1-2.5 s (no espeak-ng), {tail:.2f} s silence after"


def wav_scp_dialogues(wav_scp: Path, count: int, tail: float) -> Tuple[List[Dialogue], str]:
    """The first `count` addressed turns of a wav.scp; speech end from the turn_info beside
    it, else by energy."""
    from espnet_freeze_omni.data.audio import load_audio
    from espnet_freeze_omni.data.kaldi_table import read_wav_scp
    from espnet_freeze_omni.data.speech_end import speech_end

    entries = read_wav_scp(wav_scp)
    turn_info = {}
    info_file = wav_scp.parent / "turn_info"
    if info_file.is_file():
        from espnet_freeze_omni.data.kaldi_table import read_turn_info

        turn_info = read_turn_info(info_file)
    dialogues = []
    for utt, spec in entries.items():
        if len(dialogues) >= count:
            break
        if utt in turn_info and turn_info[utt][0] != 1:
            continue  # side talk: not a question to answer
        wav = load_audio(spec, SAMPLE_RATE, utt)
        end = turn_info[utt][1] if utt in turn_info else speech_end(wav, SAMPLE_RATE)
        dialogues.append(Dialogue(utt, np.concatenate([wav, silence(tail)]), float(end)))
    source = "turn_info" if turn_info else "energy (no turn_info beside it)"
    return dialogues, f"{wav_scp} (speech end from {source}), {tail:.2f} s silence after"


# ---------------------------------------------------------------------------- scripting
class Script:
    """What random weights cannot do, scripted around unchanged computation (module
    docstring). `current` is the session being fed: the state head and the LLM are shared
    by every session of a concurrency run."""

    def __init__(self, s2s, respond_delay: Optional[float], answer_tokens: Optional[int],
                 segment_tokens: int, codec_tokens_per_token: Optional[int]):
        self.s2s = s2s
        self.respond_delay = respond_delay
        self.answer_tokens = answer_tokens
        self.segment_tokens = segment_tokens
        self.codec_tokens_per_token = codec_tokens_per_token
        self.current = None
        self.respond_at: Dict[int, int] = {}  # id(session) -> input samples
        self._undo: List = []
        if answer_tokens is not None:
            self._prepare_tokens()

    @property
    def active(self) -> bool:
        return any(x is not None for x in (self.respond_delay, self.answer_tokens,
                                           self.codec_tokens_per_token))

    def describe(self) -> List[str]:
        lines = []
        if self.respond_delay is not None:
            lines.append(f"decision scripted: the state head runs, but responds at the first "
                         f"chunk end >= speech end + {self.respond_delay:.2f} s (random weights "
                         "never decide)")
        if self.answer_tokens is not None:
            lines.append(f"answers scripted: {self.answer_tokens} tokens (end of turn "
                         f"suppressed until then), a comma / full stop every "
                         f"{self.segment_tokens} tokens, else the LLM's greedy pick among "
                         "plain word pieces")
        if self.codec_tokens_per_token is not None:
            lines.append(f"codec tokens: exactly {self.codec_tokens_per_token} per text token of "
                         "each segment (EOS suppressed before; generate_codec_tokens min_tokens)")
        return lines

    # ---------------------------------------------------------------- sessions
    def register(self, session, speech_end: float) -> None:
        if self.respond_delay is None:
            return
        chunk = session.chunk_samples
        at = int(math.ceil((speech_end + self.respond_delay) * session.sample_rate / chunk)) * chunk
        self.respond_at[id(session)] = at

    # ---------------------------------------------------------------- hooks
    def _prepare_tokens(self) -> None:
        from espnet_freeze_omni.inference.text_segmenter import CLAUSE_END

        llm = self.s2s.llm
        tokenizer = llm.tokenizer
        special = set(tokenizer.all_special_ids)
        allowed = torch.zeros(llm.vocab_size, dtype=torch.bool)
        # plain word pieces: no punctuation (the script places it), no digit (a "." after one
        # does not end a segment), no partial UTF-8, no special token
        for i in range(min(len(tokenizer), llm.vocab_size)):
            if i in special:
                continue
            text = tokenizer.decode([i])
            if text.strip() and not any(c.isdigit() for c in text) and "\ufffd" not in text \
                    and not any(p in text for p in CLAUSE_END):
                allowed[i] = True
        if not allowed.any():
            raise RuntimeError("the tokenizer has no plain word pieces to script answers with")
        self.allowed = allowed
        self.comma = self._single_id(",")
        self.full_stop = self._single_id(".")
        self.end_of_turn = llm.eos_token_ids[0]

    def _single_id(self, text: str) -> int:
        ids = self.s2s.llm.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise RuntimeError(f"{text!r} is not one token of this tokenizer: {ids}")
        return ids[0]

    def _steer(self, logits: torch.Tensor, index: int) -> None:
        """The pick of answer token `index`, in place on its logits row."""
        if index >= self.answer_tokens:
            forced = self.end_of_turn
        elif (index + 1) % self.segment_tokens == 0:
            forced = self.comma if index < self.segment_tokens else self.full_stop
        else:
            forced = None
        if forced is None:
            if self.allowed.device != logits.device:
                self.allowed = self.allowed.to(logits.device)
            logits.masked_fill_(~self.allowed, float("-inf"))
        else:
            logits.fill_(float("-inf"))
            logits[forced] = 0.0

    def __enter__(self) -> "Script":
        from espnet_freeze_omni.inference import speech_synthesis
        from espnet_freeze_omni.models.speech_input import STATE_LISTEN, STATE_RESPOND

        model, llm = self.s2s.listener.model, self.s2s.llm
        if self.respond_delay is not None:
            head = model.state_logits

            def state_logits(hidden):
                logits = head(hidden)  # the head's own compute stays in the measured time
                session = self.current
                respond = session is not None and not session.turns and \
                    session.consumed >= self.respond_at.get(id(session), math.inf)
                out = torch.full_like(logits, -5.0)
                out[..., STATE_RESPOND if respond else STATE_LISTEN] = 5.0
                return out

            model.state_logits = state_logits
            self._undo.append(lambda: delattr(model, "state_logits"))
        if self.answer_tokens is not None:
            extend = llm.extend

            def steered_extend(inputs_embeds, past_key_values, logits_to_keep=0):
                out = extend(inputs_embeds, past_key_values, logits_to_keep=logits_to_keep)
                answer = self.current.answer if self.current is not None else None
                # only the answer's own cache predicts answer tokens (a listening fork and
                # the finalizing feed do not)
                if answer is not None and not answer.llm_done and past_key_values is answer.cache:
                    self._steer(out.logits[0, -1], len(answer.tokens))
                return out

            llm.extend = steered_extend
            self._undo.append(lambda: delattr(llm, "extend"))
        if self.codec_tokens_per_token is not None:
            # WORKAROUND: the session has no option for a minimum codec length; it imports
            # generate_codec_tokens from its module at each segment, so the module's name
            # is wrapped (and restored on exit)
            generate = speech_synthesis.generate_codec_tokens
            per_token = self.codec_tokens_per_token

            def fixed_length(decoder, text_embeds, prefix=None, **kwargs):
                # per LLM token of the segment (the prefix has one row each; the text may be
                # split finer for the decoder)
                tokens = (prefix if prefix is not None else text_embeds).shape[-2]
                n = min(kwargs.get("max_tokens", 1000), per_token * tokens)
                kwargs.update(min_tokens=n, max_tokens=n)
                return generate(decoder, text_embeds, prefix, **kwargs)

            speech_synthesis.generate_codec_tokens = fixed_length
            self._undo.append(lambda: setattr(speech_synthesis, "generate_codec_tokens",
                                              generate))
        return self

    def __exit__(self, *exc) -> None:
        while self._undo:
            self._undo.pop()()


# ---------------------------------------------------------------------------- running
def drive(sessions, wavs: Sequence[np.ndarray], feed_seconds: float, script: Script,
          device: torch.device) -> Tuple[List[list], List[float]]:
    """Feed every session its input in `feed_seconds` pieces, round-robin (one process
    serving them all), then flush each; returns (events, compute seconds) per session."""
    step = max(1, int(round(feed_seconds * SAMPLE_RATE)))
    events = [[] for _ in sessions]
    spent = [0.0] * len(sessions)

    def call(i, fn, *a):
        script.current = sessions[i]
        t0 = time.perf_counter()
        events[i] += fn(*a)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        spent[i] += time.perf_counter() - t0

    for start in range(0, max(len(w) for w in wavs), step):
        for i, (session, wav) in enumerate(zip(sessions, wavs)):
            if start < len(wav):
                call(i, session.feed, wav[start:start + step])
    for i, session in enumerate(sessions):
        call(i, session.flush)
    script.current = None
    return events, spent


def dialogue_record(dialogue: Dialogue, events, spent: float) -> dict:
    """Stage times (ms after the speech end), compute and outcome of one dialogue."""
    turns = [e for e in events if e.type == "turn_ended"]
    done = [e for e in events if e.type == "answer_done"]
    rec = dict(name=dialogue.name, speech_end_s=round(dialogue.speech_end, 4),
               duration_s=round(dialogue.duration, 3), compute_s=round(spent, 4),
               decided=bool(turns), turns=len(turns),
               interrupted=any(e.type == "interrupted" for e in events), stages_ms={},
               answer_compute_s={}, status=None, answer_tokens=0)
    if not turns:
        return rec
    decision = turns[0].time
    stages = {"decision": (decision - dialogue.speech_end) * 1e3}
    if done:
        first = done[0].data
        rec.update(status=first.get("status"), answer_tokens=first.get("tokens", 0))
        for name, seconds in first.get("timings", {}).items():
            stages[name] = stages["decision"] + seconds * 1e3
        rec["answer_compute_s"] = {k: float(v) for k, v in first.get("compute", {}).items()}
    rec["stages_ms"] = {k: round(v, 3) for k, v in stages.items()}
    return rec


def breakdown(records: List[dict]) -> Dict[str, dict]:
    """P50/P90/mean (ms) of each segment and total over the dialogues that reached it."""
    return {f"{a}->{b}": dict(label=label, **summarize(segment_values(records, a, b)))
            for a, b, label in SEGMENTS + TOTALS}


def compute_shares(records: List[dict]) -> Dict[str, dict]:
    """Where the compute goes: the answers' stages, and the rest of the sessions' work
    (listening: frontend, encoder, adapter, LLM over the input, state head; VAD)."""
    totals: Dict[str, float] = {}
    for rec in records:
        for k, v in rec["answer_compute_s"].items():
            totals[k] = totals.get(k, 0.0) + v
    answers = sum(totals.values())
    overall = sum(rec["compute_s"] for rec in records)
    totals["listening + rest"] = max(0.0, overall - answers)
    return {k: dict(seconds=round(v, 4), share=(v / overall if overall else 0.0),
                    per_dialogue_ms=round(1e3 * v / max(1, len(records)), 2))
            for k, v in totals.items()}


def run_concurrency(s2s, dialogues: List[Dialogue], counts: Sequence[int], options: dict,
                    script: Script, feed_seconds: float, device: torch.device) -> List[dict]:
    """Real-time factor of N sessions in one process: their compute / their audio span."""
    out = []
    for n in counts:
        picked = [dialogues[i % len(dialogues)] for i in range(n)]
        length = max(len(d.wav) for d in picked)
        wavs = [np.concatenate([d.wav, np.zeros(length - len(d.wav), np.float32)])
                for d in picked]
        sessions = []
        for k, d in enumerate(picked):
            session = s2s.session(**options)
            session.reseed(f"concurrent{n}-{k}")
            script.register(session, d.speech_end)
            sessions.append(session)
        events, spent = drive(sessions, wavs, feed_seconds, script, device)
        audio = length / SAMPLE_RATE
        total = sum(spent)
        answered = sum(any(e.type == "answer_done" for e in ev) for ev in events)
        out.append(dict(sessions=n, audio_s=round(audio, 3), compute_s=round(total, 4),
                        rtf=total / audio, answered=answered))
    return out


# ---------------------------------------------------------------------------- reporting
def fmt(value: Optional[float], width: int = 8) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:{width}.1f}"


def report(result: dict) -> str:
    lines = []
    seg = result["segments"]
    lines.append("")
    lines.append(f"{'segment (ms)':<40}{'P50':>8}{'P90':>8}{'mean':>8}   authors P50 (GPU)")
    for a, b, label in SEGMENTS + TOTALS:
        key = f"{a}->{b}"
        if (a, b, label) == TOTALS[0]:
            lines.append("-" * 80)
        s = seg[key]
        ref = AUTHORS_P50_MS.get(key)
        ref_text = f"{ref:8.0f}" if ref is not None else ""
        if key == "decision->first_packet_tokens" and result["shapes"] == "tiny":
            ref_text = f"{AUTHORS_TINY_LOOP_MS:8.0f}  (their loop, tiny shapes, 2 threads)"
        lines.append(f"{label:<40}{fmt(s['p50'])}{fmt(s['p90'])}{fmt(s['mean'])}   {ref_text}")
    lines.append(f"(P50 of each segment: they need not add up to the total's P50; "
                 f"{result['answered']}/{result['dialogues']} dialogues answered)")
    if "goals" in result:
        lines.append("")
        for goal in result["goals"]:
            lines.append(goal["text"])
    lines.append("")
    lines.append("where the time goes (share of all session compute):")
    for name, share in sorted(result["compute"].items(), key=lambda kv: -kv[1]["seconds"]):
        lines.append(f"  {name:<18}{100 * share['share']:6.1f} %   "
                     f"{share['per_dialogue_ms']:9.1f} ms per dialogue")
    if result["concurrency"]:
        lines.append("")
        lines.append("concurrent sessions in one process (round-robin feed):")
        for row in result["concurrency"]:
            keeps = "keeps up with real time" if row["rtf"] < 1 else "slower than real time"
            lines.append(f"  N={row['sessions']:<3} compute {row['compute_s']:7.2f} s for "
                         f"{row['audio_s']:6.2f} s of audio each: RTF {row['rtf']:.3f} ({keeps})")
    return "\n".join(lines)


def goals(result: dict) -> List[dict]:
    seg = result["segments"]
    out = []
    if result["shapes"] == "tiny":
        p50 = seg["decision->first_packet_tokens"]["p50"]
        if p50 is not None:
            ratio = p50 / AUTHORS_TINY_LOOP_MS
            out.append(dict(name="tiny_first_packet_ratio", value=ratio, goal=TINY_GOAL_RATIO,
                            met=ratio <= TINY_GOAL_RATIO,
                            text=f"decision -> first codec packet P50 {p50:.1f} ms = "
                                 f"{ratio:.2f} x the authors' loop's {AUTHORS_TINY_LOOP_MS:.0f} "
                                 f"ms (goal <= {TINY_GOAL_RATIO} x: "
                                 f"{'met' if ratio <= TINY_GOAL_RATIO else 'NOT met'})"))
    if result["shapes"] == "trained":
        for key, goal in TRAINED_GOALS_MS.items():
            p50 = seg[key]["p50"]
            if p50 is None:
                continue
            out.append(dict(name=key, value=p50, goal=goal, met=p50 <= goal,
                            text=f"{seg[key]['label']} P50 {p50:.1f} ms (goal <= {goal:.0f} ms: "
                                 f"{'met' if p50 <= goal else 'NOT met'})"))
    return out


def segment_values(records: List[dict], a: str, b: str) -> List[float]:
    """ms from stage `a` to stage `b` in each dialogue that reached both."""
    values = []
    for rec in records:
        stages = dict(rec["stages_ms"], speech_end=0.0)
        if a in stages and b in stages:
            values.append(stages[b] - stages[a])
    return values


def plot(result: dict, records: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seg = result["segments"]
    colors = ["#9e9e9e", "#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    ours = [(label, seg[f"{a}->{b}"]["p50"] or 0.0, colors[i])
            for i, (a, b, label) in enumerate(SEGMENTS)]
    # the authors' table does not split speech end -> first segment at the decision
    authors = [("speech end -> first text segment (authors: not split)",
                AUTHORS_P50_MS["speech_end->first_segment"], None)]
    authors += [(label, AUTHORS_P50_MS[f"{a}->{b}"], colors[i])
                for i, (a, b, label) in enumerate(SEGMENTS) if f"{a}->{b}" in AUTHORS_P50_MS]
    rows = [("authors (GPU server)", authors), ("ours", ours)]
    widest = max(sum(w for _, w, _ in blocks) for _, blocks in rows)
    legend = [label for _, _, label in SEGMENTS] + [authors[0][0]]

    fig = plt.figure(figsize=(12, 7.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.5])
    ax = fig.add_subplot(grid[0, :])
    seen = set()
    for y, (_, blocks) in enumerate(rows):
        left = 0.0
        for label, width, color in blocks:
            style = dict(color=color) if color else dict(color="#e0e0e0", hatch="//",
                                                         edgecolor="#808080")
            ax.barh(y, width, left=left, height=0.6, label=None if label in seen else label,
                    **style)
            seen.add(label)
            if width >= 0.04 * widest:
                ax.text(left + width / 2, y, f"{width:.0f}", ha="center", va="center",
                        fontsize=8)
            left += width
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_xlim(0, widest * 1.02)
    ax.set_xlabel("ms after the end of the user's speech (P50 of each segment, stacked)")
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: legend.index(labels[i]))
    ax.legend([handles[i] for i in order], [labels[i] for i in order], fontsize=7,
              loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
    total = seg["speech_end->first_pcm"]["p50"]
    ax.set_title(f"{result['title']}: speech end -> first PCM P50 "
                 f"{'-' if total is None else f'{total:.0f}'} ms (authors 753 ms)", fontsize=10)

    box = fig.add_subplot(grid[1, :2])
    shown = SEGMENTS + (TOTALS[1], TOTALS[3])
    if any(segment_values(records, a, b) for a, b, _ in shown):
        box.boxplot([segment_values(records, a, b) or [float("nan")] for a, b, _ in shown],
                    orientation="horizontal", tick_labels=[label for _, _, label in shown])
        box.invert_yaxis()
    else:
        box.text(0.5, 0.5, "no dialogue was answered", ha="center", transform=box.transAxes)
    box.tick_params(axis="y", labelsize=8)
    box.set_xlabel("ms")
    box.set_title(f"per dialogue ({len(records)} dialogues)", fontsize=9)

    rtf = fig.add_subplot(grid[1, 2])
    if result["concurrency"]:
        rtf.bar([str(r["sessions"]) for r in result["concurrency"]],
                [r["rtf"] for r in result["concurrency"]], color="#4c72b0")
        rtf.axhline(1.0, color="r", linestyle="--", linewidth=1)
        rtf.set_xlabel("concurrent sessions")
        rtf.set_ylabel("RTF (compute / audio)")
        rtf.set_title("one process, round-robin", fontsize=9)
    else:
        rtf.axis("off")
    fig.suptitle(result["machine"], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- entry point
def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("Model")
    group.add_argument("--model_file", type=str, default=None,
                       help="a trained packed model (zip of scripts/utils/pack_model.py)")
    group.add_argument("--llm_path", type=str, default=None,
                       help="with --model_file: the frozen LLM's folder (default: recorded)")
    group.add_argument("--cachedir", type=str, default=None,
                       help="with --model_file: where espnet_model_zoo unpacks it")
    group.add_argument("--wav_scp", type=str, default=None,
                       help="with --model_file: Kaldi wav.scp of test questions (a turn_info "
                            "beside it gives the speech ends and skips side talk)")
    group.add_argument("--shapes", choices=sorted(SHAPES), default=None,
                       help="random weights at these shapes (default tiny without --model_file)")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    group.add_argument("--force", action="store_true",
                       help="run the paper shapes on a CPU anyway (very slow; tens of GB "
                            "of memory)")
    group.add_argument("--work_dir", type=str, default=None,
                       help="where the random models are built (kept, and reused when the "
                            "shapes match); default: a temporary dir")
    group.add_argument("--packet_conf", action=NestedDictAction, default=dict(),
                       help="PacketDecoder options over conf/decode.yaml's, e.g. "
                            "--packet_conf first_packet=10 --packet_conf lookahead=5")

    group = parser.add_argument_group("Dialogues")
    group.add_argument("--dialogues", type=int, default=20)
    group.add_argument("--warmup", type=int, default=1,
                       help="dialogues run first and not counted (first-call costs)")
    group.add_argument("--inputs", choices=("auto", "espeak", "noise"), default="auto",
                       help="random shapes: espeak-ng questions (auto: when installed) or noise")
    group.add_argument("--tail_seconds", type=float, default=None,
                       help="silence fed after each question (default: long enough for the "
                            "scripted answer to play, 6 s for a trained model)")
    group.add_argument("--feed_seconds", type=float, default=0.02,
                       help="input piece per feed() call, as a microphone delivers it")
    group.add_argument("--vad", choices=("auto", "on", "off"), default="auto",
                       help="Silero VAD gating the input (auto: on for a trained model, off "
                            "for random weights)")

    group = parser.add_argument_group("Random weights: scripted turn and answer")
    group.add_argument("--respond_delay", type=float, default=0.32,
                       help="respond at the first chunk end >= speech end + this (s)")
    group.add_argument("--answer_tokens", type=int, default=40,
                       help="answer length in LLM tokens (end of turn suppressed before)")
    group.add_argument("--segment_tokens", type=int, default=8,
                       help="a comma (first segment) / full stop every this many tokens")
    group.add_argument("--codec_tokens_per_token", type=int, default=10,
                       help="codec tokens (40 Hz) per text token of a segment: ~4 tokens/s")

    group = parser.add_argument_group("Run")
    group.add_argument("--concurrency", "--sessions", type=int, nargs="+", default=[1],
                       help="real-time factor of N concurrent sessions, for each N given")
    group.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--out_dir", type=str, default="bench_out/latency")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.model_file is not None:
        if args.shapes is not None:
            parser.error("give --model_file or --shapes, not both")
        if not Path(args.model_file).is_file():
            parser.error(f"--model_file {args.model_file}: no such file")
        if args.wav_scp is None:
            parser.error("--model_file needs --wav_scp (the model's own test questions)")
        if not Path(args.wav_scp).is_file():
            parser.error(f"--wav_scp {args.wav_scp}: no such file")
    elif args.shapes is None:
        args.shapes = "tiny"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine "
                     "(no GPU, or torch without CUDA)")
    if args.shapes == "paper" and not args.device.startswith("cuda") and not args.force:
        parser.error("--shapes paper is Qwen2-7B in bf16 plus the paper encoder and decoder: "
                     "it needs --device cuda (one H200 holds it); --force runs it on the CPU")
    for name in ("dialogues", "answer_tokens", "segment_tokens", "codec_tokens_per_token",
                 "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.warmup < 0 or any(n < 1 for n in args.concurrency):
        parser.error("--warmup must be >= 0 and every --concurrency >= 1")


def main(cmd=None):
    parser = get_parser()
    args = parser.parse_args(cmd)
    check_args(parser, args)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        with contextlib.ExitStack() as stack:
            if args.work_dir is None:
                work = Path(stack.enter_context(tempfile.TemporaryDirectory(
                    prefix="benchmark_latency_")))
            else:
                work = Path(args.work_dir)
                work.mkdir(parents=True, exist_ok=True)
            return run(args, work)
    finally:
        torch.set_num_threads(threads)


def run(args: argparse.Namespace, work: Path) -> dict:
    with open(CONF_DIR / "decode.yaml", encoding="utf-8") as f:
        decode = yaml.safe_load(f)
    decode_kwargs = {k: decode[k] for k in ("top_k", "guidance_scale", "max_codec_tokens",
                                            "seed", "min_segment_tokens", "long_segment_tokens",
                                            "packet_conf", "max_new_tokens") if k in decode}
    decode_kwargs["seed"] = args.seed
    if args.packet_conf:
        decode_kwargs["packet_conf"] = {**decode_kwargs.get("packet_conf", {}), **args.packet_conf}
    device = torch.device(args.device)
    trained = args.model_file is not None
    vad = args.vad == "on" or (args.vad == "auto" and trained)
    # before this run's own work: the 1-minute load of the other jobs (and earlier runs)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")

    t0 = time.perf_counter()
    if trained:
        from espnet_freeze_omni.inference.speech2speech import Speech2Speech

        s2s = Speech2Speech.from_pretrained(args.model_file, llm_path=args.llm_path,
                                            device=args.device, cachedir=args.cachedir,
                                            **decode_kwargs)
        script = Script(s2s, None, None, args.segment_tokens, None)
        tail = 6.0 if args.tail_seconds is None else args.tail_seconds
        dialogues, source = wav_scp_dialogues(Path(args.wav_scp), args.dialogues + args.warmup,
                                              tail)
        title = f"trained model {Path(args.model_file).name}"
    else:
        min_segment = decode_kwargs.get("min_segment_tokens", 4)
        if args.segment_tokens < min_segment:
            raise ValueError(f"--segment_tokens {args.segment_tokens} < min_segment_tokens "
                             f"{min_segment}: the segmenter would not cut there")
        s2s = build_random_s2s(args.shapes, work, args.device, args.seed, dict(decode_kwargs))
        script = Script(s2s, args.respond_delay, args.answer_tokens, args.segment_tokens,
                        args.codec_tokens_per_token)
        rate = s2s.codec.sample_rate / s2s.codec.samples_per_token
        answer_audio = args.answer_tokens * args.codec_tokens_per_token / rate
        tail = args.tail_seconds if args.tail_seconds is not None else \
            args.respond_delay + answer_audio + 1.0
        dialogues, source = synthesized_dialogues(args.dialogues + args.warmup, work, args.inputs,
                                                  lead=0.5, tail=tail, seed=args.seed)
        title = f"random weights, {args.shapes} shapes"
    build_s = time.perf_counter() - t0
    if len(dialogues) <= args.warmup:
        raise ValueError(f"{len(dialogues)} dialogues found, {args.warmup} needed for warm-up "
                         "and at least one to measure")
    options = dict(vad=vad, clock="measured")
    if script.answer_tokens is not None:
        options["max_new_tokens"] = args.answer_tokens + 1  # the script ends the turn first

    name = device_name(device)
    machine = f"{device} ({name}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"benchmark_latency: {title}; {machine}")
    if load > 0.5:
        # the session's clock is wall time: other jobs' CPU use shows up as latency
        print(f"  note: load average {load:.1f} on {os.cpu_count()} cores before the run; "
              "other jobs inflate every wall-clock figure (more so with --threads > 1)")
    print(f"models: {describe_shapes(s2s)} (built/loaded in {build_s:.1f} s)")
    print(f"dialogues: {len(dialogues) - args.warmup} (+{args.warmup} warm-up) from {source}; "
          f"session: vad {'on' if vad else 'off'}, clock measured, feed {args.feed_seconds} s")
    print(f"codec packets: {s2s.synthesizer.packet_conf or 'PacketDecoder defaults'}")
    for line in script.describe():
        print(f"  {line}")

    records = []
    with script:
        for i, dialogue in enumerate(dialogues):
            session = s2s.session(**options)
            session.reseed(dialogue.name)  # the same codec tokens whatever ran before
            script.register(session, dialogue.speech_end)
            events, spent = drive([session], [dialogue.wav], args.feed_seconds, script, device)
            if i < args.warmup:
                continue
            rec = dialogue_record(dialogue, events[0], spent[0])
            records.append(rec)
            stages = rec["stages_ms"]
            shown = " ".join(f"{k} {stages[k]:.0f}" for k in STAGES if k in stages)
            print(f"  {rec['name']}: speech end {rec['speech_end_s']:.2f} s | "
                  f"{shown or 'never decided'} (ms after speech end)", flush=True)
        concurrency = run_concurrency(s2s, dialogues[args.warmup:], args.concurrency, options,
                                      script, args.feed_seconds, device)

    result = dict(
        title=title, shapes="trained" if trained else args.shapes, machine=machine,
        load_average=load,
        device=str(device), threads=torch.get_num_threads(), vad=vad,
        model_file=args.model_file, inputs=source, scripted=script.describe(),
        packet_conf=dict(s2s.synthesizer.packet_conf),
        dialogues=len(records), answered=sum(1 for r in records if "first_pcm" in r["stages_ms"]),
        never_decided=sum(1 for r in records if not r["decided"]),
        interrupted=sum(1 for r in records if r["interrupted"]),
        authors_p50_ms=AUTHORS_P50_MS,
        stages={k: summarize([r["stages_ms"].get(k) for r in records])
                for k in STAGES + EXTRA_STAGES},
        segments=breakdown(records), compute=compute_shares(records), concurrency=concurrency,
        records=records, shapes_conf=None if trained else SHAPES[args.shapes],
    )
    if trained and result["never_decided"]:
        print(f"the state head never decided {result['never_decided']} of {len(records)} "
              "dialogues (not in the figures)")
    result["goals"] = goals(result)
    text = report(result)
    print(text)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "latency.json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    plot(result, records, out_dir / "latency.png")
    print(f"\nwrote {out_dir / 'latency.json'} and {out_dir / 'latency.png'}")
    return result


if __name__ == "__main__":
    main()
