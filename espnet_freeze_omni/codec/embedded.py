"""The embedded codec: k-means over short-time log-mel spectra, Griffin-Lim resynthesis.

It trains in well under a minute on a 2-core CPU, so the embedded recipe needs no GPU and no
download, yet keeps the paper's token interface: one 1024-entry codebook, 40 tokens/s, 24 kHz.

Encoding. Each token covers 600 samples (25 ms). It is described by 4 STFT frames (600-sample
Hann window, hop 150) centred at 75, 225, 375 and 525 samples into the token; their log-mel
spectra, stacked (4 x n_mels), are the vector that k-means quantizes. Four frames per token keep
the within-token dynamics (bursts, formant transitions) that a single 25 ms frame would average.

Decoding. A code stands for the geometric mean of the linear STFT magnitudes of the training
frames that chose it (4 x 301 bins). Phase comes from Griffin-Lim run separately for every
token on a window of the token and `gl_context` tokens either side, starting from a fixed phase
pattern that repeats every token, so the result does not depend on where the window starts. The
centre of each window (two tokens long, Hann-weighted) is overlap-added at the token hop.
Audio inside token u therefore depends only on tokens u-(c+1) .. u+(c+1) (`context_tokens`):
decoding any slice that covers that context reproduces offline decoding exactly, which is what
makes packet streaming (packets.py) splice-free in content.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import yaml

from espnet_freeze_omni.codec.abs_codec import AbsCodec
from espnet_freeze_omni.data.audio import load_audio
from espnet_freeze_omni.data.kaldi_table import read_wav_scp

CODEBOOK_FILE = "codebook.npz"
CONFIG_FILE = "config.yaml"


@dataclasses.dataclass
class EmbeddedCodecConfig:
    """Everything that fixes the token <-> audio mapping (saved next to the codebook)."""

    sample_rate: int = 24000
    samples_per_token: int = 600  # 25 ms: 40 tokens/s
    frames_per_token: int = 4  # STFT hop = 150 samples
    win_length: int = 600  # also the FFT size: 301 bins, 40 Hz apart
    n_mels: int = 48
    f_min: float = 50.0
    f_max: float = 11000.0
    log_floor: float = 1e-4  # mel power floor: keeps near-silent detail out of the distances
    vocab_size: int = 1024
    gl_iters: int = 16
    gl_momentum: float = 0.99  # "fast Griffin-Lim" (Perraudin et al. 2013)
    gl_context: int = 2  # tokens either side of a token in its phase-reconstruction window
    seed: int = 0

    @property
    def hop(self) -> int:
        return self.samples_per_token // self.frames_per_token

    @property
    def n_freq(self) -> int:
        return self.win_length // 2 + 1

    def validate(self) -> "EmbeddedCodecConfig":
        if self.samples_per_token % self.frames_per_token:
            raise ValueError("samples_per_token must be a multiple of frames_per_token")
        if self.win_length < self.hop:
            raise ValueError("win_length must cover at least one hop")
        return self


# --- analysis: framing, STFT magnitudes, log-mel features ----------------------------------------
class _Analysis:
    """STFT on the token grid: frame j of token t is centred at spt*t + hop*(j + 1/2)."""

    def __init__(self, cfg: EmbeddedCodecConfig):
        import torchaudio

        self.cfg = cfg
        self.window = torch.hann_window(cfg.win_length)
        self.mel_fb = torchaudio.functional.melscale_fbanks(
            cfg.n_freq, cfg.f_min, min(cfg.f_max, cfg.sample_rate / 2), cfg.n_mels,
            cfg.sample_rate, norm="slaney", mel_scale="slaney",
        )  # (n_freq, n_mels)
        # first frame starts half a window before its centre (hop/2 into the signal)
        self.left_pad = cfg.win_length // 2 - cfg.hop // 2

    def magnitudes(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (n,), n a multiple of samples_per_token -> |STFT| (n / spt, frames_per_token, F)."""
        cfg = self.cfg
        num_frames = len(wav) // cfg.hop
        padded = torch.nn.functional.pad(wav, (self.left_pad, cfg.win_length))
        frames = padded.unfold(0, cfg.win_length, cfg.hop)[:num_frames] * self.window
        mag = torch.fft.rfft(frames).abs()
        return mag.reshape(-1, cfg.frames_per_token, cfg.n_freq)

    def features(self, mag: torch.Tensor) -> torch.Tensor:
        """|STFT| (T, frames_per_token, F) -> log-mel vectors (T, frames_per_token * n_mels)."""
        mel = (mag**2) @ self.mel_fb
        return torch.log(mel + self.cfg.log_floor).flatten(1)


