"""Simulated partial labels: which cells of a fully labelled training matrix the learner may see.

Spec forms: `single-positive`, `pos:K,neg:M` (K positives and M negatives per image, fewer when the image
has fewer), `fraction:P` (each cell kept with probability P) and `single-positive:size` or `:location` (the
positive drawn from the object boxes, `salient.py`). Protocol `reference` replays the single-positive reference
code's random stream exactly; `wsml` draws the same distribution vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import UNOBSERVED
from wsml_fast.prepare.salient import KINDS

PROTOCOLS = ("wsml", "reference")
FORMS = (
    "single-positive, single-positive:size, single-positive:location, pos:K,neg:M (e.g. pos:1,neg:2) "
    "or fraction:P (0 < P <= 1)"
)


@dataclass(frozen=True)
class ObservedSpec:
    """Parsed `observed` option: per-image counts, a keep probability, or a single positive drawn from the object
    boxes by `salient` (size or location)."""

    positives: int = 1
    negatives: int = 0
    fraction: float | None = None
    salient: str | None = None

    def text(self) -> str:
        """The option as `wsml prepare` takes it, for the record of how the labels were made."""
        if self.salient is not None:
            return f"single-positive:{self.salient}"
        if self.fraction is not None:
            return f"fraction:{self.fraction:g}"
        return (
            "single-positive"
            if (self.positives, self.negatives) == (1, 0)
            else f"pos:{self.positives},neg:{self.negatives}"
        )


def _bad(spec: str) -> WsmlError:
    return WsmlError(f"--observed '{spec}' is not understood; use {FORMS}")


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad(spec) from None


def parse_observed(spec: str) -> ObservedSpec:
    """Read the `observed` option, failing with the accepted forms."""
    text = spec.strip().lower().replace(" ", "")
    if text == "single-positive":
        return ObservedSpec()
    kind = text.removeprefix("single-positive:")
    if kind != text:
        if kind not in KINDS:
            raise _bad(spec)
        return ObservedSpec(salient=kind)
    if text.startswith("fraction:"):
        fraction = _number(text.removeprefix("fraction:"), spec)
        if not 0 < fraction <= 1:
            raise _bad(spec)
        return ObservedSpec(fraction=fraction)
    counts = {"pos": 0, "neg": 0}
    for item in text.split(","):
        key, _, value = item.partition(":")
        number = _number(value, spec) if key in counts else -1
        if number < 0 or number != int(number):
            raise _bad(spec)
        counts[key] = int(number)
    return ObservedSpec(positives=counts["pos"], negatives=counts["neg"])


def check_protocol(protocol: str, spec: ObservedSpec) -> None:
    """Fail early on an unknown protocol name, or one the observed kind has no stream of."""
    if protocol not in PROTOCOLS:
        raise WsmlError(f"--protocol '{protocol}' is not known; use one of {', '.join(PROTOCOLS)}")
    if protocol == "reference" and spec.salient is not None:
        raise WsmlError(
            f"--protocol reference replays the uniform single-positive draws; --observed {spec.text()} has only "
            "wsml's seeded draw: drop --protocol reference"
        )


def _reference_counts(truth: np.ndarray, spec: ObservedSpec, seed: int) -> np.ndarray:
    """Row by row: shuffle the positive indices, keep the first K, then the same for negatives.

    The two shuffles happen for every row, even when nothing of a kind is kept, because the reference
    does so and each shuffle advances the random stream.
    """
    rs = np.random.RandomState(seed)
    observed = np.full(truth.shape, UNOBSERVED, dtype=np.float32)
    for i, row in enumerate(truth):
        for value, count in ((1.0, spec.positives), (0.0, spec.negatives)):
            index = np.flatnonzero(row == value)
            rs.shuffle(index)
            observed[i, index[:count]] = value
    return observed


def _ranked_counts(truth: np.ndarray, spec: ObservedSpec, seed: int) -> np.ndarray:
    """Give each cell a random key and keep, per row and kind, the cells with the smallest keys."""
    keys = np.random.default_rng(seed).random(truth.shape)
    observed = np.full(truth.shape, UNOBSERVED, dtype=np.float32)
    for value, count in ((1.0, spec.positives), (0.0, spec.negatives)):
        of_kind = truth == value
        rank = np.argsort(np.argsort(np.where(of_kind, keys, np.inf), axis=1), axis=1)
        observed[of_kind & (rank < count)] = value
    return observed


def simulate_observed(truth: np.ndarray, spec: ObservedSpec, seed: int, protocol: str) -> np.ndarray:
    """Partial labels (1, 0, -1) drawn from a full 0/1 matrix; rows without positives get none."""
    truth = np.asarray(truth, dtype=np.float32)
    if spec.fraction is not None:
        keep = np.random.RandomState(seed).random_sample(truth.shape) < spec.fraction
        return np.where(keep, truth, np.float32(UNOBSERVED)).astype(np.float32)
    if protocol == "reference":
        return _reference_counts(truth, spec, seed)
    return _ranked_counts(truth, spec, seed)
