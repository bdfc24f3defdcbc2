"""Split a timm backbone into K gradient-isolated modules.

Three steps, each a function of its own:

1. :func:`flatten` turns the backbone's ``forward_features`` into an ordered list of *atoms*
   (stem, each residual block, each VGG conv layer, each transformer block, ...) whose sequential
   application reproduces ``forward_features`` exactly. It reads timm's structure (the order in
   which top-level children run, ``nn.Sequential`` stages, stage modules that hold blocks) and
   checks every expansion numerically, so no per-architecture table is needed; models whose
   features are not a chain of children (ViT's position embedding) have a small override.
2. :func:`measure_costs` runs each atom once on fake tensors (shape only, no data, no FLOPs
   spent) and records the bytes it saves for backward and its FLOPs.
3. :func:`balanced_split` solves the min-max contiguous partition of those costs into K modules.

:class:`Partition` bundles the result; :meth:`Partition.module_atoms` is what the training
schedule runs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode

from .choices import unknown_name
from .measure import FlopCounter

__all__ = [
    "Atom",
    "AtomCost",
    "Partition",
    "balanced_split",
    "flatten",
    "measure_costs",
    "partition_backbone",
    "register_flattener",
]

Balance = Literal["memory", "flops", "blocks"]
BALANCES: tuple[Balance, ...] = ("memory", "flops", "blocks")

# Layers that open a new atom when met inside a flat nn.Sequential (VGG's `features`, a ResNet
# stem): everything after them up to the next one (norm, activation, pooling) belongs to them.
_COMPUTE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Atom:
    """The smallest unit a module boundary may fall between.

    Attributes:
        name: a readable name, the dotted backbone path of its (first) submodule.
        fn: applies the atom to the output of the previous atom.
        parameter_names: names, in ``backbone.named_parameters()``, of the parameters it owns.
    """

    name: str
    fn: Callable[[Tensor], Tensor] = field(repr=False)
    parameter_names: tuple[str, ...] = field(repr=False)

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def as_module(self) -> nn.Module | None:
        """The atom as an ``nn.Module`` sharing the backbone's layers, if it is made of modules.

        Methods that copy a block (MAN's momentum copy of the next block) need a module;
        function atoms such as ViT's embedding have none.
        """
        parts = self.fn.parts if isinstance(self.fn, _Chain) else (self.fn,)
        if not all(isinstance(part, nn.Module) for part in parts):
            return None
        return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


@dataclass(frozen=True)
class AtomCost:
    """Shape-only measurements of one atom at a given batch and input size."""

    activation_bytes: int
    flops: int
    output_shape: tuple[int, ...]


class _Chain:
    """Applies callables in order; the function behind a multi-layer atom.

    Nested chains and atoms are flattened into one tuple of parts.
    """

    def __init__(self, parts: Sequence[Callable[[Tensor], Tensor]]) -> None:
        flat: list[Callable[[Tensor], Tensor]] = []
        for part in parts:
            part = part.fn if isinstance(part, Atom) else part
            flat += part.parts if isinstance(part, _Chain) else [part]
        self.parts = tuple(flat)

    def __call__(self, x: Tensor) -> Tensor:
        for part in self.parts:
            x = part(x)
        return x


def _atom_from_modules(entries: Sequence[tuple[str, nn.Module]]) -> Atom:
    names = tuple(
        f"{path}.{name}" for path, module in entries for name, _ in module.named_parameters()
    )
    fn = entries[0][1] if len(entries) == 1 else _Chain([m for _, m in entries])
    return Atom(entries[0][0], fn, names)


def _is_layer(module: nn.Module) -> bool:
    """A layer owns all its parameters directly (conv, norm, norm+act), unlike a block."""
    return not any(any(True for _ in child.parameters()) for child in module.children())


def _holds_blocks(module: nn.Module) -> bool:
    """A stage-like module: most of its parameterised children are blocks, not layers."""
    with_params = [c for c in module.children() if any(True for _ in c.parameters())]
    blocks = [c for c in with_params if not _is_layer(c)]
    return bool(with_params) and len(blocks) * 2 > len(with_params)


def _called_children(module: nn.Module, run: Callable[[], Tensor]) -> list[tuple[str, nn.Module]]:
    """Direct children of ``module`` in the order ``run()`` calls them."""
    order: list[str] = []
    handles = [
        child.register_forward_pre_hook(lambda _m, _i, name=name: order.append(name))
        for name, child in module.named_children()
    ]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    if len(order) != len(set(order)):
        raise ValueError(f"{type(module).__name__} calls a child more than once; cannot flatten")
    children = dict(module.named_children())
    return [(name, children[name]) for name in order]


def _group_layers(prefix: str, layers: list[tuple[str, nn.Module]]) -> list[Atom]:
    """Group a flat run of layers into atoms of one conv/linear layer each.

    Layers before the first conv/linear (a pre-norm) join it; layers after it (norm,
    activation, pooling) stay with it until the next conv/linear opens a new atom.
    """
    groups: list[list[tuple[str, nn.Module]]] = []
    for name, layer in layers:
        path = f"{prefix}{name}"
        opens = isinstance(layer, _COMPUTE_LAYERS)
        if not groups or (opens and any(isinstance(m, _COMPUTE_LAYERS) for _, m in groups[-1])):
            groups.append([(path, layer)])
        else:
            groups[-1].append((path, layer))
    return [_atom_from_modules(group) for group in groups]


def _flatten_chain(
    prefix: str, children: list[tuple[str, nn.Module]], x: Tensor
) -> tuple[list[Atom], Tensor]:
    """Atoms of children that run one after the other, with the chain's output."""
    atoms: list[Atom] = []
    pending_layers: list[tuple[str, nn.Module]] = []
    for name, child in children:
        if _is_layer(child):
            pending_layers.append((name, child))
            x = child(x)
            continue
        if pending_layers:
            atoms += _group_layers(prefix, pending_layers)
            pending_layers = []
        sub_atoms, x = _flatten_module(f"{prefix}{name}", child, x)
        atoms += sub_atoms
    if pending_layers:
        if atoms and not any(True for _, m in pending_layers for _ in m.parameters()):
            # Parameter-free tail (Identity, activation): fold into the last atom.
            last = atoms.pop()
            chain = _Chain([last, *(m for _, m in pending_layers)])
            atoms.append(Atom(last.name, chain, last.parameter_names))
        else:
            atoms += _group_layers(prefix, pending_layers)
    return atoms, x


def _same(a: Tensor, b: Tensor) -> bool:
    """Same shape and values; on the meta device (a model timm builds to inspect its structure)
    there are no values, and the shape is all that can be checked."""
    if a.is_meta or b.is_meta:
        return a.shape == b.shape
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _flatten_module(path: str, module: nn.Module, x: Tensor) -> tuple[list[Atom], Tensor]:
    """Atoms of one submodule: expand containers and stages, keep blocks whole."""
    if type(module) in (nn.Sequential, nn.ModuleList):
        return _flatten_chain(f"{path}.", list(module.named_children()), x)
    reference = module(x)
    if _holds_blocks(module):
        try:
            children = _called_children(module, lambda: module(x))
            atoms, y = _flatten_chain(f"{path}.", children, x)
        except (RuntimeError, ValueError):  # not a chain: keep the module whole
            atoms, y = [], None
        if y is not None and _same(y, reference):
            return atoms, y
    return [_atom_from_modules([(path, module)])], reference


# --- flatteners --------------------------------------------------------------------------------

Flattener = Callable[[nn.Module], list[Atom]]
_FLATTENERS: dict[type, Flattener] = {}


def register_flattener(model_class: type) -> Callable[[Flattener], Flattener]:
    """Register an explicit atom list for backbones whose features are not a chain of children."""

    def decorator(fn: Flattener) -> Flattener:
        _FLATTENERS[model_class] = fn
        return fn

    return decorator


def _sample_input(backbone: nn.Module, input_size: Sequence[int]) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    param = next(backbone.parameters())
    return torch.randn(2, *input_size, generator=generator).to(param.device, param.dtype)


def flatten(backbone: nn.Module, input_size: Sequence[int]) -> list[Atom]:
    """Ordered atoms whose chain equals ``backbone.forward_features``.

    Args:
        backbone: a timm classification model (anything with ``forward_features`` /
            ``forward_head``).
        input_size: ``(C, H, W)`` used to trace the execution order and to verify the result.

    Raises:
        ValueError: if the backbone cannot be expressed as a chain of atoms.
    """
    if not hasattr(backbone, "forward_features") or not hasattr(backbone, "forward_head"):
        raise ValueError(
            f"{type(backbone).__name__} has no forward_features/forward_head; "
            "hpff_zoo needs a timm classification model"
        )
    x = _sample_input(backbone, input_size)
    was_training = backbone.training
    # timm's activation checkpointing runs the blocks through checkpoint_seq, not as the
    # children the chain is read from: trace the plain forward (the atoms are the same).
    checkpointing = bool(getattr(backbone, "grad_checkpointing", False))
    if checkpointing:
        backbone.set_grad_checkpointing(False)
    backbone.eval()
    try:
        with torch.no_grad():
            reference = backbone.forward_features(x)
            custom = next(
                (fn for cls, fn in _FLATTENERS.items() if isinstance(backbone, cls)), None
            )
            if custom is not None:
                atoms = custom(backbone)
                y = x
                for atom in atoms:
                    y = atom(y)
            else:
                children = _called_children(backbone, lambda: backbone.forward_features(x))
                atoms, y = _flatten_chain("", children, x)
    finally:
        backbone.train(was_training)
        if checkpointing:
            backbone.set_grad_checkpointing(True)
    if not _same(y, reference):
        raise ValueError(
            f"cannot flatten {type(backbone).__name__}: its forward_features is not a chain of "
            "its children; register an explicit atom list with hpff_zoo.register_flattener"
        )
    _check_ownership(backbone, atoms)
    return atoms


def _check_ownership(backbone: nn.Module, atoms: list[Atom]) -> None:
    owned = [name for atom in atoms for name in atom.parameter_names]
    if len(owned) != len(set(owned)):
        raise ValueError("two atoms claim the same parameter; the flattening is ambiguous")


def _vit_flattener(backbone: nn.Module) -> list[Atom]:
    """ViT-style models: embedding (patches + position + prefix tokens), blocks, final norm."""

    def embed(x: Tensor) -> Tensor:
        x = backbone.patch_embed(x)
        x = backbone._pos_embed(x)
        x = backbone.patch_drop(x)
        return backbone.norm_pre(x)

    block_prefixes = ("blocks.", "norm.", "fc_norm.", "head.", "attn_pool.")
    embed_params = tuple(
        n for n, _ in backbone.named_parameters() if not n.startswith(block_prefixes)
    )
    atoms = [Atom("embed", embed, embed_params)]
    atoms += [
        _atom_from_modules([(f"blocks.{i}", block)]) for i, block in enumerate(backbone.blocks)
    ]
    norm = _atom_from_modules([("norm", backbone.norm)])
    return [*atoms, norm]


def _register_builtin_flatteners() -> None:
    from timm.models.vision_transformer import VisionTransformer

    register_flattener(VisionTransformer)(_vit_flattener)


_register_builtin_flatteners()


# --- costs -------------------------------------------------------------------------------------


# Batch of the fake pass that partitions measure costs at: a training-mode BatchNorm needs more
# than one value per channel, which a 1×1 final map (a ResNet at 28 px) only has from batch 2.
COST_BATCH = 2


def measure_costs(
    atoms: Sequence[Atom], backbone: nn.Module, input_size: Sequence[int], batch_size: int = 1
) -> list[AtomCost]:
    """Saved-for-backward bytes and FLOPs of each atom, from one pass on fake tensors.

    Fake tensors carry shapes and dtypes only, so this costs no arithmetic and no memory even for
    a ResNet-152 at 224 px. Buffers that training-mode layers update in place (BatchNorm's batch
    counter) are restored afterwards.
    """
    buffers = {name: buf.clone() for name, buf in backbone.named_buffers()}
    costs: list[AtomCost] = []
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            param = next(backbone.parameters())
            x = torch.empty(batch_size, *input_size, dtype=param.dtype, device=param.device)
            for atom in atoms:
                saved: dict[int, Tensor] = {}  # by id; holding the (fake) tensor keeps ids unique

                def pack(t: Tensor, saved: dict[int, Tensor] = saved) -> Tensor:
                    if not (t.is_leaf and t.requires_grad):  # parameters are not activations
                        saved[id(t)] = t
                    return t

                with (
                    torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
                    FlopCounter() as flops,
                ):
                    # A non-leaf input, so that the atom's saved input counts as an activation.
                    x = atom(x.detach().requires_grad_().view_as(x))
                nbytes = sum(t.numel() * t.element_size() for t in saved.values())
                costs.append(AtomCost(nbytes, flops.total, tuple(x.shape)))
    finally:
        with torch.no_grad():
            for name, buf in backbone.named_buffers():
                buf.copy_(buffers[name])
    return costs


# --- the split ---------------------------------------------------------------------------------


def balanced_split(costs: Sequence[float], num_modules: int) -> list[int]:
    """Start indices of K contiguous groups minimising the largest group's total cost.

    Classic linear-partition dynamic programme, O(K n²); ties go to the earliest boundary. Returns
    ``[0, s_2, ..., s_K]``.
    """
    n = len(costs)
    if not 1 <= num_modules <= n:
        raise ValueError(f"num_modules must be between 1 and {n} (the number of atoms)")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    # best[k][i]: minimal max-cost of splitting atoms[:i] into k groups; cut[k][i]: last start.
    best = [[math.inf] * (n + 1) for _ in range(num_modules + 1)]
    cut = [[0] * (n + 1) for _ in range(num_modules + 1)]
    best[0][0] = 0.0
    for k in range(1, num_modules + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i] - 1e-9 * max(1.0, abs(value)):
                    best[k][i] = value
                    cut[k][i] = j
    starts, i = [], n
    for k in range(num_modules, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]


@dataclass(frozen=True)
class Partition:
    """Atoms, their costs and the module boundaries.

    Attributes:
        atoms: all atoms, in order.
        costs: one :class:`AtomCost` per atom.
        starts: index of the first atom of each module (``starts[0] == 0``).
    """

    atoms: tuple[Atom, ...]
    costs: tuple[AtomCost, ...]
    starts: tuple[int, ...]

    @property
    def num_modules(self) -> int:
        return len(self.starts)

    def module_atoms(self, index: int) -> tuple[Atom, ...]:
        end = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.atoms)
        return self.atoms[self.starts[index] : end]

    def module_cost(self, index: int, balance: Balance = "memory") -> float:
        end = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.atoms)
        return sum(_cost_value(c, balance) for c in self.costs[self.starts[index] : end])

    def module_output_shape(self, index: int) -> tuple[int, ...]:
        end = self.starts[index + 1] if index + 1 < len(self.starts) else len(self.atoms)
        return self.costs[end - 1].output_shape

    def describe(self) -> str:
        """One line per module: its atoms and measured cost, for logs and model cards."""
        lines = []
        for k in range(self.num_modules):
            names = [a.name for a in self.module_atoms(k)]
            span = names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]}"
            lines.append(
                f"module {k + 1:>3}: {span:<28} atoms={len(names):<3} "
                f"act={self.module_cost(k, 'memory') / 2**20:8.2f} MiB/img "
                f"flops={self.module_cost(k, 'flops') / 1e9:7.3f} G/img"
            )
        return "\n".join(lines)


