"""Pick the fastest way to train within a memory budget: ``hpff_zoo.plan`` and its CLI.

A user with a given GPU asks: how do I train this model at this batch size within this memory,
as fast as possible? The rivals are plain end-to-end backprop (E2E), E2E with activation
checkpointing (``set_grad_checkpointing``: less memory for a second forward) and the local
configurations of the user's method (K modules, a PFF grid, checkpointing off or on, with HiLo
at either granularity of :meth:`~hpff_zoo.LocalModel.set_grad_checkpointing`). The
planner answers by measurement, not by formula:

* static memory is counted exactly: weights, gradients and optimizer state (SGD momentum by
  default: one more copy) of the backbone and the auxiliary networks;
* dynamic memory (activations, temporaries) is measured with :class:`~hpff_zoo.MemoryMeter` on a
  steady-state ``local_step`` at two small batch sizes and extrapolated linearly, which holds
  because every activation is proportional to the batch (per-channel statistics are the
  constant term);
* step time is measured on the machine at hand, at the user's batch, one thread, the candidates
  interleaved after a warm-up step (:func:`~hpff_zoo.measure.measure_speed`), as a ratio to
  plain E2E's.

The choice: plain E2E whenever it fits (exact gradients, no recompute, no auxiliaries: there is
nothing to trade, so nothing is timed); otherwise the fastest timed candidate that fits, E2E +
checkpointing included. A checkpointed configuration is measured only when its plain twin does
not fit (with the twin fitting it would add a recompute and nothing else), and dropped when it
needs no less memory than the twin (a step the switch does not change); a ``"block"`` one is
dropped when it needs the same as the ``"module"`` one (one-block modules: the same step). When
nothing fits, the error states the smallest peak any candidate reaches.

    python -m hpff_zoo.planner --model hpff_resnet110 --batch-size 1024 --budget 4GB
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import timm
import torch

from .choices import OneLineParser, hpff_model, one_of, positive_int, unknown_name
from .local import METHODS, LocalModel
from .measure import example_batch, measure_speed, static_bytes, step_peak_bytes

__all__ = ["Candidate", "Plan", "format_bytes", "parse_bytes", "plan"]

# Batch 2 and 4: a training-mode BatchNorm on a 1×1 map (an auxiliary pooled that far, a
# ResNet's last stage at 28 px) needs more than one value per channel.
PROBE_BATCHES = (2, 4)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_bytes(text: str | int) -> int:
    """``"4GB"`` → 4·10⁹, ``"512MiB"`` → 512·2²⁰, an int stays as it is."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"cannot read a memory size from {text!r} (try 4GB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _unit(text: str | int) -> str:
    """The unit a budget was written in (``"4GB"`` → ``GB``); bytes as ``B``, GiB for ints."""
    if isinstance(text, int):
        return "GiB"
    unit = re.sub(r"[\d.\s]", "", text)
    return {"": "B", "B": "B"}.get(unit.upper(), unit.upper().replace("I", "i"))


def format_bytes(value: int, like: str | int = "GiB") -> str:
    """``value`` bytes in the unit of the budget ``like`` ("4GB" → GB, "512MiB" → MiB), so a
    planner message speaks the user's unit; 4 significant digits, whatever the size."""
    unit = _unit(like)
    if unit == "B":
        return f"{value:,} B"
    return f"{value / _UNITS[unit.upper()]:.4g} {unit}"


@dataclass(frozen=True)
class Candidate:
    """One configuration the planner measured.

    ``method="e2e"`` with ``checkpointing=True`` is E2E + activation checkpointing;
    ``checkpoint_granularity`` is what a checkpointed HiLo step recomputes (see
    :meth:`~hpff_zoo.LocalModel.set_grad_checkpointing`). ``step_time`` is the measured step time
    relative to plain E2E on the same batch (``None``: not timed).
    """

    method: str
    num_modules: int
    pff: int
    static_bytes: int
    dynamic_bytes: int
    checkpointing: bool = False
    step_time: float | None = None
    checkpoint_granularity: str = "module"

    def apply_checkpointing(self, model: LocalModel) -> None:
        """Set ``model``'s checkpointing as this candidate was measured."""
        model.set_grad_checkpointing(self.checkpointing, granularity=self.checkpoint_granularity)

    @property
    def _at_granularity(self) -> str:
        """`` (block)`` where the granularity is not the default, else nothing."""
        granularity = self.checkpoint_granularity
        return "" if granularity == "module" else f" ({granularity})"

    @property
    def _checkpointing_call(self) -> str:
        """The call that sets it, as the summary tells the user."""
        granularity = self.checkpoint_granularity
        option = "" if granularity == "module" else f", granularity={granularity!r}"
        return f"model.set_grad_checkpointing(True{option})"

    @property
    def predicted_bytes(self) -> int:
        return self.static_bytes + self.dynamic_bytes

    @property
    def name(self) -> str:
        """``E2E``, ``E2E + checkpointing``, ``infopro K=4 PFF 2x2 + checkpointing``."""
        base = "E2E" if self.method == "e2e" else f"{self.method} K={self.num_modules}"
        if self.method != "e2e" and self.pff > 1:
            base += f" PFF {self.pff}x{self.pff}"
        return base + (f" + checkpointing{self._at_granularity}" if self.checkpointing else "")


@dataclass(frozen=True)
class Plan:
    """The chosen configuration and every candidate considered, in the order measured."""

    chosen: Candidate
    candidates: tuple[Candidate, ...]
    budget_bytes: int
    unit: str = "GiB"  # the unit the budget was given in; the table speaks it

    def model_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``timm.create_model`` that build the chosen configuration
        (then ``chosen.apply_checkpointing(model)``)."""
        return dict(
            method=self.chosen.method, num_modules=self.chosen.num_modules, pff=self.chosen.pff
        )

    def summary(self) -> str:
        """One sentence: what to train and why, naming E2E when E2E is the answer."""
        c = self.chosen
        if c.method == "e2e" and not c.checkpointing:
            return "plain E2E fits the budget: train end-to-end, no local learning needed"
        speed = f" ({c.step_time:.2f}x plain E2E's step time)" if c.step_time else ""
        if c.method == "e2e":
            return (
                f"E2E + checkpointing is the fastest configuration that fits{speed}: train "
                "end-to-end with model.set_grad_checkpointing(True)"
            )
        then = f" and {c._checkpointing_call}" if c.checkpointing else ""
        kwargs = self.model_kwargs()
        return f"{c.name} is the fastest configuration that fits{speed}: {kwargs}{then}"

    def table(self) -> str:
        lines = [
            "| method | K | PFF | checkpointing | predicted peak | step time / E2E | fits |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in self.candidates:
            fits = "yes" if c.predicted_bytes <= self.budget_bytes else "no"
            mark = " (chosen)" if c == self.chosen else ""
            time = "-" if c.step_time is None else f"{c.step_time:.2f}"
            switch = f"on{c._at_granularity}" if c.checkpointing else "off"
            lines.append(
                f"| {c.method} | {c.num_modules} | {c.pff} | {switch} "
                f"| {format_bytes(c.predicted_bytes, self.unit)} | {time} | {fits}{mark} |"
            )
        return "\n".join(lines)


@dataclass(frozen=True)
class _Fit:
    """Dynamic bytes as a line in the batch size: ``intercept + per_sample * batch``."""

    intercept: float
    per_sample: float

    def at(self, batch_size: int) -> int:
        return int(self.intercept + self.per_sample * batch_size)

    def largest_batch(self, available: int) -> int:
        """The largest batch whose dynamic bytes stay within ``available`` (0: none)."""
        if self.per_sample <= 0:
            return 2**31
        return max(0, int((available - self.intercept) // self.per_sample))


def _dynamic_fit(model: LocalModel, img_size: int | None) -> _Fit:
    """The line through the measured step peaks at the two :data:`PROBE_BATCHES`."""
    device = next(model.parameters()).device
    channels, height, width = model.input_size
    if img_size is not None:
        height = width = img_size
    peaks = []
    for b in PROBE_BATCHES:
        x = torch.randn(b, channels, height, width, device=device)
        y = torch.randint(0, model.num_classes, (b,), device=device)
        peaks.append(step_peak_bytes(model, x, y))
    (b1, b2), (p1, p2) = PROBE_BATCHES, peaks
    per_sample = (p2 - p1) / (b2 - b1)
    return _Fit(p1 - per_sample * b1, per_sample)


def predict_dynamic_bytes(model: LocalModel, batch_size: int, img_size: int | None) -> int:
    """Peak activation memory at ``batch_size``, extrapolated from two small measured batches."""
    return _dynamic_fit(model, img_size).at(batch_size)


def _module_ladder(num_atoms: int, paper_k: int) -> list[int]:
    ladder = {1, num_atoms, paper_k}
    k = 2
    while k < num_atoms:
        ladder.add(k)
        k *= 2
    return sorted(k for k in ladder if 1 <= k <= num_atoms)


@dataclass(frozen=True)
class _Config:
    """A configuration to measure; ``checkpointing`` applies timm's switch after building, at
    ``granularity``."""

    method: str
    num_modules: int
    pff: int
    checkpointing: bool
    granularity: str = "module"

    @property
    def plain(self) -> _Config:
        """The same configuration without checkpointing (its *twin*)."""
        return replace(self, checkpointing=False, granularity="module")


PLAIN_E2E = _Config("e2e", 1, 1, False)


def plan(
    model_name: str,
    batch_size: int,
    img_size: int | None,
    budget_bytes: int | str,
    method: str = "infopro",
    hilo: int | bool = 2,
    num_classes: int = 10,
    in_chans: int = 3,
    pff_grids: Sequence[int] = (1, 2, 4),
    optimizer_slots: int = 1,
    device: str | torch.device = "cpu",
    min_modules: int = 1,
    checkpointing: Sequence[bool] = (False, True),
    repetitions: int = 3,
    time_limit: float = 30.0,
    timing_batch: int = 32,
) -> Plan:
    """The fastest configuration whose predicted peak fits the budget (plain E2E if it fits).

    Args:
        model_name: an ``hpff_*`` model, or one of its catalogue tags (for the tag's input size).
        batch_size: the training batch size per device.
        img_size: input resolution (``None``: the model's own).
        budget_bytes: bytes, or a string such as ``"4GB"`` / ``"6GiB"``.
        method, hilo: the local method and HiLo setting to plan for (E2E is always considered,
            unless ``min_modules`` > 1).
        num_classes: classifier size (it changes the static memory).
        in_chans: input channels (1 for grayscale data).
        pff_grids: PFF grid sizes to consider.
        optimizer_slots: optimizer state per parameter (1 for SGD momentum, 2 for Adam).
        device: where to measure; CPU measurements carry over to GPUs except for kernel
            workspaces (cuDNN), which is why a margin under the card's memory is wise. Step
            times are those of this device.
        min_modules: the smallest K to consider (2 keeps local learning even when E2E fits).
        checkpointing: the settings of ``set_grad_checkpointing`` to consider (``(False,)``:
            never checkpoint).
        repetitions: timed steps per candidate (after one warm-up step each), interleaved.
        time_limit: seconds the timing may take (warm-up included) before it stops after the
            current round; every timed candidate gets the same number of steps, at least one.
        timing_batch: the largest batch the candidates are timed on. They are all timed on one
            batch, of ``min(batch_size, timing_batch)`` samples or fewer: plain E2E, the
            reference, must fit the budget on it too, and by then it does not at ``batch_size``.

    Raises:
        ValueError: on bad arguments, at once; if no candidate fits, stating the smallest
            achievable peak, in the unit of ``budget_bytes``; at once, before any measurement,
            when the weights, gradients and optimizer state of the E2E model alone (less than
            any candidate's) exceed it.
    """
    budget, unit = parse_bytes(budget_bytes), _unit(budget_bytes)
    _check_arguments(model_name, batch_size, img_size, budget, method, pff_grids, optimizer_slots,
                     min_modules, checkpointing, repetitions, time_limit, timing_batch)  # fmt: skip
    extra = dict(img_size=img_size) if img_size is not None and "vit" in model_name else {}
    extra["in_chans"] = in_chans

    def build(config: _Config) -> LocalModel:
        torch.manual_seed(0)
        model = timm.create_model(
            model_name, num_classes=num_classes, method=config.method,
            num_modules=config.num_modules, pff=config.pff, hilo=hilo, **extra,
        )  # fmt: skip
        model.set_grad_checkpointing(config.checkpointing, granularity=config.granularity)
        return model.to(device)

    probe = timm.create_model(model_name, num_classes=num_classes, method="e2e", **extra)
    least_static = static_bytes(probe, optimizer_slots)
    if least_static > budget:
        raise ValueError(
            f"{model_name}'s weights, gradients and optimizer state alone take "
            f"{format_bytes(least_static, budget_bytes)}, above the budget of "
            f"{format_bytes(budget, budget_bytes)} before any activation is stored"
        )
    configs = _configs(probe, model_name, method, hilo, pff_grids, min_modules, checkpointing)
    if not configs:
        raise ValueError(
            f"{model_name} has {len(probe.partition.atoms)} blocks: no K >= {min_modules} to plan"
        )
    reference = build(PLAIN_E2E)
    reference_fit = _dynamic_fit(reference, img_size)
    measured: dict[_Config, Candidate] = {}
    for config in configs:
        twin = measured.get(config.plain)
        if config.checkpointing and (twin is None or twin.predicted_bytes <= budget):
            continue  # the plain twin fits (this adds only a recompute) or cannot be built
        try:
            model = reference if config == PLAIN_E2E else build(config)
        except ValueError:  # e.g. a PFF grid larger than some module's feature map
            continue
        fit = reference_fit if config == PLAIN_E2E else _dynamic_fit(model, img_size)
        candidate = Candidate(
            config.method, config.num_modules, config.pff, static_bytes(model, optimizer_slots),
            fit.at(batch_size), config.checkpointing, checkpoint_granularity=config.granularity,
        )  # fmt: skip
        if config.checkpointing and candidate.dynamic_bytes >= twin.dynamic_bytes:
            continue  # the switch saves nothing in this step: the same step, not a candidate
        module_twin = measured.get(replace(config, granularity="module"))
        if config.granularity != "module" and (
            module_twin is None or candidate.dynamic_bytes == module_twin.dynamic_bytes
        ):
            continue  # one-block modules re-run at either granularity: the same step
        measured[config] = candidate
    fits = [c for c in measured if measured[c].predicted_bytes <= budget]
    if not fits:
        smallest = min(measured.values(), key=lambda c: c.predicted_bytes)
        raise ValueError(
            f"no configuration of {model_name} fits {format_bytes(budget, budget_bytes)} at "
            f"batch {batch_size}; the smallest predicted peak is "
            f"{format_bytes(smallest.predicted_bytes, budget_bytes)} ({smallest.name})"
        )
    if PLAIN_E2E in fits:  # exact gradients, no recompute, no auxiliaries: nothing to time
        return Plan(measured[PLAIN_E2E], tuple(measured.values()), budget, unit)
    room = budget - static_bytes(reference, optimizer_slots)
    batch = max(PROBE_BATCHES[0], min(batch_size, timing_batch, reference_fit.largest_batch(room)))
    times = _relative_step_times([build(c) for c in fits], reference, batch, img_size,
                                 repetitions, time_limit)  # fmt: skip
    for config, time in zip(fits, times):
        measured[config] = replace(measured[config], step_time=time)
    if PLAIN_E2E in measured:  # the reference: 1 by definition, now that it was timed
        measured[PLAIN_E2E] = replace(measured[PLAIN_E2E], step_time=1.0)
    chosen = min((measured[c] for c in fits), key=lambda c: c.step_time)
    return Plan(chosen, tuple(measured.values()), budget, unit)


def _check_arguments(
    model_name: str,
    batch_size: int,
    img_size: int | None,
    budget: int,
    method: str,
    pff_grids: Sequence[int],
    optimizer_slots: int,
    min_modules: int,
    checkpointing: Sequence[bool],
    repetitions: int,
    time_limit: float,
    timing_batch: int,
) -> None:
    """One clear line for a bad argument, before any model is built or measured."""
    _paper_k(model_name)
    if method not in METHODS:
        raise ValueError(unknown_name("method", method, METHODS))
    counts = dict(batch_size=batch_size, repetitions=repetitions, min_modules=min_modules,
                  timing_batch=timing_batch)  # fmt: skip
    if img_size is not None:
        counts["img_size"] = img_size
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if budget <= 0:
        raise ValueError(f"the memory budget must be positive, got {budget} bytes")
    if not pff_grids or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                            for n in pff_grids):  # fmt: skip
        raise ValueError(f"pff_grids must be positive integers, got {list(pff_grids)}")
    if optimizer_slots < 0:
        raise ValueError(f"optimizer_slots must be 0 or more, got {optimizer_slots}")
    if not checkpointing or any(not isinstance(c, bool) for c in checkpointing):
        raise ValueError(f"checkpointing must list True and/or False, got {checkpointing!r}")
    if not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if method == "e2e" and min_modules > 1:
        raise ValueError("method 'e2e' has one module: min_modules > 1 leaves nothing to plan")


def _configs(
    probe: LocalModel,
    model_name: str,
    method: str,
    hilo: int | bool,
    pff_grids: Sequence[int],
    min_modules: int,
    checkpointing: Sequence[bool],
) -> list[_Config]:
    """E2E (plain, then checkpointed), then each K of the ladder, each grid, plain first, then
    checkpointed at each granularity (``"block"`` only with HiLo: without a cascade nothing
    waits, and the two are one step)."""
    switch = sorted(set(checkpointing))  # False before True: a twin is measured first
    configs = [_Config("e2e", 1, 1, c) for c in switch] if min_modules <= 1 else []
    if method == "e2e":
        return configs
    settings = [(c, "module") for c in switch]
    if True in switch and hilo:
        settings.append((True, "block"))
    for k in _module_ladder(len(probe.partition.atoms), _paper_k(model_name)):
        if k > 1 and k >= min_modules:
            configs += [_Config(method, k, n, c, g) for n in dict.fromkeys(pff_grids)
                        for c, g in settings]  # fmt: skip
    return configs


def _relative_step_times(
    models: list[LocalModel],
    reference: LocalModel,
    batch_size: int,
    img_size: int | None,
    repetitions: int,
    time_limit: float,
) -> list[float]:
    """Median step time of each model over plain E2E's, one thread, interleaved, same batch.

    One thread, as every step time of the library is measured: the ratios then compare
    arithmetic and overhead rather than how well each configuration spreads over cores that
    other programs share. The caller's thread count is restored.
    """
    x, y = example_batch(reference, batch_size, img_size, next(reference.parameters()).device)
    callers_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        times = measure_speed([reference, *models], x, y, repetitions, time_limit)
    finally:  # the caller's thread count is its own
        torch.set_num_threads(callers_threads)
    medians = [statistics.median(t) for t in times]
    return [m / medians[0] for m in medians[1:]]


def _paper_k(model_name: str) -> int:
    from .models import HPFF_MODELS

    architecture = model_name.split(".")[0]
    if architecture not in HPFF_MODELS:
        raise ValueError(unknown_name("hpff_* model", model_name, HPFF_MODELS))
    return int(HPFF_MODELS[architecture][1]["num_modules"])


def _grids(text: str) -> tuple[int, ...]:
    """``type=`` of ``--pff-grids``: comma-separated positive grid sizes."""
    return tuple(positive_int(part) for part in text.split(","))


def main(argv: Sequence[str] | None = None) -> Plan:
    parser = OneLineParser(prog="python -m hpff_zoo.planner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=hpff_model, help="an hpff_* model name")
    parser.add_argument(
        "--batch-size", type=positive_int, required=True, help="training batch size"
    )
    parser.add_argument("--budget", required=True, help="memory budget, e.g. 4GB or 6GiB")
    parser.add_argument(
        "--img-size", type=positive_int, help="input resolution (default: the model's)"
    )
    parser.add_argument(
        "--method", default="infopro", type=one_of("method", METHODS), help="local method"
    )
    parser.add_argument("--no-hilo", action="store_true", help="plan without HiLo cascades")
    parser.add_argument("--num-classes", type=positive_int, default=10, help="classifier outputs")
    parser.add_argument(
        "--optimizer-slots",
        type=int,
        default=1,
        help="state tensors per parameter (SGD 1, Adam 2)",
    )
    parser.add_argument(
        "--min-modules",
        type=positive_int,
        default=1,
        help="smallest K to consider (2: no E2E fallback)",
    )
    parser.add_argument(
        "--no-checkpointing", action="store_true", help="never consider activation checkpointing"
    )
    parser.add_argument(
        "--pff-grids", type=_grids, default=(1, 2, 4), help="PFF grid sizes, e.g. 1,2,4"
    )
    parser.add_argument(
        "--repetitions", type=positive_int, default=3, help="timed steps per candidate"
    )
    parser.add_argument(
        "--time-limit", type=float, default=30.0, help="seconds the timing may take (about)"
    )
    parser.add_argument(
        "--timing-batch", type=positive_int, default=32, help="largest batch to time on"
    )
    args = parser.parse_args(argv)
    try:
        result = plan(
            args.model,
            args.batch_size,
            args.img_size,
            args.budget,
            method=args.method,
            hilo=False if args.no_hilo else 2,
            num_classes=args.num_classes,
            optimizer_slots=args.optimizer_slots,
            min_modules=args.min_modules,
            checkpointing=(False,) if args.no_checkpointing else (False, True),
            pff_grids=args.pff_grids,
            repetitions=args.repetitions,
            time_limit=args.time_limit,
            timing_batch=args.timing_batch,
        )
    except ValueError as error:  # a budget nothing fits, an unknown model: one line
        parser.exit(1, f"error: {error}\n")
    print(result.table())
    print(f"\nchosen: {result.summary()}")
    return result


if __name__ == "__main__":
    main()
