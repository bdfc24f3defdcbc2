"""Training a ``LocalModel`` with Accelerate: what ``recipes/`` are made of, as public API.

A recipe reads top to bottom as parse → build → the loop → save; everything else is here:

* the run's settings: :class:`RunConfig` (a typed dataclass, one field per flag) and
  :class:`CommandLine` (``--help``, presets, one-line errors) that builds one from ``argv``;
* set-up: :func:`make_accelerator`, :func:`load_data` / :func:`make_loaders`,
  :func:`create_local_model` / :func:`build_checked`, :func:`create_optimizer` /
  :func:`create_scheduler`, :func:`configure_threads`, and the header :func:`describe_run`
  (with a duration estimate from one timed step);
* the step: :func:`synced_gradients` around ``model.local_step(x, y,
  backward=accelerator.backward)`` (gradients averaged across processes although it runs many
  backward calls, which DDP's own hooks cannot do), or :func:`local_step`;
* the run's bookkeeping: :class:`Run` (checkpoints and resume, ``metrics.jsonl`` and trackers,
  the epoch lines, ``run.json`` and the final line), over :class:`CheckpointManager` /
  :class:`TrainingProgress`, :class:`MetricsWriter`, :func:`evaluate` / :func:`test_metrics`,
  :func:`save_model` and :func:`make_run_record`;
* :class:`RunError`: a mistake as one line (``error: ...``), a ``SystemExit``.

Unlike the core library, this package needs Accelerate.
"""

from .build import (
    BuildModel,
    build_checked,
    create_local_model,
    create_optimizer,
    create_scheduler,
    input_channels,
    local_model_kwargs,
)
from .checkpoint import CheckpointManager, TrainingProgress, load_checkpoint, resume_point
from .cli import CommandLine
from .config import RunConfig, option
from .errors import WEIGHTS_ERRORS, RunError, first_line
from .export import save_model
from .header import describe_run
from .loaders import Loaders, load_data, make_loaders
from .metrics import MetricsWriter, evaluate, summarize_losses, test_metrics, unweighted_losses
from .record import command_line, final_line, format_top5, make_run_record, peak_memory_against_e2e
from .run import Run
from .schedule import warmup_cosine
from .setup import make_accelerator, tracker_config
from .step import average_buffers, average_gradients, local_step, synced_gradients
from .threads import ThreadChoice, choose_threads, configure_threads

__all__ = [
    "WEIGHTS_ERRORS",
    "BuildModel",
    "CheckpointManager",
    "CommandLine",
    "Loaders",
    "MetricsWriter",
    "Run",
    "RunConfig",
    "RunError",
    "ThreadChoice",
    "TrainingProgress",
    "average_buffers",
    "average_gradients",
    "build_checked",
    "choose_threads",
    "command_line",
    "configure_threads",
    "create_local_model",
    "create_optimizer",
    "create_scheduler",
    "describe_run",
    "evaluate",
    "final_line",
    "first_line",
    "format_top5",
    "input_channels",
    "load_checkpoint",
    "load_data",
    "local_model_kwargs",
    "local_step",
    "make_accelerator",
    "make_loaders",
    "make_run_record",
    "option",
    "peak_memory_against_e2e",
    "resume_point",
    "save_model",
    "summarize_losses",
    "synced_gradients",
    "test_metrics",
    "tracker_config",
    "unweighted_losses",
    "warmup_cosine",
]
