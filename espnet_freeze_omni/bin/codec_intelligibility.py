"""How intelligible is speech after a codec round trip? (original vs encode -> decode)

    # held-out espeak-ng sentences (and optionally a ~1 h training set) from stdlib text
    python -m espnet_freeze_omni.bin.codec_intelligibility make_data --out_dir exp/codec_eval \
        --num_eval 40 [--num_train 1200]
    # score a codec on them
    python -m espnet_freeze_omni.bin.codec_intelligibility evaluate --codec_dir exp/codec \
        --data_dir exp/codec_eval/eval --output_dir exp/codec_eval/embedded \
        [--asr my.module:transcribe]

Measures, per utterance and averaged (written to output_dir/results.yaml):
  stoi       short-time objective intelligibility (Taal et al. 2011; own implementation of the
             standard 15-band, 384 ms algorithm), 0..1, clean speech = 1
  mcd        mel-cepstral distortion in dB between original and round trip, from 80-band
             log-mel cepstra c1..c24 on frames within 40 dB of the utterance peak
  word_acc   isolated-word identification by DTW over mel cepstra: 55 minimal-pair words;
             templates are the originals in one voice, tests the same words in 4 other voice
             settings, either original or through the codec (a listening proxy for a closed
             vocabulary: how often the codec turns a word into a nearer neighbour)
  wer        only with --asr (module:function taking (wav, sample_rate) -> text): word error
             rate of the ASR on the originals and on the round trips, against data_dir/text
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import yaml

Asr = Callable[[np.ndarray, int], str]

# closed-vocabulary words for the DTW proxy: minimal pairs over vowels and consonants
PROXY_WORDS = (
    "bat bet bit but boat boot bought beat bait bite pat pet pit pot put cat cut coat kit "
    "sat set sit seat suit mat met meet fan van thin tin din ship chip sip zip rock lock "
    "dock knock fine vine wine line mine nine day say way may pay shoe two few new"
).split()


# --- metrics -----------------------------------------------------------------------------------
def _resample(x: np.ndarray, sr: int, to: int) -> np.ndarray:
    from espnet_freeze_omni.codec.abs_codec import resample

    return resample(np.asarray(x, dtype=np.float32), sr, to).astype(np.float64)


def stoi(clean: np.ndarray, processed: np.ndarray, sample_rate: int) -> float:
    """Short-time objective intelligibility of `processed` against time-aligned `clean`."""
    fs, frame, nfft, segment, beta, dyn_range = 10000, 256, 512, 30, -15.0, 40.0
    x, y = _resample(clean, sample_rate, fs), _resample(processed, sample_rate, fs)
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


class _Cepstra:
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


_CEPSTRA: Dict[int, _Cepstra] = {}


def mcd(ref: np.ndarray, syn: np.ndarray, sample_rate: int) -> float:
    """Mel-cepstral distortion (dB) of time-aligned signals over frames within 40 dB of peak."""
    if sample_rate not in _CEPSTRA:
        _CEPSTRA[sample_rate] = _Cepstra(sample_rate)
    cep = _CEPSTRA[sample_rate]
    n = min(len(ref), len(syn))
    ca, energy = cep(ref[:n])
    cb, _ = cep(syn[:n])
    keep = energy > energy.max() - np.log(1e4)
    dist = np.sqrt(2 * ((ca - cb) ** 2).sum(1))[keep]
    return float(10 / np.log(10) * dist.mean())


def _dtw_costs(test: np.ndarray, refs: Sequence[np.ndarray]) -> np.ndarray:
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
    cep = _Cepstra(sample_rate, n_mels=40, n_cep=12)

    def feats(w):
        c, energy = cep(w)
        c = c[energy > energy.max() - np.log(1e3)]  # trim silence (30 dB)
        c = c[::2]  # 10 ms frames are plenty for DTW and 4x cheaper
        return c - c.mean(0)

    refs = [feats(w) for w in templates]
    hits = [int(np.argmin(_dtw_costs(feats(w), refs)) == i % len(refs))
            for i, w in enumerate(tests)]
    return float(np.mean(hits))


# --- data ----------------------------------------------------------------------------------------
def stdlib_sentences() -> List[str]:
    """Plain English sentences from Python's own documentation (always installed, offline)."""
    from pydoc_data.topics import topics

    text = " ".join(topics.values())
    pieces = (" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+|\n\s*\n", text))
    ok = {p for p in pieces
          if re.fullmatch(r"[A-Z][A-Za-z ,;:'()-]+[.?!]", p) and 5 <= len(p.split()) <= 18}
    return sorted(ok)


