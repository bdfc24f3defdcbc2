"""The streamed local step: one training step's forward and backward, module by module.

``LocalModel.local_step(x, y)`` runs the schedule below, so that each module's activations are
freed before the next module runs:

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

With checkpointing on (``model.set_grad_checkpointing(True)``), step 3 and 4 recompute instead
of retaining: a module's graph is used once and freed (its input-gradient pass, or its release),
and a module a later window or its release still needs keeps only its detached input ``u_j``
(stored anyway) and its collected gradient; it is re-run from ``u_j`` (same random numbers, no
second update of running statistics) when that gradient arrives. At most one module's graph is
then alive at any time, and within it only the atoms' inputs outside the atom being recomputed
(:meth:`~hpff_zoo.LocalModel._run_atom`). At granularity ``"block"``
(``set_grad_checkpointing(True, granularity="block")``) a module of several atoms keeps its
checkpointed graph, which holds only its atoms' inputs, for its later passes instead of
re-running: two modules' atom inputs may be alive, for one module forward fewer
(:meth:`~hpff_zoo.LocalModel._reruns_waiting_module`).

The weights scale only the gradient the auxiliary losses send into the backbone; each auxiliary
network itself trains on its own unscaled loss (in the official code the 0.001 weight also slows
the independent auxiliary's own training to a crawl).

:class:`StreamedSchedule` (a mixin of :class:`~hpff_zoo.LocalModel`) holds the per-module
pieces (an auxiliary's patch-by-patch gradient); :class:`StreamedStep` holds one step's state.
:mod:`hpff_zoo.parallel` runs :class:`StreamedStep` over a pipeline stage's modules.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from . import cpu_heap
from .aux import AuxNet
from .aux.layers import cap_resolution, patch_groups
from .checkpointing import RngSnapshot
from .patches import grid_slices

if TYPE_CHECKING:
    from .local import LocalModel

__all__ = ["Backward", "StreamedSchedule", "StreamedStep", "default_backward"]

Backward = Callable[[Tensor], Any]


def default_backward(loss: Tensor) -> None:
    loss.backward()


class StreamedSchedule:
    """The per-module pieces of the streamed schedule (mixin of :class:`~hpff_zoo.LocalModel`)."""

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


class StreamedStep:
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
        # h_j, kept while a later window may reach j; None once its graph is freed (recompute)
        self.outputs: dict[int, Tensor | None] = {}
        # Modules that re-run from u_j instead of keeping their graph for a later pass.
        self.reruns = {j for j in self.modules if model._reruns_waiting_module(j)}
        self.rng: dict[int, RngSnapshot] = {}  # the generators before module j's first run
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
            # The auxiliary gradients are full-size maps: each is scaled in place and handed
            # over, never held here beside what it was added to.
            g_ind, loss = model._aux_gradient(
                independent, h, self.y, self._image_for(independent), self.backward
            )
            self._collect(j, g_ind if w_ind == 1.0 else g_ind.mul_(w_ind))
            del g_ind
            loss = w_ind * loss
            if model._has_cascade_aux(j):
                cascade = aux["cascade"][f"module{j + 1}"]
                g_cas, cascade_loss = model._aux_gradient(
                    cascade, h, self.y, self._image_for(cascade), self.backward
                )
                self._carry_back(j, g_cas.mul_(w_cas), self.k)
                del g_cas
                loss = loss + w_cas * cascade_loss
            self.losses[f"module{j + 1}"] = loss
            if j in self.reruns and j in self.outputs:  # re-run when its gradient arrives
                # Before the release below re-runs an earlier module: else two graphs are alive.
                self.outputs[j] = None
                h = h.detach()
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
        every = self.model.trim_cpu_heap
        if every and self.released % every and self.x.device.type == "cpu":
            cpu_heap.trim()  # the step's last releases: else K - 1 < n would never trim

    def _forward(self, j: int, previous: Tensor) -> Tensor:
        # Module j's input needs a gradient only if a cascade will reach back through it.
        u = previous.detach().requires_grad_(self.k > 1 and j > 0)
        if j in self.reruns:
            self.rng[j] = RngSnapshot(u)
        h = self.model._run_module(j, u)
        self.inputs[j], self.outputs[j] = u, h
        return h

    def _graph(self, j: int) -> Tensor:
        """h_j with module j's graph, for one backward pass through it.

        Retaining (the default), that is the graph kept since the forward. Recomputing, the
        graph is handed out once (the pass that uses it frees it) and, once gone, module j is
        re-run from u_j with the random numbers of its first run.
        """
        h = self.outputs[j]
        if j not in self.reruns:
            return h
        self.outputs[j] = None
        if h is None:
            with self.rng[j].replay(), self.model._recomputing():
                h = self.model._run_module(j, self.inputs[j])
        return h

    def _collect(self, j: int, grad: Tensor) -> None:
        """Add ``grad`` to what module j's output has collected (in place after the first:
        these are full-size maps, and a step makes several per module)."""
        if j in self.pending:
            self.pending[j].add_(grad)
        else:
            self.pending[j] = grad

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
                h = self._graph(j)
                with self.model._recomputing():
                    (grad,) = torch.autograd.grad(
                        h, self.inputs[j], grad, retain_graph=j not in self.reruns
                    )
                del h
                j -= 1

    def _head(self, last: int, previous: Tensor) -> Tensor:
        """Last module + the model's head loss, straight through ``backward``."""
        u = previous.detach().requires_grad_(self.k > 1 and last > 0)
        loss = self.model.head_loss(self.model._run_module(last, u), self.y)
        with self.model._recomputing():
            self.backward(loss)
        if u.grad is not None:  # HiLo: the head's loss is the last window's cascade loss
            _, w_cas = self.model.hilo_weights
            self._carry_back(last - 1, w_cas * u.grad, self.k - 1)
        return loss.detach()

    def _release(self, j: int) -> None:
        """Module j will receive no more gradient: one backward into its parameters, then free."""
        if j < 0 or j not in self.outputs:
            return
        params = self.parameters[j]
        h = self._graph(j) if params else None
        grad = self.pending.pop(j)
        if h is not None and h.requires_grad:
            with self.model._recomputing():
                torch.autograd.backward(h, grad, inputs=params)
        del self.outputs[j], self.inputs[j]
        self.rng.pop(j, None)
        self.released += 1
        every = self.model.trim_cpu_heap
        if every and self.released % every == 0 and grad.device.type == "cpu":
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


def _is_dense_target(y: Tensor) -> bool:
    """A per-pixel target, (B, H, W) label maps, rather than one class per image."""
    return y.dim() >= 3
