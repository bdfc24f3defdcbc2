"""Auxiliary networks, one file per local method; importing this package registers them all."""

from . import auglocal, dgl, infopro, man, mlaan, predsim  # noqa: F401  (registration side effects)
from .base import (
    AUX_METHODS,
    AUX_OPTIONS,
    UNBUDGETED_METHODS,
    AuxNet,
    AuxSpec,
    build_aux,
    register_aux,
)

__all__ = [
    "AUX_METHODS",
    "AUX_OPTIONS",
    "UNBUDGETED_METHODS",
    "AuxNet",
    "AuxSpec",
    "build_aux",
    "register_aux",
]
