"""LocalModel: a timm backbone trained as K gradient-isolated modules, with HiLo and PFF.

``model(x)`` is the backbone's own inference. ``model.local_step(x, y)`` runs one training step's
forward and backward, streamed module by module so that each module's activations are freed
before the next module runs (the schedule, in four steps, is :mod:`hpff_zoo.streamed`'s). The
model's three jobs have a room each: this module is the model itself and timm's contract;
building and budgeting the auxiliary networks is :mod:`hpff_zoo.auxiliaries`'
(:class:`~hpff_zoo.auxiliaries.AuxiliaryBuilder`); the schedule is :mod:`hpff_zoo.streamed`'
(:class:`~hpff_zoo.streamed.StreamedSchedule`). ``LocalModel`` inherits both.

Inference follows timm's model contract, as a timm model would, so that timm's own tooling
(scripts, TorchScript, FX, the optimizer factory, feature extraction) works on the wrapper:
``forward``/``forward_features``/``forward_head``, ``forward_intermediates``, ``feature_info``,
``reset_classifier``, ``group_matcher``, ``no_weight_decay`` and ``set_grad_checkpointing`` are
the backbone's, with parameter and module names under ``backbone.``. No ``from __future__ import
annotations`` here: an FX-traced copy of the model is scripted from these type hints.
"""

import contextlib
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aux import AUX_METHODS, AUX_OPTIONS, UNBUDGETED_METHODS
from .aux.arch import AuxArch, resolve_aux_arch
from .aux.base import PFF_SCOPES
from .auxiliaries import AuxiliaryBuilder
from .checkpointing import checkpointed, frozen_running_stats, running_stat_norms
from .choices import TIMM_KWARGS, did_you_mean, unknown_keyword, unknown_name
from .partition import BALANCES, Balance, Partition, partition_backbone
from .streamed import Backward, StreamedSchedule, StreamedStep, default_backward

__all__ = [
    "CHEAP_AUX",
    "CHECKPOINT_GRANULARITIES",
    "DEFAULT_AUX",
    "METHODS",
    "PAPER_AUX_AT_BUDGET",
    "LocalModel",
    "create_backbone",
    "default_aux",
    "from_timm",
    "with_default_aux",
]

METHODS = ("e2e", *AUX_METHODS)
# What set_grad_checkpointing may recompute in a HiLo step: whole waiting modules, or blocks only.
CHECKPOINT_GRANULARITIES = ("module", "block")
# The auxiliaries of the hpff_* models and from_timm when the caller names none. The LocalModel
# class itself defaults to the official architecture. CHEAP_AUX was chosen on a 2-epoch grid
# (recipes/results/accuracy-aux); trained to convergence (recipes/results/accuracy-full) HPFF
# with it cost InfoPro accuracy, while the paper's classifier and decoder held to the same 10 %
# budget, PFF on the decoder only (the official code's scope), made HPFF help InfoPro over two
# seeds at about the same step time and memory. So InfoPro defaults to that; the methods with
# no converged evidence for a change keep CHEAP_AUX.
CHEAP_AUX = dict(aux="cheap", aux_budget=0.1, pff_scope="all")
PAPER_AUX_AT_BUDGET = dict(aux="paper", aux_budget=0.1, pff_scope="decoder")
DEFAULT_AUX: dict[str, dict[str, Any]] = {"infopro": PAPER_AUX_AT_BUDGET}


def default_aux(method: str) -> dict[str, Any]:
    """The auxiliary preset (``aux``, ``aux_budget``, ``pff_scope``) ``method`` gets by default."""
    return DEFAULT_AUX.get(method, CHEAP_AUX)


