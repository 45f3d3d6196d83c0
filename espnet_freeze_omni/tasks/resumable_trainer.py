"""espnet2's Trainer, made safe against a kill (SIGKILL, OOM, pre-emption) at any moment.

espnet2's `Trainer.run` writes `checkpoint.pth`, `<N>epoch.pth` and the `latest.pth` /
`<phase>.<key>.best.pth` links in place, with module-level `torch.save` calls inside one
long method: a process killed while `checkpoint.pth` is being written leaves a torn file,
and `--resume true` then dies on it (espnet's `safe_torch_load` even asks on a terminal
whether to unpickle it unsafely). Those calls cannot be redirected without patching torch
for the whole process, so this trainer keeps the previous checkpoint instead:

* just before espnet saves epoch N (at the end of validation, the last hook espnet calls
  before the save), the complete `checkpoint.pth` of epoch N-1 is renamed
  `checkpoint.prev.pth`; a torn save of epoch N therefore never touches it;
* at `--resume true`, before espnet looks at the directory, `checkpoint.pth` is checked as
  a zip archive (central directory present, every member's CRC right: what `torch.save`
  writes, whole or not at all). Torn or missing with a whole `checkpoint.prev.pth`: the
  previous one is copied back (a log line says so) and only epoch N is trained again.
  Torn with no previous checkpoint (killed during the very first save): the torn file is
  moved aside and training starts from epoch 1, with a warning; if epoch files show that
  more than that was done, it stops with an error instead of losing those epochs;
* the files espnet writes after `checkpoint.pth` are repaired from it: `<N>epoch.pth`
  (rewritten from the checkpoint's model when missing or torn) and the `latest.pth` and
  best-model links (pointed again at the epochs the restored reporter names).

`SpeechInputTask` and `SpeechOutputTask` use `ResumableTrainer`; `ResumableGANTrainer` is
the same on espnet's `GANTrainer`, for the gan_codec task (bin/gan_codec_train.py). The cost:
a second checkpoint on disk, and at resume one extra read of the checkpoint (CRC check).

Distributed runs (torch DDP: `torchrun ... --multiprocessing_distributed false --dist_backend
gloo` on CPU, espnet's own spawn with `--ngpu N`): only rank 0 touches files, the others wait
for it at a barrier before reading the checkpoint. espnet lets only rank 0 log, so each rank
also writes its own lines, prefixed `[host:rank/world]` like espnet's: what DDP synchronizes
and what it holds outside DDP (the frozen LLM, loaded once in every process), and after each
epoch how many batches it read and a fingerprint of its parameters. The fingerprints of all
ranks are compared after each epoch; ranks that disagree (DDP did not synchronize them) are
an error, not a silent divergence.

Test-only switch: the environment variable FREEZE_OMNI_TEST_SIGKILL_IN_SAVE, set to
`<file name>[:<n>[:<fraction>]]` (e.g. `checkpoint.pth:2:0.5`), makes the n-th `torch.save`
to a file of that name (default n=1) write only that fraction (default 0.5) of the bytes and
then SIGKILL its own process: a real kill in the middle of a save, at a chosen point, for
tests/test_resume.py. It is never set by the recipes.
"""
from __future__ import annotations

import io
import logging
import os
import socket
import re
import shutil
import signal
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import List, Optional

import torch

from espnet2.torch_utils.safe_torch_load import safe_torch_load
from espnet2.train.gan_trainer import GANTrainer
from espnet2.train.reporter import Reporter
from espnet2.train.trainer import Trainer

CHECKPOINT = "checkpoint.pth"
PREVIOUS = "checkpoint.prev.pth"
TORN_SUFFIX = ".torn"
KILL_SWITCH_ENV = "FREEZE_OMNI_TEST_SIGKILL_IN_SAVE"
_EPOCH_FILE = re.compile(r"^(\d+)epoch\.pth$")


