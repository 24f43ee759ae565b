"""Class weights lambda_D, lambda_U from the snapshot's label counts.

KTO (Ethayarajh et al. 2024, sec. 4.2) asks for
``lambda_D * n_D / (lambda_U * n_U)`` in ``[1, 4/3]``. Only the minority class
is ever up-weighted (the majority keeps weight 1), and when the counts fall
outside the band the ratio is moved to the middle of the band, 7/6, so that
rounding can never leave it on the wrong side of an edge.

The up-weight is capped at ``max_class_weight`` (default 10: the paper tested
imbalances up to about 1:10). Past the cap the weighted ratio leaves the band
rather than letting a handful of minority rows, each weighted ~100 at 1:100,
dominate every step they appear in; the record says so (``capped``).

Torch-free: the API may call this to preview a job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BAND_LOW = 1.0
BAND_HIGH = 4.0 / 3.0
BAND_TARGET = (BAND_LOW + BAND_HIGH) / 2.0
DEFAULT_MAX_CLASS_WEIGHT = 10.0


class ClassWeightError(ValueError):
    """The counts cannot give KTO class weights (e.g. one class is empty)."""


@dataclass(frozen=True)
class ClassWeights:
    desirable: float
    undesirable: float
    n_desirable: int
    n_undesirable: int
    # lambda_D * n_D / (lambda_U * n_U); None when a count is zero.
    ratio: float | None
    # One sentence for the job record: why these numbers.
    reason: str
    # True when max_class_weight bound the minority's weight (the ratio is then below 7/6 or above it).
    capped: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _weighted_ratio(n_desirable: int, n_undesirable: int, desirable: float, undesirable: float) -> float | None:
    if n_desirable == 0 or n_undesirable == 0:
        return None
    return desirable * n_desirable / (undesirable * n_undesirable)


def class_weights(
    n_desirable: int,
    n_undesirable: int,
    *,
    desirable_weight: float | None = None,
    undesirable_weight: float | None = None,
    allow_single_class: bool = False,
    max_class_weight: float = DEFAULT_MAX_CLASS_WEIGHT,
) -> ClassWeights:
    """Weights that put ``lambda_D n_D / (lambda_U n_U)`` inside ``[1, 4/3]``.

    - Both overrides given: they are used as they are (the reason says so, and
      whether the resulting ratio lies in the band).
    - A count of zero raises :class:`ClassWeightError`, unless
      ``allow_single_class`` is set: then both weights are 1 (single-class mode:
      KTO still trains, pushing the one class's rewards above/below the KL
      baseline, but there is nothing to balance).
    - The minority's weight never exceeds ``max_class_weight`` (>= 1); when
      the cap binds, ``capped`` is True and the reason gives the uncapped
      weight and where the weighted ratio landed. Overrides are not capped.
    """
    for name, n in (("n_desirable", n_desirable), ("n_undesirable", n_undesirable)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ClassWeightError(f"{name} must be a non-negative integer, got {n!r}")
    if (desirable_weight is None) != (undesirable_weight is None):
        raise ClassWeightError(
            "give both desirable_weight and undesirable_weight, or neither (then they come from the counts)"
        )
    if isinstance(max_class_weight, bool) or not isinstance(max_class_weight, int | float) \
            or not 1.0 <= max_class_weight < float("inf"):
        raise ClassWeightError(
            f"max_class_weight must be a finite number >= 1 (the majority class keeps weight 1), "
            f"got {max_class_weight!r}; the default {DEFAULT_MAX_CLASS_WEIGHT:g} covers the imbalances the KTO paper tested"
        )
    if desirable_weight is not None:
        for name, w in (("desirable_weight", desirable_weight), ("undesirable_weight", undesirable_weight)):
            if not w > 0:
                raise ClassWeightError(f"{name} must be > 0, got {w!r}")
        ratio = _weighted_ratio(n_desirable, n_undesirable, desirable_weight, undesirable_weight)
        inside = ratio is not None and BAND_LOW <= ratio <= BAND_HIGH
        reason = "user override" + (
            "" if ratio is None else f"; weighted ratio {ratio:.3f} is {'inside' if inside else 'outside'} [1, 4/3]"
        )
        return ClassWeights(desirable_weight, undesirable_weight, n_desirable, n_undesirable, ratio, reason)

    if n_desirable == 0 or n_undesirable == 0:
        if n_desirable == 0 and n_undesirable == 0:
            raise ClassWeightError("no labelled examples: need at least one desirable and one undesirable")
        if not allow_single_class:
            missing = "desirable (thumbs-up)" if n_desirable == 0 else "undesirable (thumbs-down)"
            raise ClassWeightError(
                f"no {missing} examples: KTO class weights need both classes; collect more feedback, "
                "or set both weights explicitly / enable single-class mode"
            )
        return ClassWeights(1.0, 1.0, n_desirable, n_undesirable, None, "single-class mode: both weights 1")

    raw = n_desirable / n_undesirable
    if BAND_LOW <= raw <= BAND_HIGH:
        return ClassWeights(1.0, 1.0, n_desirable, n_undesirable, raw,
                            f"counts ratio {raw:.3f} already inside [1, 4/3]: no re-weighting")
    # Only the minority (or a too-small majority) is up-weighted, to put the weighted ratio at 7/6.
    minority, wanted = ("desirable", BAND_TARGET / raw) if raw < BAND_LOW else ("undesirable", raw / BAND_TARGET)
    weight = min(wanted, float(max_class_weight))
    desirable, undesirable = (weight, 1.0) if minority == "desirable" else (1.0, weight)
    ratio = _weighted_ratio(n_desirable, n_undesirable, desirable, undesirable)
    side = "< 1" if raw < BAND_LOW else "> 4/3"
    if weight < wanted:
        inside = BAND_LOW <= ratio <= BAND_HIGH
        reason = (f"counts ratio {raw:.3f} {side}: {minority} up-weighted to max_class_weight {weight:g} "
                  f"(capped: {wanted:.3f} would put the weighted ratio at 7/6); weighted ratio {ratio:.3f} is "
                  f"{'inside' if inside else 'outside'} [1, 4/3]")
        return ClassWeights(desirable, undesirable, n_desirable, n_undesirable, ratio, reason, capped=True)
    reason = f"counts ratio {raw:.3f} {side}: {minority} up-weighted to put the weighted ratio at 7/6"
    return ClassWeights(desirable, undesirable, n_desirable, n_undesirable, ratio, reason)
