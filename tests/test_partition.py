"""Automatic partitioning: atoms reproduce forward_features, splits balance measured cost."""

from __future__ import annotations

import itertools
import random

import pytest
import timm
import torch
from torch import nn

import hpff_zoo
from hpff_zoo.partition import (
    COST_BATCH,
    balanced_split,
    flatten,
    measure_costs,
    partition_backbone,
)

# (timm name, input size, expected atom count): the paper's backbones and three other families.
FAMILIES = [
    ("cifar_resnet32", (3, 32, 32), 16),
    ("cifar_resnet110", (3, 32, 32), 55),
    ("resnet101", (3, 224, 224), 34),
    ("vgg13", (3, 224, 224), 10),
    ("vit_base_patch16_224", (3, 224, 224), 14),
    ("convnext_atto", (3, 224, 224), None),
    ("efficientnet_b0", (3, 224, 224), None),
    ("regnetx_002", (3, 224, 224), None),
]


@pytest.mark.parametrize("name,input_size,atom_count", FAMILIES)
def test_atoms_chain_to_forward_features_and_split_is_balanced(name, input_size, atom_count):
    backbone = timm.create_model(name).eval()
    part = partition_backbone(backbone, 4, input_size)
    if atom_count is not None:
        assert len(part.atoms) == atom_count
    x = torch.randn(1, *input_size)
    with torch.no_grad():
        y = x
        for k in range(part.num_modules):
            for atom in part.module_atoms(k):
                y = atom(y)
        torch.testing.assert_close(y, backbone.forward_features(x))
    # Every backbone parameter belongs to one atom or to the head, never to two atoms.
    owned = [n for atom in part.atoms for n in atom.parameter_names]
    assert len(owned) == len(set(owned))
    # The min-max split is within one atom of the ideal K-way share.
    costs = [c.activation_bytes for c in part.costs]
    largest = max(part.module_cost(k) for k in range(4))
    assert largest <= sum(costs) / 4 + max(costs)


def test_flops_match_the_published_resnet101_figure():
    part = partition_backbone(timm.create_model("resnet101"), 4, (3, 224, 224))
    # ResNet-101 is 7.8 GMACs at 224 px; the counter reports FLOPs = 2 × MACs.
    assert sum(c.flops for c in part.costs) == pytest.approx(2 * 7.8e9 * COST_BATCH, rel=0.03)


def test_paper_split_resnet32_k16_and_resnet110_k55_one_atom_per_module():
    for name, k in [("cifar_resnet32", 16), ("cifar_resnet110", 55)]:
        part = partition_backbone(timm.create_model(name), k, (3, 32, 32))
        assert part.starts == tuple(range(k))
        names = [part.module_atoms(i)[0].name for i in range(k)]
        blocks_per_stage = (k - 1) // 3
        expected = ["conv1"] + [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(blocks_per_stage)]
        assert names == expected


def test_measured_costs_follow_the_shapes():
    backbone = timm.create_model("cifar_resnet32")
    atoms = flatten(backbone, (3, 32, 32))
    one, two, three = (measure_costs(atoms, backbone, (3, 32, 32), b) for b in (1, 2, 3))
    assert [c.output_shape[1:] for c in one][-1] == (64, 8, 8)
    for a, b, c in zip(one, two, three):
        # Affine in the batch size: per-sample activations plus per-channel saved statistics.
        assert c.activation_bytes - b.activation_bytes == b.activation_bytes - a.activation_bytes
        assert c.flops == 3 * a.flops
    # Stage 1 blocks (16 ch at 32×32) hold twice the activations of stage 2 blocks (32 at 16×16).
    per_sample = [b.activation_bytes - a.activation_bytes for a, b in zip(one, two)]
    assert per_sample[1] == 2 * per_sample[7]


def test_measuring_costs_leaves_batchnorm_state_untouched():
    backbone = timm.create_model("cifar_resnet32").train()
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    partition_backbone(backbone, 4, (3, 32, 32))
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_balanced_split_is_optimal_against_brute_force():
    rng = random.Random(0)
    for _ in range(30):
        costs = [rng.randint(1, 20) for _ in range(rng.randint(3, 9))]
        k = rng.randint(1, len(costs))
        starts = balanced_split(costs, k)
        assert starts[0] == 0 and len(starts) == k

        def worst(bounds, costs=costs):
            edges = [*bounds, len(costs)]
            return max(sum(costs[a:b]) for a, b in itertools.pairwise(edges))

        best = min(worst((0, *cut)) for cut in itertools.combinations(range(1, len(costs)), k - 1))
        assert worst(starts) == best


def test_explicit_splits_by_index_and_name():
    backbone = timm.create_model("cifar_resnet32")
    by_name = partition_backbone(backbone, 3, (3, 32, 32), splits=["layer2.0", "layer3.0"])
    by_index = partition_backbone(backbone, 3, (3, 32, 32), splits=[6, 11])
    assert by_name.starts == by_index.starts == (0, 6, 11)
    with pytest.raises(ValueError, match="increase"):
        partition_backbone(backbone, 3, (3, 32, 32), splits=[6, 6])
    with pytest.raises(ValueError, match="unknown atom"):
        partition_backbone(backbone, 2, (3, 32, 32), splits=["layer9.0"])
    with pytest.raises(ValueError, match="2 split points"):
        partition_backbone(backbone, 3, (3, 32, 32), splits=[6])


@pytest.mark.parametrize("k", [0, -1, 17, 2.5])
def test_bad_number_of_modules_names_the_limit(k):
    with pytest.raises(ValueError, match="16" if k == 17 else "positive integer"):
        partition_backbone(timm.create_model("cifar_resnet32"), k, (3, 32, 32))


class _NotAChain(nn.Module):
    """forward_features adds a skip over its children: no chain of atoms reproduces it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 3, 3, padding=1)
        self.num_classes = 0

    def forward_features(self, x):
        return self.b(self.a(x)) + x

    def forward_head(self, x, pre_logits=False):
        return x.mean((2, 3))


def test_unflattenable_model_is_a_clear_error():
    with pytest.raises(ValueError, match="register an explicit atom list"):
        flatten(_NotAChain(), (3, 8, 8))
    with pytest.raises(ValueError, match="forward_features"):
        flatten(nn.Linear(3, 3), (3, 8, 8))


def test_a_one_by_one_final_map_partitions_in_training_mode():
    """resnet10t at 28 px ends on a 1×1 map: BatchNorm's batch statistics need batch ≥ 2."""
    model = hpff_zoo.from_timm("resnet10t", num_modules=3, input_size=(3, 28, 28), num_classes=4)
    assert model.partition.module_output_shape(2)[-2:] == (1, 1)
    losses = model.local_step(torch.randn(2, 3, 28, 28), torch.tensor([0, 3]))
    assert set(losses) == {"module1", "module2", "head"}
