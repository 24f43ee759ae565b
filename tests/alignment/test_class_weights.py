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
            w = class_weights(n_d, n_u, max_class_weight=100.0)
            assert BAND_LOW <= w.ratio <= BAND_HIGH, (n_d, n_u, w)
            assert min(w.desirable, w.undesirable) == 1.0
            assert max(w.desirable, w.undesirable) >= 1.0
            assert not w.capped
            # The default cap changes only what lies past it, and says so.
            capped = class_weights(n_d, n_u)
            assert max(capped.desirable, capped.undesirable) <= 10.0
            assert capped.capped == (max(w.desirable, w.undesirable) > 10.0), (n_d, n_u)
            if not capped.capped:
                assert capped == w


def test_extreme_imbalance_is_capped_and_the_record_says_so():
    w = class_weights(10, 1000)  # 1:100; uncapped the minority would weigh 116.7
    assert (w.desirable, w.undesirable, w.capped) == (10.0, 1.0, True)
    assert w.ratio == pytest.approx(0.1)
    assert "max_class_weight 10" in w.reason and "116.667" in w.reason and "outside [1, 4/3]" in w.reason
    assert w.to_dict()["capped"] is True
    w = class_weights(1000, 10, max_class_weight=20)
    assert (w.desirable, w.undesirable, w.capped) == (1.0, 20.0, True)
    assert w.ratio == pytest.approx(5.0) and "undesirable up-weighted to max_class_weight 20" in w.reason
    # Just past the cap: the ratio can still land inside the band.
    w = class_weights(10, 90)  # uncapped 10.5
    assert w.capped and w.desirable == 10.0 and "inside [1, 4/3]" in w.reason
    assert not class_weights(50, 50).capped and class_weights(50, 50).to_dict()["capped"] is False
    # Explicit weights are the user's: not capped.
    assert class_weights(10, 1000, desirable_weight=50.0, undesirable_weight=1.0).desirable == 50.0


@pytest.mark.parametrize("cap", [0.5, 0, -1, float("inf"), float("nan"), True, "10"])
def test_a_bad_cap_says_how_to_fix_it(cap):
    with pytest.raises(ClassWeightError, match="max_class_weight must be a finite number >= 1"):
        class_weights(10, 1000, max_class_weight=cap)


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
