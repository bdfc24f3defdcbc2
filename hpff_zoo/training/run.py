"""The bookkeeping around a recipe's training loop, so that the loop itself stays in sight.

A :class:`Run` owns what a run writes and where it stands: the checkpoints and ``--resume``
(:meth:`Run.begin`), ``metrics.jsonl`` and the trackers, the progress bar and the logged steps
(:meth:`Run.batches`, :meth:`Run.after_batch`), the epoch's line, record and checkpoint
(:meth:`Run.end_epoch`), and the end: the model, ``run.json``, the Hub upload and the final line
(:meth:`Run.finish`). The recipe keeps the steps that train: ``local_step``, the optimizer, the
schedule and the evaluation. A sketch (``recipes/loop.py`` is the whole loop)::

    run = Run(config, accelerator, command_line())
    run.begin()
    for epoch in run.epochs():
        for x, y in run.batches(epoch, loaders.train_set, train_loader):
            with accelerator.accumulate(model):
                with synced_gradients(accelerator, model), run.meter():
                    losses = net.local_step(x, y, backward=accelerator.backward)
                optimizer.step(); scheduler.step(); optimizer.zero_grad()
            run.after_batch(net, losses, x.shape[0], scheduler.get_last_lr()[0])
        run.end_epoch(epoch, {**test_metrics(accelerator, model, test_loader), ...})
    run.finish(net, data, loaders.data_config, record, batch)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..cards import RunRecord
from ..data import ImageClassificationData, TransformedDataset
from ..hub import RECORD_FILE, push_model
from ..local import LocalModel
from ..measure import MemoryMeter
from .checkpoint import CheckpointManager, TrainingProgress, load_checkpoint, resume_point
from .config import RunConfig
from .errors import RunError, first_line
from .export import save_model
from .metrics import MetricsWriter, summarize_losses, unweighted_losses
from .record import final_line, format_top5, make_run_record
from .setup import tracker_config
from .step import average_buffers

__all__ = ["Run"]


class Run:
    """One training run's records, checkpoints and position, for a loop that owns the steps.

    ``command`` is this process's command line (see :func:`command_line`); the one that started
    the run (before any ``--resume``) is ``progress.command``."""

    def __init__(self, config: RunConfig, accelerator: Accelerator, command: str) -> None:
        self.config, self.accelerator, self.command = config, accelerator, command
        self.start = time.perf_counter()
        self.output = Path(config.output_dir)
        self.checkpoints = CheckpointManager(
            self.output / "checkpoints", keep=config.keep_checkpoints
        )
        self.progress = TrainingProgress(command=command)
        self.elapsed_before = 0.0  # training time of the interrupted runs this one resumes
        self._save: Callable[[Path], None] | None = None
        self._epoch: dict[str, Any] = {}

    # --- start and resume

    def begin(
        self,
        load: Callable[[Path], None] | None = None,
        save: Callable[[Path], None] | None = None,
    ) -> Path | None:
        """Resume from the checkpoint ``config.resume`` names, or start anew; returns the
        checkpoint resumed from. Call on every process, after ``accelerator.prepare``.

        ``load`` / ``save`` read and write a checkpoint directory; by default Accelerate's
        ``load_state`` / ``save_state``, with the progress registered in it. What an interrupted
        run logged after its checkpoint is dropped from ``metrics.jsonl`` (and TensorBoard's
        ``purge_step``), since it is logged again."""
        accelerator, progress = self.accelerator, self.progress
        self.metrics = MetricsWriter(  # the first file a run writes (a dry run writes none)
            self.output / "metrics.jsonl", enabled=accelerator.is_main_process
        )
        if load is None:
            accelerator.register_for_checkpointing(progress)
            load = lambda path: accelerator.load_state(str(path))  # noqa: E731
        self._save = save
        if accelerator.is_main_process:
            self.checkpoints.remove_partial()
        accelerator.wait_for_everyone()
        resume = resume_point(self.config.resume, self.checkpoints, self.config.output_dir)
        tracker_kwargs: dict[str, Any] = {}
        if resume is not None:
            load_checkpoint(resume, self.checkpoints, load)
            self.elapsed_before = progress.elapsed_s
            batches = f" + {progress.batch_in_epoch} batches" if progress.batch_in_epoch else ""
            accelerator.print(f"resumed from {resume}: {progress.epoch} epochs{batches} done, "
                              f"step {progress.step}")  # fmt: skip
            step, epoch = progress.step, progress.epoch
            self.metrics.keep(
                lambda r: r["step"] <= step if r["kind"] == "step" else r["epoch"] <= epoch
            )
            tracker_kwargs = {"tensorboard": {"purge_step": step + 1}}
        else:  # a new run: no record of an earlier one in this directory stays
            self.metrics.keep(lambda r: False)
        accelerator.init_trackers(
            "hpff", config=tracker_config(self.config), init_kwargs=tracker_kwargs
        )
        return resume

    def epochs(self) -> range:
        """The epochs left to train."""
        return range(self.progress.epoch, self.config.epochs)

    def elapsed(self) -> float:
        """Wall time of the whole run: this process's, plus that of the runs it resumes."""
        return self.elapsed_before + time.perf_counter() - self.start

    def save_checkpoint(self) -> None:
        """``checkpoint-<step>`` of the run as it stands; call on every process."""
        self.progress.elapsed_s = self.elapsed()
        self.checkpoints.save(self.accelerator, self.progress.step, self._save)

    # --- one epoch

    def batches(
        self, epoch: int, train_set: TransformedDataset, loader: Iterable
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The rest of ``epoch``'s batches (all of them unless resumed mid-epoch), each epoch's
        shuffle and augmentation seeded by its number, under a progress bar."""
        progress, accelerator = self.progress, self.accelerator
        loader.set_epoch(epoch)
        train_set.set_epoch(epoch)
        skip = progress.batch_in_epoch
        self._bar = tqdm(
            total=len(loader),
            initial=skip,
            desc=f"epoch {epoch + 1}/{self.config.epochs}",
            unit="batch",
            disable=not accelerator.is_local_main_process,
            dynamic_ncols=True,
        )
        self._epoch = dict(epoch=epoch, start=time.perf_counter(), images=0, rate=None, peak=None)
        yield from accelerator.skip_first_batches(loader, skip) if skip else loader
        self._bar.close()

    def meter(self) -> contextlib.AbstractContextManager:
        """The memory meter around the epoch's first step (its peak is in the epoch's record);
        a no-op for the others."""
        if self._epoch["peak"] is not None:
            return contextlib.nullcontext()
        return self._first_step_meter()

    @contextlib.contextmanager
    def _first_step_meter(self) -> Iterator[None]:
        with MemoryMeter(self.accelerator.device) as meter:
            yield
        self._epoch["peak"] = meter.report.peak_mib

    def after_batch(self, net: LocalModel, losses: dict[str, float], size: int, lr: float):
        """Count a batch of ``size`` images per process; after an optimizer step, log the
        losses every ``log_every`` steps and checkpoint every ``checkpoint_every_steps``."""
        accelerator, progress, epoch = self.accelerator, self.progress, self._epoch
        losses = unweighted_losses(net, losses)
        progress.batch_in_epoch += 1
        progress.loss_sum += losses["head"]
        progress.loss_count += 1
        epoch["images"] += size * accelerator.num_processes
        epoch["rate"] = epoch["images"] / (time.perf_counter() - epoch["start"])
        self._bar.set_postfix_str(
            f"{summarize_losses(losses)} | {epoch['rate']:.0f} img/s", refresh=False
        )
        self._bar.update()
        if not accelerator.sync_gradients:
            return
        progress.step += 1
        step, config = progress.step, self.config
        if step % config.log_every == 0:
            record = {"step": step, "epoch": epoch["epoch"] + 1, "lr": lr,
                      **{f"loss/{k}": v for k, v in losses.items()}}  # fmt: skip
            accelerator.log(record, step=step)
            self.metrics.write({"kind": "step", **record})
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
            average_buffers(accelerator, net)  # one model on every process and on disk
            self.save_checkpoint()

    def epoch_stats(self) -> dict[str, Any]:
        """The epoch's training figures: the mean head loss over all processes, the first
        step's peak memory, the throughput and the time."""
        progress, accelerator = self.progress, self.accelerator
        sums = torch.tensor([progress.loss_sum, progress.loss_count], device=accelerator.device)
        sums = accelerator.reduce(sums, reduction="sum")
        return {
            "train_loss": (sums[0] / sums[1].clamp(min=1)).item(),
            "peak_step_mib": self._epoch["peak"],
            "images_per_second": self._epoch["rate"],
            "epoch_seconds": time.perf_counter() - self._epoch["start"],
        }

    def end_epoch(self, epoch: int, figures: dict[str, Any], line: str | None = None) -> dict:
        """Print the epoch's ``line`` (default: loss, accuracy, peak memory and time), log and
        write its record, checkpoint when due; returns the record."""
        progress = self.progress
        record = {"kind": "epoch", "epoch": epoch + 1, "step": progress.step, **figures}
        if line is None:
            peak = record["peak_step_mib"]
            line = (
                f"train loss {record['train_loss']:.4f}  test top-1 {record['test_top1']:.2f}%  "
                f"top-5 {format_top5(record['test_top5'])}  peak step memory "
                + (f"{peak:.1f} MiB" if peak is not None else "-")
                + f"  {record['epoch_seconds']:.1f} s"
            )
        self.accelerator.print(f"epoch {epoch + 1}/{self.config.epochs}  {line}")
        numbers = {k: v for k, v in record.items() if isinstance(v, float | int)}
        self.accelerator.log(numbers, step=progress.step)
        self.metrics.write(record)
        progress.epoch = epoch + 1
        progress.start_epoch()
        every = self.config.checkpoint_every_epochs
        if every and progress.epoch % every == 0:
            self.save_checkpoint()
        return record

    # --- the end

    def finish(
        self,
        net: LocalModel,
        data: ImageClassificationData,
        data_config: dict[str, Any],
        record: dict[str, Any],
        batch: int,
    ) -> None:
        """Save the model and ``run.json`` (peak memory measured at the per-process ``batch``),
        push to the Hub when asked, and print the final line; call on every process."""
        accelerator, config = self.accelerator, self.config
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_model(net, self.output, config.dataset, data_config, data.label_names)
            run_record = make_run_record(
                config, net, data, record, self.progress, self.command, self.elapsed(), batch
            )
            run_record.save(self.output / RECORD_FILE)
            if config.push_to_hub:
                self._push(net, run_record)
        accelerator.print(final_line(record, self.output, bool(accelerator.log_with)))
        accelerator.end_training()

    def _push(self, net: LocalModel, record: RunRecord) -> None:
        config = self.config
        try:
            push_model(net, config.push_to_hub, record=record, tag=config.published_tag())
        except Exception as error:  # the run is saved: say how to publish it by hand
            raise RunError(
                f"--push-to-hub {config.push_to_hub} failed ({first_line(error)}); the trained "
                f"model is in {config.output_dir}: publish it with `python -m hpff_zoo.hub "
                f"export {config.output_dir} EXPORT_DIR` then `python -m hpff_zoo.hub push "
                f"EXPORT_DIR {config.push_to_hub}`"
            ) from error
        print(f"pushed to https://huggingface.co/{config.push_to_hub}")
