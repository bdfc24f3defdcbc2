"""The two environment fixes of hpff_zoo.seg: mmcv-lite's missing ops, safe checkpoint loading."""

from __future__ import annotations

import importlib.util
import pickle

import pytest

pytest.importorskip("mmseg", reason='segmentation extra not installed: pip install -e ".[seg]"')

import torch

import hpff_zoo.seg  # noqa: F401
from hpff_zoo.seg._compat import MissingOpError, _history_buffer_method

LITE = importlib.util.find_spec("mmcv._ext") is None


@pytest.mark.skipif(not LITE, reason="full mmcv installed: its real ops are used")
def test_mmcv_lite_ops_import_but_fail_clearly_when_used():
    import mmseg.models  # noqa: F401  (imports mmcv.ops names at module level)
    from mmcv.ops import point_sample

    with pytest.raises(MissingOpError, match=r"mmcv\.ops\.point_sample needs the compiled ops"):
        point_sample(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2))
    with pytest.raises(ImportError):
        import mmcv.ops.point_sample  # noqa: F401  (no submodules behind the stand-in)


def test_checkpoint_getattr_serves_history_buffer_methods_only(tmp_path):
    from mmengine.logging import HistoryBuffer

    buffer = HistoryBuffer()
    buffer.update(3.0)
    torch.save({"buffer": buffer}, tmp_path / "hub.pth")
    loaded = torch.load(tmp_path / "hub.pth")  # weights_only, the torch >= 2.6 default
    assert loaded["buffer"].mean() == 3.0
    with pytest.raises(pickle.UnpicklingError, match="refusing getattr"):
        _history_buffer_method(torch, "load")