def is_complete_torch_file(path) -> bool:
    """True when `path` holds everything `torch.save` wrote, False when it is torn.

    `torch.save` writes a zip archive front to back and its central directory last, so a
    write cut short leaves no readable archive; the CRC test also catches a file whose
    bytes changed afterwards. Reads the whole file once; unpickles nothing. A missing file
    raises FileNotFoundError (not torn: absent), as do other I/O errors (loud, not guessed).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
                return False
            return archive.testzip() is None
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error, zlib.error,
            NotImplementedError):
        return False


def _replace_with_copy(src: Path, dst: Path) -> None:
    """Copy src over dst atomically, as a new file.

    A copy, not a hard link: espnet's `torch.save` truncates and rewrites `checkpoint.pth`
    in place, which would tear a linked `checkpoint.prev.pth` along with it.
    """
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _save_atomically(obj, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, dst)


def _link(link: Path, target_name: str) -> None:
    """Point the symlink `link` at `target_name` (same directory), replacing it atomically."""
    if link.is_symlink() and os.readlink(link) == target_name:
        return
    tmp = link.with_name(link.name + ".tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target_name)
    os.replace(tmp, link)


def _epoch_files(output_dir: Path) -> List[int]:
    epochs = []
    for p in output_dir.iterdir():
        m = _EPOCH_FILE.match(p.name)
        if m:
            epochs.append(int(m.group(1)))
    return sorted(epochs)


def _select_checkpoint(output_dir: Path) -> None:
    """Leave a whole `checkpoint.pth` to resume from, or none (a fresh start), or raise.

    Runs on rank 0 only, before espnet's `Trainer.run` looks for `checkpoint.pth`.
    """
    ckpt, prev = output_dir / CHECKPOINT, output_dir / PREVIOUS
    ckpt_state = "missing" if not ckpt.exists() else (
        "whole" if is_complete_torch_file(ckpt) else "torn")
    if ckpt_state == "whole":
        return
    prev_state = "missing" if not prev.exists() else (
        "whole" if is_complete_torch_file(prev) else "torn")
    if prev_state == "whole":
        why = ("is torn (the run was killed while writing it)" if ckpt_state == "torn"
               else "is missing (the run was killed as it began saving)")
        logging.warning(f"{ckpt} {why}: resuming from the previous checkpoint {prev}; "
                        "the epoch after it is trained again")
        _replace_with_copy(prev, ckpt)
        return
    if ckpt_state == "missing":
        if prev_state == "torn":
            raise RuntimeError(
                f"cannot resume {output_dir}: {CHECKPOINT} is missing and {prev} is damaged "
                "(it is only ever written whole, so the disk or another program changed it); "
                "restart with --resume false, or restore a checkpoint")
        return  # nothing saved yet: espnet starts from epoch 1, as always
    # checkpoint.pth is torn and there is no whole previous checkpoint.
    if prev_state == "torn":
        raise RuntimeError(
            f"cannot resume {output_dir}: both {CHECKPOINT} and {PREVIOUS} are damaged; "
            "restart with --resume false, or restore a checkpoint")
    done = _epoch_files(output_dir)
    if done:
        raise RuntimeError(
            f"cannot resume {output_dir}: {CHECKPOINT} is torn and there is no previous "
            f"checkpoint, but epoch files {done} show that training went further (a run "
            "made without this trainer?). Restart with --resume false (optionally "
            f"--init_param {output_dir}/{done[-1]}epoch.pth) rather than lose them silently")
    torn = ckpt.with_name(ckpt.name + TORN_SUFFIX)
    os.replace(ckpt, torn)
    logging.warning(f"{ckpt} is torn (the run was killed while saving its first epoch) and "
                    f"there is no earlier checkpoint: training starts again from epoch 1; "
                    f"the torn file is kept as {torn}")


def _repair_after_checkpoint(output_dir: Path, best_model_criterion) -> None:
    """Redo what espnet writes after `checkpoint.pth` and a kill may have cut short."""
    ckpt = output_dir / CHECKPOINT
    if not ckpt.exists():
        return
    # mmap: the reporter is read, tensors are only paged in if the epoch file is rewritten
    states = safe_torch_load(ckpt, map_location="cpu", mmap=True)
    reporter = Reporter()
    reporter.load_state_dict(states["reporter"])
    epoch = reporter.get_epoch()
    if epoch < 1:
        return
    epoch_file = output_dir / f"{epoch}epoch.pth"
    if not epoch_file.exists() or not is_complete_torch_file(epoch_file):
        logging.warning(f"{epoch_file} is missing or torn (the run was killed right after "
                        f"saving {CHECKPOINT}): rewritten from the checkpoint's model")
        _save_atomically(states["model"], epoch_file)
    _link(output_dir / "latest.pth", epoch_file.name)
    for phase, key, mode in best_model_criterion:
        if reporter.has(phase, key):
            best = reporter.get_best_epoch(phase, key, mode)
            if (output_dir / f"{best}epoch.pth").exists():
                _link(output_dir / f"{phase}.{key}.best.pth", f"{best}epoch.pth")


def _arm_kill_switch(spec: str) -> None:
    """Tests only (see the module docstring): SIGKILL this process in the middle of a save."""
    parts = spec.split(":")
    name = parts[0]
    nth = int(parts[1]) if len(parts) > 1 and parts[1] else 1
    fraction = float(parts[2]) if len(parts) > 2 and parts[2] else 0.5
    real_save = torch.save
    seen = [0]

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and Path(f).name == name:
            seen[0] += 1
            if seen[0] == nth:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                data = buffer.getvalue()
                with open(f, "wb") as out:
                    out.write(data[: int(len(data) * fraction)])
                    out.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save
    logging.warning(f"{KILL_SWITCH_ENV}={spec}: this process kills itself while saving "
                    f"{name} (save #{nth}, {fraction:.0%} written); for tests only")


def _rank_logger(distributed_option) -> logging.Logger:
    """A logger that writes on every rank: espnet sets the root logger of ranks > 0 to ERROR."""
    logger = logging.getLogger("espnet_freeze_omni.rank")
    if not logger.handlers:
        handler = logging.StreamHandler()
        host = socket.gethostname().split(".")[0]
        handler.setFormatter(logging.Formatter(
            f"[{host}:{distributed_option.dist_rank}/{distributed_option.dist_world_size}]"
            " %(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # rank 0's root handler would print it twice
    return logger


def _held_outside(model: torch.nn.Module) -> List[torch.nn.Module]:
    """Modules an owner keeps as plain attributes (`hold_frozen_llm`): DDP never sees them."""
    registered = {id(m) for m in model.modules()}
    held, seen = [], set()
    for module in model.modules():
        for value in vars(module).values():
            if (isinstance(value, torch.nn.Module) and id(value) not in registered
                    and id(value) not in seen):
                seen.add(id(value))
                held.append(value)
    return held


def _describe_ddp_split(model: torch.nn.Module) -> str:
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    text = (f"DDP synchronizes {sum(p.numel() for p in trainable):,} trainable parameters "
            f"({len(trainable)} tensors)")
    if frozen:
        text += f"; {frozen:,} frozen ones (--freeze_param) are left alone"
    for module in _held_outside(model):
        own = list(module.parameters())
        where = getattr(module, "path", None)
        text += (f"; held outside DDP, loaded in this process, never synchronized or saved: "
                 f"{type(module).__name__}{f' {where}' if where else ''} "
                 f"({sum(p.numel() for p in own):,} parameters, "
                 f"{sum(p.numel() for p in own if p.requires_grad)} trainable)")
    return text


def parameter_fingerprint(model: torch.nn.Module) -> float:
    """Sum of every parameter in float64: equal on all ranks exactly when DDP kept them in step
    (ranks that diverge differ in the last digits at the least)."""
    with torch.no_grad():
        sums = [p.detach().double().sum() for p in model.parameters()]
        # summed where the parameters are, one transfer (not one per tensor) on a GPU
        return float(torch.stack(sums).sum().cpu()) if sums else 0.0


class _CountingIterator:
    """The epoch's batch iterator, counting what this rank reads (len() passes through)."""

    def __init__(self, iterator):
        self.iterator = iterator
        self.batches = 0
        self.utterances = 0

    def __len__(self):
        return len(self.iterator)

    def __iter__(self):
        for item in self.iterator:
            self.batches += 1
            self.utterances += len(item[0])
            yield item


