"""`wsml prepare`: convert public multi-label datasets into wsml's observed.csv / truth.csv layout."""

from wsml_fast.prepare.pipeline import PrepareSummary, prepare_dataset
from wsml_fast.prepare.registry import READERS

__all__ = ["READERS", "PrepareSummary", "prepare_dataset"]
