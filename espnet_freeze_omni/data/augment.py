"""Noise and room impulse responses for espnet's on-the-fly augmentation in training.

espnet's CommonPreprocessor (which SpeechInputPreprocessor extends) reverberates and adds
noise to each training utterance when its `rir_scp` / `noise_scp` options name lists of
wavs. This module writes those lists for a recipe, from what a fresh machine has without a
download:

- the noise and RIR recordings that ship in the espnet wheel (`egs3/mini_an4/esp2_asr/
  downloads.tar.gz`, located through the installed package);
- noise the recipe synthesizes: "brown" (power 1/f^2, a rumble), "hum" (mains hum: 50 or
  60 Hz and its harmonics over a little brown noise) and "babble" (several utterances of a
  training wav.scp spoken over each other, a room of other people);
- room impulse responses the recipe synthesizes: a direct path, then exponentially decaying
  noise with a reverberation time (RT60) of 0.2-0.8 s.

White and pink noise are what the held-out test set qa_test_unseen adds
(espeak.UNSEEN_TEST_CONDITIONS), so none is made here (check_not_held_out says so if that
ever changes).

    python -m espnet_freeze_omni.bin.make_augmentation_data --out data/local/augment \
        --babble_wav_scp data/train/wav.scp --seed 0

writes <out>/noise/*.wav, <out>/rirs/*.wav, <out>/noise.scp and <out>/rirs.scp (`id path`,
absolute paths), to be given to training as
`--preprocessor_conf noise_scp=<out>/noise.scp --preprocessor_conf rir_scp=<out>/rirs.scp`.
"""
from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

SAMPLE_RATE = 16000
SYNTHESIZED_NOISE_KINDS = ("brown", "hum", "babble")
ESPNET_SAMPLES = "egs3/mini_an4/esp2_asr/downloads.tar.gz"


def check_not_held_out(kinds: Sequence[str] = SYNTHESIZED_NOISE_KINDS) -> None:
    """Training noise must not be a noise of the held-out test set."""
    from espnet_freeze_omni.data.espeak import UNSEEN_TEST_CONDITIONS

    held_out = {kind for kind, _ in UNSEEN_TEST_CONDITIONS.noises} - {"clean"}
    overlap = sorted(set(kinds) & held_out)
    if overlap:
        raise ValueError(f"augmentation noise {overlap} is a held-out test noise "
                         "(espeak.UNSEEN_TEST_CONDITIONS): train with other noise")


def espnet_samples_archive() -> Path:
    """The espnet wheel's archive of AN4, noise and RIR samples."""
    spec = importlib.util.find_spec("egs3")
    roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations \
        else []
    for root in roots:
        path = Path(root).parent / ESPNET_SAMPLES
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{ESPNET_SAMPLES} is not in the installed espnet (looked under {roots or 'no egs3'}):"
        " install espnet from the wheel (make setup), or run without --espnet_samples")


def _unit_power(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    power = float(np.mean(x ** 2))
    return x / np.sqrt(power) if power > 0 else x


def brown_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Power falling as 1/f^2: integrated white noise, its drift taken out by a high-pass
    at ~20 Hz (a leaky integrator) so it stays a sound and not an offset."""
    from scipy.signal import lfilter

    leak = 1.0 - 2 * np.pi * 20 / SAMPLE_RATE
    return _unit_power(lfilter([1.0], [1.0, -leak], rng.standard_normal(num_samples)))


def hum_noise(num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Mains hum: a 50 or 60 Hz fundamental and odd/even harmonics of random strength,
    over brown noise 15 dB down."""
    t = np.arange(num_samples) / SAMPLE_RATE
    f0 = rng.choice((50.0, 60.0))
    hum = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
              for k in range(1, 8))
    return _unit_power(_unit_power(hum) + 10 ** (-15 / 20) * brown_noise(num_samples, rng))


def babble_noise(num_samples: int, rng: np.random.Generator, wavs: Sequence[str],
                 num_talkers: int = 6) -> np.ndarray:
    """`num_talkers` utterances drawn from `wavs`, each looped to the length at a random
    offset, summed: speech-shaped noise in which no single word stands out."""
    import soundfile

    if not wavs:
        raise ValueError("babble noise needs speech: the wav list is empty")
    out = np.zeros(num_samples)
    for path in rng.choice(list(wavs), size=num_talkers, replace=len(wavs) < num_talkers):
        audio, rate = soundfile.read(str(path), dtype="float64", always_2d=True)
        audio = audio.mean(axis=1)
        if rate != SAMPLE_RATE:
            raise ValueError(f"{path}: babble speech must be {SAMPLE_RATE} Hz, got {rate} Hz")
        if audio.size == 0:
            raise ValueError(f"{path}: empty audio cannot make babble noise")
        looped = np.resize(_unit_power(audio), num_samples + audio.size)
        start = int(rng.integers(audio.size))
        out += looped[start:start + num_samples]
    return _unit_power(out)