def with_default_aux(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with :func:`default_aux` of their method for what they leave unset.

    The default budget and PFF scope belong to the default preset: a caller who names ``aux``
    gets that architecture as it is (``aux="paper"`` is exactly the official one, PFF on every
    loss) unless they also give a budget or a scope. (timm's ``create_model`` drops ``None``
    arguments, so ``aux_budget=None`` could not turn the budget off.) The methods of
    :data:`~hpff_zoo.aux.UNBUDGETED_METHODS` (MAN, AugLocal, MLAAN) get no budget either: their
    auxiliaries hold copies of backbone blocks, which are the method, not a size a budget can
    trim.
    """
    out = dict(kwargs)
    method = out.get("method", "infopro")
    if "aux" in out:
        return out
    preset = default_aux(method)
    if method not in UNBUDGETED_METHODS:
        out.setdefault("aux_budget", preset["aux_budget"])
    out["aux"] = preset["aux"]
    out.setdefault("pff_scope", preset["pff_scope"])
    return out


OFFICIAL_HILO_WEIGHTS = (0.001, 0.999)


class LocalModel(AuxiliaryBuilder, StreamedSchedule, nn.Module):
    """A timm classifier partitioned into gradient-isolated modules with auxiliary networks.

    Training goes through :meth:`local_step`; ``model(x)`` is the backbone's inference, and in
    training mode with gradients enabled it warns once (a trainer that back-propagates it, like
    timm's ``train.py``, trains end to end and leaves the auxiliary networks untouched).

    Args:
        backbone: a timm classification model; kept as ``self.backbone`` with its own parameter
            names, so its ``state_dict()`` loads strictly into the plain timm model.
        num_modules: K, the number of gradient-isolated modules.
        method: ``"dgl"``, ``"infopro"``, ``"predsim"``, or ``"e2e"`` (plain backpropagation
            through the same wrapper: the baseline).
        hilo: ``False`` for independent auxiliaries only, or the cascade size k ≥ 2 (``True``
            means 2, the paper's choice).
        pff: PFF grid size n: auxiliaries see n×n patches one at a time (1 turns PFF off).
        splits: explicit module boundaries (first atom of modules 2..K, by index or name)
            instead of the cost-balanced split.
        balance: cost the automatic split balances: ``"memory"``, ``"flops"`` or ``"blocks"``.
        hilo_weights: (independent, cascade) weights of the gradient the auxiliaries send into
            the backbone; defaults to the official code's (0.001, 0.999). Without HiLo the
            independent gradient is used unweighted.
        aux_options: method-specific loss options passed to every auxiliary (InfoPro's
            ``lambdas``, PredSim's ``beta``, MAN's ``momentum``).
        aux: the auxiliary architecture: a preset name (``"paper"``: the official code's,
            ``"cheap"``), a dict overriding fields of the method's paper architecture, or an
            :class:`~hpff_zoo.aux.arch.AuxArch`.
        aux_budget: if given, each auxiliary is shrunk (pooled to a smaller map, its decoder to a
            smaller image) until its training FLOPs are at most this fraction of its module's.
        pff_scope: which auxiliary losses see PFF patches: ``"decoder"`` (the reconstruction
            and per-pixel losses, as the official HPFF code) or ``"all"`` (the classifiers too).
        input_size: ``(C, H, W)`` the partition costs are measured at; defaults to the
            backbone's ``pretrained_cfg``.
        trace_size: ``(C, H, W)`` the partitioner runs the backbone at to find its atoms
            (default ``input_size``; see :func:`hpff_zoo.partition.partition_backbone`).
    """

    # On CPU, glibc keeps the activations a released module frees in its heap, so the process's
    # resident memory would not show the saving (see hpff_zoo.cpu_heap). Every n-th module
    # release of a step, and its last, hands the heap's free pages back to the OS. Each page
    # handed back is faulted in again by the next module that needs it, so n trades resident
    # memory for step time (ResNet-110, K=55, batch 128: resident growth / E2E 0.15 at n=1,
    # 0.18-0.23 at n=4, 0.45 never; ResNet-32 K=16 steps about 25 % slower at n=1, 5 % at n=4).
    # The last release's trim is for small K: ResNet-101 at K=4 releases 3 modules a step, so
    # n=4 alone never trimmed (growth / E2E 0.58 checkpointed; 0.45 with it, steps 4 % slower).
    # 0 never trims.
    trim_cpu_heap: int = 4
    # Set by set_grad_checkpointing: local_step then recomputes instead of retaining.
    grad_checkpointing: bool = False
    checkpoint_granularity: str = "module"

    def __init__(
        self,
        backbone: nn.Module,
        num_modules: int = 4,
        method: str = "infopro",
        hilo: int | bool = 2,
        pff: int = 2,
        splits: Sequence[int | str] | None = None,
        balance: Balance = "memory",
        hilo_weights: tuple[float, float] = OFFICIAL_HILO_WEIGHTS,
        aux_options: dict[str, Any] | None = None,
        input_size: Sequence[int] | None = None,
        trace_size: Sequence[int] | None = None,
        aux: str | dict[str, Any] | AuxArch | None = "paper",
        aux_budget: float | None = None,
        pff_scope: str = "all",
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(unknown_name("method", method, METHODS))
        self.method = method
        # HiLo and PFF shape the auxiliary networks, which E2E has none of: an E2E model records
        # them as off, so that its config says how its weights were really trained.
        cascade_size, grid_size = _cascade_size(hilo), _grid_size(pff)  # validated either way
        self.cascade_size = 1 if method == "e2e" else cascade_size
        self.pff = 1 if method == "e2e" else grid_size
        self.hilo_weights = _weight_pair(hilo_weights)
        self.aux_options = _aux_options(method, aux_options)
        self.aux_arch = resolve_aux_arch(method, aux)
        if aux_budget is not None and not aux_budget > 0:
            raise ValueError(f"aux_budget must be a positive fraction, got {aux_budget!r}")
        self.aux_budget = aux_budget
        if pff_scope not in PFF_SCOPES:
            raise ValueError(
                f"pff_scope must be one of {PFF_SCOPES}, got {pff_scope!r}"
                + did_you_mean(pff_scope, PFF_SCOPES)
            )
        if balance not in BALANCES:  # before the backbone is traced into atoms
            raise ValueError(
                f"balance must be 'memory', 'flops' or 'blocks', not {balance!r}"
                + did_you_mean(balance, BALANCES)
            )
        self.pff_scope = pff_scope
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.input_size = _image_size("input_size", input_size or _default_input_size(backbone))
        self.partition: Partition = partition_backbone(
            backbone,
            num_modules,
            self.input_size,
            splits=splits,
            balance=balance,
            trace_size=trace_size and _image_size("trace_size", trace_size),
        )
        if 1 < self.partition.num_modules < self.cascade_size:
            raise ValueError(
                f"hilo={hilo} exceeds num_modules={self.partition.num_modules}: a HiLo cascade "
                "spans at most all K modules; pass a smaller hilo or more modules"
            )
        self._parameter_groups = self._group_parameters()
        self._aux_flops: dict[Any, int] = {}  # aux training FLOPs by (aux, arch, map)
        self._module_flops: dict[int, int] = {}  # module training FLOPs by index (batch 2)
        self.aux = self._build_aux_like_backbone()
        self._warned_end_to_end = False

    # Properties TorchScript must not compile: they read the (unscriptable) partition or build
    # Python containers; scripted code needs none of them.
    # The auxiliary networks are training-only: scripted inference never reaches them.
    __jit_ignored_attributes__ = ("aux",)
    __jit_unused_properties__ = (
        "num_modules", "num_features", "head_hidden_size", "in_chans", "feature_info", "uses_aux",
    )  # fmt: skip

    # --- structure --------------------------------------------------------------------------

    @property
    def num_modules(self) -> int:
        return self.partition.num_modules

    @property
    def num_features(self) -> int:
        """The backbone's pooled feature width (timm's model contract; read by timm's export)."""
        return self.backbone.num_features

    @property
    def head_hidden_size(self) -> int:
        """Width of ``forward_head(..., pre_logits=True)`` (timm's model contract)."""
        return getattr(self.backbone, "head_hidden_size", self.backbone.num_features)

    @property
    def in_chans(self) -> int:
        """Input channels (timm's model contract; scripts and exports read it)."""
        return getattr(self.backbone, "in_chans", self.input_size[0])

    @property
    def feature_info(self) -> list[dict[str, Any]]:
        """The backbone's feature levels, with module names under ``backbone.``."""
        return [
            dict(info, module=f"backbone.{info['module']}") if "module" in info else dict(info)
            for info in getattr(self.backbone, "feature_info", [])
        ]

    @property
    def uses_aux(self) -> bool:
        return self.method != "e2e" and self.num_modules > 1

    def _group_parameters(self) -> list[list[str]]:
        groups = [
            [n for atom in self.partition.module_atoms(k) for n in atom.parameter_names]
            for k in range(self.num_modules)
        ]
        owned = {n for group in groups for n in group}
        # Whatever no atom owns is the head (pooling, pre-logits, classifier): the last module's.
        groups[-1] += [n for n, _ in self.backbone.named_parameters() if n not in owned]
        return groups

    def module_parameters(self, index: int, include_aux: bool = False) -> Iterator[nn.Parameter]:
        """Parameters of module ``index`` (0-based); the last module includes the head."""
        params = dict(self.backbone.named_parameters())
        for name in self._parameter_groups[index]:
            yield params[name]
        if include_aux and self.uses_aux:
            for kind in ("independent", "cascade"):
                aux = self.aux[kind]
                if f"module{index + 1}" in aux:
                    yield from aux[f"module{index + 1}"].parameters()

    def _to_map(self, h: Tensor) -> Tensor:
        """Module output as a (B, C, H, W) map: NCHW as is, NHWC permuted, tokens gridded."""
        if h.dim() == 4:
            if getattr(self.backbone, "output_fmt", "NCHW") == "NHWC":
                return h.permute(0, 3, 1, 2)
            return h
        if h.dim() == 3:
            prefix = getattr(self.backbone, "num_prefix_tokens", 0)
            tokens = h[:, prefix:]
            grid = getattr(getattr(self.backbone, "patch_embed", None), "grid_size", None)
            if grid is None:
                side = int(tokens.shape[1] ** 0.5)
                grid = (side, tokens.shape[1] // side)
            return tokens.transpose(1, 2).reshape(h.shape[0], h.shape[2], *grid)
        raise ValueError(f"cannot attach an auxiliary network to a {h.dim()}-d module output")

    def _run_module(self, index: int, x: Tensor) -> Tensor:
        for atom in self.partition.module_atoms(index):
            x = self._run_atom(index, atom, x)
        return x

    def _run_atom(self, index: int, atom: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        """One atom of module ``index``; checkpointed (only ``x`` kept for backward) when
        :meth:`_checkpoints_atoms` says so."""
        if self._checkpoints_atoms(index) and torch.is_grad_enabled():
            return checkpointed(atom, x)
        return atom(x)

    def _reruns_waiting_module(self, index: int) -> bool:
        """Whether module ``index``, while it waits for a HiLo cascade gradient, keeps only its
        detached input and re-runs when the gradient arrives (rather than keeping its graph).

        At granularity ``"block"`` a module of several atoms keeps its checkpointed graph
        instead: only its atoms' inputs, for one forward fewer. A one-atom module re-runs at
        either granularity: checkpointing its atom would keep as little, for a forward more.
        """
        if not (self.grad_checkpointing and self.cascade_size > 1):
            return False
        return self.checkpoint_granularity == "module" or not self._checkpoints_atoms(index)

    def _checkpoints_atoms(self, index: int) -> bool:
        """Whether module ``index`` runs its atoms under checkpointing: with checkpointing on,
        when it has more than one atom. A one-atom module's graph is its atom's: checkpointing
        it would recompute without saving anything."""
        return self.grad_checkpointing and len(self.partition.module_atoms(index)) > 1

    # --- inference: the backbone's own ------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            self._check_eager_call(x)
        return self.backbone(x)

    @torch.jit.unused
    def _check_eager_call(self, x: Tensor) -> None:
        """Eager-mode guards (skipped by TorchScript and FX tracing): a wrong channel count
        fails with what to do, and training through ``forward`` warns once."""
        if isinstance(x, torch.fx.Proxy):  # FX symbolic tracing: no values to check
            return
        channels = self.in_chans
        if x.dim() == 4 and x.shape[1] != channels:
            mode = "L" if channels == 1 else "RGB"
            raise ValueError(
                f"this model takes {channels}-channel images, got a batch of {x.shape[1]}: "
                f"convert PIL images with image.convert({mode!r}) before the transform (timm "
                f"datasets: input_img_mode={mode!r}), or create the model with "
                f"in_chans={x.shape[1]} (timm adapts the pretrained first convolution)"
            )
        if self.training and torch.is_grad_enabled():
            self._warn_end_to_end()

    def _warn_end_to_end(self) -> None:
        """Warn, once per model, that back-propagating ``model(x)`` is not local learning."""
        if self._warned_end_to_end or not self.uses_aux:
            return
        self._warned_end_to_end = True
        warnings.warn(
            f"{type(self).__name__}.forward in training mode with gradients enabled: "
            "back-propagating its output trains the backbone end to end and leaves the "
            f"auxiliary networks ({self.method}) untrained. Train with model.local_step(x, y) "
            "(see recipes/, e.g. recipes/cifar.py), or call model.eval() / torch.no_grad() for "
            "inference.",
            UserWarning,
            stacklevel=2,
        )

    def forward_intermediates(self, x: Tensor, *args: Any, **kwargs: Any) -> Any:
        """The backbone's ``forward_intermediates`` (feature levels as in :attr:`feature_info`)."""
        return self.backbone.forward_intermediates(x, *args, **kwargs)

    @torch.jit.export
    def forward_features(self, x: Tensor) -> Tensor:
        return self.backbone.forward_features(x)

    @torch.jit.export
    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def head_loss(self, features: Tensor, y: Tensor) -> Tensor:
        """Loss of the backbone's head on the last module's output: cross-entropy of its logits.

        The streamed schedule calls this once per step; a subclass with another kind of head (a
        segmentation decoder) overrides it.
        """
        return F.cross_entropy(self.backbone.forward_head(features), y)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.backbone.get_classifier()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier head, and fresh auxiliaries sized for the new classes.

        As in timm, ``global_pool=None`` keeps the backbone's pooling. The new auxiliaries get
        the model's device, dtype and train/eval mode, and stay frozen if the ones they replace
        were (a frozen model must not gain trainable parameters from a head reset).
        """
        if global_pool is None:
            self.backbone.reset_classifier(num_classes)
        else:
            self.backbone.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes
        self._parameter_groups = self._group_parameters()
        old = list(self.aux.parameters())
        frozen = bool(old) and not any(p.requires_grad for p in old)
        self.aux = self._build_aux_like_backbone()
        self.aux.train(self.training)
        if frozen:
            self.aux.requires_grad_(False)

    # --- timm's model contract: the backbone's, with names under ``backbone.`` ----------------

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, granularity: str = "module") -> None:
        """Trade compute for memory: the backbone's blocks are checkpointed in ``forward`` (timm's
        own switch, for end-to-end use) and :meth:`local_step` uses least memory.

        In a local step, the atoms (blocks) of a module run under ``torch.utils.checkpoint``,
        and with HiLo a module waiting for its cascade gradient keeps only its detached input
        and the gradient collected for its output, and is re-run when the cascade gradient
        arrives: at most one module's graph is alive at any time. Gradients, running statistics
        and losses are those of the plain step (see :mod:`hpff_zoo.checkpointing`); the price
        is one more forward of each module per checkpointed level.

        Args:
            enable: checkpointing on or off.
            granularity: what a HiLo step recomputes. ``"module"`` (least memory): waiting
                modules re-run, as above. ``"block"``: only the atoms are checkpointed; a
                waiting module of several atoms keeps their inputs instead of re-running, one
                module forward fewer per module for a little more memory (ResNet-101, K=4,
                224 px: step time 2.1× → 1.8× E2E, step peak 0.26 → 0.31 of E2E's).
        """
        if granularity not in CHECKPOINT_GRANULARITIES:
            raise ValueError(
                unknown_name("checkpoint granularity", granularity, CHECKPOINT_GRANULARITIES)
            )
        own = getattr(self.backbone, "set_grad_checkpointing", None)  # a non-timm chain has none
        if own is not None:
            own(enable)
        self.grad_checkpointing = bool(enable)
        self.checkpoint_granularity = granularity

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any] | Callable[[str], Any]:
        """The backbone's parameter groups (layer-wise decay); auxiliary networks fall in timm's
        last, unmatched group."""
        matcher = self.backbone.group_matcher(coarse=coarse)
        if isinstance(matcher, dict):
            return {group: _under_backbone(spec) for group, spec in matcher.items()}
        return _under_backbone(matcher)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The backbone's parameters exempt from weight decay (a ViT's ``pos_embed``,
        ``cls_token``), so that timm's optimizer factory treats them as in the plain model."""
        own = getattr(self.backbone, "no_weight_decay", None)
        return {f"backbone.{name}" for name in own()} if callable(own) else set()

    # --- training ---------------------------------------------------------------------------

    def local_step(
        self, x: Tensor, y: Tensor, backward: Backward | None = None
    ) -> dict[str, float]:
        """One training step's forward and backward (no optimizer step), in training mode: a
        model in ``eval()`` mode is refused with a ``RuntimeError``.

        Args:
            x: input batch ``(B, C, H, W)``, normalised as the backbone expects.
            y: class indices ``(B,)``.
            backward: called as ``backward(loss)`` on every loss (each PFF patch's auxiliary
                loss, the head's cross-entropy), so a trainer can pass ``accelerator.backward``.
                Gradients those calls leave on a module's detached output are then pushed
                through the module with ``torch.autograd``, which keeps whatever scaling
                ``backward`` applied (loss scaling, accumulation) applied exactly once.

        Returns:
            ``{"module1": ..., "module{K-1}": ...}`` each module's weighted auxiliary loss, and
            ``"head"``: the classifier's cross-entropy.
        """
        self._check_training_mode()
        self._check_batch(x, y)
        backward = backward or default_backward
        if not self.uses_aux:
            loss = F.cross_entropy(self.backbone(x), y)
            with self._recomputing():  # timm's checkpoints recompute in the backward
                backward(loss)
            return {"head": loss.item()}
        return StreamedStep(self, x, y, backward).run()

    def _recomputing(self) -> contextlib.AbstractContextManager[None]:
        """Context for the backward passes and re-runs of a step: with checkpointing on, they
        recompute forwards, which must not update running statistics a second time."""
        if not self.grad_checkpointing:
            return contextlib.nullcontext()
        return frozen_running_stats(running_stat_norms(self.backbone))

    def _check_training_mode(self) -> None:
        """Refuse a step in ``eval()`` mode, before any work: BatchNorm would normalise with its
        running statistics and update none, and dropout would be off, while the weights train.
        That is a loop that evaluated and forgot ``train()``, never a choice: frozen statistics
        on purpose are the norm layers alone in ``eval()``, which leaves the model in training."""
        if not self.training:
            raise RuntimeError(
                f"{type(self).__name__}.local_step on a model in eval() mode: call model.train() "
                "first (after each evaluation); to train with frozen BatchNorm statistics, put "
                "only the norm layers in eval()"
            )

    def _check_batch(self, x: Tensor, y: Tensor) -> None:
        channels = self.input_size[0]
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(
                f"expected an input batch of shape (B, {channels}, H, W), got {tuple(x.shape)}"
            )
        if y.shape != (x.shape[0],) or y.dtype != torch.long:
            raise ValueError(f"expected labels of shape ({x.shape[0]},) and dtype long")
        patch_embed = getattr(self.backbone, "patch_embed", None)
        if getattr(patch_embed, "strict_img_size", False):
            expected = tuple(patch_embed.img_size)
            if tuple(x.shape[-2:]) != expected:
                raise ValueError(f"this model takes {expected} inputs, got {tuple(x.shape[-2:])}")


def _under_backbone(spec: Any) -> Any:
    """A timm group-matcher spec (regex, list of (regex, suffix), or callable) for the same
    parameters under ``backbone.``.

    timm applies the regexes with ``re.match`` (anchored at the name's start, in every
    alternative), so the whole pattern goes in a group after the prefix, its ``^`` anchors
    dropped.
    """
    if spec is None:
        return None
    if isinstance(spec, str):
        body = spec.removeprefix("^").replace("|^", "|")
        return rf"^backbone\.(?:{body})"
    if isinstance(spec, (list, tuple)):
        return [(_under_backbone(pattern), suffix) for pattern, suffix in spec]
    if callable(spec):
        prefix = "backbone."
        unmatched = (float("inf"),)  # timm's ordinal for names no group claims
        return lambda name: spec(name[len(prefix) :]) if name.startswith(prefix) else unmatched
    raise TypeError(f"unsupported group matcher spec {spec!r}")


def _cascade_size(hilo: int | bool | None) -> int:
    if hilo is None or hilo is False:
        return 1
    if hilo is True:
        return 2
    if isinstance(hilo, int) and hilo >= 2:
        return hilo
    raise ValueError(f"hilo must be False or a cascade size >= 2, got {hilo!r}")


def _weight_pair(weights: Any) -> tuple[float, float]:
    """``hilo_weights`` as ``(independent, cascade)`` floats, refused at creation when it is not
    a pair of numbers (a string such as ``"cascade"`` would otherwise fail as one letter)."""
    try:
        if isinstance(weights, str) or len(weights) != 2:
            raise TypeError
        return float(weights[0]), float(weights[1])
    except (TypeError, ValueError):
        raise ValueError(
            "hilo_weights must be a pair (independent, cascade) of numbers, e.g. "
            f"{OFFICIAL_HILO_WEIGHTS} (the official code's), got {weights!r}"
        ) from None


def _image_size(name: str, size: Sequence[int]) -> tuple[int, int, int]:
    """``size`` as ``(C, H, W)``, refused at creation unless three positive integers: the
    partitioner runs the backbone at it, where torch would fail naming a padded kernel size."""
    try:
        out = tuple(operator.index(n) for n in size)  # ints, numpy's and torch's included
    except TypeError:
        out = ()
    if len(out) != 3 or min(out) < 1:
        raise ValueError(f"{name} must be (C, H, W), three positive integers, got {size!r}")
    return out


def _aux_options(method: str, options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` as a dict, refused at creation where ``method``'s auxiliaries read no such
    key: each reads only its own (:data:`~hpff_zoo.aux.base.AUX_OPTIONS`) and would train with
    its defaults, without a word, under a misspelt or another method's option."""
    options = dict(options or {})
    valid = AUX_OPTIONS.get(method, ())
    for key in options:
        if key not in valid:
            owners = sorted(m for m, keys in AUX_OPTIONS.items() if key in keys)
            also = f" ({key!r} is an option of {', '.join(owners)})" if owners else ""
            if not valid:
                raise ValueError(f"method={method!r} takes no aux_options, got {key!r}{also}")
            raise ValueError(unknown_name(f"{method} aux option", key, valid) + also)
    return options


def create_backbone(name: str, local_names: Iterable[str], **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, **kwargs)`` with two mistakes refused in one line first: a
    negative ``num_classes`` (torch would fail inside the classifier's constructor) and a
    misspelt keyword, told with the closest of ``local_names`` and timm's common keywords."""
    import timm

    num_classes = kwargs.get("num_classes")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0
    ):
        raise ValueError(
            f"num_classes must be a count >= 0 (0: no classifier), got {num_classes!r}"
        )
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as error:
        retold = unknown_keyword(error, [*local_names, *TIMM_KWARGS])
        if retold is None:
            raise
        raise retold from None


def _grid_size(pff: int) -> int:
    if isinstance(pff, bool) or not isinstance(pff, int) or pff < 1:
        raise ValueError(f"pff must be a grid size n >= 1 (1 turns PFF off), got {pff!r}")
    return pff


def _default_input_size(backbone: nn.Module) -> tuple[int, int, int]:
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    _, height, width = cfg.get("input_size", (3, 224, 224))
    fixed_size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if fixed_size is not None:  # a ViT built with img_size=... keeps the 224-px cfg
        height, width = fixed_size
    first_conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    return channels, height, width


def from_timm(
    model_or_name: nn.Module | str,
    num_modules: int = 4,
    method: str = "infopro",
    hilo: int | bool = 2,
    pff: int = 2,
    **kwargs: Any,
) -> LocalModel:
    """Wrap any timm classification model for local learning.

    Args:
        model_or_name: a timm model instance, or a name for ``timm.create_model``.
        num_modules, method, hilo, pff: see :class:`LocalModel`.
        **kwargs: :class:`LocalModel` options (``splits``, ``balance``, ``hilo_weights``,
            ``aux_options``, ``input_size``, ``aux``, ``aux_budget``, ``pff_scope``: by default
            the method's :func:`default_aux`, as the hpff_* models, see
            :func:`with_default_aux`); everything else goes to ``timm.create_model``
            (``pretrained``, ``num_classes``, ``in_chans``, ...).
    """
    local_keys = {
        "splits", "balance", "hilo_weights", "aux_options", "input_size", "trace_size", "aux",
        "aux_budget", "pff_scope",
    }  # fmt: skip
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in local_keys}
    local_kwargs = with_default_aux({"method": method, **given})
    del local_kwargs["method"]
    if isinstance(model_or_name, str):
        import timm

        known = ":" in model_or_name or timm.is_model(model_or_name)  # hf-hub:, local-dir:
        if not known and not timm.list_pretrained(model_or_name):  # a name.tag is known too
            raise RuntimeError(unknown_name("timm model", model_or_name, timm.list_models()))
        names = [*local_keys, "num_modules", "method", "hilo", "pff"]
        backbone = create_backbone(model_or_name, names, **kwargs)
    elif not isinstance(model_or_name, nn.Module):
        kind = type(model_or_name).__name__
        raise TypeError(f"from_timm takes a timm model or its name, not {model_or_name!r} ({kind})")
    elif kwargs:
        raise TypeError(f"timm keyword arguments {sorted(kwargs)} given with a model instance")
    else:
        backbone = model_or_name
    return LocalModel(
        backbone, num_modules=num_modules, method=method, hilo=hilo, pff=pff, **local_kwargs
    )