def _cost_value(cost: AtomCost, balance: Balance) -> float:
    if balance == "memory":
        return float(cost.activation_bytes)
    if balance == "flops":
        return float(cost.flops)
    if balance == "blocks":
        return 1.0
    raise ValueError(f"balance must be 'memory', 'flops' or 'blocks', not {balance!r}")


def partition_backbone(
    backbone: nn.Module,
    num_modules: int,
    input_size: Sequence[int],
    splits: Sequence[int | str] | None = None,
    balance: Balance = "memory",
    trace_size: Sequence[int] | None = None,
) -> Partition:
    """Flatten, measure and split a backbone into ``num_modules`` contiguous modules.

    Args:
        backbone: a timm classification model.
        num_modules: K, between 1 and the number of atoms.
        input_size: ``(C, H, W)`` at which costs are measured.
        splits: explicit boundaries instead of the balanced split: for each module after the
            first, the index or the name of its first atom (K-1 entries, increasing).
        balance: which measured cost the split balances: ``"memory"`` (bytes saved for backward,
            what bounds the peak of local training), ``"flops"`` or ``"blocks"`` (equal counts).
        trace_size: ``(C, H, W)`` at which :func:`flatten` runs the backbone for real to find
            and verify the atoms (default ``input_size``). Costs are always measured at
            ``input_size`` and batch :data:`COST_BATCH` on fake tensors; a smaller trace saves
            minutes on CPU for size-agnostic backbones at large inputs (a ResNet-101 at 512×1024).
    """
    atoms = flatten(backbone, trace_size or input_size)
    if isinstance(num_modules, bool) or not isinstance(num_modules, int) or num_modules < 1:
        raise ValueError(f"num_modules must be a positive integer, got {num_modules!r}")
    if num_modules > len(atoms):
        raise ValueError(
            f"num_modules={num_modules} exceeds the {len(atoms)} atoms of "
            f"{type(backbone).__name__}; use at most {len(atoms)}"
        )
    costs = measure_costs(atoms, backbone, input_size, batch_size=COST_BATCH)
    if splits is not None:
        starts = _starts_from_splits(atoms, splits, num_modules)
    else:
        starts = balanced_split([_cost_value(c, balance) for c in costs], num_modules)
    return Partition(tuple(atoms), tuple(costs), tuple(starts))


def _starts_from_splits(
    atoms: Sequence[Atom], splits: Sequence[int | str], num_modules: int
) -> list[int]:
    names = {atom.name: i for i, atom in enumerate(atoms)}
    starts = [0]
    for split in splits:
        if isinstance(split, str):
            if split not in names:
                raise ValueError(unknown_name("atom", split, names, listed=len(names)))
            split = names[split]
        starts.append(int(split))
    if len(starts) != num_modules:
        raise ValueError(
            f"num_modules={num_modules} (the model's default unless given) needs "
            f"{num_modules - 1} split points, got {len(splits)}: pass num_modules={len(starts)} "
            f"with splits={list(splits)}"
        )
    if any(b <= a for a, b in itertools.pairwise(starts)) or starts[-1] >= len(atoms):
        raise ValueError(f"split points must increase within 1..{len(atoms) - 1}: {splits}")
    return starts
