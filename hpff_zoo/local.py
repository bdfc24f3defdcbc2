"""LocalModel: a timm backbone trained as K gradient-isolated modules, with HiLo and PFF.

``model(x)`` is the backbone's own inference. ``model.local_step(x, y)`` runs one training step's
forward and backward, streamed module by module so that each module's activations are freed
before the next module runs:

1. module j runs on a detached copy ``u_j`` of module j-1's output;
2. its auxiliary networks (the *independent* one, and with HiLo the *cascade* one that closes
   the window of k modules ending at j) run on a detached copy of its output, one PFF patch at a
   time, each patch's loss back-propagated at once; the gradients they leave on the detached
   output are weighted (independent / cascade) and summed;
3. the cascade part is carried back through the k-1 previous modules' retained graphs (an
   input-gradient pass each), nothing further;
4. a module whose last window has passed gets a single backward of everything it collected and
   its graph is freed. Without HiLo that is module j itself, right away; with HiLo k=2 it is
   module j-1, so at most k graphs are alive and every module runs its forward once.

The last module feeds the backbone's own pooling and classifier with cross-entropy; with HiLo that
loss is also the last window's cascade loss, as in the official HPFF code.

The weights scale only the gradient the auxiliary losses send into the backbone; each auxiliary
network itself trains on its own unscaled loss (in the official code the 0.001 weight also slows
the independent auxiliary's own training to a crawl).

Inference follows timm's model contract, as a timm model would, so that timm's own tooling
(scripts, TorchScript, FX, the optimizer factory, feature extraction) works on the wrapper:
``forward``/``forward_features``/``forward_head``, ``forward_intermediates``, ``feature_info``,
``reset_classifier``, ``group_matcher``, ``no_weight_decay`` and ``set_grad_checkpointing`` are
the backbone's, with parameter and module names under ``backbone.``. No ``from __future__ import
annotations`` here: an FX-traced copy of the model is scripted from these type hints.
"""

import functools
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cpu_heap
from .aux import AUX_METHODS, AuxNet, AuxSpec, build_aux
from .aux.arch import AuxArch, resolve_aux_arch
from .aux.base import PFF_SCOPES, LossPart
from .aux.layers import cap_resolution, patch_groups
from .choices import unknown_name
from .measure import training_flops
from .partition import Balance, Partition, partition_backbone
from .patches import grid_slices

__all__ = ["DEFAULT_AUX", "METHODS", "LocalModel", "from_timm", "with_default_aux"]

METHODS = ("e2e", *AUX_METHODS)
# The auxiliaries of the hpff_* models and from_timm, chosen by measurement (see
# recipes/results/accuracy-aux/README.md): cheap ones, each held to 10 % of its module's training
# FLOPs. The LocalModel class itself defaults to the official architecture.
DEFAULT_AUX = dict(aux="cheap", aux_budget=0.1, pff_scope="all")


