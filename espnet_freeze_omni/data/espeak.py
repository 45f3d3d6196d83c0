"""Speech synthesis with Debian's espeak-ng, resampled by sox: the project's only TTS.

The embedded corpus, the tests and question synthesis in recipes all speak through here, so
voice/speed/pitch handling and the 16 kHz (or 24 kHz) conversion live in one place.
"""
from __future__ import annotations

import dataclasses
import os
import random
import shutil
import subprocess
import tempfile
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-us+f3", "en+m3", "en-us+klatt")


@dataclasses.dataclass(frozen=True)
class SpokenUtterance:
    """One utterance to synthesize and list in a Kaldi-style data dir."""

    utt_id: str
    text: str
    speaker: str
    voice: str = "en-us"
    speed: int = 160  # words per minute (espeak-ng -s)
    pitch: int = 50  # 0-99 (espeak-ng -p)
    trailing_silence: float = 0.0  # seconds of silence appended (turn-end training)
    # (words before the pause, seconds): a pause inside the turn, which the state head must
    # learn to sit through (labelled listen, as the turn's speech end comes after it)
    pause: Optional[Tuple[int, float]] = None


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(
            f"'{name}' is not installed: install the Debian packages espeak-ng, sox and "
            "libsox-fmt-all (tools/setup_env.sh does it when run as root)"
        )
    return path


