import subprocess
import sys

import pytest

from alignment.weights import BAND_HIGH, BAND_LOW, ClassWeightError, class_weights


def test_balanced_counts_keep_unit_weights():
    w = class_weights(50, 50)
    assert (w.desirable, w.undesirable, w.ratio) == (1.0, 1.0, 1.0)


def test_ratio_inside_band_is_left_alone():
    w = class_weights(120, 100)
    assert (w.desirable, w.undesirable) == (1.0, 1.0)
    assert w.ratio == pytest.approx(1.2)


def test_desirable_minority_is_up_weighted():
    w = class_weights(10, 40)
    assert w.undesirable == 1.0
    assert w.desirable == pytest.approx((7 / 6) / (10 / 40))
    assert w.desirable * 10 / 40 == pytest.approx(7 / 6)


def test_undesirable_minority_is_up_weighted():
    w = class_weights(90, 10)
    assert w.desirable == 1.0
    assert w.undesirable == pytest.approx(9 / (7 / 6))
    assert w.ratio == pytest.approx(7 / 6)


def test_every_count_pair_lands_in_band_weighting_only_the_minority():
    for n_d in range(1, 60):
        for n_u in range(1, 60):
            w = class_weights(n_d, n_u)
            assert BAND_LOW <= w.ratio <= BAND_HIGH, (n_d, n_u, w)
            assert min(w.desirable, w.undesirable) == 1.0
            assert max(w.desirable, w.undesirable) >= 1.0


def test_empty_class_is_an_error_unless_single_class_mode():
    with pytest.raises(ClassWeightError, match="no undesirable"):
        class_weights(5, 0)
    with pytest.raises(ClassWeightError, match="no desirable"):
        class_weights(0, 5)
    with pytest.raises(ClassWeightError, match="no labelled"):
        class_weights(0, 0, allow_single_class=True)
    w = class_weights(5, 0, allow_single_class=True)
    assert (w.desirable, w.undesirable, w.ratio) == (1.0, 1.0, None)


def test_user_override_is_used_and_reported():
    w = class_weights(10, 90, desirable_weight=2.0, undesirable_weight=1.0)
    assert (w.desirable, w.undesirable) == (2.0, 1.0)
    assert "user override" in w.reason and "outside" in w.reason
    with pytest.raises(ClassWeightError, match="both"):
        class_weights(10, 90, desirable_weight=2.0)


def test_weights_config_and_hashing_do_not_import_torch():
    code = ("import sys, alignment, alignment.weights, alignment.config, alignment.hashing; "
            "alignment.KTOConfig.from_dict({'beta': 0.2}); assert 'torch' not in sys.modules, 'torch loaded'")
    subprocess.run([sys.executable, "-c", code], check=True)
