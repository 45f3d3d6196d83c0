"""Duplex test sets after Full-Duplex-Bench v1 (and v1.5): one user channel, five scenarios.

    items = plan_duplex_set(questions, side_talk, num_items=25, seed=0)
    build_duplex_set(items, "data/duplex_test", "data/local/wav/duplex_test")

Each item is one 16 kHz recording, spoken by espeak-ng (voices, speeds and pitches of
`espeak.pick_voice`), that the duplex runner feeds as a microphone stream; the assistant's
answer is judged by when it speaks (scoring/duplex.py):

    pause         a question with a 1.0-2.0 s pause inside, then 3 s of silence: the
                  assistant should wait for the end of the question
    smooth        a question, then 4 s of silence: the assistant should answer in it
    interruption  question A, silence, then question B starting 1.6 s after A's speech end
                  (over the answer to A, if one is being spoken), then 4 s of silence: the
                  assistant should stop and answer B
    side_talk     a sentence addressed to someone else, then 3 s of silence: the assistant
                  should stay silent
    side_talk_over_answer
                  question A, silence, then a side-talk sentence (addressed to someone else,
                  as in side_talk) starting 1.6 s after A's speech end, so over the answer
                  to A if one is being spoken, then 4 s of silence: the assistant should
                  neither drop its answer to A for good nor answer the side talk (after
                  Full-Duplex-Bench v1.5's "talking to others" / background speech)

`num_items` is per scenario: a set of all five scenarios has 5 * num_items items.

The data dir holds wav.scp, text (for interruption: A then B; for side_talk_over_answer: A
then the side talk), utt2spk, spk2utt and `duplex_info`, one `<utt> <JSON>` line per item
with its scenario and its times in seconds, all measured on the written audio (10 ms frames
louder than 2 % of the loudest one, as `speech_end.speech_end_seconds`), never taken from
the nominal plan:

    every scenario  speech_start, speech_end (of the item's first utterance), duration
    pause           pause_start, pause_end (the silence inside the question)
    interruption    interrupt_start, interrupt_end (question B)
    side_talk_over_answer
                    side_talk_start, side_talk_end (the side-talk sentence)

plus the texts (`text`, `interrupt_text`, `side_talk_text`) and what was planned (`voice`,
`nominal_pause`, `pause_after_word`). Item ids are `<scenario>-NNNN`. Everything is
deterministic given the seed and the texts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from espnet_freeze_omni.data.audio import read_audio
from espnet_freeze_omni.data.kaldi_table import (
    read_table,
    utt2spk_to_spk2utt,
    write_kaldi_map,
)
from espnet_freeze_omni.data.speech_end import loud_frames, speech_end_seconds

# side_talk_over_answer came last, with random streams of its own (plan_duplex_set): the
# items of the four before it are what they were without it
SCENARIOS = ("pause", "smooth", "interruption", "side_talk", "side_talk_over_answer")
PAUSE_SECONDS = (1.0, 2.0)  # the pause inside a question, uniform
PAUSE_TRAILING = 3.0  # seconds of silence after a paused question
SMOOTH_TRAILING = 4.0
INTERRUPT_GAP = 1.6  # question B starts this long after the end of question A
INTERRUPT_TRAILING = 4.0
SIDE_TALK_TRAILING = 3.0
SIDE_TALK_OVER_ANSWER_TRAILING = 4.0  # the side talk starts INTERRUPT_GAP after question A

# the times each scenario's duplex_info carries, in the order they must come
TIMES = {
    "pause": ("speech_start", "pause_start", "pause_end", "speech_end", "duration"),
    "smooth": ("speech_start", "speech_end", "duration"),
    "interruption": ("speech_start", "speech_end", "interrupt_start", "interrupt_end",
                     "duration"),
    "side_talk": ("speech_start", "speech_end", "duration"),
    "side_talk_over_answer": ("speech_start", "speech_end", "side_talk_start", "side_talk_end",
                              "duration"),
}
# the scenarios that speak a second utterance INTERRUPT_GAP after the first one's end
OVERLAID = ("interruption", "side_talk_over_answer")


@dataclasses.dataclass(frozen=True)
class DuplexItem:
    """One planned item: what is said, by which voice, and (pause) where it pauses."""

    utt_id: str
    scenario: str
    text: str
    voice_index: int
    pause: Optional[Tuple[int, float]] = None  # (words before the pause, seconds)
    interrupt_text: Optional[str] = None  # interruption: question B
    side_talk_text: Optional[str] = None  # side_talk_over_answer: said over the answer

    @property
    def second_text(self) -> Optional[str]:
        """What is said INTERRUPT_GAP after the first utterance (OVERLAID scenarios)."""
        return self.interrupt_text if self.side_talk_text is None else self.side_talk_text


# ---------------------------------------------------------------------------- texts
def load_questions(path: str | os.PathLike) -> List[str]:
    """The "question" of every JSON line of a refs file (e.g. qa_test_refs.jsonl)."""
    from espnet_freeze_omni.data.json_lines import read_json_lines

    questions = []
    for lineno, row in read_json_lines(path):
        question = row.get("question") if isinstance(row, dict) else None
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}:{lineno}: no \"question\" text in "
                             f"{json.dumps(row)[:80]}")
        questions.append(" ".join(question.split()))
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions


def load_sentences(path: str | os.PathLike) -> List[str]:
    """One sentence a line (side talk); empty lines are skipped."""
    with open(path, encoding="utf-8") as f:
        sentences = [" ".join(line.split()) for line in f if line.strip()]
    if not sentences:
        raise ValueError(f"{path}: no sentences")
    return sentences


class _Deck:
    """Texts drawn in a shuffled order without repeats until all were used, then again."""

    def __init__(self, texts: Sequence[str], rng: random.Random):
        self.texts, self.rng, self.order = list(texts), rng, []

    def draw(self, ok=lambda text: True, avoid: Optional[str] = None) -> str:
        for _ in range(2 * len(self.texts) + 2):
            if not self.order:
                self.order = list(self.texts)
                self.rng.shuffle(self.order)
            text = self.order.pop()
            if ok(text) and (text != avoid or len(set(self.texts)) == 1):
                return text
        raise ValueError("no text fits (a paused question needs 2 words or more)")


def plan_duplex_set(questions: Sequence[str], side_talk: Sequence[str], num_items: int = 25,
                    seed: int = 0, scenarios: Sequence[str] = SCENARIOS) -> List[DuplexItem]:
    """`num_items` items of each scenario, deterministic given the seed and the texts.

    Questions are drawn without repeats (pause, then smooth, then both questions of each
    interruption) until every one was used; each scenario has its own voices and pauses.
    side_talk_over_answer draws its questions and side-talk sentences from decks of its own
    (shuffled by their own seeds), so that adding it changed none of the other items, and
    choosing it or not changes none of theirs."""
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown duplex scenario(s) {unknown}: choose from {SCENARIOS}")
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    if not questions and any(s != "side_talk" for s in scenarios):
        raise ValueError(f"scenario(s) {[s for s in scenarios if s != 'side_talk']} need "
                         "questions, none given")
    if not side_talk and any(s in ("side_talk", "side_talk_over_answer") for s in scenarios):
        raise ValueError("side_talk and side_talk_over_answer need side-talk sentences, "
                         "none given")
    deck = _Deck(questions, random.Random(f"duplex-questions-{seed}"))
    talk = _Deck(side_talk, random.Random(f"duplex-side-talk-{seed}"))
    over_deck = _Deck(questions,
                      random.Random(f"duplex-side_talk_over_answer-questions-{seed}"))
    over_talk = _Deck(side_talk,
                      random.Random(f"duplex-side_talk_over_answer-side-talk-{seed}"))
    items = []
    for scenario in SCENARIOS:
        if scenario not in scenarios:
            continue
        rng = random.Random(f"duplex-{scenario}-{seed}")
        for n in range(1, num_items + 1):
            utt = f"{scenario}-{n:04d}"
            voice = rng.randrange(1 << 20)
            if scenario == "pause":
                text = deck.draw(ok=lambda t: len(t.split()) >= 2)
                words = len(text.split())
                k = rng.randint(2, words - 2) if words >= 4 else rng.randint(1, words - 1)
                seconds = round(rng.uniform(*PAUSE_SECONDS), 2)
                items.append(DuplexItem(utt, scenario, text, voice, pause=(k, seconds)))
            elif scenario == "smooth":
                items.append(DuplexItem(utt, scenario, deck.draw(), voice))
            elif scenario == "interruption":
                first = deck.draw()
                items.append(DuplexItem(utt, scenario, first, voice,
                                        interrupt_text=deck.draw(avoid=first)))
            elif scenario == "side_talk":
                items.append(DuplexItem(utt, scenario, talk.draw(), voice))
            else:
                items.append(DuplexItem(utt, scenario, over_deck.draw(), voice,
                                        side_talk_text=over_talk.draw()))
    return items


# ---------------------------------------------------------------------------- audio
def speech_bounds(audio: np.ndarray, sample_rate: int) -> Tuple[float, float, float, float]:
    """(speech start, start of the longest silence inside the speech, its end, speech end)
    in seconds (10 ms resolution)."""
    loud, hop = loud_frames(audio, sample_rate)
    if len(loud) == 0:
        raise ValueError("no speech in the audio")
    to_s = lambda frame: round(frame * hop / sample_rate, 2)  # noqa: E731
    start, end = to_s(loud[0]), to_s(loud[-1] + 1)
    if len(loud) == 1:
        return start, end, end, end
    gaps = np.diff(loud)
    i = int(np.argmax(gaps))
    if gaps[i] <= 1:
        return start, end, end, end
    return start, to_s(loud[i] + 1), to_s(loud[i + 1]), end


def _read(path: Path, sample_rate: int) -> np.ndarray:
    # the synthesizer was asked for sample_rate: another rate is a bug, not data to convert
    audio, rate = read_audio(str(path))
    if rate != sample_rate:
        raise ValueError(f"{path}: {rate} Hz, expected {sample_rate} Hz")
    return audio


def _pad_to(audio: np.ndarray, seconds: float, sample_rate: int) -> np.ndarray:
    total = int(round(seconds * sample_rate))
    if len(audio) >= total:
        return audio[:total]
    return np.concatenate([audio, np.zeros(total - len(audio), dtype=np.float32)])


def _write(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile

    soundfile.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16")


def build_item(item: DuplexItem, wav_path: str | os.PathLike, sample_rate: int = 16000
               ) -> Dict:
    """Speak one item into `wav_path`; returns its duplex_info (times measured on the file)."""
    from espnet_freeze_omni.data.espeak import pick_voice, synthesize

    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    voice = pick_voice(item.voice_index)
    with tempfile.TemporaryDirectory(dir=wav_path.parent, prefix=f".{item.utt_id}.") as tmp:
        first = Path(tmp) / "a.wav"
        synthesize(item.text, first, sample_rate=sample_rate, pause=item.pause, **voice)
        audio = _read(first, sample_rate)
        end_a = speech_end_seconds(first)
        if item.scenario in OVERLAID:
            # the second utterance starts INTERRUPT_GAP after the first one's speech end
            trailing = {"interruption": INTERRUPT_TRAILING,
                        "side_talk_over_answer": SIDE_TALK_OVER_ANSWER_TRAILING}[item.scenario]
            second = Path(tmp) / "b.wav"
            synthesize(item.second_text, second, sample_rate=sample_rate, **voice)
            audio_b = _read(second, sample_rate)
            lead_b = speech_bounds(audio_b, sample_rate)[0]
            end_b = speech_end_seconds(second)
            offset = int(round((end_a + INTERRUPT_GAP - lead_b) * sample_rate))
            total = max(offset + len(audio_b), int(round((offset / sample_rate + end_b
                                                          + trailing) * sample_rate)))
            mix = np.zeros(total, dtype=np.float32)
            head = min(len(audio), total)
            mix[:head] += audio[:head]
            mix[offset:offset + len(audio_b)] += audio_b
            audio = _pad_to(mix, offset / sample_rate + end_b + trailing, sample_rate)
        else:
            trailing = {"pause": PAUSE_TRAILING, "smooth": SMOOTH_TRAILING,
                        "side_talk": SIDE_TALK_TRAILING}[item.scenario]
            audio = _pad_to(audio, end_a + trailing, sample_rate)
        _write(wav_path, audio, sample_rate)

    # every time from the written file
    audio = _read(wav_path, sample_rate)
    start, gap_start, gap_end, end = speech_bounds(audio, sample_rate)
    if abs(end - speech_end_seconds(wav_path)) > 1e-6:  # one measure for every bound
        raise RuntimeError(f"{wav_path}: speech end {end} s differs from "
                           f"speech_end_seconds {speech_end_seconds(wav_path)} s")
    info = {"scenario": item.scenario, "text": item.text, "speech_start": start,
            "duration": round(len(audio) / sample_rate, 4),
            "voice": "{voice}-s{speed}-p{pitch}".format(**voice)}
    if item.scenario == "pause":
        k, seconds = item.pause
        if gap_end - gap_start < 0.8 * seconds:
            raise RuntimeError(f"{wav_path}: the {seconds} s pause after word {k} of "
                               f"{item.text!r} is not in the audio (longest silence inside "
                               f"the speech: {gap_start}-{gap_end} s)")
        info.update(pause_start=gap_start, pause_end=gap_end, speech_end=end,
                    nominal_pause=seconds, pause_after_word=k)
    elif item.scenario in OVERLAID:
        if gap_end - gap_start < INTERRUPT_GAP - 0.3:
            raise RuntimeError(f"{wav_path}: no {INTERRUPT_GAP} s silence between the "
                               f"utterances (longest: {gap_start}-{gap_end} s)")
        if item.scenario == "interruption":
            info.update(speech_end=gap_start, interrupt_start=gap_end, interrupt_end=end,
                        interrupt_text=item.interrupt_text)
        else:
            info.update(speech_end=gap_start, side_talk_start=gap_end, side_talk_end=end,
                        side_talk_text=item.side_talk_text)
    else:
        info.update(speech_end=end)
    problem = check_duplex_info(info)
    if problem:
        raise RuntimeError(f"{wav_path}: {problem}")
    return info


def build_duplex_set(items: Sequence[DuplexItem], data_dir: str | os.PathLike,
                     wav_dir: str | os.PathLike, sample_rate: int = 16000,
                     num_workers: int = 2, progress: bool = False) -> Path:
    """Speak every item into `wav_dir` and write the Kaldi data dir with its duplex_info."""
    ids = [i.utt_id for i in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate utterance ids: {sorted({i for i in ids if ids.count(i) > 1})[:5]}")
    data_dir, wav_dir = Path(data_dir), Path(wav_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    wav_dir.mkdir(parents=True, exist_ok=True)

    def job(item: DuplexItem) -> Dict:
        try:
            return build_item(item, wav_dir / f"{item.utt_id}.wav", sample_rate)
        except Exception as e:
            raise RuntimeError(f"duplex item {item.utt_id} ({item.text!r}): {e}") from e

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(job, items)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(items), desc=f"espeak-ng -> {data_dir}")
        infos = dict(zip(ids, results))
    texts = {i.utt_id: i.text if i.second_text is None else f"{i.text} {i.second_text}"
             for i in items}
    utt2spk = {u: infos[u]["voice"].replace("+", "_") for u in ids}
    write_kaldi_map(data_dir / "wav.scp", {u: str(wav_dir / f"{u}.wav") for u in ids})
    write_kaldi_map(data_dir / "text", texts)
    write_kaldi_map(data_dir / "utt2spk", utt2spk)
    write_kaldi_map(data_dir / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    write_duplex_info(data_dir / "duplex_info", infos)
    return data_dir


# ---------------------------------------------------------------------------- duplex_info
def check_duplex_info(value) -> Optional[str]:
    """Why a duplex_info value (a JSON text or a dict) is malformed, or None."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            return f"duplex_info is not JSON ({e.msg})"
    if not isinstance(value, dict):
        return "duplex_info must be a JSON object"
    scenario = value.get("scenario")
    if scenario not in TIMES:
        return f"scenario must be one of {list(SCENARIOS)}, got {scenario!r}"
    times = []
    for key in TIMES[scenario]:
        t = value.get(key)
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t < 0:
            return f"{scenario}: {key} must be a number of seconds >= 0, got {t!r}"
        times.append(t)
    if any(b < a for a, b in zip(times, times[1:])):
        order = " <= ".join(TIMES[scenario])
        return f"{scenario}: times must satisfy {order}, got {times}"
    return None