def synthetic_rir(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: the direct path at t=0, then exponentially decaying noise
    (60 dB down after rt60 seconds) starting a few ms later, as early reflections do."""
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    tail = rng.standard_normal(length) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078
    tail[: int(rng.uniform(0.002, 0.008) * SAMPLE_RATE)] = 0.0
    rir = 0.3 * tail / np.sqrt(np.sum(tail ** 2))
    rir[0] = 1.0
    return rir / np.max(np.abs(rir))


def extract_espnet_samples(out_dir: Path, noise_samples: int) -> Dict[str, List[Path]]:
    """Copy the wheel's noise and RIR wavs into out_dir/{noise,rirs}/, each noise looped
    to at least `noise_samples`."""
    import soundfile

    found: Dict[str, List[Path]] = {"noise": [], "rirs": []}
    archive = espnet_samples_archive()
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 3 or parts[1] not in found \
                    or not parts[2].endswith(".wav"):
                continue
            data = tar.extractfile(member).read()
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float64", always_2d=True)
            if rate != SAMPLE_RATE:
                raise ValueError(f"{archive}:{member.name}: expected {SAMPLE_RATE} Hz, "
                                 f"got {rate} Hz")
            path = out_dir / parts[1] / f"espnet_{Path(parts[2]).stem}.wav"
            audio = audio[:, 0]
            if parts[1] == "noise" and audio.size < noise_samples:
                # looped to the synthesized noises' length: espnet lays a noise much
                # shorter than the speech on part of it only, with a warning per utterance
                audio = np.resize(audio, noise_samples)
            soundfile.write(str(path), audio, rate, subtype="PCM_16")
            found[parts[1]].append(path)
    if not found["noise"] or not found["rirs"]:
        raise ValueError(f"{archive}: no downloads/noise/*.wav or downloads/rirs/*.wav in it")
    return found


def make_augmentation_data(out_dir: str | Path, seed: int = 0,
                           babble_wavs: Optional[Sequence[str]] = None,
                           num_per_kind: int = 4, num_rirs: int = 8,
                           noise_seconds: float = 8.0,
                           espnet_samples: bool = True) -> Dict[str, Path]:
    """Write the noise and RIR wavs and their lists; returns {"noise": scp, "rirs": scp}.

    Deterministic given the seed (and the babble wav list); `babble_wavs` None or empty
    leaves babble out."""
    import soundfile

    check_not_held_out()
    out_dir = Path(out_dir).resolve()
    for sub in ("noise", "rirs"):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_samples = int(noise_seconds * SAMPLE_RATE)
    lists: Dict[str, List[Path]] = {"noise": [], "rirs": []}
    makers = {"brown": lambda: brown_noise(num_samples, rng),
              "hum": lambda: hum_noise(num_samples, rng)}
    if babble_wavs:
        makers["babble"] = lambda: babble_noise(num_samples, rng, babble_wavs)
    for kind, make in makers.items():
        for i in range(num_per_kind):
            path = out_dir / "noise" / f"{kind}{i + 1}.wav"
            # 0.5 peak: the preprocessor scales noise to the drawn SNR anyway
            noise = make()
            soundfile.write(str(path), 0.5 * noise / np.max(np.abs(noise)), SAMPLE_RATE,
                            subtype="PCM_16")
            lists["noise"].append(path)
    for i, rt60 in enumerate(np.linspace(0.2, 0.8, num_rirs)):
        path = out_dir / "rirs" / f"synthetic_rt60_{rt60:.2f}_{i + 1}.wav"
        soundfile.write(str(path), synthetic_rir(float(rt60), rng), SAMPLE_RATE,
                        subtype="FLOAT")
        lists["rirs"].append(path)
    if espnet_samples:
        for sub, paths in extract_espnet_samples(out_dir, num_samples).items():
            lists[sub] += paths
    scps = {}
    for sub, paths in lists.items():
        scps[sub] = out_dir / f"{sub}.scp"
        scps[sub].write_text("".join(f"{p.stem} {p}\n" for p in paths))
    return scps
