"""timm's non-standard config test on the wrapped backbones timm itself calls non-standard.

timm routes models to ``test_model_default_cfgs_non_std`` by name (``NON_STD_FILTERS``: ``vit_*``
and other token-output families); ``hpff_vit_base_patch16_224`` wraps such a model under another
name, so the conftest takes it out of the standard test and it runs here, through timm's own
test function, for every tag.
"""

import fnmatch

import pytest
import timm

from .conftest import TIMM_VERSION, base_of, is_slow
from .test_models import NON_STD_FILTERS, cfg_device  # noqa: F401  (cfg_device: fixture)
from .test_models import test_model_default_cfgs_non_std as _timm_non_std

NON_STD = sorted(
    name
    for name in timm.list_models("hpff_*", include_tags=True)
    if any(fnmatch.fnmatch(base_of(name), f) for f in NON_STD_FILTERS)
)


def test_the_vendored_suite_is_the_pinned_timm_version():
    assert timm.__version__ == TIMM_VERSION, (
        f"timm {timm.__version__} is installed but tests/timm_suite holds the suite of timm "
        f"{TIMM_VERSION}: copy tests/test_models.py of the new sdist there"
    )


def test_some_wrapped_backbone_is_non_standard():
    assert NON_STD  # else this module tests nothing


@pytest.mark.parametrize(
    "model_name", [pytest.param(n, marks=pytest.mark.slow if is_slow(n) else ()) for n in NON_STD]
)
def test_model_default_cfgs_non_std(model_name, cfg_device):  # noqa: F811
    _timm_non_std(model_name, 1, cfg_device)
