"""User turns spoken by espeak-ng into a data dir with `turn_info` (label, speech end)."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

from espnet_freeze_omni.data.espeak import SpokenUtterance, pick_voice, synthesize_datadir
from espnet_freeze_omni.data.kaldi_table import read_wav_scp, write_turn_info
from espnet_freeze_omni.data.speech_end import speech_end_seconds


@dataclasses.dataclass(frozen=True)
class SpokenTurn:
    """A user turn to synthesize: label 1 = addressed to the assistant, 2 = side talk."""

    utt_id: str
    text: str
    label: int
    voice_index: int  # picks voice, speed and pitch (espeak.pick_voice)
    trailing_silence: float  # seconds after the speech, so the turn end is learnable
    pause: Optional[Tuple[int, float]] = None  # (words before it, seconds): see espeak


def synthesize_turn_datadir(turns: Sequence[SpokenTurn], data_dir: str | os.PathLike,
                            wav_dir: str | os.PathLike, sample_rate: int = 16000,
                            num_workers: int = 2) -> Path:
    """Speak turns with espeak-ng into a data dir plus `turn_info` (label, speech end)."""
    utts = []
    for t in turns:
        v = pick_voice(t.voice_index)
        speaker = f"{v['voice']}-s{v['speed']}-p{v['pitch']}".replace("+", "_")
        utts.append(SpokenUtterance(t.utt_id, t.text, speaker, trailing_silence=
                                    t.trailing_silence, pause=t.pause, **v))
    data_dir = Path(data_dir)
    synthesize_datadir(utts, data_dir, wav_dir, sample_rate=sample_rate,
                       num_workers=num_workers)
    wav = read_wav_scp(data_dir / "wav.scp")
    write_turn_info(data_dir / "turn_info",
                    {t.utt_id: (t.label, speech_end_seconds(wav[t.utt_id])) for t in turns})
    return data_dir
