"""Up-front checks of the audio a training job will read.

espnet's loaders read audio lazily, so an unreadable, empty or wrongly sampled file would
surface mid-epoch (or never, for a wrong rate). Training jobs call `check_sound_scp` on
every `sound` entry before the model is built; errors name the scp line, utterance and file.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

import soundfile


@dataclasses.dataclass
class AudioProblem:
    scp: str
    line: int
    utt_id: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.scp}:{self.line}: utterance '{self.utt_id}' ({self.path}): {self.reason}"


def check_sound_scp(scp: str | Path, expected_sample_rate: Optional[int] = None) -> List[AudioProblem]:
    """Header-only check of every entry of a wav.scp (`utt_id path`)."""
    problems: List[AudioProblem] = []
    scp = str(scp)
    with open(scp, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split(maxsplit=1)
            utt_id = parts[0]
            if len(parts) < 2:
                problems.append(AudioProblem(scp, lineno, utt_id, "", "no audio path"))
                continue
            path = parts[1].strip()
            if path.endswith("|"):
                continue  # a command pipe: espnet runs it, nothing to stat here
            try:
                info = soundfile.info(path)
            except Exception as e:  # soundfile raises several types for unreadable files
                problems.append(AudioProblem(scp, lineno, utt_id, path, f"cannot be read ({e})"))
                continue
            if info.frames == 0:
                problems.append(AudioProblem(scp, lineno, utt_id, path, "is empty (0 samples)"))
            elif expected_sample_rate and info.samplerate != expected_sample_rate:
                problems.append(AudioProblem(
                    scp, lineno, utt_id, path,
                    f"sample rate {info.samplerate} Hz, expected {expected_sample_rate} Hz",
                ))
    return problems
