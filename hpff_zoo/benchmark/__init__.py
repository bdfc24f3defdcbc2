"""Measure what local learning buys: peak training memory, step time and test accuracy.

Usage::

    python -m hpff_zoo.benchmark memory --model hpff_resnet32 --batch-size 128 --out results/
    python -m hpff_zoo.benchmark memory --model hpff_resnet110 --configs e2e,infopro+hpff \\
        --num-modules 1,2,4,8,16,32,55 --out results/
    python -m hpff_zoo.benchmark speed --model hpff_resnet101 --batch-size 8 --img-size 224
    python -m hpff_zoo.benchmark accuracy --jobs 2 --out results/accuracy
    python -m hpff_zoo.benchmark parallel --stages 2 --batch-size 256
    python -m hpff_zoo.benchmark compile --configs e2e,infopro+hpff --batch-size 32

``memory`` and ``speed`` measure single steps (:mod:`.steps`); ``accuracy`` trains a grid of
configurations through ``recipes/cifar.py`` (:mod:`.accuracy`); ``parallel`` times
module-parallel training (:mod:`hpff_zoo.parallel`); ``compile`` sets ``torch.compile``
against eager (:mod:`.torch_compile`). Each writes JSON, a Markdown
table and PNG plots (:mod:`.plots`) into ``--out``.
"""

from .cli import main
from .steps import measure_speed, model_kwargs

__all__ = ["main", "measure_speed", "model_kwargs"]