def write_duplex_info(path: str | os.PathLike, infos: Dict[str, Dict]) -> Path:
    return write_kaldi_map(path, {u: json.dumps(i, sort_keys=True, ensure_ascii=False)
                                  for u, i in infos.items()})


def read_duplex_info(path: str | os.PathLike) -> Dict[str, Dict]:
    """{utt: info} of a duplex_info file; a malformed line is named by file and line."""
    entries, problems = read_table(path)
    if problems:
        raise ValueError(str(problems[0]))
    out = {}
    for e in entries:
        problem = check_duplex_info(e.value)
        if problem:
            raise ValueError(f"{path}:{e.line}: [{e.key}] {problem}")
        if e.key in out:
            raise ValueError(f"{path}:{e.line}: duplicate id {e.key}")
        out[e.key] = json.loads(e.value)
    return out


def make_duplex_set(refs: str | os.PathLike, side_talk: str | os.PathLike,
                    data_dir: str | os.PathLike, wav_dir: Optional[str | os.PathLike] = None,
                    num_items: int = 25, seed: int = 0, scenarios: Sequence[str] = SCENARIOS,
                    sample_rate: int = 16000, num_workers: int = 2,
                    progress: bool = False) -> List[DuplexItem]:
    """The whole set from a refs jsonl ("question") and a side-talk text file."""
    needs_questions = any(s != "side_talk" for s in scenarios)
    needs_side_talk = any(s in ("side_talk", "side_talk_over_answer") for s in scenarios)
    questions = load_questions(refs) if needs_questions else []
    sentences = load_sentences(side_talk) if needs_side_talk else []
    items = plan_duplex_set(questions, sentences, num_items, seed, scenarios)
    wav_dir = Path(wav_dir) if wav_dir else Path(data_dir) / "wav"
    build_duplex_set(items, data_dir, wav_dir, sample_rate, num_workers, progress)
    return items


