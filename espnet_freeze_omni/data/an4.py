"""mini AN4 (CMU, BSD-style licence) from the archive the espnet wheel ships, as Kaldi dirs.

The installed espnet distribution carries `egs3/mini_an4/esp2_asr/downloads.tar.gz`: 8 SPHERE
files at 16 kHz, 7 of them transcribed (5 train, 2 test). The archive is found through the
installed package's file list (importlib.metadata), never through a machine path, extracted,
converted to 16-bit 16 kHz wav with soundfile and listed in

    <datadir>/train   5 utterances
    <datadir>/test    2 utterances
    <datadir>/train_dev  the first training utterance: a smoke-test validation set (it
                         overlaps train on purpose: mini AN4 has no audio to spare)

Usage (egs2/mini_an4/freeze_omni1/local/data.sh):
    python -m espnet_freeze_omni.data.an4 --datadir data --downloads downloads
"""
from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

ARCHIVE_IN_WHEEL = "egs3/mini_an4/esp2_asr/downloads.tar.gz"


def find_an4_archive() -> Path:
    """Path of the mini AN4 archive inside the installed espnet distribution."""
    try:
        dist = importlib.metadata.distribution("espnet")
    except importlib.metadata.PackageNotFoundError as e:
        raise FileNotFoundError("espnet is not installed in this Python environment") from e
    candidates = [f for f in (dist.files or []) if str(f).replace("\\", "/") == ARCHIVE_IN_WHEEL]
    candidates += [f for f in (dist.files or [])
                   if str(f).replace("\\", "/").endswith("mini_an4/esp2_asr/downloads.tar.gz")]
    for f in candidates:
        path = Path(dist.locate_file(f))
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the installed espnet {dist.version} does not ship {ARCHIVE_IN_WHEEL}; "
        "install espnet==202611 (its wheel carries the mini AN4 archive)")


def _extract_an4(archive: Path, dest: Path) -> Path:
    """Extract the archive's `downloads/an4/` as `dest/an4/` (noise and RIRs are skipped)."""
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if "an4" not in parts:
                continue
            m.name = str(Path(*parts[parts.index("an4"):]))
            members.append(m)
        # filter="data" refuses absolute paths and links pointing out of dest
        tar.extractall(dest, members=members, filter="data")
    return dest / "an4"


def _read_transcriptions(etc: Path, split: str) -> List[Tuple[str, str]]:
    """[(fileid path like an4_clstk/fash/an251-fash-b, TRANSCRIPT)] in file order."""
    fileids = (etc / f"an4_{split}.fileids").read_text().split()
    texts: Dict[str, str] = {}
    for line in (etc / f"an4_{split}.transcription").read_text().splitlines():
        m = re.match(r"^(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^)]+)\)\s*$", line.strip())
        if m is None:
            if line.strip():
                raise ValueError(f"unexpected AN4 transcription line: {line!r}")
            continue
        texts[m.group(2)] = m.group(1)
    pairs = []
    for fid in fileids:
        name = Path(fid).name
        if name not in texts:
            raise ValueError(f"AN4 {split}: no transcription for {fid}")
        pairs.append((fid, texts[name]))
    return pairs


def _write_set(pairs: List[Tuple[str, str]], wav_root: Path, out_wav: Path, data_dir: Path
               ) -> int:
    import numpy as np
    import soundfile

    from espnet_freeze_omni.data.kaldi_table import utt2spk_to_spk2utt, write_kaldi_map

    wav_scp, text, utt2spk = {}, {}, {}
    out_wav.mkdir(parents=True, exist_ok=True)
    for fid, transcript in pairs:
        speaker, name = Path(fid).parent.name, Path(fid).name
        utt = f"{speaker}-{name}"  # speaker prefix keeps utt2spk and spk2utt in one order
        audio, sr = soundfile.read(str(wav_root / f"{fid}.sph"), dtype="int16")
        if sr != 16000:
            raise ValueError(f"{fid}.sph is {sr} Hz; mini AN4 is expected at 16 kHz")
        wav = out_wav / f"{utt}.wav"
        soundfile.write(str(wav), np.asarray(audio), sr, subtype="PCM_16")
        wav_scp[utt], text[utt], utt2spk[utt] = str(wav.resolve()), transcript, speaker
    data_dir.mkdir(parents=True, exist_ok=True)
    write_kaldi_map(data_dir / "wav.scp", wav_scp)
    write_kaldi_map(data_dir / "text", text)
    write_kaldi_map(data_dir / "utt2spk", utt2spk)
    write_kaldi_map(data_dir / "spk2utt", utt2spk_to_spk2utt(utt2spk))
    return len(wav_scp)


def prepare_an4(datadir: str | Path, downloads: str | Path) -> Dict[str, int]:
    """Extract the archive into `downloads` (once) and write train/test/train_dev dirs."""
    from espnet_freeze_omni.data.derive import subset_data_dir
    from espnet_freeze_omni.data.kaldi_table import read_kaldi_map

    datadir, downloads = Path(datadir), Path(downloads)
    an4 = downloads / "an4"
    if not (an4 / "etc" / "an4_train.transcription").is_file():
        downloads.mkdir(parents=True, exist_ok=True)
        an4 = _extract_an4(find_an4_archive(), downloads)
    counts = {}
    for split, name in (("train", "train"), ("test", "test")):
        pairs = _read_transcriptions(an4 / "etc", split)
        counts[name] = _write_set(pairs, an4 / "wav", downloads / "an4_wav16k" / name,
                                  datadir / name)
    first = sorted(read_kaldi_map(datadir / "train" / "text"))[:1]
    subset_data_dir(datadir / "train", datadir / "train_dev", first)
    counts["train_dev"] = len(first)
    return counts


def main(cmd=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datadir", default="data")
    parser.add_argument("--downloads", default="downloads",
                        help="where the archive is extracted")
    args = parser.parse_args(cmd)
    print(f"mini AN4 from {find_an4_archive()}")
    counts = prepare_an4(args.datadir, args.downloads)
    print("wrote " + ", ".join(f"{args.datadir}/{k} ({v} utts)" for k, v in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
