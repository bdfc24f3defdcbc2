"""How many intra-op CPU threads one training process should use: one policy, one place.

PyTorch starts one OpenMP thread per core in every process. Two processes on two cores then run
four busy threads, and a single process on a machine whose cores are already busy spins its
threads against the other programs: on a loaded 2-core machine, ``recipes/cifar.py`` took 55 min
with PyTorch's default and under 3 min with one thread. ``torchrun`` therefore gives every
process its share of the cores (``OMP_NUM_THREADS=1`` when it starts several). This module does
the same for every launcher, and also leaves out the cores other programs keep busy (the
one-minute load average), so a process never starts more threads than there are free cores.

An explicit choice always wins: ``--threads`` first, then ``OMP_NUM_THREADS`` (which the
benchmark grid and ``torchrun`` set).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["ThreadChoice", "choose_threads", "configure_threads"]


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count of this process and why, for the run header."""

    threads: int
    reason: str

    def describe(self) -> str:
        return f"{self.threads} CPU thread(s) per process ({self.reason})"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what this process may run on (taskset, cgroups)
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def choose_threads(
    requested: int | None = None,
    *,
    env: dict[str, str] | None = None,
    cores: int | None = None,
    load: float | None = None,
) -> ThreadChoice:
    """Threads for one process: ``requested``, else ``OMP_NUM_THREADS``, else its share of the
    free cores (usable cores minus the load of other programs, divided by the processes this
    launch starts on the machine, ``LOCAL_WORLD_SIZE``), at least one.

    ``env``, ``cores`` and ``load`` default to this process's environment, CPU affinity and
    one-minute load average; they are parameters so that the policy can be checked directly.
    """
    env = os.environ if env is None else env
    if requested is not None:
        return ThreadChoice(requested, "--threads")
    if env.get("OMP_NUM_THREADS", "").isdigit() and int(env["OMP_NUM_THREADS"]) > 0:
        return ThreadChoice(int(env["OMP_NUM_THREADS"]), "OMP_NUM_THREADS")
    cores = _usable_cores() if cores is None else cores
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    processes = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    free = max(1, cores - int(load))
    threads = max(1, free // processes)
    return ThreadChoice(
        threads,
        f"{cores} cores, {load:.1f} busy with other programs, {processes} process(es) here; "
        "override with --threads or OMP_NUM_THREADS",
    )


def configure_threads(requested: int | None = None) -> ThreadChoice:
    """Apply :func:`choose_threads` to this process (call before any heavy torch work)."""
    choice = choose_threads(requested)
    torch.set_num_threads(choice.threads)
    return choice