def make_data(out_dir: str, num_eval: int = 40, num_train: int = 0, sample_rate: int = 24000,
              seed: int = 0) -> Path:
    """Synthesize out_dir/eval (and out_dir/train) with espeak-ng; eval sentences are held out
    by text (never spoken in train). Voices/speeds/pitches cycle through espeak.pick_voice."""
    import random

    from espnet_freeze_omni.data.espeak import SpokenUtterance, pick_voice, synthesize_datadir

    sentences = stdlib_sentences()
    random.Random(seed).shuffle(sentences)
    if num_eval >= len(sentences):
        raise ValueError(f"only {len(sentences)} sentences available")
    held_out, rest = sentences[:num_eval], sentences[num_eval:]
    out = Path(out_dir)
    evals = [SpokenUtterance(f"eval{i:04d}", t, f"v{i % 6}", **pick_voice(i + 3))
             for i, t in enumerate(held_out)]
    synthesize_datadir(evals, out / "eval", out / "wav" / "eval", sample_rate, progress=True)
    if num_train:
        trains = [SpokenUtterance(f"train{i:05d}", rest[i % len(rest)], f"v{i % 6}",
                                  **pick_voice(i)) for i in range(num_train)]
        synthesize_datadir(trains, out / "train", out / "wav" / "train", sample_rate,
                           progress=True)
    return out


# DTW proxy voices: templates in one setting; tests in the same voice at another speed/pitch
# and in three other voices (all voices the espeak corpora use)
PROXY_TEMPLATE = ("en-us", 160, 50)
PROXY_TESTS = (("en-us", 190, 65), ("en-gb", 180, 40), ("en-us+f3", 170, 60), ("en+m3", 150, 45))