def with_default_aux(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with :data:`DEFAULT_AUX` for what it leaves unset.

    The default budget belongs to the default preset: a caller who names ``aux`` gets that
    architecture as it is (``aux="paper"`` is exactly the official one) unless they also give a
    budget. (timm's ``create_model`` drops ``None`` arguments, so ``aux_budget=None`` could not
    turn the budget off.) MAN gets none either: its auxiliaries hold copies of the next
    module's first block, which is the method, not a size a budget can trim.
    """
    out = dict(kwargs)
    if "aux" not in out and out.get("method") != "man":
        out.setdefault("aux_budget", DEFAULT_AUX["aux_budget"])
    out.setdefault("aux", DEFAULT_AUX["aux"])
    out.setdefault("pff_scope", DEFAULT_AUX["pff_scope"])
    return out


OFFICIAL_HILO_WEIGHTS = (0.001, 0.999)

Backward = Callable[[Tensor], Any]


def _default_backward(loss: Tensor) -> None:
    loss.backward()


class LocalModel(nn.Module):
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
    # release of a step hands the heap's free pages back to the OS. Each page handed back is
    # faulted in again by the next module that needs it, so n trades resident memory for step
    # time (ResNet-110, K=55, batch 128: resident growth / E2E 0.15 at n=1, 0.18-0.23 at n=4, 0.45
    # never; ResNet-32 K=16 steps about 25 % slower at n=1, 5 % at n=4). 0 never trims.
    trim_cpu_heap: int = 4

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
        self.hilo_weights = tuple(float(w) for w in hilo_weights)
        self.aux_options = dict(aux_options or {})
        self.aux_arch = resolve_aux_arch(method, aux)
        if aux_budget is not None and not aux_budget > 0:
            raise ValueError(f"aux_budget must be a positive fraction, got {aux_budget!r}")
        self.aux_budget = aux_budget
        if pff_scope not in PFF_SCOPES:
            raise ValueError(f"pff_scope must be one of {PFF_SCOPES}, got {pff_scope!r}")
        self.pff_scope = pff_scope
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.input_size = tuple(input_size or _default_input_size(backbone))
        self.partition: Partition = partition_backbone(
            backbone,
            num_modules,
            self.input_size,
            splits=splits,
            balance=balance,
            trace_size=trace_size,
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

    def _feature_map_size(self, index: int) -> tuple[int, int, int]:
        """(C, H, W) of module ``index``'s output seen as a feature map."""
        shape = self.partition.module_output_shape(index)
        probe = torch.empty(shape, device="meta")
        return tuple(self._to_map(probe).shape[1:])

    def _build_aux(self) -> nn.ModuleDict:
        aux = nn.ModuleDict({"independent": nn.ModuleDict(), "cascade": nn.ModuleDict()})
        if not self.uses_aux:
            return aux
        supervised = self.num_modules - 1
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        for j in range(supervised):
            _, height, width = self._feature_map_size(j)
            if self.pff > min(height, width):
                raise ValueError(
                    f"pff={self.pff} needs feature maps of at least {self.pff}x{self.pff}; "
                    f"module {j + 1} outputs {height}x{width}"
                )
        if (self.aux_arch.decoder_size or self.pff) < self.pff:
            raise ValueError(
                f"aux decoder_size={self.aux_arch.decoder_size} cannot be cut into pff="
                f"{self.pff} x {self.pff} patches"
            )
        for j in range(supervised):
            channels, height, width = self._feature_map_size(j)
            next_atom = self.partition.module_atoms(j + 1)[0]
            spec = AuxSpec(
                channels=channels,
                size=(height, width),
                num_classes=self.num_classes,
                grid=self.pff,
                image_channels=self.input_size[0],
                mean=tuple(cfg.get("mean", (0.5,) * 3)),
                std=tuple(cfg.get("std", (0.5,) * 3)),
                depth=j / max(1, supervised - 1),
                next_block=next_atom.as_module(),
                tokens=len(self.partition.module_output_shape(j)) == 3,
                options=self.aux_options,
                arch=self.aux_arch,
                pff_scope=self.pff_scope,
                hilo=self.cascade_size > 1,
            )
            independent = spec
            if spec.hilo and self.aux_arch.hilo_independent is not None:
                independent = replace(spec, arch=self.aux_arch.hilo_independent)
            aux["independent"][f"module{j + 1}"] = self._sized_aux(j, independent)
            if self._has_cascade_aux(j):
                aux["cascade"][f"module{j + 1}"] = self._sized_aux(j, replace(spec, cascade=True))
        return aux

    def _new_aux(self, spec: AuxSpec) -> AuxNet:
        """One auxiliary network of this model's method (a subclass may build other kinds)."""
        return build_aux(self.method, spec)

    def _sized_aux(self, index: int, spec: AuxSpec) -> AuxNet:
        """The auxiliary of ``spec``, made cheaper until it fits ``aux_budget`` of the module.

        Walks down :meth:`AuxArch.cheaper` (smaller pooled map and decoder image, then fewer
        layers) until the auxiliary's training FLOPs, counted on fake tensors as the module's
        are, fit; a budget that even the cheapest auxiliary exceeds is an error, not a silent
        overrun.
        """
        aux = self._new_aux(spec)
        if self.aux_budget is None:
            return aux
        if index not in self._module_flops:  # HiLo sizes two auxiliaries per module
            self._module_flops[index] = self.module_training_flops(index)
        module_flops = self._module_flops[index]
        sides = max(spec.size), max(self.input_size[1:]), self.pff
        while (cost := self._cached_aux_flops(aux, spec, index)) > self.aux_budget * module_flops:
            arch = spec.arch.cheaper(*sides)
            if arch is None and module_flops == 0:
                break  # a module that computes nothing (a pooling atom): the cheapest there is
            if arch is None:
                raise ValueError(
                    f"aux_budget={self.aux_budget} is too small for module {index + 1}: its "
                    f"cheapest {self.method} auxiliary costs {cost / module_flops:.3f} of the "
                    "module's training FLOPs"
                )
            spec = replace(spec, arch=arch)
            aux = self._new_aux(spec)
        return aux

    def module_training_flops(self, index: int, batch_size: int = 2) -> int:
        """FLOPs of module ``index``'s forward and backward (weights and input) at this batch."""
        shape = self.input_size if index == 0 else self.partition.module_output_shape(index - 1)[1:]
        params = list(self.module_parameters(index))
        with _eval_mode(self.backbone):  # same FLOPs; no fake update of BatchNorm statistics
            return training_flops(
                lambda u: self._run_module(index, u), (batch_size, *shape), params, like=params[0]
            )

    def _cached_aux_flops(self, aux: AuxNet, spec: AuxSpec, index: int) -> int:
        """:meth:`aux_training_flops`, once per architecture and map: a ResNet stage repeats
        the same module (and so the same auxiliary candidates) many times."""
        key = (repr(aux), spec.arch, self._feature_map_size(index))
        if key not in self._aux_flops:
            self._aux_flops[key] = self.aux_training_flops(aux, index)
        return self._aux_flops[key]

    def aux_training_flops(self, aux: AuxNet, index: int, batch_size: int = 2) -> int:
        """FLOPs of ``aux``'s forward and backward on module ``index``'s output, every patch.

        Patches of equal shape cost the same, so each distinct shape is counted once.
        """
        channels, height, width = self._feature_map_size(index)
        params = list(aux.parameters())
        image_shape = (batch_size, *self.input_size)
        # The auxiliary's own device and dtype (meta when the model is built on meta).
        like = params[0] if params else next(self.backbone.parameters())
        if aux.needs_image:  # the target's size: pooling a one-image batch costs nothing
            target = aux.prepare_image(torch.zeros(1, *self.input_size, device=like.device))
            image_shape = (batch_size, *target.shape[1:])
        shapes: Counter[tuple[LossPart, tuple[int, ...], tuple[int, ...]]] = Counter()
        for part, n in self._aux_passes(aux):
            cells = zip(grid_slices(height, width, n), grid_slices(*image_shape[-2:], n))
            for (rows, cols), (image_rows, image_cols) in cells:
                patch = (batch_size, channels, _span(rows), _span(cols))
                image_patch = (*image_shape[:2], _span(image_rows), _span(image_cols))
                shapes[part, patch, image_patch] += 1
        total = 0
        with _eval_mode(aux):
            for (part, patch, image_patch), count in shapes.items():

                def run(x: Tensor, part=part, image_patch=image_patch) -> Tensor:
                    y = torch.zeros(batch_size, dtype=torch.long, device=x.device)
                    image = None
                    if aux.needs_image:
                        image = torch.zeros(image_patch, device=x.device, dtype=x.dtype)
                    return aux(x, y, image, part)

                total += count * training_flops(run, patch, params, like=like)
        return total

    def _aux_passes(self, aux: AuxNet) -> list[tuple[LossPart, int]]:
        """(losses, PFF grid) of each pass an auxiliary makes over a module's output."""
        n = self.pff
        if n == 1 or self.pff_scope == "all":
            return [("all", n)]
        passes: list[tuple[LossPart, int]] = []
        if aux.global_parts:
            passes.append(("global", 1))
        if aux.dense_parts:
            passes.append(("dense", n))
        return passes

    def _has_cascade_aux(self, index: int) -> bool:
        """A cascade aux closes the window of k modules ending at ``index`` (not the last)."""
        k = self.cascade_size
        return k > 1 and k - 1 <= index < self.num_modules - 1

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
            x = atom(x)
        return x

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

    def _build_aux_like_backbone(self) -> nn.ModuleDict:
        """:meth:`_build_aux` on the backbone's device and in its floating-point dtype (a model
        created by timm with ``device="meta"`` or cast to bfloat16 stays uniform)."""
        param = next(self.backbone.parameters(), None)
        if param is None:
            return self._build_aux()
        with torch.device(param.device):
            aux = self._build_aux()
        return aux.to(dtype=param.dtype) if param.is_floating_point() else aux

    # --- timm's model contract: the backbone's, with names under ``backbone.`` ----------------

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Checkpoint the backbone's blocks in ``forward`` (end-to-end use; :meth:`local_step`
        already frees each module's activations before the next module runs)."""
        self.backbone.set_grad_checkpointing(enable)

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
        """One training step's forward and backward (no optimizer step).

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
        self._check_batch(x, y)
        backward = backward or _default_backward
        if not self.uses_aux:
            loss = F.cross_entropy(self.backbone(x), y)
            backward(loss)
            return {"head": loss.item()}
        return _StreamedStep(self, x, y, backward).run()

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

    def _aux_gradient(
        self, aux: AuxNet, h: Tensor, y: Tensor, image: Tensor | None, backward: Backward
    ) -> tuple[Tensor, Tensor]:
        """Gradient an auxiliary sends to ``h``, computed one PFF patch at a time.

        Work that belongs to the whole map is done once: if the auxiliary pools the map
        (:meth:`AuxNet.map_side`), the map is pooled once and the patches are cut from the pooled
        map (average pooling and tiling commute), so no full-resolution patch is ever copied.
        Each patch is its own contiguous leaf tensor (a strided view would make every layer of
        the auxiliary copy it) and its loss (divided by n², so the fused loss is the patch
        average) is back-propagated before the next patch runs: the auxiliary's activations, and
        the gradient of the patch, exist for one patch at a time. Patches cut from a *pooled*
        map are small, so there the memory argument is void and n² runs of tiny kernels are pure
        overhead: equal patches then run as one stack (:meth:`_stackable`) with per-patch
        BatchNorm statistics, which gives the same losses and gradients. Patch gradients are
        written into one buffer per source map; one autograd call carries them back through the
        pooling (and a token layout) to ``h``. With ``pff_scope="decoder"`` the global losses
        make one pass over the whole map first. A dense target (``(B, H, W)`` label maps, as in
        segmentation) is cut into the same n×n grid over its own height and width.
        """
        detached = h.detach().requires_grad_()
        feature = self._to_map(detached)
        total = torch.zeros((), device=h.device)
        sources: dict[int | None, tuple[Tensor, Tensor | None]] = {}  # side -> (map, its grad)
        for part, n in self._aux_passes(aux):
            side = aux.map_side(part)
            if side is not None:  # a pooled map still needs a cell per patch (the auxiliary
                side = max(side, n)  # then pools each patch further itself)
            source, grad = sources.get(side) or (cap_resolution(feature, side), None)
            cells = list(grid_slices(*source.shape[-2:], n))
            image_cells = grid_slices(*image.shape[-2:], n) if image is not None else None
            target_cells = grid_slices(*y.shape[-2:], n) if _is_dense_target(y) else None
            patches: list[tuple[Tensor, Tensor, Tensor | None]] = []  # (feature, target, image)
            for rows, cols in cells:
                image_patch, target = None, y
                if image_cells is not None:
                    image_rows, image_cols = next(image_cells)
                    image_patch = image[..., image_rows, image_cols]
                if target_cells is not None:
                    target_rows, target_cols = next(target_cells)
                    target = y[..., target_rows, target_cols]
                patches.append((source if n == 1 else source[..., rows, cols], target, image_patch))
            runs = [([cell], p) for cell, p in zip(cells, patches)]  # (cells it covers, patch)
            if self._stackable(aux, patches, pooled=source is not feature):
                runs = [(cells, _stack_patches(patches))]
            for covered, (patch, target, image_patch) in runs:
                groups = len(covered)
                patch = (patch.contiguous() if n > 1 else patch).detach().requires_grad_()
                with patch_groups(aux, groups):
                    loss = aux(patch, target, image_patch, part) * (groups / (n * n))
                backward(loss)
                total += loss.detach()
                if patch.grad is None:
                    continue
                if grad is None and n == 1:
                    grad = patch.grad
                    continue
                if grad is None:
                    grad = torch.zeros_like(source)
                _add_patch_gradients(grad, covered, patch.grad)
            sources[side] = (source, grad)
        pairs = [(m, g) for m, g in sources.values() if g is not None]
        if not pairs:
            return torch.zeros_like(h), total
        if len(pairs) == 1 and pairs[0][0] is detached:
            return pairs[0][1], total
        maps, grads = zip(*pairs)
        (grad,) = torch.autograd.grad(maps, detached, grads)
        return grad, total

    @staticmethod
    def _stackable(
        aux: AuxNet, patches: list[tuple[Tensor, Tensor, Tensor | None]], pooled: bool
    ) -> bool:
        """Whether ``patches`` may run as one stack: more than one, cut from a pooled map (the
        stack's activations are then a fraction of the module's), of one shape, with class
        labels (a label map's ignored pixels would weigh patches unequally), through an
        auxiliary whose loss is a per-sample mean (:attr:`AuxNet.stacks_patches`)."""
        if len(patches) == 1 or not pooled or not aux.stacks_patches:
            return False
        if _is_dense_target(patches[0][1]):
            return False
        shapes = {(p.shape, None if i is None else i.shape) for p, _, i in patches}
        return len(shapes) == 1


class _StreamedStep:
    """State of one streamed local step (see the module docstring for the schedule).

    ``modules`` restricts the step to a contiguous range of modules (a pipeline stage, see
    :mod:`hpff_zoo.parallel`): :meth:`start` then takes the detached output of the module before
    the range, and what HiLo cascades would carry back across the range's first module is kept
    in :attr:`boundary`, by the number of modules it still has to reach; :meth:`finish` takes
    the same from the next stage. Over the full range, ``run`` is ``start`` + ``finish``.
    """

    def __init__(
        self,
        model: LocalModel,
        x: Tensor,
        y: Tensor,
        backward: Backward,
        modules: range | None = None,
    ) -> None:
        self.model, self.x, self.y, self.backward = model, x, y, backward
        self.modules = modules if modules is not None else range(model.num_modules)
        own_aux = [
            group[f"module{j + 1}"]
            for group in model.aux.values()
            for j in self.modules
            if f"module{j + 1}" in group
        ]
        for aux in own_aux:
            aux.before_step()
        # Reconstruction targets, prepared once per step per size and cut into patches per aux.
        self.images: dict[Any, Tensor] = {}
        self.k = model.cascade_size
        self.inputs: dict[int, Tensor] = {}  # u_j, the detached input of module j
        self.outputs: dict[int, Tensor] = {}  # h_j, kept while a later window may reach j
        self.pending: dict[int, Tensor] = {}  # gradient collected for h_j so far
        self.boundary: dict[int, Tensor] = {}  # reach left -> gradient for the previous stage
        self.losses: dict[str, Tensor] = {}
        self.parameters = {j: list(model.module_parameters(j)) for j in self.modules}
        self.released = 0  # modules whose graph this step has freed (see trim_cpu_heap)

    def run(self) -> dict[str, float]:
        self.start(self.x)
        self.finish()
        return self.loss_values()

    def loss_values(self) -> dict[str, float]:
        """The losses as floats, read in one device sync rather than one per module."""
        if not self.losses:
            return {}
        values = [value.detach() for value in self.losses.values()]
        dtype = functools.reduce(torch.promote_types, (v.dtype for v in values))
        return dict(zip(self.losses, torch.stack([v.to(dtype) for v in values]).tolist()))

    def start(self, h: Tensor) -> Tensor:
        """Forward and local backward of the range on ``h``; returns its last module's output.

        Modules that a later window may still reach keep their graphs until :meth:`finish`.
        """
        model, last = self.model, self.model.num_modules - 1
        w_ind, w_cas = model.hilo_weights if self.k > 1 else (1.0, 0.0)
        for j in self.modules:
            if j == last:
                self.losses["head"] = self._head(last, h)
                break
            h = self._forward(j, h)
            aux = model.aux
            independent = aux["independent"][f"module{j + 1}"]
            g_ind, loss = model._aux_gradient(
                independent, h, self.y, self._image_for(independent), self.backward
            )
            self._collect(j, g_ind, w_ind)
            loss = w_ind * loss
            if model._has_cascade_aux(j):
                cascade = aux["cascade"][f"module{j + 1}"]
                g_cas, cascade_loss = model._aux_gradient(
                    cascade, h, self.y, self._image_for(cascade), self.backward
                )
                self._carry_back(j, g_cas.mul_(w_cas), self.k)
                loss = loss + w_cas * cascade_loss
            self.losses[f"module{j + 1}"] = loss
            self._release(j - self.k + 1)
        return h

    def _image_for(self, aux: AuxNet) -> Tensor | None:
        if not aux.needs_image:
            return None
        key = aux.image_key
        if key not in self.images:
            self.images[key] = aux.prepare_image(self.x)
        return self.images[key]

    def finish(self, downstream: dict[int, Tensor] | None = None) -> None:
        """Carry the next stage's cascade gradients (by reach left) back, release every module."""
        for reach, grad in (downstream or {}).items():
            self._carry_back(self.modules[-1], grad, reach)
        for j in sorted(self.outputs):
            self._release(j)

    def _forward(self, j: int, previous: Tensor) -> Tensor:
        # Module j's input needs a gradient only if a cascade will reach back through it.
        u = previous.detach().requires_grad_(self.k > 1 and j > 0)
        h = self.model._run_module(j, u)
        self.inputs[j], self.outputs[j] = u, h
        return h

    def _collect(self, j: int, grad: Tensor, weight: float = 1.0) -> None:
        """Add ``weight · grad`` to what module j's output has collected (in place after the
        first: these are full-size maps, and a step makes several per module)."""
        if j in self.pending:
            self.pending[j].add_(grad, alpha=weight)
        else:
            self.pending[j] = grad if weight == 1.0 else grad * weight

    def _carry_back(self, j: int, grad: Tensor, reach: int) -> None:
        """Add ``grad`` (w.r.t. h_j) to module j and pass it back through reach-1 modules.

        What would pass back beyond the range's first module goes to :attr:`boundary`.
        """
        while reach > 0:
            if j < self.modules.start:
                previous = self.boundary.get(reach)
                self.boundary[reach] = grad if previous is None else previous + grad
                return
            self._collect(j, grad)
            reach -= 1
            if reach:
                (grad,) = torch.autograd.grad(
                    self.outputs[j], self.inputs[j], grad, retain_graph=True
                )
                j -= 1

    def _head(self, last: int, previous: Tensor) -> Tensor:
        """Last module + the model's head loss, straight through ``backward``."""
        u = previous.detach().requires_grad_(self.k > 1 and last > 0)
        loss = self.model.head_loss(self.model._run_module(last, u), self.y)
        self.backward(loss)
        if u.grad is not None:  # HiLo: the head's loss is the last window's cascade loss
            _, w_cas = self.model.hilo_weights
            self._carry_back(last - 1, w_cas * u.grad, self.k - 1)
        return loss.detach()

    def _release(self, j: int) -> None:
        """Module j will receive no more gradient: one backward into its parameters, then free."""
        if j < 0 or j not in self.outputs:
            return
        h, grad = self.outputs.pop(j), self.pending.pop(j)
        params = self.parameters[j]
        if params and h.requires_grad:
            torch.autograd.backward(h, grad, inputs=params)
        del self.inputs[j]
        self.released += 1
        every = self.model.trim_cpu_heap
        if every and self.released % every == 0 and h.device.type == "cpu":
            del h, grad  # the module's last references: its activations are free now
            cpu_heap.trim()


def _add_patch_gradients(
    grad: Tensor, cells: list[tuple[slice, slice]], patch_grad: Tensor
) -> None:
    """Add the gradient of a run of patches (stacked along the batch, one per cell) into the
    map-sized ``grad``. A function of its own so that no view of ``patch_grad`` outlives the
    call: a loop variable left bound would keep one patch gradient alive through the next
    patch's forward and backward, which is exactly the memory PFF exists to save."""
    for (rows, cols), cell_grad in zip(cells, patch_grad.chunk(len(cells))):
        grad[..., rows, cols] += cell_grad


def _stack_patches(
    patches: list[tuple[Tensor, Tensor, Tensor | None]],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Equal patches (feature, labels, image) as one batch: patch after patch along dim 0."""
    features, targets, images = zip(*patches)
    image = None if images[0] is None else torch.cat(images)
    return torch.cat(features), torch.cat(targets), image


def _span(s: slice) -> int:
    return s.stop - s.start


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily in eval mode (cost counting must not move BatchNorm statistics)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


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


def _is_dense_target(y: Tensor) -> bool:
    """A per-pixel target, (B, H, W) label maps, rather than one class per image."""
    return y.dim() >= 3


def _cascade_size(hilo: int | bool | None) -> int:
    if hilo is None or hilo is False:
        return 1
    if hilo is True:
        return 2
    if isinstance(hilo, int) and hilo >= 2:
        return hilo
    raise ValueError(f"hilo must be False or a cascade size >= 2, got {hilo!r}")


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
            :data:`DEFAULT_AUX`, as the hpff_* models, see :func:`with_default_aux`); everything
            else goes to
            ``timm.create_model`` (``pretrained``, ``num_classes``, ``in_chans``, ...).
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
        backbone = timm.create_model(model_or_name, **kwargs)
    elif kwargs:
        raise TypeError(f"timm keyword arguments {sorted(kwargs)} given with a model instance")
    else:
        backbone = model_or_name
    return LocalModel(
        backbone, num_modules=num_modules, method=method, hilo=hilo, pff=pff, **local_kwargs
    )
