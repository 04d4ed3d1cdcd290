"""Single positives as people give them: the object drawn with a chance that grows with its size or centrality.

People name the biggest or most central object first (Arroyo, Perona and Cole, 2023; Cole et al.'s
`preproc/biased_labels.py`). From the object boxes of an image, the protocol draws its one observed positive with
probability proportional to the object's area (`size`) or to the inverse of the distance from the box centre to
the image centre (`location`); a class's chance is the sum over its objects. Everything here is per object
(arrays as long as the annotations), never per image and class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labels import UNOBSERVED

KINDS = ("size", "location")
CENTRED = 0.0005  # pixels: the distance the protocol gives a box centred exactly on the image centre


@dataclass(frozen=True)
class Objects:
    """The object boxes of a part's images, one entry per object (any order)."""

    rows: np.ndarray  # int64: the image's row in the part
    columns: np.ndarray  # int64: the class's column
    areas: np.ndarray  # float64: pixels (COCO's `area`, a box's area for VOC)
    distances: np.ndarray  # float64: pixels from the box centre to the image centre

    @classmethod
    def from_boxes(
        cls,
        rows: np.ndarray,
        columns: np.ndarray,
        boxes: np.ndarray,
        sizes: np.ndarray,
        areas: np.ndarray | None = None,
    ) -> Objects:
        """Objects from `boxes` (x0, y0, x1, y1 in pixels) inside images of `sizes` (width, height); the area is
        the box's own where the format gives none."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        sizes = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return cls(
            np.asarray(rows, dtype=np.int64),
            np.asarray(columns, dtype=np.int64),
            box_areas if areas is None else np.asarray(areas, dtype=np.float64),
            np.hypot(*(centres - sizes / 2).T),
        )

    def weights(self, kind: str) -> np.ndarray:
        """Each object's unnormalised chance under `kind` (an image's weights need no common scale)."""
        if kind == "size":
            return self.areas
        return 1.0 / np.maximum(self.distances, CENTRED)

    def take(self, keep: np.ndarray) -> Objects:
        """The objects where `keep` is true."""
        return Objects(self.rows[keep], self.columns[keep], self.areas[keep], self.distances[keep])


def draw_salient(objects: Objects, rows: int, kind: str, seed: int) -> np.ndarray:
    """The class drawn for each of `rows` images (-1 where it has no object or none of positive weight).

    Each object gets an exponential key of rate equal to its weight; an image's smallest key is its object `j`
    with probability w_j / sum(w), so one sort draws every image at once (a zero weight never wins).
    """
    weights = objects.weights(kind)
    with np.errstate(divide="ignore"):
        keys = np.random.default_rng(seed).exponential(size=len(weights)) / weights
    live = np.isfinite(keys)
    order = np.lexsort((keys[live], objects.rows[live]))
    drawn_rows, first = np.unique(objects.rows[live][order], return_index=True)
    chosen = np.full(rows, -1, dtype=np.int64)
    chosen[drawn_rows] = objects.columns[live][order][first]
    return chosen


def _check_covered(
    truth: np.ndarray, positives: np.ndarray, objects: Objects, images: list[str], classes: list[str]
) -> None:
    """Every positive of the truth (`positives` per row) has a box: a positive without one could never be drawn."""
    pairs = np.unique(objects.rows * truth.shape[1] + objects.columns)
    boxed = np.bincount(pairs // truth.shape[1], minlength=truth.shape[0])
    short = np.flatnonzero(boxed < positives)
    if short.size:
        row = short[0]
        boxed_columns = pairs[pairs // truth.shape[1] == row] % truth.shape[1]
        column = np.setdiff1d(np.flatnonzero(truth[row] == 1), boxed_columns)[0]
        raise WsmlError(
            f"{images[row]}: labelled '{classes[column]}' but its annotations hold no box of that class; "
            "fix the annotations or use --observed single-positive"
        )


def observe_salient(
    truth: np.ndarray, objects: Objects, kind: str, seed: int, images: list[str], classes: list[str]
) -> np.ndarray:
    """Partial labels (1 or -1) with one positive per image that has any, drawn from its objects under `kind`.

    Only objects of classes the image is positive for take part (a VOC class whose objects are all "difficult" is
    not a positive). An image whose positive objects all weigh nothing (zero area) fails, naming the image.
    """
    objects = objects.take(truth[objects.rows, objects.columns] == 1)
    positives = np.count_nonzero(truth == 1, axis=1)
    _check_covered(truth, positives, objects, images, classes)
    chosen = draw_salient(objects, len(truth), kind, seed)
    empty = np.flatnonzero((chosen < 0) & (positives > 0))
    if empty.size:
        raise WsmlError(f"{images[empty[0]]}: every object of its labelled classes has area 0; nothing to draw from")
    observed = np.full(truth.shape, UNOBSERVED, dtype=np.float32)
    drawn = np.flatnonzero(chosen >= 0)
    observed[drawn, chosen[drawn]] = 1.0
    return observed
