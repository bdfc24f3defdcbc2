"""Evaluation (top-1 / top-5 across processes), the metrics file, and readable loss summaries."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..cards import QUICK_EVAL_IMAGES
from ..local import LocalModel

__all__ = ["MetricsWriter", "evaluate", "summarize_losses", "test_metrics", "unweighted_losses"]


@torch.no_grad()
def evaluate(
    accelerator, model: nn.Module, loader, first: int | None = None
) -> dict[str, float | None]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of the backbone over ``loader``;
    top-5 is None for five classes or fewer, where it would always be 100 %. With ``first``,
    also ``top1_first``: top-1 over the loader's first ``first`` examples (in its order), the
    figure a quick check of the weights can re-measure.

    Every process evaluates its shard; ``gather_for_metrics`` collects the per-example results
    and drops the duplicates a distributed sampler adds to even out the last batch.
    """
    net = accelerator.unwrap_model(model)
    was_training = net.training
    net.eval()
    # Summed on the device and read once at the end: no host sync per batch.
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    count, classes = 0, 0
    for x, y in loader:
        with accelerator.autocast():
            logits = net(x)
        classes = logits.shape[1]
        k = min(5, classes)
        hits = logits.topk(k, dim=1).indices == y[:, None]
        per_example = torch.stack(
            [
                hits[:, 0].float(),
                hits.any(1).float(),
                F.cross_entropy(logits.float(), y, reduction="none"),
            ],
            dim=1,
        )
        per_example = accelerator.gather_for_metrics(per_example)
        totals[:3] += per_example.double().sum(0)
        if first is not None and count < first:
            totals[3] += per_example[: first - count, 0].double().sum()
        count += per_example.shape[0]
    net.train(was_training)
    top1, top5, loss, hits_first = totals.tolist()
    top1, top5, loss = (value / max(count, 1) for value in (top1, top5, loss))
    # With five classes or fewer every label is in the top five: no figure to report.
    informative = classes > 5
    results = {
        "top1": 100 * top1,
        "top5": 100 * top5 if informative else None,
        "loss": loss,
        "examples": count,
    }
    if first is not None:
        results["top1_first"] = 100 * hits_first / max(min(first, count), 1)
    return results


def test_metrics(accelerator, model: nn.Module, loader) -> dict[str, Any]:
    """What an epoch (and the run record) reports of the test split, ``test_*`` keys: top-1,
    top-5, loss, and top-1 on its first ``QUICK_EVAL_IMAGES`` images."""
    results = evaluate(accelerator, model, loader, first=QUICK_EVAL_IMAGES)
    return {
        "test_top1": results["top1"],
        "test_top5": results["top5"],
        "test_loss": results["loss"],
        "test_top1_first": results["top1_first"],
    }


def unweighted_losses(model: LocalModel, losses: dict[str, float]) -> dict[str, float]:
    """``local_step``'s losses without the HiLo weights they were trained with.

    With HiLo a module's loss is ``w_ind`` × its own auxiliary loss (+ ``w_cas`` × the cascade
    auxiliary's, where one closes a window): with the official (0.001, 0.999), the first
    module's loss shows as a thousandth of itself, which looks converged. Dividing by the
    weights applied gives each module's (weighted-mean) auxiliary cross-entropy, comparable with
    the head's.
    """
    w_ind, w_cas = model.hilo_weights if model.cascade_size > 1 else (1.0, 0.0)
    cascade = model.aux["cascade"] if model.uses_aux and "cascade" in model.aux else {}
    return {
        name: value / (w_ind + (w_cas if name in cascade else 0.0))
        if name.startswith("module")
        else value
        for name, value in losses.items()
    }


def summarize_losses(losses: dict[str, float]) -> str:
    """``head 0.53 | m1 2.31 m8 1.02 m15 0.61``: head loss, then first, middle, last module."""
    modules = [k for k in losses if k.startswith("module")]
    shown = (
        sorted({modules[0], modules[len(modules) // 2], modules[-1]}, key=modules.index)
        if modules
        else []
    )
    parts = [f"head {losses['head']:.3f}"]
    if shown:
        parts.append(" ".join(f"m{name[6:]} {losses[name]:.3f}" for name in shown))
    return " | ".join(parts)


class MetricsWriter:
    """Appends one JSON object per line to ``path`` (main process only; others do nothing)."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def keep(self, predicate: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the records ``predicate`` rejects: those a crashed run wrote after the
        checkpoint it resumes from, which the resumed run writes again."""
        if self.enabled and self.path.is_file():
            records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
            kept = "".join(json.dumps(r) + "\n" for r in records if predicate(r))
            self.path.write_text(kept)
