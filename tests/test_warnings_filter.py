"""pyproject's filterwarnings: a warning attributed to our own modules fails the test (so a deprecation in
our code, or in how it calls a library, is fixed when it appears); third-party deprecations stay quiet."""

from __future__ import annotations

import warnings

import pytest


def _warn_from(module: str, category: type[Warning]) -> None:
    """A warning attributed to ``module``, as warnings.warn from code in it would be."""
    warnings.warn_explicit("old call", category, module.replace(".", "/") + ".py", 1, module=module)


@pytest.mark.parametrize("module", ["core.jobs", "api.main", "worker.pipeline", "alignment.train", "core"])
@pytest.mark.parametrize("category", [DeprecationWarning, FutureWarning, UserWarning])
def test_a_warning_from_our_code_is_an_error(module, category):
    with pytest.raises(category):
        _warn_from(module, category)


@pytest.mark.parametrize("module", ["transformers.modeling_utils", "corex", "apiary.x"])
def test_a_third_party_deprecation_is_not(module):
    _warn_from(module, DeprecationWarning)  # ignored, not raised
