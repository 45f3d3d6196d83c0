"""Encode a Kaldi data dir's wav.scp into codec tokens, split over parallel jobs.

    python -m espnet_freeze_omni.bin.extract_codec_tokens --codec_dir exp/codec \
        --data_dir data/train --output_dir dump/codec/train --nj 2
    (or --codec_conf codec.yaml holding a load_codec() dict)

Writes to output_dir:
    codec_tokens        'utt_id t1 t2 ...' (Kaldi text of ints, wav.scp order)
    codec_tokens.shape  'utt_id T'
    codec_info.yaml     sample/token rate and vocabulary of the codec that made them
    split<nj>/          per-job outputs that were merged
Audio is resampled to the codec rate; an unreadable or empty wav stops with its utt id and path.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import queue
import sys
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import yaml

from espnet_freeze_omni.data.yaml_mapping import read_yaml_mapping


def _codec_conf(codec_conf: Optional[str], codec_dir: Optional[str]) -> Dict:
    if (codec_conf is None) == (codec_dir is None):
        raise ValueError("give exactly one of --codec_conf and --codec_dir")
    if codec_dir is not None:
        return {"type": "embedded", "path": str(codec_dir)}
    return read_yaml_mapping(codec_conf, "codec config")


def _run_job(conf: Dict, items: List[Tuple[str, str]], out_file: str, progress,
             num_threads: int) -> Dict:
    """One job: encode `items` (utt_id, wav.scp value) into out_file.

    `progress.put(1)` is called per utterance (a manager queue across processes); returns the
    codec's description for codec_info.yaml.
    """
    import torch

    from espnet_freeze_omni.codec import load_codec
    from espnet_freeze_omni.data.audio import read_audio

    torch.set_num_threads(num_threads)
    codec = load_codec(conf)
    tmp = out_file + ".tmp"
    with open(tmp, "w") as f:
        for utt, spec in items:
            wav, sr = read_audio(spec, utt)
            tokens = codec.encode(wav, sr)
            if len(tokens) == 0:
                raise RuntimeError(f"utterance {utt}: audio {spec!r} gave no codec tokens")
            f.write(f"{utt} {' '.join(map(str, tokens.tolist()))}\n")
            if progress is not None:
                progress.put(1)
    os.replace(tmp, out_file)  # a finished job's file is complete or absent
    return codec.describe()


def extract_codec_tokens(conf: Dict, data_dir: str, output_dir: str, nj: int = 1,
                         num_threads: int = 1, progress: bool = True) -> Path:
    """Encode data_dir/wav.scp with the codec `conf`; see the module docstring for outputs."""
    from espnet_freeze_omni.data.kaldi_table import read_wav_scp

    wav_scp = Path(data_dir) / "wav.scp"
    items = list(read_wav_scp(wav_scp).items())
    if not items:
        raise ValueError(f"{wav_scp} is empty")
    nj = max(1, min(nj, len(items)))
    out = Path(output_dir)
    split = out / f"split{nj}"
    split.mkdir(parents=True, exist_ok=True)
    # contiguous, nearly equal shares keep wav.scp order after merging
    bounds = [len(items) * j // nj for j in range(nj + 1)]
    jobs = [(items[bounds[j]:bounds[j + 1]], str(split / f"codec_tokens.{j + 1}"))
            for j in range(nj)]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=f"codec tokens ({nj} jobs)", unit="utt")
    if nj == 1:
        description = _run_job(conf, jobs[0][0], jobs[0][1], _BarTicks(bar), num_threads)
    else:
        # spawn, not fork: forking a process whose torch thread pools already ran can hang
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            ticks = manager.Queue() if bar is not None else None
            with ProcessPoolExecutor(max_workers=nj, mp_context=ctx) as pool:
                futures = [pool.submit(_run_job, conf, job_items, path, ticks, num_threads)
                           for job_items, path in jobs]
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, timeout=0.2, return_when=FIRST_EXCEPTION)
                    _drain(ticks, bar)
                    for fut in done:
                        if fut.exception() is not None:
                            for other in pending:
                                other.cancel()
                            raise fut.exception()
                _drain(ticks, bar)
                description = futures[0].result()
    if bar is not None:
        bar.close()

    with open(out / "codec_tokens", "w") as tokens_out, \
            open(out / "codec_tokens.shape", "w") as shape_out:
        for _, path in jobs:
            with open(path) as f:
                for line in f:
                    utt, *toks = line.split()
                    tokens_out.write(line)
                    shape_out.write(f"{utt} {len(toks)}\n")
    # rates and vocabulary for downstream configs
    info = dict(description, codec_conf=conf, num_utterances=len(items))
    with open(out / "codec_info.yaml", "w") as f:
        yaml.safe_dump(info, f, sort_keys=False)
    return out


class _BarTicks:
    """In-process stand-in for the progress queue."""

    def __init__(self, bar):
        self.bar = bar

    def put(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)


def _drain(ticks, bar) -> None:
    if ticks is None:
        return
    while True:
        try:
            bar.update(ticks.get_nowait())
        except queue.Empty:
            return


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--codec_conf", help="YAML with a load_codec() dict")
    group.add_argument("--codec_dir", help="an embedded codec dir (train_embedded_codec)")
    p.add_argument("--data_dir", required=True, help="Kaldi data dir with wav.scp")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--nj", type=int, default=1, help="parallel jobs (processes)")
    p.add_argument("--num_threads", type=int, default=1, help="torch threads per job")
    p.add_argument("--no_progress", action="store_true")
    return p


def main(cmd=None) -> None:
    args = get_parser().parse_args(cmd)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    conf = _codec_conf(args.codec_conf, args.codec_dir)
    out = extract_codec_tokens(conf, args.data_dir, args.output_dir, args.nj,
                               args.num_threads, progress=not args.no_progress)
    print(f"codec tokens -> {out / 'codec_tokens'}", file=sys.stderr)


if __name__ == "__main__":
    main()
