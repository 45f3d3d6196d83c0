"""Data dirs made from other data dirs: subsets, speed-perturbed copies, length filtering."""
from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, List, Sequence

from espnet_freeze_omni.data.kaldi_table import (
    read_kaldi_map,
    read_table,
    utt2spk_to_spk2utt,
    utterance_tables,
    write_kaldi_map,
)


def subset_data_dir(src: str | os.PathLike, dst: str | os.PathLike,
                    utts: Iterable[str]) -> Path:
    """Copy the listed utterances (and their recordings) of src into dst."""
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    keep = set(utts)
    names = utterance_tables(src)
    for name in names:
        table = read_kaldi_map(src / name)
        write_kaldi_map(dst / name, {k: v for k, v in table.items() if k in keep})
    wav = read_kaldi_map(src / "wav.scp")
    if "segments" in names:
        recs = {v.split()[0] for k, v in read_kaldi_map(src / "segments").items() if k in keep}
    else:
        recs = keep
    write_kaldi_map(dst / "wav.scp", {k: v for k, v in wav.items() if k in recs})
    utt2spk = read_kaldi_map(dst / "utt2spk")
    write_kaldi_map(dst / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    return dst


def _sox_speed_pipe(spec: str, factor: float) -> str:
    spec = spec.strip()
    # -R: repeatable dither (see espeak.convert_to_wav), so a perturbed copy is the same every run
    source = f"{spec[:-1].strip()} | sox -R -t wav - " if spec.endswith("|") else f"sox -R {spec} "
    return f"{source}-t wav - speed {factor} |"


def perturb_speed(src: str | os.PathLike, dst: str | os.PathLike,
                  factors: Sequence[float]) -> Path:
    """Kaldi-style speed perturbation: one copy of src per factor, ids prefixed `sp<f>-`.

    Audio stays lazy: wav.scp entries become `sox ... speed <f> |` pipes (tempo and pitch
    change together, the sample rate is kept); segment times and turn_info speech ends are
    divided by the factor. A factor of 1.0 copies the originals with their ids unchanged.
    """
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    names = utterance_tables(src)
    tables = {n: read_kaldi_map(src / n) for n in names + ["wav.scp"]}
    out: Dict[str, Dict[str, str]] = {n: {} for n in tables}
    for factor in factors:
        prefix = "" if float(factor) == 1.0 else f"sp{factor}-"
        for name, table in tables.items():
            for key, value in table.items():
                new = value
                if name == "wav.scp" and prefix:
                    new = _sox_speed_pipe(value, factor)
                elif name == "utt2spk" and prefix:
                    new = prefix + value
                elif name == "segments" and prefix:
                    rec, start, end = value.split()
                    new = (f"{prefix}{rec} {float(start) / factor:.2f} "
                           f"{float(end) / factor:.2f}")
                elif name == "turn_info" and prefix:
                    label, end = value.split()
                    new = f"{label} {float(end) / factor:.2f}"
                elif name == "utt2num_samples" and prefix:
                    new = str(int(round(int(value) / factor)))
                elif name == "utt2dur" and prefix:
                    new = f"{float(value) / factor:.3f}"
                out[name][prefix + key] = new
    for name, table in out.items():
        write_kaldi_map(dst / name, table)
    write_kaldi_map(dst / "spk2utt", utt2spk_to_spk2utt(out["utt2spk"]))
    return dst


@dataclasses.dataclass
class LengthFilterReport:
    num_before: int
    too_short: List[str]
    too_long: List[str]
    no_length: List[str]

    @property
    def num_kept(self) -> int:
        return self.num_before - len(self.too_short) - len(self.too_long) - len(self.no_length)


def filter_by_length(src: str | os.PathLike, dst: str | os.PathLike, sample_rate: int,
                     min_seconds: float, max_seconds: float) -> LengthFilterReport:
    """Copy src to dst keeping utterances with min <= duration <= max (utt2num_samples);
    the removed ones are listed with their duration in dst/filtered_out.txt."""
    src, dst = Path(src), Path(dst)
    num_samples = read_kaldi_map(src / "utt2num_samples")
    line_of = {e.key: e.line for e in read_table(src / "utt2num_samples")[0]}
    utts = list(read_kaldi_map(src / "utt2spk"))
    short, long_, none, keep, lines = [], [], [], [], []
    for u in utts:
        if u not in num_samples:
            none.append(u)
            lines.append(f"{u}\tno length in utt2num_samples")
            continue
        try:
            dur = int(num_samples[u]) / sample_rate
        except ValueError:
            raise ValueError(f"{src / 'utt2num_samples'}:{line_of[u]}: [{u}] number of "
                             f"samples is not an integer: {num_samples[u]!r}") from None
        if dur < min_seconds:
            short.append(u)
            lines.append(f"{u}\t{dur:.2f} s < min {min_seconds} s")
        elif dur > max_seconds:
            long_.append(u)
            lines.append(f"{u}\t{dur:.2f} s > max {max_seconds} s")
        else:
            keep.append(u)
    subset_data_dir(src, dst, keep)
    for extra in ("feats_type", "audio_format"):
        if (src / extra).is_file():
            shutil.copy2(src / extra, dst / extra)
    (dst / "filtered_out.txt").write_text("".join(f"{x}\n" for x in lines), encoding="utf-8")
    return LengthFilterReport(len(utts), short, long_, none)
