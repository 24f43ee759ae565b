"""Class weights lambda_D, lambda_U from the snapshot's label counts.

KTO (Ethayarajh et al. 2024, sec. 4.2) asks for
``lambda_D * n_D / (lambda_U * n_U)`` in ``[1, 4/3]``. Only the minority class
is ever up-weighted (the majority keeps weight 1), and when the counts fall
outside the band the ratio is moved to the middle of the band, 7/6, so that
rounding can never leave it on the wrong side of an edge.

Torch-free: the API may call this to preview a job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

BAND_LOW = 1.0
BAND_HIGH = 4.0 / 3.0
BAND_TARGET = (BAND_LOW + BAND_HIGH) / 2.0


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
) -> ClassWeights:
    """Weights that put ``lambda_D n_D / (lambda_U n_U)`` inside ``[1, 4/3]``.

    - Both overrides given: they are used as they are (the reason says so, and
      whether the resulting ratio lies in the band).
    - A count of zero raises :class:`ClassWeightError`, unless
      ``allow_single_class`` is set: then both weights are 1 (single-class mode:
      KTO still trains, pushing the one class's rewards above/below the KL
      baseline, but there is nothing to balance).
    """
    for name, n in (("n_desirable", n_desirable), ("n_undesirable", n_undesirable)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ClassWeightError(f"{name} must be a non-negative integer, got {n!r}")
    if (desirable_weight is None) != (undesirable_weight is None):
        raise ClassWeightError(
            "give both desirable_weight and undesirable_weight, or neither (then they come from the counts)"
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
        desirable, undesirable = 1.0, 1.0
        reason = f"counts ratio {raw:.3f} already inside [1, 4/3]: no re-weighting"
    elif raw < BAND_LOW:
        # Desirable is the minority (or not enough of a majority): up-weight it.
        desirable, undesirable = BAND_TARGET / raw, 1.0
        reason = f"counts ratio {raw:.3f} < 1: desirable up-weighted to put the weighted ratio at 7/6"
    else:
        desirable, undesirable = 1.0, raw / BAND_TARGET
        reason = f"counts ratio {raw:.3f} > 4/3: undesirable up-weighted to put the weighted ratio at 7/6"
    ratio = _weighted_ratio(n_desirable, n_undesirable, desirable, undesirable)
    return ClassWeights(desirable, undesirable, n_desirable, n_undesirable, ratio, reason)
