"""What a split's observation leaves unobserved, carried over to a fully labelled split: per image of the labelled
split, how much each of its positives and negatives would count among the unobserved entries.

`wsml complete` adds only unobserved entries of the split it completes, and that population is not all entries:
where each training image shows one of its positives, the positives left are rarer (the demo: 14% of its
unobserved training entries against 23% of all) and, an image with one positive having none left, they sit in
busier images. A precision fitted on all of valid's entries overestimates the precision of the additions.

The observation is taken as the split shows it: image j shows K_j of its positives and L_j of its negatives, at
random among them, however many it has. A valid image with n positives would then show min(K, n) of them, K drawn
from the split's K_j, so each of its positives stays unobserved with probability 1 - E[min(K, n)] / n; the same
for its m negatives with L. Those probabilities are the entries' weights: precision over weighted entries is the
expected precision over the entries that such an observation leaves, without drawing which ones it hides.
Exact for the single-positive setting (K = 1: each positive of an n-positive image counts 1 - 1/n) and a split
without observed negatives (negatives count 1); an observation that shows more of an image's positives the more
it has (a share of each image's labels, say) is only approximated.
"""

from __future__ import annotations

import numpy as np

from wsml_fast.data.labelstore import LabelStore


def _expected_shown(shown: np.ndarray, present: np.ndarray) -> np.ndarray:
    """E[min(K, n)] for each n of `present`, K drawn uniformly from `shown` (one count per image):
    the sum over j < n of P(K > j)."""
    if not len(shown):
        return np.zeros(len(present))
    above = 1 - np.cumsum(np.bincount(shown)) / len(shown)  # P(K > j), j = 0 .. max K (the last is 0)
    summed = np.concatenate([[0.0], np.cumsum(above)])
    return summed[np.minimum(present, len(summed) - 1)]


def unobserved_weights(observed: LabelStore, labels: LabelStore) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `labels` (a labelled split), the weight of each of its positives and of each of its negatives
    among the entries that `observed`'s observation (another split's) would leave unobserved."""
    weights = []
    for value in (1, 0):
        shown, present = observed.count(value, axis=1), labels.count(value, axis=1)
        hidden = _expected_shown(shown, present)
        weights.append(1 - np.divide(hidden, present, out=np.zeros(len(present)), where=present > 0))
    return weights[0], weights[1]
