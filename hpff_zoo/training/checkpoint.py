"""Crash-safe Accelerate checkpoints and the training position they resume from.

``accelerator.save_state`` writes several files (model, optimizer, scheduler, sampler, random
states of every process, registered objects). A run killed while writing them must not leave a
checkpoint that ``--resume`` would pick up half-written, so :class:`CheckpointManager` lets every
process write into a hidden ``.tmp-checkpoint-N`` directory, flushes the files to disk, and only
then renames it to ``checkpoint-N``: a directory under that name is complete by construction,
and the latest one is simply the highest N. Leftover temporary directories are ignored and
removed on the next start.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import RunError, first_line

__all__ = ["CheckpointManager", "TrainingProgress", "load_checkpoint", "resume_point"]

_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainingProgress:
    """Where training stands; registered with ``accelerator.register_for_checkpointing``.

    Attributes:
        epoch: current epoch (0-based).
        step: optimizer steps taken so far.
        batch_in_epoch: batches of the current epoch already consumed (to skip on resume).
        loss_sum, loss_count: running sum and count of the head loss over the current epoch,
            so a resumed epoch reports the same mean as an uninterrupted one.
        elapsed_s: training wall time up to the checkpoint, summed over every resumed part, so
            a resumed run reports its total time.
        command: the command line that started the run (not the one that resumed it).
    """

    epoch: int = 0
    step: int = 0
    batch_in_epoch: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    elapsed_s: float = 0.0
    command: str = ""

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def start_epoch(self) -> None:
        self.batch_in_epoch, self.loss_sum, self.loss_count = 0, 0.0, 0


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root``, and ``root`` itself, to disk."""
    for path in root.rglob("*"):
        _fsync(path)
    _fsync(root)


class CheckpointManager:
    """Atomic ``accelerator.save_state`` checkpoints in ``directory``, keeping the newest ``keep``.

    Args:
        directory: where ``checkpoint-N`` directories live (N = optimizer step).
        keep: how many complete checkpoints to keep (0 or None keeps all).
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [
            (int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def find_damage(self, checkpoint: str | os.PathLike) -> Path | None:
        """The first file of ``checkpoint`` that cannot be read back (truncated, corrupt), so
        that a failed resume can name it; None when every file reads."""
        import safetensors.torch
        import torch

        for path in sorted(p for p in Path(checkpoint).rglob("*") if p.is_file()):
            try:
                if path.suffix == ".safetensors":
                    safetensors.torch.load_file(path)
                else:  # Accelerate's own pickles: optimizer, scheduler, random states
                    torch.load(path, map_location="cpu", weights_only=False)
            except Exception:
                return path
        return None

    def remove_partial(self) -> None:
        """Delete temporary directories left by a run killed while saving."""
        if self.directory.is_dir():
            for path in self.directory.glob(".tmp-checkpoint-*"):
                shutil.rmtree(path, ignore_errors=True)

    def save(self, accelerator, step: int, write: Callable[[Path], None] | None = None) -> Path:
        """Save ``checkpoint-{step}``; call on every process.

        Every process calls ``write(directory)`` (default: ``accelerator.save_state``), so a
        module-parallel run, whose stages each hold their own optimizer, writes its own files.
        """
        final = self.directory / f"checkpoint-{step:08d}"
        partial = self.directory / f".tmp-checkpoint-{step:08d}"
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        accelerator.wait_for_everyone()
        (write or (lambda directory: accelerator.save_state(str(directory))))(partial)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _fsync_tree(partial)
            if final.exists():  # the same step saved again after a resume
                shutil.rmtree(final)
            os.replace(partial, final)
            _fsync(self.directory)
            if self.keep:
                for old in self.checkpoints()[: -self.keep]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return final


def resume_point(
    resume: str | None, checkpoints: CheckpointManager, output_dir: str | os.PathLike
) -> Path | None:
    """The checkpoint ``resume`` names (``"latest"``, a checkpoint directory, or None: start a
    new run); None also when ``"latest"`` finds nothing, which is said. An earlier run's
    checkpoints in ``output_dir`` without ``resume`` are refused, never overwritten."""
    if resume is None:
        if checkpoints.latest() is not None:
            raise RunError(
                f"{output_dir} already holds checkpoints of an earlier run: pass --resume to "
                "continue it, or choose another --output-dir"
            )
        return None
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise RunError(f"--resume {path}: no such checkpoint directory")
        return path
    latest = checkpoints.latest()
    if latest is None:
        print(f"--resume: no checkpoint in {checkpoints.directory} yet: starting a new run")
    return latest


def load_checkpoint(path: Path, checkpoints: CheckpointManager, load: Callable[[Path], None]):
    """``load(path)``; a damaged checkpoint is one line that names the file that cannot be
    read, and what to do about it."""
    try:
        load(path)
    except Exception as error:
        damaged = checkpoints.find_damage(path) or path
        older = [p.name for p in checkpoints.checkpoints() if p.name < path.name]
        advice = f"delete {path} to resume from {older[-1]}" if older else "start without --resume"
        raise RunError(
            f"cannot resume from {damaged}: {first_line(error)} (truncated or corrupt?); {advice}"
        ) from None