def convert_to_wav(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int,
                   trailing_silence: float = 0.0) -> None:
    """Any audio sox reads -> mono 16-bit PCM wav at sample_rate, padded with silence."""
    effects = ["pad", "0", f"{trailing_silence:.3f}"] if trailing_silence > 0 else []
    # -R: sox dithers when it requantizes, from a random seed unless told otherwise;
    # repeatable mode makes the same input give the same bytes on every run
    proc = subprocess.run(
        [require_tool("sox"), "-R", str(src), "-r", str(sample_rate), "-c", "1", "-b", "16",
         "-e", "signed-integer", str(dst), *effects],
        capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sox cannot convert {src} to {dst}: {proc.stderr.strip()[-300:]}")


def speakable(text: str) -> str:
    """The text as espeak-ng can be given it on its command line: control, format and other
    non-printing characters (an undertrained LLM writes NUL bytes, which no argv can hold)
    become spaces."""
    return " ".join("".join(" " if unicodedata.category(c).startswith("C") else c
                            for c in text).split())


def synthesize(
    text: str,
    wav_path: str | os.PathLike,
    voice: str = "en-us",
    speed: int = 160,
    pitch: int = 50,
    sample_rate: int = 16000,
    trailing_silence: float = 0.0,
    pause: Optional[Tuple[int, float]] = None,
) -> Path:
    """Speak `text` into a mono 16-bit wav at `sample_rate` (espeak-ng writes 22050 Hz).

    `pause` = (k, seconds): the first k words, that much silence, the rest (each part spoken
    on its own, so the pause is real silence and not espeak-ng's phrasing)."""
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    if pause is not None:
        words = text.split()
        k, seconds = pause
        if not 0 < k < len(words):
            raise ValueError(f"{wav_path}: a pause after word {k} of {text!r} splits nothing")
        parts = [wav_path.with_name(f"{wav_path.stem}.part{i}.wav") for i in (1, 2)]
        try:
            synthesize(" ".join(words[:k]), parts[0], voice, speed, pitch, sample_rate, seconds)
            synthesize(" ".join(words[k:]), parts[1], voice, speed, pitch, sample_rate,
                       trailing_silence)
            proc = subprocess.run([require_tool("sox"), "-R", str(parts[0]), str(parts[1]),
                                   str(wav_path)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"sox cannot join {parts} into {wav_path}: "
                                   f"{proc.stderr.strip()[-300:]}")
        finally:
            for part in parts:
                part.unlink(missing_ok=True)
        return wav_path
    espeak = require_tool("espeak-ng")
    with tempfile.NamedTemporaryFile(suffix=".wav", delete=False) as tmp:
        raw = tmp.name
    try:
        subprocess.run(
            [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", raw,
             speakable(text)],
            check=True, capture_output=True,
        )
        convert_to_wav(raw, wav_path, sample_rate, trailing_silence)
    except subprocess.CalledProcessError as e:
        raise RuntimeError(
            f"synthesizing {wav_path} failed ({e.cmd[0]}): {e.stderr.decode(errors='replace')}"
        ) from e
    finally:
        os.unlink(raw)
    return wav_path


def synthesize_datadir(
    utterances: Iterable[SpokenUtterance],
    data_dir: str | os.PathLike,
    wav_dir: str | os.PathLike,
    sample_rate: int = 16000,
    num_workers: int = 2,
    progress: bool = False,
) -> Path:
    """Synthesize every utterance and write wav.scp, text, utt2spk and spk2utt (sorted)."""
    utts: List[SpokenUtterance] = sorted(utterances, key=lambda u: u.utt_id)
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate utterance ids: {dup[:5]}")
    data_dir, wav_dir = Path(data_dir), Path(wav_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)

    def job(u: SpokenUtterance) -> Path:
        return synthesize(u.text, wav_dir / f"{u.utt_id}.wav", u.voice, u.speed, u.pitch,
                          sample_rate, u.trailing_silence, u.pause)

    with ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        results = pool.map(job, utts)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(utts), desc=f"espeak-ng -> {data_dir}")
        paths = list(results)

    spk2utt: dict = {}
    with open(data_dir / "wav.scp", "w") as wav_scp, open(data_dir / "text", "w") as text, \
            open(data_dir / "utt2spk", "w") as utt2spk:
        for u, p in zip(utts, paths):
            wav_scp.write(f"{u.utt_id} {p}\n")
            text.write(f"{u.utt_id} {u.text}\n")
            utt2spk.write(f"{u.utt_id} {u.speaker}\n")
            spk2utt.setdefault(u.speaker, []).append(u.utt_id)
    with open(data_dir / "spk2utt", "w") as f:
        for spk in sorted(spk2utt):
            f.write(f"{spk} {' '.join(spk2utt[spk])}\n")
    return data_dir


# --------------------------------------------------------------------------------------
# voice indices: one integer names a voice, a speed and a pitch (pick_voice)
# --------------------------------------------------------------------------------------
# Two pools share the integer line. Below DIVERSE_BASE, the "classic" grid: VOICES x 4
# speeds x 3 pitches, what tests, benchmarks and the first recipes speak with. From
# DIVERSE_BASE on, the "diverse" pool of the embedded recipe: every training accent, plain
# and with every espeak-ng "+variant" (voices/!v/) that makes a distinct voice, at any
# integer speed and pitch of DIVERSE_SPEEDS / DIVERSE_PITCHES. Six voices teach a small
# encoder six voices; hundreds teach it speech (docs/experiments/2026-12-07-unseen-voices.md).
DIVERSE_BASE = 1 << 24
# espeak-ng applies a variant to these (not to "en-gb", which ignores it without a word)
TRAINING_ACCENTS = ("en-us", "en", "en-gb-x-rp")
# espeak-ng 1.51's variants, less those that are another's copy ("fast" is the plain voice,
# "klatt6" and "caleb" are "klatt") or unusable on the command line ("Mr serious"); the
# held-out ones (UNSEEN_TEST_CONDITIONS) are taken out in diverse_voices()
ESPEAK_VARIANTS = (
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Demonic", "Denis", "Diogo",
    "Gene", "Gene2", "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike",
    "Nguyen", "RicishayMax", "RicishayMax2", "RicishayMax3", "Storm", "Tweaky", "UniRobot",
    "adam", "anika", "anikaRobot", "announcer", "antonio", "aunty", "belinda", "benjamin",
    "boris", "croak", "david", "ed", "edward", "edward2", "f1", "f2", "f3", "f4", "f5",
    "grandma", "grandpa", "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "linda", "m1", "m2", "m3", "m4", "m5",
    "m6", "m7", "m8", "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul",
    "pedro", "quincy", "rob", "robert", "robosoft", "robosoft2", "robosoft3", "robosoft4",
    "robosoft5", "robosoft6", "robosoft7", "robosoft8", "sandro", "shelby", "steph", "steph2",
    "steph3", "travis", "victor", "whisper", "whisperf", "zac")
# inclusive integer ranges; the held-out speeds and pitches lie outside both
DIVERSE_SPEEDS = (130, 210)
DIVERSE_PITCHES = (30, 70)
VOICE_POOLS = ("classic", "diverse")


def pick_voice(index: int, voices: Optional[Iterable[str]] = None) -> dict:
    """Deterministic voice, speed and pitch of a voice index (see DIVERSE_BASE)."""
    if index >= DIVERSE_BASE:
        pool = diverse_voices()
        index -= DIVERSE_BASE
        num_speeds = DIVERSE_SPEEDS[1] - DIVERSE_SPEEDS[0] + 1
        num_pitches = DIVERSE_PITCHES[1] - DIVERSE_PITCHES[0] + 1
        if index >= len(pool) * num_speeds * num_pitches:
            raise ValueError(f"voice index {index + DIVERSE_BASE} is past the diverse pool")
        # mixed radix: voice, then speed, then pitch
        voice, rest = pool[index % len(pool)], index // len(pool)
        return dict(voice=voice, speed=DIVERSE_SPEEDS[0] + rest % num_speeds,
                    pitch=DIVERSE_PITCHES[0] + rest // num_speeds)
    voices = tuple(voices or VOICES)
    return dict(
        voice=voices[index % len(voices)],
        speed=(140, 160, 180, 200)[(index // len(voices)) % 4],
        pitch=(35, 50, 65)[(index // 7) % 3],
    )


def diverse_voices() -> Tuple[str, ...]:
    """The voices of the diverse pool: each training accent plain and with each variant that
    no held-out voice uses."""
    held_out = {voice_parts(v)[1] for v in UNSEEN_TEST_CONDITIONS.voices}
    variants = [v for v in ESPEAK_VARIANTS if v not in held_out]
    return tuple(f"{accent}+{v}" if v else accent
                 for accent in TRAINING_ACCENTS for v in [None] + variants)


def diverse_pool_size() -> int:
    return (len(diverse_voices()) * (DIVERSE_SPEEDS[1] - DIVERSE_SPEEDS[0] + 1)
            * (DIVERSE_PITCHES[1] - DIVERSE_PITCHES[0] + 1))


def voice_index(raw: int, pool: str) -> int:
    """A voice index of `pool` from any non-negative random integer (the same draw gives a
    classic or a diverse voice, so switching pools changes no other random choice)."""
    if pool == "classic":
        return raw
    if pool == "diverse":
        # a generator seeded by the draw spreads it evenly over the pool (a plain modulo of
        # a 20-bit draw would favour the low pitches)
        return DIVERSE_BASE + random.Random(raw).randrange(diverse_pool_size())
    raise ValueError(f"voice pool must be one of {VOICE_POOLS}, got {pool!r}")


# --------------------------------------------------------------------------------------
# held-out conditions: the qa_test_unseen test set (synthetic_world.unseen_test_plan)
# --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class HeldOutConditions:
    """Voices, speeds, pitches and noises that no training set may use (the whole list of
    what makes qa_test_unseen "unseen"; synthetic_world.check_held_out enforces it)."""

    # espeak-ng voices: English accents no training set speaks, and "+variant" formant
    # variants (espeak-ng-data/voices/!v/) no training voice uses, on a training accent or a
    # new one. espeak-ng 1.51 ignores a variant on "en-gb" without a word (en-gb+m5 is en-gb),
    # so the British one is "en+m5"; tests/test_unseen_voices.py checks each variant is heard
    voices: Tuple[str, ...]
    speeds: Tuple[int, ...]  # words per minute, all outside the training speed range
    pitches: Tuple[int, ...]  # espeak-ng -p, all outside the training pitch range
    # (kind, SNR dB): synthesized noise added to the whole utterance, trailing silence
    # included; kind "clean" (no noise) keeps a noise-free measure of the unseen voices
    noises: Tuple[Tuple[str, Optional[float]], ...]


UNSEEN_TEST_CONDITIONS = HeldOutConditions(
    voices=("en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
            "en-us+f4", "en-us+m7", "en+m5", "en-029+f2", "en-gb-scotland+m2"),
    speeds=(115, 125, 215, 230),
    pitches=(20, 27, 74, 82),
    noises=(("clean", None), ("white", 20.0), ("pink", 20.0)),
)
NOISE_KINDS = ("clean", "white", "pink")


def voice_parts(voice: str) -> Tuple[str, Optional[str]]:
    """'en-us+f4' -> ('en-us', 'f4'); 'en-029' -> ('en-029', None)."""
    base, _, variant = voice.partition("+")
    return base, variant or None


def make_noise(kind: str, num_samples: int, seed: int | Tuple[int, ...]):
    """`num_samples` of unit-power noise: "white" (flat spectrum) or "pink" (power 1/f,
    shaped in the frequency domain); the same seed always gives the same samples."""
    import numpy as np

    rng = np.random.default_rng(seed)
    white = rng.standard_normal(num_samples)
    if kind == "white":
        noise = white
    elif kind == "pink":
        spectrum = np.fft.rfft(white)
        freqs = np.arange(len(spectrum), dtype=np.float64)
        freqs[0] = 1.0  # no infinite DC gain
        noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=num_samples)
        noise -= noise.mean()
    else:
        raise ValueError(f"noise kind must be white or pink, got {kind!r}")
    power = float(np.mean(noise ** 2)) if num_samples else 0.0
    return noise / np.sqrt(power) if power > 0 else noise


def add_noise(wav_path: str | os.PathLike, kind: str, snr_db: float, speech_end: float,
              seed: int | Tuple[int, ...]) -> float:
    """Add `kind` noise to the whole of a 16-bit wav, in place, at `snr_db` relative to the
    mean power of the speech (the samples before `speech_end` seconds); returns the SNR
    achieved after 16-bit rounding and clipping, measured the same way."""
    import numpy as np
    import soundfile

    wav_path = Path(wav_path)
    audio, sr = soundfile.read(str(wav_path), dtype="float64")
    if audio.ndim != 1:
        raise ValueError(f"{wav_path}: add_noise takes mono audio, got {audio.shape[1]} channels")
    end = min(len(audio), int(round(speech_end * sr)))
    speech_power = float(np.mean(audio[:end] ** 2)) if end > 0 else 0.0
    if speech_power <= 0:
        raise ValueError(f"{wav_path}: no speech before {speech_end} s to set the noise level by")
    noise = make_noise(kind, len(audio), seed) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    noisy = np.clip(audio + noise, -1.0, 32767 / 32768)
    soundfile.write(str(wav_path), noisy, sr, subtype="PCM_16")
    written, _ = soundfile.read(str(wav_path), dtype="float64")
    residual = float(np.mean((written - audio) ** 2))
    return 10 * np.log10(speech_power / residual) if residual > 0 else float("inf")
