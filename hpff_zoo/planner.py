"""Pick K and the PFF grid for a memory budget: ``hpff_zoo.plan`` and its CLI.

A user with a given GPU asks: how few modules (the fewer, the closer to E2E accuracy) can I train
this model with at this batch size? The planner answers by measurement, not by formula:

* static memory is counted exactly: weights, gradients and optimizer state (SGD momentum by
  default: one more copy) of the backbone and the auxiliary networks;
* dynamic memory (activations, temporaries) is measured with :class:`~hpff_zoo.MemoryMeter` on a
  steady-state ``local_step`` at two small batch sizes and extrapolated linearly, which holds
  because every activation is proportional to the batch (per-channel statistics are the
  constant term).

Candidates are tried from the most accurate down: E2E (K=1), then increasing K, each with PFF off
before PFF on. The first that fits is chosen; when none fits, the error states the smallest peak
any candidate reaches.

    python -m hpff_zoo.planner --model hpff_resnet110 --batch-size 1024 --budget 4GB
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch

from .choices import hpff_model, one_of, positive_int
from .local import METHODS, LocalModel
from .measure import step_peak_bytes

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
    """One configuration the planner measured."""

    method: str
    num_modules: int
    pff: int
    static_bytes: int
    dynamic_bytes: int

    @property
    def predicted_bytes(self) -> int:
        return self.static_bytes + self.dynamic_bytes


@dataclass(frozen=True)
class Plan:
    """The chosen configuration and every candidate considered, in the order tried."""

    chosen: Candidate
    candidates: tuple[Candidate, ...]
    budget_bytes: int
    unit: str = "GiB"  # the unit the budget was given in; the table speaks it

    def model_kwargs(self) -> dict[str, object]:
        """Keyword arguments for ``timm.create_model`` that build the chosen configuration."""
        return dict(
            method=self.chosen.method, num_modules=self.chosen.num_modules, pff=self.chosen.pff
        )

    def table(self) -> str:
        lines = ["| method | K | PFF | predicted peak | fits |", "|---|---|---|---|---|"]
        for c in self.candidates:
            fits = "yes" if c.predicted_bytes <= self.budget_bytes else "no"
            mark = " (chosen)" if c == self.chosen else ""
            lines.append(
                f"| {c.method} | {c.num_modules} | {c.pff} | "
                f"{format_bytes(c.predicted_bytes, self.unit)} | {fits}{mark} |"
            )
        return "\n".join(lines)


def static_bytes(model: LocalModel, optimizer_slots: int = 1) -> int:
    """Weights + gradients + optimizer state of every trainable parameter, plus buffers."""
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return params * (2 + optimizer_slots) + frozen + buffers


def predict_dynamic_bytes(model: LocalModel, batch_size: int, img_size: int | None) -> int:
    """Peak activation memory at ``batch_size``, extrapolated from two small measured batches."""
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
    return int(p1 + per_sample * (batch_size - b1))


def _module_ladder(num_atoms: int, paper_k: int) -> list[int]:
    ladder = {1, num_atoms, paper_k}
    k = 2
    while k < num_atoms:
        ladder.add(k)
        k *= 2
    return sorted(k for k in ladder if 1 <= k <= num_atoms)


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
) -> Plan:
    """The fewest modules (then the smallest PFF grid) whose predicted peak fits the budget.

    Args:
        model_name: an ``hpff_*`` model, or one of its catalogue tags (for the tag's input size).
        batch_size: the training batch size per device.
        img_size: input resolution (``None``: the model's own).
        budget_bytes: bytes, or a string such as ``"4GB"`` / ``"6GiB"``.
        method, hilo: the local method and HiLo setting to plan for (E2E is always tried first).
        num_classes: classifier size (it changes the static memory).
        in_chans: input channels (1 for grayscale data).
        pff_grids: PFF grid sizes to consider.
        optimizer_slots: optimizer state per parameter (1 for SGD momentum, 2 for Adam).
        device: where to measure; CPU measurements carry over to GPUs except for kernel
            workspaces (cuDNN), which is why a margin under the card's memory is wise.
        min_modules: the smallest K to consider (2 keeps local learning even when E2E fits).

    Raises:
        ValueError: if no candidate fits, stating the smallest achievable peak, in the unit of
            ``budget_bytes``; at once, before any measurement, when the weights, gradients and
            optimizer state of the E2E model alone (less than any candidate's) exceed it.
    """
    budget, unit = parse_bytes(budget_bytes), _unit(budget_bytes)
    extra = dict(img_size=img_size) if img_size is not None and "vit" in model_name else {}
    extra["in_chans"] = in_chans
    probe = timm.create_model(model_name, num_classes=num_classes, method="e2e", **extra)
    least_static = static_bytes(probe, optimizer_slots)
    if least_static > budget:
        raise ValueError(
            f"{model_name}'s weights, gradients and optimizer state alone take "
            f"{format_bytes(least_static, budget_bytes)}, above the budget of "
            f"{format_bytes(budget, budget_bytes)} before any activation is stored"
        )
    ladder = _module_ladder(len(probe.partition.atoms), _paper_k(model_name))
    ladder = [k for k in ladder if k >= min_modules]
    if not ladder:
        raise ValueError(
            f"{model_name} has {len(probe.partition.atoms)} blocks: no K >= {min_modules} to plan"
        )
    candidates: list[Candidate] = []
    for k in ladder:
        for pff in (1,) if k == 1 else pff_grids:
            config = dict(method="e2e" if k == 1 else method, num_modules=k, pff=pff, hilo=hilo)
            try:
                model = timm.create_model(model_name, num_classes=num_classes, **config, **extra)
            except ValueError:  # e.g. a PFF grid larger than some module's feature map
                continue
            model = model.to(device)
            candidate = Candidate(
                config["method"],
                k,
                pff,
                static_bytes(model, optimizer_slots),
                predict_dynamic_bytes(model, batch_size, img_size),
            )
            candidates.append(candidate)
            if candidate.predicted_bytes <= budget:
                return Plan(candidate, tuple(candidates), budget, unit)
    smallest = min(candidates, key=lambda c: c.predicted_bytes)
    raise ValueError(
        f"no configuration of {model_name} fits {format_bytes(budget, budget_bytes)} at batch "
        f"{batch_size}; the smallest predicted peak is "
        f"{format_bytes(smallest.predicted_bytes, budget_bytes)} "
        f"({smallest.method}, K={smallest.num_modules}, PFF={smallest.pff})"
    )


def _paper_k(model_name: str) -> int:
    from .models import HPFF_MODELS

    architecture = model_name.split(".")[0]
    if architecture not in HPFF_MODELS:
        raise ValueError(f"unknown hpff model {model_name!r}; choose from {sorted(HPFF_MODELS)}")
    return int(HPFF_MODELS[architecture][1]["num_modules"])


def main(argv: Sequence[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(
        prog="python -m hpff_zoo.planner", description=__doc__.split("\n\n")[0]
    )
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
        )
    except ValueError as error:  # a budget nothing fits, an unknown model: one line
        parser.exit(1, f"error: {error}\n")
    print(result.table())
    print(f"\nchosen: {result.model_kwargs()}")
    return result


if __name__ == "__main__":
    main()
