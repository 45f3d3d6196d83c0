"""How close speech stays to itself through a codec round trip: signal measures.

  stoi           short-time objective intelligibility (Taal et al. 2011; own implementation
                 of the standard 15-band, 384 ms algorithm), 0..1, clean speech = 1
  mcd            mel-cepstral distortion in dB between original and round trip, from 80-band
                 log-mel cepstra c1..c24 on frames within 40 dB of the utterance peak
  word_accuracy  isolated-word identification by DTW over mel cepstra (a listening proxy
                 for a closed vocabulary)

`codec_intelligibility.py` runs them over a data dir; `bin/codec_intelligibility` is the
command line.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np
import torch

from espnet_freeze_omni.data.audio import resample


def resampled64(x: np.ndarray, sr: int, to: int) -> np.ndarray:
    """float64 samples at `to`: the measures compute in double precision."""
    return resample(np.asarray(x, dtype=np.float32), sr, to).astype(np.float64)


def stoi(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> float:
    """Short-time objective intelligibility of `processed` against time-aligned `clean`."""
    fs, frame, nfft, segment, beta, dyn_range = 10000, 256, 512, 30, -15.0, 40.0
    x, y = resampled64(clean, sample_rate, fs), resampled64(processed, sample_rate, fs)
    n = min(len(x), len(y))
    x, y = x[:n], y[:n]
    window = np.hanning(frame + 2)[1:-1]
    hop = frame // 2

    def frames(sig):
        starts = np.arange(0, len(sig) - frame, hop)
        return np.stack([sig[s:s + frame] * window for s in starts]) if len(starts) else \
            np.zeros((0, frame))

    # drop frames more than 40 dB below the loudest clean frame, in both signals
    fx, fy = frames(x), frames(y)
    energy = 20 * np.log10(np.linalg.norm(fx, axis=1) + 1e-12)
    keep = energy > energy.max() - dyn_range if len(energy) else energy.astype(bool)
    fx, fy = fx[keep], fy[keep]

    def overlap_add(fr):
        out = np.zeros((len(fr) - 1) * hop + frame) if len(fr) else np.zeros(0)
        for i, f in enumerate(fr):
            out[i * hop:i * hop + frame] += f
        return out

    x, y = overlap_add(fx), overlap_add(fy)
    spec_x = np.abs(np.fft.rfft(frames(x), nfft)) ** 2
    spec_y = np.abs(np.fft.rfft(frames(y), nfft)) ** 2
    # one-third octave bands from 150 Hz
    freqs = np.linspace(0, fs, nfft + 1)[: nfft // 2 + 1]
    bands = np.zeros((15, len(freqs)))
    for i, centre in enumerate(150 * 2 ** (np.arange(15) / 3)):
        lo = np.argmin((freqs - centre * 2 ** (-1 / 6)) ** 2)
        hi = np.argmin((freqs - centre * 2 ** (1 / 6)) ** 2)
        bands[i, lo:hi] = 1
    bx, by = np.sqrt(spec_x @ bands.T).T, np.sqrt(spec_y @ bands.T).T  # (15, frames)
    clip = 10 ** (-beta / 20)
    scores = []
    for m in range(segment, bx.shape[1] + 1):
        xs, ys = bx[:, m - segment:m], by[:, m - segment:m]
        alpha = np.linalg.norm(xs, axis=1, keepdims=True) / (
            np.linalg.norm(ys, axis=1, keepdims=True) + 1e-12)
        yp = np.minimum(ys * alpha, xs * (1 + clip))
        xs = xs - xs.mean(1, keepdims=True)
        yp = yp - yp.mean(1, keepdims=True)
        corr = (xs * yp).sum(1) / (np.linalg.norm(xs, axis=1) * np.linalg.norm(yp, axis=1) + 1e-12)
        scores.append(corr.mean())
    return float(np.mean(scores)) if scores else float("nan")


class Cepstra:
    """Log-mel cepstra (natural-log amplitude, cepstral scaling) for MCD and DTW."""

    def __init__(self, sample_rate: int, n_mels: int = 80, n_cep: int = 24):
        import torchaudio

        self.sample_rate = sample_rate
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=1024, win_length=int(0.025 * sample_rate),
            hop_length=int(0.005 * sample_rate), n_mels=n_mels)
        # orthonormal DCT-II scaled so coefficients are those of log|X| = c0 + 2 sum c_n cos(.)
        self.dct = torchaudio.functional.create_dct(n_cep + 1, n_mels, "ortho") / np.sqrt(
            2 * n_mels)

    def __call__(self, wav: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """-> (cepstra c1..c_n (frames, n_cep), frame log-energy (frames,))."""
        power = self.mel(torch.as_tensor(wav, dtype=torch.float32)).clamp(min=1e-10)
        log_amp = 0.5 * power.log().T
        cep = (log_amp @ self.dct).numpy()
        return cep[:, 1:], power.sum(0).log().numpy()


_CEPSTRA: Dict[int, Cepstra] = {}


def mcd(ref: np.ndarray, syn: np.ndarray, sample_rate: int) -> float:
    """Mel-cepstral distortion (dB) of time-aligned signals over frames within 40 dB of peak."""
    if sample_rate not in _CEPSTRA:
        _CEPSTRA[sample_rate] = Cepstra(sample_rate)
    cep = _CEPSTRA[sample_rate]
    n = min(len(ref), len(syn))
    ca, energy = cep(ref[:n])
    cb, _ = cep(syn[:n])
    keep = energy > energy.max() - np.log(1e4)
    dist = np.sqrt(2 * ((ca - cb) ** 2).sum(1))[keep]
    return float(10 / np.log(10) * dist.mean())


def dtw_costs(test: np.ndarray, refs: Sequence[np.ndarray]) -> np.ndarray:
    """Length-normalised DTW cost (steps (1,0), (0,1), (1,1)) of `test` against every ref,
    vectorised across the refs (padded; costs are read at each ref's own length)."""
    lens = np.array([len(r) for r in refs])
    padded = np.zeros((len(refs), lens.max(), test.shape[1]))
    for k, r in enumerate(refs):
        padded[k, :len(r)] = r
    dist = np.sqrt(((test[None, :, None] - padded[:, None]) ** 2).sum(-1))  # (R, n, L)
    prev = np.full((len(refs), lens.max() + 1), np.inf)
    prev[:, 0] = 0.0
    for i in range(len(test)):
        best_above = np.minimum(prev[:, 1:], prev[:, :-1])  # from (i-1, j) or (i-1, j-1)
        row = np.full_like(prev, np.inf)
        for j in range(1, row.shape[1]):
            row[:, j] = dist[:, i, j - 1] + np.minimum(best_above[:, j - 1], row[:, j - 1])
        prev = row
    return prev[np.arange(len(refs)), lens] / (len(test) + lens)


def word_accuracy(templates: Sequence[np.ndarray], tests: Sequence[np.ndarray],
                  sample_rate: int) -> float:
    """Fraction of tests whose nearest template (DTW over mean-normalised cepstra) is the same
    word; tests[i] is word i % len(templates)."""
    cep = Cepstra(sample_rate, n_mels=40, n_cep=12)

    def feats(w):
        c, energy = cep(w)
        c = c[energy > energy.max() - np.log(1e3)]  # trim silence (30 dB)
        c = c[::2]  # 10 ms frames are plenty for DTW and 4x cheaper
        return c - c.mean(0)

    refs = [feats(w) for w in templates]
    hits = [int(np.argmin(dtw_costs(feats(w), refs)) == i % len(refs))
            for i, w in enumerate(tests)]
    return float(np.mean(hits))