# ---------------------------------------------------------------------------- command line
def get_parser():
    import argparse

    parser = argparse.ArgumentParser(
        description="Make a duplex test set (Full-Duplex-Bench v1 style: pause, smooth, "
                    "interruption, side_talk; v1.5 style: side_talk_over_answer) as a Kaldi "
                    "data dir with duplex_info.",
        epilog="python -m espnet_freeze_omni.data.duplex_sets --refs "
               "data/local/world/qa_test_refs.jsonl --side_talk "
               "data/local/world/side_talk_test.txt --out data/duplex_test "
               "--wav_dir data/local/wav/duplex_test --num_items 25")
    parser.add_argument("--refs", required=True,
                        help='JSON lines with a "question" (e.g. qa_test_refs.jsonl): the '
                             "questions of pause, smooth, interruption and "
                             "side_talk_over_answer items")
    parser.add_argument("--side_talk", required=True,
                        help="one sentence a line, not addressed to the assistant (side_talk "
                             "and side_talk_over_answer items)")
    parser.add_argument("--out", required=True, help="the data dir to write")
    parser.add_argument("--wav_dir", default=None, help="where the wavs go (default <out>/wav)")
    parser.add_argument("--num_items", type=int, default=25,
                        help="items per scenario (the set has this many times the number of "
                             "scenarios)")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sample_rate", type=int, default=16000)
    parser.add_argument("--nj", type=int, default=2, help="parallel espeak-ng/sox jobs")
    return parser


def main(cmd=None) -> int:
    import collections
    import time

    args = get_parser().parse_args(cmd)
    start = time.time()
    items = make_duplex_set(args.refs, args.side_talk, args.out, args.wav_dir, args.num_items,
                            args.seed, args.scenarios, args.sample_rate, args.nj)
    counts = collections.Counter(i.scenario for i in items)
    print(f"duplex_sets: {args.out}: {len(items)} items "
          f"({', '.join(f'{s} {counts[s]}' for s in SCENARIOS if counts[s])}), seed "
          f"{args.seed}; {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
