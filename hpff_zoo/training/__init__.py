"""Building blocks for training a ``LocalModel`` with Accelerate (used by ``recipes/``).

* :func:`local_step`: one local-learning step whose gradients are averaged across processes
  although it runs many backward calls (DDP's own hooks cannot do that);
* :class:`CheckpointManager` / :class:`TrainingProgress`: crash-safe ``save_state`` checkpoints
  and the position ``--resume`` continues from;
* :func:`warmup_cosine`, :func:`evaluate`, :class:`MetricsWriter`, :func:`summarize_losses`,
  :func:`unweighted_losses`;
* :func:`save_model`: the final weights in the run directory, in the Hub folder format;
* :func:`peak_memory_against_e2e`: the peak step memory a run's record reports;
* :func:`configure_threads`: the intra-op CPU threads of a training process.

Unlike the core library, this package needs Accelerate.
"""

from .checkpoint import CheckpointManager, TrainingProgress
from .export import save_model
from .metrics import MetricsWriter, evaluate, summarize_losses, unweighted_losses
from .record import peak_memory_against_e2e
from .schedule import warmup_cosine
from .step import average_buffers, average_gradients, local_step
from .threads import ThreadChoice, choose_threads, configure_threads

__all__ = [
    "CheckpointManager",
    "MetricsWriter",
    "ThreadChoice",
    "TrainingProgress",
    "average_buffers",
    "average_gradients",
    "choose_threads",
    "configure_threads",
    "evaluate",
    "local_step",
    "peak_memory_against_e2e",
    "save_model",
    "summarize_losses",
    "unweighted_losses",
    "warmup_cosine",
]