# --- synthesis: local Griffin-Lim ----------------------------------------------------------------
class _LocalGriffinLim:
    """Phase reconstruction whose output for a token depends on a bounded token neighbourhood."""

    def __init__(self, cfg: EmbeddedCodecConfig):
        self.cfg = cfg
        self.window = torch.hann_window(cfg.win_length)
        gen = torch.Generator().manual_seed(cfg.seed)
        # one random phase per (frame-in-token, bin): tiled per token, hence shift-invariant
        self.init_phase = torch.rand(cfg.frames_per_token, cfg.n_freq, generator=gen) * 2 * math.pi
        spt = cfg.samples_per_token
        self.crossfade = torch.hann_window(2 * spt)  # periodic: shifted copies sum to 1 at hop spt
        self._envelopes: Dict[int, torch.Tensor] = {}
        if cfg.win_length % cfg.hop:
            raise ValueError("win_length must be a multiple of the hop")

    def _ola(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex frames (B, n, F) -> signals (B, (n-1)*hop + win), least-squares ISTFT."""
        cfg = self.cfg
        batch, n, _ = spec.shape
        frames = torch.fft.irfft(spec, n=cfg.win_length) * self.window
        # win = k * hop: add the k hop-sized slices of every frame at their offsets
        k = cfg.win_length // cfg.hop
        pieces = frames.reshape(batch, n, k, cfg.hop)
        sig = frames.new_zeros(batch, n + k - 1, cfg.hop)
        for j in range(k):
            sig[:, j:j + n] += pieces[:, :, j]
        return sig.reshape(batch, -1) * self._inv_envelope(n)

    def _inv_envelope(self, n: int) -> torch.Tensor:
        """1 / sum of squared windows at each sample (clamped where frames thin out at edges)."""
        if n not in self._envelopes:
            cfg = self.cfg
            k = cfg.win_length // cfg.hop
            sq = (self.window**2).reshape(k, cfg.hop)
            env = sq.new_zeros(n + k - 1, cfg.hop)
            for j in range(k):
                env[j:j + n] += sq[j]
            self._envelopes[n] = 1.0 / env.reshape(-1).clamp(min=1e-2)
        return self._envelopes[n]

    def _stft(self, sig: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return torch.fft.rfft(sig.unfold(-1, cfg.win_length, cfg.hop) * self.window)

    def __call__(self, mag: torch.Tensor) -> torch.Tensor:
        """Token magnitudes (T, frames_per_token, F) -> waveform (T * samples_per_token,)."""
        cfg = self.cfg
        c, spt, fpt = cfg.gl_context, cfg.samples_per_token, cfg.frames_per_token
        num_tokens = mag.shape[0]
        # silence beyond both ends: the same at utterance edges whether decoded whole or in slices
        silence = mag.new_zeros(c + 1, fpt, cfg.n_freq)
        padded = torch.cat([silence, mag, silence])
        width = 2 * c + 1
        index = torch.arange(num_tokens)[:, None] + 1 + torch.arange(width)[None]
        target = padded[index].reshape(num_tokens, width * fpt, cfg.n_freq)

        spec = torch.polar(target, self.init_phase.repeat(width, 1).expand_as(target))
        prev = torch.zeros_like(spec)
        for _ in range(cfg.gl_iters):
            rebuilt = self._stft(self._ola(spec))
            accel = rebuilt + cfg.gl_momentum * (rebuilt - prev)
            prev = rebuilt
            # keep the phase, impose the target magnitude (real arithmetic: complex division
            # is several times slower on CPU)
            ri = torch.view_as_real(accel)
            scale = target / ri.square().sum(-1).sqrt().clamp(min=1e-8)
            spec = torch.view_as_complex(ri * scale.unsqueeze(-1))
        windows = self._ola(spec)  # (T, ...): sample 0 = start of the first frame

        # keep the two tokens around each window's centre token: [t - 1/2, t + 3/2) tokens
        first_frame_start = cfg.hop // 2 - cfg.win_length // 2
        start = c * spt - spt // 2 - first_frame_start
        centre = windows[:, start:start + 2 * spt] * self.crossfade
        length = (num_tokens + 1) * spt
        out = torch.nn.functional.fold(
            centre.T.unsqueeze(0), output_size=(1, length), kernel_size=(1, 2 * spt),
            stride=(1, spt),
        ).reshape(length)
        return out[spt // 2:spt // 2 + num_tokens * spt]


# --- the codec ------------------------------------------------------------------------------------
class EmbeddedCodec(AbsCodec):
    """k-means log-mel codec with local Griffin-Lim decoding (see the module docstring)."""

    def __init__(self, config: EmbeddedCodecConfig, centroids: np.ndarray,
                 magnitudes: np.ndarray):
        self.config = config.validate()
        self.sample_rate = config.sample_rate
        self.samples_per_token = config.samples_per_token
        self.vocab_size = int(centroids.shape[0])
        expected_dim = config.frames_per_token * config.n_mels
        if centroids.shape != (self.vocab_size, expected_dim):
            raise ValueError(
                f"centroids {centroids.shape} do not match the config (dim {expected_dim})")
        if magnitudes.shape != (self.vocab_size, config.frames_per_token, config.n_freq):
            raise ValueError(f"magnitudes {magnitudes.shape} do not match the config")
        self.centroids = torch.as_tensor(centroids, dtype=torch.float32)
        self.magnitudes = torch.as_tensor(magnitudes, dtype=torch.float32)
        self._analysis = _Analysis(config)
        self._synthesis = _LocalGriffinLim(config)
        self._centroid_sqnorm = (self.centroids**2).sum(1)

    @property
    def context_tokens(self) -> int:
        """Tokens either side that can change a token's audio (for streaming decoders)."""
        return self.config.gl_context + 1

    def quantize(self, feats: torch.Tensor, batch: int = 16384) -> torch.Tensor:
        """Nearest codebook entry (squared Euclidean) for each row of feats."""
        return _nearest(feats, self.centroids, self._centroid_sqnorm, batch)

    @torch.no_grad()
    def _encode(self, wav: np.ndarray) -> np.ndarray:
        with _one_thread():
            mag = self._analysis.magnitudes(torch.from_numpy(wav))
            return self.quantize(self._analysis.features(mag)).numpy()

    @torch.no_grad()
    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        with _one_thread():
            return self._synthesis(self.magnitudes[torch.from_numpy(tokens)]).numpy()

    def save(self, out_dir: Union[str, os.PathLike], stats: Optional[Dict] = None) -> Path:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(out_dir / CODEBOOK_FILE, centroids=self.centroids.numpy(),
                 magnitudes=self.magnitudes.numpy())
        with open(out_dir / CONFIG_FILE, "w") as f:
            yaml.safe_dump(dict(codec="embedded", config=dataclasses.asdict(self.config),
                                training=stats or {}), f, sort_keys=False)
        return out_dir

    @classmethod
    def from_config(cls, **conf) -> "EmbeddedCodec":
        if "path" not in conf:
            raise ValueError("embedded codec config needs 'path' (the train_embedded_codec dir)")
        return cls.from_dir(Path(conf.pop("path")), **conf)

    @classmethod
    def from_dir(cls, path: Union[str, os.PathLike], **overrides) -> "EmbeddedCodec":
        """Load what train_embedded_codec saved; overrides change decoding (e.g. gl_iters)."""
        path = Path(path)
        for name in (CONFIG_FILE, CODEBOOK_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path / name} missing: not an embedded codec dir")
        with open(path / CONFIG_FILE) as f:
            saved = yaml.safe_load(f)
        cfg_dict = dict(saved["config"])
        unknown = set(overrides) - {f.name for f in dataclasses.fields(EmbeddedCodecConfig)}
        if unknown:
            raise ValueError(f"unknown embedded codec options {sorted(unknown)}")
        cfg_dict.update(overrides)
        book = np.load(path / CODEBOOK_FILE)
        return cls(EmbeddedCodecConfig(**cfg_dict), book["centroids"], book["magnitudes"])


@contextlib.contextmanager
def _one_thread():
    """Run small tensor ops on one thread: for these many tiny FFTs the hand-off between
    threads costs more than it saves (5 s of audio: 5 s to decode on 2 busy cores, 0.7 s on 1)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _nearest(x: torch.Tensor, centroids: torch.Tensor, sqnorm: torch.Tensor,
             batch: int = 16384) -> torch.Tensor:
    # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the first term does not change the argmin
    out = [(sqnorm[None] - 2 * x[i:i + batch] @ centroids.T).argmin(1)
           for i in range(0, len(x), batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


# --- training -------------------------------------------------------------------------------------
def _audio_items(wavs: Union[str, os.PathLike, Sequence]) -> List[tuple]:
    """(utt_id, wav.scp value) pairs from a wav.scp path or a list of audio files."""
    if isinstance(wavs, (str, os.PathLike)):
        return list(read_wav_scp(wavs).items())
    return [(Path(str(w)).stem, str(w)) for w in wavs]


def _iter_audio(items: Sequence[tuple], sample_rate: int):
    """Yield (utt_id, float32 audio at sample_rate)."""
    for utt, spec in items:
        yield utt, load_audio(spec, sample_rate, utt)


def kmeans(x: torch.Tensor, k: int, iters: int, seed: int = 0,
           progress: bool = False) -> torch.Tensor:
    """Lloyd's k-means (full batch, torch), seeded with k random rows.

    Empty clusters (duplicate seeds: silence repeats) are re-seeded at the worst-quantized
    points, so all k codes stay in use whenever the data has k distinct points. k-means++
    seeding was tried: its k sequential passes cost minutes on 2 cores for no gain here.
    """
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.randperm(len(x), generator=gen)[:k]].clone()
    steps = range(iters)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="k-means", unit="iter")
    for _ in steps:
        sqnorm = (centroids**2).sum(1)
        assign = _nearest(x, centroids, sqnorm)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            err = ((x - centroids[assign]) ** 2).sum(1)
            centroids[empty] = x[err.topk(len(empty)).indices]
        if progress:
            err = ((x - centroids[assign]) ** 2).sum(1).mean()
            steps.set_postfix(distortion=f"{float(err):.2f}", empty=len(empty))
    return centroids


@torch.no_grad()
def train_embedded_codec(
    wavs: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]],
    out_dir: Union[str, os.PathLike],
    vocab_size: int = 1024,
    kmeans_iters: int = 12,
    kmeans_max_tokens: int = 100_000,
    max_hours: Optional[float] = None,
    progress: bool = True,
    num_threads: Optional[int] = None,
    **config_overrides,
) -> EmbeddedCodec:
    """Train the embedded codec on a wav.scp (or a list of wav files) and save it to out_dir.

    Pass 1 computes log-mel token vectors; k-means runs on at most `kmeans_max_tokens` of
    them (a random subset: 100k tokens = 42 min of speech already give each of 1024 codes ~100
    examples, and the cost is linear in it). Pass 2 assigns every token of the data and averages
    the log-magnitude spectra per code (recomputed, so the corpus's spectra never sit in memory).
    """
    start = time.time()
    if num_threads:
        torch.set_num_threads(num_threads)
    cfg = EmbeddedCodecConfig(vocab_size=vocab_size, **config_overrides).validate()
    analysis = _Analysis(cfg)
    spt = cfg.samples_per_token
    timings = {}

    def token_aligned(wav: np.ndarray) -> torch.Tensor:
        n = -(-len(wav) // spt) * spt
        return torch.from_numpy(np.pad(wav, (0, n - len(wav))))

    def bar(iterable, **kwargs):
        if not progress:
            return iterable
        from tqdm import tqdm

        return tqdm(iterable, **kwargs)

    # pass 1: features
    items = _audio_items(wavs)
    utts, feats, total = [], [], 0
    for utt, wav in bar(_iter_audio(items, cfg.sample_rate), total=len(items),
                        desc="codec features", unit="utt"):
        with _one_thread():
            feats.append(analysis.features(analysis.magnitudes(token_aligned(wav))))
        utts.append(utt)
        total += len(wav)
        if max_hours is not None and total >= max_hours * 3600 * cfg.sample_rate:
            break
    if not feats:
        raise ValueError(f"no audio to train the codec on in {wavs}")
    x = torch.cat(feats)
    del feats
    hours = total / cfg.sample_rate / 3600
    logging.info("embedded codec: %d utterances, %.2f h, %d tokens", len(utts), hours, len(x))
    if len(x) < vocab_size:
        raise ValueError(f"{len(x)} tokens of audio cannot train {vocab_size} codes")
    timings["features_s"] = round(time.time() - start, 1)

    # k-means on a random subset
    gen = torch.Generator().manual_seed(cfg.seed)
    if len(x) > kmeans_max_tokens:
        x = x[torch.randperm(len(x), generator=gen)[:kmeans_max_tokens]]
    centroids = kmeans(x, vocab_size, kmeans_iters, seed=cfg.seed, progress=progress)
    sqnorm = (centroids**2).sum(1)
    distortion = float(((x - centroids[_nearest(x, centroids, sqnorm)]) ** 2).sum(1).mean())
    del x
    timings["kmeans_s"] = round(time.time() - start - timings["features_s"], 1)

    # pass 2: geometric-mean magnitude spectrum of each code's frames
    log_sum = torch.zeros(vocab_size, cfg.frames_per_token, cfg.n_freq)
    counts = torch.zeros(vocab_size)
    for _, wav in bar(_iter_audio(items[:len(utts)], cfg.sample_rate), total=len(utts),
                      desc="codec spectra", unit="utt"):
        with _one_thread():
            mag = analysis.magnitudes(token_aligned(wav))
            codes = _nearest(analysis.features(mag), centroids, sqnorm)
            log_sum.index_add_(0, codes, torch.log(mag + 1e-5))
            counts += torch.bincount(codes, minlength=vocab_size)
    used = counts > 0
    magnitudes = torch.exp(log_sum / counts.clamp(min=1)[:, None, None]) - 1e-5
    if not bool(used.all()):
        # only when the data has fewer distinct frames than codes: borrow the nearest used code
        used_idx = torch.nonzero(used).flatten()
        d = torch.cdist(centroids[~used], centroids[used_idx])
        magnitudes[~used] = magnitudes[used_idx[d.argmin(1)]]
    magnitudes = magnitudes.clamp(min=0)

    codec = EmbeddedCodec(cfg, centroids.numpy(), magnitudes.numpy())
    timings["train_s"] = round(time.time() - start, 1)
    stats = dict(
        utterances=len(utts), hours=round(hours, 4), tokens=int(counts.sum()),
        kmeans_tokens=min(int(counts.sum()), kmeans_max_tokens), kmeans_iters=kmeans_iters,
        codes_used=int(used.sum()), distortion_per_token=round(distortion, 4), **timings,
    )
    codec.save(out_dir, stats)
    logging.info("embedded codec saved to %s: %s", out_dir, stats)
    return codec