def _check_ranks_agree(fingerprint: float, device, iepoch_text: str, logger,
                       quiet: bool = False) -> None:
    """All ranks compare their fingerprints (a collective call: every rank must make it)."""
    world = torch.distributed.get_world_size()
    mine = torch.tensor([fingerprint], dtype=torch.float64, device=device)
    every = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(every, mine)
    values = [float(t.item()) for t in every]
    if len(set(values)) != 1:
        listed = ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        raise RuntimeError(
            f"after {iepoch_text} the ranks hold different parameters ({listed}): DDP did not "
            "keep them in step; the checkpoint of rank 0 would not be what the others trained")
    if not quiet:
        logger.info(f"{iepoch_text}: the parameters of all {world} ranks are identical")


class ResumableMixin:
    """Kill-safe checkpoints for an espnet2 Trainer class (see the module docstring)."""

    # Whether the checkpoint.pth now in the output dir was written (or resumed from) by
    # this process; a stale one from an earlier run must never become checkpoint.prev.pth.
    # Class state: espnet's trainers are classes of classmethods, one run per process.
    _owns_checkpoint: bool = False
    _output_dir: Optional[Path] = None

    @classmethod
    def run(cls, model, optimizers, schedulers, train_iter_factory, valid_iter_factory,
            plot_attention_iter_factory, trainer_options, distributed_option) -> None:
        output_dir = Path(trainer_options.output_dir)
        rank0 = not distributed_option.distributed or distributed_option.dist_rank == 0
        if rank0:
            if trainer_options.resume:
                _select_checkpoint(output_dir)
                _repair_after_checkpoint(output_dir, trainer_options.best_model_criterion)
            elif (output_dir / PREVIOUS).exists():
                # an earlier run's backup: never to be mistaken for this run's
                (output_dir / PREVIOUS).unlink()
        if distributed_option.distributed:
            # every rank reads checkpoint.pth only after rank 0 has settled it
            torch.distributed.barrier()
            _rank_logger(distributed_option).info(
                f"rank {distributed_option.dist_rank}/{distributed_option.dist_world_size} "
                f"(pid {os.getpid()}, backend {distributed_option.dist_backend}): "
                + _describe_ddp_split(model))
        cls._output_dir = output_dir
        cls._owns_checkpoint = bool(trainer_options.resume) and (output_dir / CHECKPOINT).exists()
        spec = os.environ.get(KILL_SWITCH_ENV)
        if spec and rank0:
            _arm_kill_switch(spec)
        super().run(
            model=model, optimizers=optimizers, schedulers=schedulers,
            train_iter_factory=train_iter_factory, valid_iter_factory=valid_iter_factory,
            plot_attention_iter_factory=plot_attention_iter_factory,
            trainer_options=trainer_options, distributed_option=distributed_option,
        )

    @classmethod
    def train_one_epoch(cls, *, model, iterator, reporter, distributed_option, **kwargs):
        # espnet's run() passes every argument by keyword
        if not distributed_option.distributed:
            return super().train_one_epoch(model=model, iterator=iterator, reporter=reporter,
                                           distributed_option=distributed_option, **kwargs)
        counted = _CountingIterator(iterator)
        start = time.perf_counter()
        result = super().train_one_epoch(model=model, iterator=counted, reporter=reporter,
                                         distributed_option=distributed_option, **kwargs)
        seconds = time.perf_counter() - start
        rank, world = distributed_option.dist_rank, distributed_option.dist_world_size
        logger = _rank_logger(distributed_option)
        fingerprint = parameter_fingerprint(model)
        # "read": espnet stops every rank once one runs out, so a rank may have read one
        # batch more than it trained on
        logger.info(f"rank {rank}/{world}: epoch {reporter.get_epoch()}: trained in "
                    f"{seconds:.2f} s on its share of the batches ({counted.batches} read, "
                    f"{counted.utterances} utterances); parameter fingerprint {fingerprint!r}")
        _check_ranks_agree(fingerprint, next(model.parameters()).device,
                           f"epoch {reporter.get_epoch()}", logger, quiet=rank != 0)
        return result

    @classmethod
    def validate_one_epoch(cls, model, iterator, reporter, options, distributed_option):
        result = super().validate_one_epoch(
            model=model, iterator=iterator, reporter=reporter, options=options,
            distributed_option=distributed_option)
        # espnet saves the checkpoint of this epoch next: keep the last one out of its way.
        rank0 = not distributed_option.distributed or distributed_option.dist_rank == 0
        if rank0 and cls._output_dir is not None:
            ckpt = cls._output_dir / CHECKPOINT
            if cls._owns_checkpoint and ckpt.exists():
                os.replace(ckpt, cls._output_dir / PREVIOUS)
            cls._owns_checkpoint = True
        return result


class ResumableTrainer(ResumableMixin, Trainer):
    """espnet2's Trainer with kill-safe checkpoints."""


class ResumableGANTrainer(ResumableMixin, GANTrainer):
    """espnet2's GANTrainer (gan_codec, gan_tts) with kill-safe checkpoints."""
