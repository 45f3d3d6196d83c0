"""How intelligible is speech after a codec round trip? (original vs encode -> decode)

The evaluation behind `bin/codec_intelligibility`: held-out espeak-ng sentences (and
optionally a ~1 h training set) from stdlib text, and every utterance of a data dir put
through a codec and scored (written to output_dir/results.yaml):

  stoi, mcd  per utterance and averaged (scoring/codec_metrics.py)
  word_acc   isolated-word identification by DTW over mel cepstra: 55 minimal-pair words;
             templates are the originals in one voice, tests the same words in 4 other voice
             settings, either original or through the codec (a listening proxy for a closed
             vocabulary: how often the codec turns a word into a nearer neighbour)
  wer        only with an ASR ((wav, sample_rate) -> text): word error rate of the ASR on
             the originals and on the round trips, against data_dir/text
"""
from __future__ import annotations

import importlib
import re
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import yaml

from espnet_freeze_omni.data.audio import read_audio, resample
from espnet_freeze_omni.data.kaldi_table import read_kaldi_map, read_wav_scp
from espnet_freeze_omni.scoring.codec_metrics import mcd, resampled64, stoi, word_accuracy

Asr = Callable[[np.ndarray, int], str]

# closed-vocabulary words for the DTW proxy: minimal pairs over vowels and consonants
PROXY_WORDS = (
    "bat bet bit but boat boot bought beat bait bite pat pet pit pot put cat cut coat kit "
    "sat set sit seat suit mat met meet fan van thin tin din ship chip sip zip rock lock "
    "dock knock fine vine wine line mine nine day say way may pay shoe two few new"
).split()


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


def proxy_words(work_dir: Path, sample_rate: int) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(templates, tests) for the DTW proxy; tests cycle through PROXY_WORDS per test voice."""
    from espnet_freeze_omni.data.espeak import synthesize

    def speak(voice, speed, pitch):
        wavs = []
        for w in PROXY_WORDS:
            path = work_dir / "words" / f"{voice}_{speed}_{pitch}_{w}.wav"
            if not path.is_file():
                synthesize(w, path, voice, speed, pitch, sample_rate)
            wavs.append(read_audio(str(path))[0])
        return wavs

    tests = [w for setting in PROXY_TESTS for w in speak(*setting)]
    return speak(*PROXY_TEMPLATE), tests


def evaluate(codec, data_dir: str, output_dir: Optional[str] = None, asr: Optional[Asr] = None,
             max_utts: Optional[int] = None, word_proxy: bool = True) -> Dict:
    """Round-trip every utterance of data_dir through `codec`; return (and save) the scores."""
    data = Path(data_dir)
    items = list(read_wav_scp(data / "wav.scp").items())[:max_utts]
    texts = read_kaldi_map(data / "text") if (data / "text").is_file() else {}
    out = Path(output_dir) if output_dir else None
    if out:
        (out / "wav").mkdir(parents=True, exist_ok=True)

    rows, hyps_orig, hyps_codec, refs = [], [], [], []
    encode_s = decode_s = audio_s = 0.0
    for utt, spec in items:
        wav, sr = read_audio(spec, utt)
        t0 = time.time()
        tokens = codec.encode(wav, sr)
        t1 = time.time()
        syn = codec.decode(tokens)
        t2 = time.time()
        encode_s += t1 - t0
        decode_s += t2 - t1
        audio_s += len(wav) / sr
        ref = resampled64(wav, sr, codec.sample_rate)
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
        templates, tests = proxy_words(work, codec.sample_rate)
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
        return decoder.ctc_transcribe(resample(np.asarray(wav, dtype=np.float32), sample_rate,
                                               decoder.sample_rate))

    return transcribe