def _proxy_words(work_dir: Path, sample_rate: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(templates, tests) for the DTW proxy; tests cycle through PROXY_WORDS per test voice."""
    import soundfile as sf

    from espnet_freeze_omni.data.espeak import synthesize

    def speak(voice, speed, pitch):
        wavs = []
        for w in PROXY_WORDS:
            path = work_dir / "words" / f"{voice}_{speed}_{pitch}_{w}.wav"
            if not path.is_file():
                synthesize(w, path, voice, speed, pitch, sample_rate)
            wavs.append(sf.read(path, dtype="float32")[0])
        return wavs

    tests = [w for setting in PROXY_TESTS for w in speak(*setting)]
    return speak(*PROXY_TEMPLATE), tests


# --- evaluation ----------------------------------------------------------------------------------
def evaluate(codec, data_dir: str, output_dir: Optional[str] = None, asr: Optional[Asr] = None,
             max_utts: Optional[int] = None, word_proxy: bool = True) -> Dict:
    """Round-trip every utterance of data_dir through `codec`; return (and save) the scores."""
    from espnet_freeze_omni.codec.audio_io import load_wav, read_wav_scp

    data = Path(data_dir)
    items = list(read_wav_scp(data / "wav.scp").items())[:max_utts]
    texts = {}
    if (data / "text").is_file():
        for line in (data / "text").read_text().splitlines():
            utt, _, txt = line.strip().partition(" ")
            texts[utt] = txt
    out = Path(output_dir) if output_dir else None
    if out:
        (out / "wav").mkdir(parents=True, exist_ok=True)

    rows, hyps_orig, hyps_codec, refs = [], [], [], []
    encode_s = decode_s = audio_s = 0.0
    for utt, spec in items:
        wav, sr = load_wav(spec, utt)
        t0 = time.time()
        tokens = codec.encode(wav, sr)
        t1 = time.time()
        syn = codec.decode(tokens)
        t2 = time.time()
        encode_s += t1 - t0
        decode_s += t2 - t1
        audio_s += len(wav) / sr
        ref = _resample(wav, sr, codec.sample_rate)
        syn = syn[:len(ref)]
        row = dict(utt=utt, tokens=int(len(tokens)),
                   stoi=round(stoi(ref, syn, codec.sample_rate), 4),
                   mcd=round(mcd(ref, syn, codec.sample_rate), 3))
        if asr is not None and utt in texts:
            refs.append(texts[utt])
            hyps_orig.append(asr(wav, sr))
            hyps_codec.append(asr(syn, codec.sample_rate))
            row.update(asr_original=hyps_orig[-1], asr_codec=hyps_codec[-1])
        rows.append(row)
        if out:
            import soundfile as sf

            sf.write(out / "wav" / f"{utt}.wav", syn, codec.sample_rate)

    summary = dict(
        codec=codec.describe(), data_dir=str(data), utterances=len(rows),
        stoi=round(float(np.mean([r["stoi"] for r in rows])), 4),
        mcd_db=round(float(np.mean([r["mcd"] for r in rows])), 3),
        encode_rtf=round(encode_s / audio_s, 4), decode_rtf=round(decode_s / audio_s, 4),
    )
    if refs:
        import jiwer

        refs = [r.lower() for r in refs]
        hyps_orig, hyps_codec = [h.lower() for h in hyps_orig], [h.lower() for h in hyps_codec]
        summary.update(wer_original=round(jiwer.wer(refs, hyps_orig), 4),
                       wer_codec=round(jiwer.wer(refs, hyps_codec), 4),
                       cer_original=round(jiwer.cer(refs, hyps_orig), 4),
                       cer_codec=round(jiwer.cer(refs, hyps_codec), 4))
    if word_proxy:
        work = out if out else Path(data_dir)
        templates, tests = _proxy_words(work, codec.sample_rate)
        through = [codec.decode(codec.encode(w, codec.sample_rate))[:len(w)] for w in tests]
        summary.update(word_acc_original=round(word_accuracy(templates, tests,
                                                             codec.sample_rate), 4),
                       word_acc_codec=round(word_accuracy(templates, through,
                                                          codec.sample_rate), 4),
                       word_proxy_tests=len(tests))
    if out:
        with open(out / "results.yaml", "w") as f:
            yaml.safe_dump(dict(summary=summary, utterances=rows), f, sort_keys=False)
    return summary


def load_asr(spec: str) -> Asr:
    """'package.module:function' -> the callable (wav, sample_rate) -> text."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"--asr wants module:function, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def project_ctc_asr(exp_dir: str) -> Asr:
    """The project's own CTC ASR (a speech-input experiment dir) as (wav, sr) -> text."""
    from espnet_freeze_omni.inference.speech_input_inference import SpeechInputInference

    exp = Path(exp_dir)
    decoder = SpeechInputInference.from_files(exp / "config.yaml", exp / "valid.loss.best.pth")

    def transcribe(wav: np.ndarray, sample_rate: int) -> str:
        return decoder.ctc_transcribe(_resample(np.asarray(wav, dtype=np.float32), sample_rate, 16000))

    return transcribe


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make_data", help="synthesize held-out eval (and train) data dirs")
    mk.add_argument("--out_dir", required=True)
    mk.add_argument("--num_eval", type=int, default=40)
    mk.add_argument("--num_train", type=int, default=0)
    mk.add_argument("--sample_rate", type=int, default=24000)
    ev = sub.add_parser("evaluate", help="score a codec's round trips")
    group = ev.add_mutually_exclusive_group(required=True)
    group.add_argument("--codec_dir", help="an embedded codec dir")
    group.add_argument("--codec_conf", help="YAML with a load_codec() dict")
    ev.add_argument("--data_dir", required=True)
    ev.add_argument("--output_dir", default=None)
    asr = ev.add_mutually_exclusive_group()
    asr.add_argument("--asr", default=None, help="module:function, (wav, sample_rate) -> text")
    asr.add_argument("--asr_exp", default=None,
                     help="the project's CTC ASR: a speech-input experiment dir "
                          "(config.yaml + valid.loss.best.pth), e.g. exp/speech_input_stage2")
    ev.add_argument("--max_utts", type=int, default=None)
    ev.add_argument("--no_word_proxy", action="store_true")
    return p


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    if args.command == "make_data":
        make_data(args.out_dir, args.num_eval, args.num_train, args.sample_rate)
        return
    from espnet_freeze_omni.codec.abs_codec import load_codec

    codec = load_codec({"type": "embedded", "path": args.codec_dir} if args.codec_dir
                       else args.codec_conf)
    summary = evaluate(codec, args.data_dir, args.output_dir,
                       load_asr(args.asr) if args.asr else
                       project_ctc_asr(args.asr_exp) if args.asr_exp else None, args.max_utts,
                       word_proxy=not args.no_word_proxy)
    yaml.safe_dump(summary, sys.stdout, sort_keys=False)


if __name__ == "__main__":
    main()
