"""`wsml suggest`: the unobserved (image, class) entries of a split whose answers are worth most, for a budget of
answers, written as a CSV or as Label Studio tasks.

The split is scored a batch at a time and only the best candidates are kept (`candidates.CandidatePool`), so
memory follows the budget and the classes, never images x classes. An observed entry is never suggested.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wsml_fast.core.atomic import write_text
from wsml_fast.core.errors import WsmlError
from wsml_fast.core.process import Process, launched
from wsml_fast.data.label_studio import LOCAL_FILES, labeling_config, suggestion_tasks
from wsml_fast.data.labelstore import UNOBSERVED
from wsml_fast.data.loaders import ImageLabelDataset, make_loader
from wsml_fast.data.sources import DatasetFiles
from wsml_fast.inference.candidates import CandidatePool
from wsml_fast.inference.evaluate import model_table, scoring_of
from wsml_fast.inference.trained import TrainedModel
from wsml_fast.model.scoring import scored_batches

STRATEGIES = ("likely-positive", "uncertain", "random")
DEFAULT_STRATEGY = "likely-positive"  # the most gained per answer (benchmarks/verification_loop.py)
FORMATS = ("csv", "label-studio")
EDGE = 1e-7  # probabilities and thresholds are kept this far inside (0, 1), where their logits are finite

Keys = Callable[[np.ndarray], np.ndarray]  # B x C probabilities -> B x C keys, lower is worth more


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EDGE, 1 - EDGE)
    return np.log(p) - np.log1p(-p)


def uncertain_keys(thresholds: np.ndarray) -> Keys:
    """Distance to the class's threshold in logits, |logit(p) - logit(t)|, rather than in probability: a logit
    difference is the same change of the model's odds whatever the threshold, so classes with thresholds near 0
    or 1 (rare classes, precision targets) are judged on the scale of the others. In probability, every entry of
    a class whose threshold is 0.02 lies within 0.02 of it, and the spread over classes would favour such
    classes; within one class both distances give nearly the same order near the threshold."""
    cut = _logit(thresholds)[None, :]
    return lambda probabilities: np.abs(_logit(probabilities) - cut)


def strategy_keys(strategy: str, thresholds: np.ndarray, seed: int) -> Keys:
    """`likely-positive`: highest probability; `uncertain`: nearest the threshold; `random`: keys drawn uniformly
    from `seed` for every entry in row order (the same draws whatever the batch size)."""
    if strategy == "uncertain":
        return uncertain_keys(thresholds)
    if strategy == "likely-positive":
        return lambda probabilities: -probabilities.astype(np.float64)
    if strategy == "random":
        generator = np.random.default_rng(seed)
        return lambda probabilities: generator.random(probabilities.shape)
    raise ValueError(f"unknown strategy {strategy!r} (one of {STRATEGIES})")


@dataclass
class Suggestions:
    """The chosen entries, best first, and what they were chosen from."""

    images: list[str]
    classes: list[str]
    probabilities: np.ndarray
    decided: np.ndarray  # probability at or above the class's threshold
    candidates: int  # the unobserved entries of the split
    classes_with_candidates: int
    cap: int | None  # the most entries a class could take

    def frame(self) -> pd.DataFrame:
        ranks = np.arange(1, len(self.images) + 1)
        return pd.DataFrame(
            {"image": self.images, "class": self.classes, "probability": self.probabilities, "rank": ranks}
        )


def suggest(
    model: TrainedModel,
    source: DatasetFiles,
    split: str,
    strategy: str,
    budget: int,
    per_class_cap: int | None = None,
    seed: int = 0,
    process: Process | None = None,
) -> Suggestions:
    """The `budget` unobserved entries of `split` worth most by `strategy`, at most `per_class_cap` a class (by
    default: an equal share of the budget among the classes with candidates, unused shares going to the others;
    `random` without a cap draws uniformly)."""
    keys_of = strategy_keys(strategy, model.thresholds, seed)
    process = process or launched()
    table = model_table(model, source, split)
    observed = table.observed_of(split)
    images = [table.images[i] for i in table.rows(split)]
    dataset = ImageLabelDataset(source.images_root, images, observed, model.img_size)
    scoring = scoring_of(model, process)
    loader = make_loader(dataset, scoring.bs, False, scoring.workers, scoring.device)
    pool = CandidatePool(len(model.classes), budget, per_class_cap, spread=strategy != "random")
    for scores, rest in scored_batches(model.classifier(scoring.device), loader, scoring.precision, scoring.device):
        rows = rest[-1].cpu().numpy()
        probabilities = scores.cpu().numpy()
        pool.add(rows, keys_of(probabilities), probabilities, observed.take(rows).to_dense() == UNOBSERVED)
    chosen = pool.selection()
    return Suggestions(
        [images[i] for i in chosen.rows],
        [model.classes[c] for c in chosen.cols],
        chosen.probabilities,
        chosen.probabilities >= model.thresholds[chosen.cols],
        int(pool.counts.sum()),
        int((pool.counts > 0).sum()),
        pool.cap(),
    )


def check_options(strategy: str, budget: int, per_class_cap: int | None, fmt: str, out: Path) -> None:
    """The options, before any scoring."""
    if strategy not in STRATEGIES:
        raise WsmlError(f"--strategy {strategy!r} is not one of: {', '.join(STRATEGIES)}")
    if budget < 1:
        raise WsmlError(f"--budget must be at least 1 (got {budget})")
    if per_class_cap is not None and per_class_cap < 1:
        raise WsmlError(f"--per-class-cap must be at least 1 (got {per_class_cap})")
    if fmt not in FORMATS:
        raise WsmlError(f"--format {fmt!r} is not one of: {', '.join(FORMATS)}")
    if fmt == "label-studio" and out.suffix.lower() == ".xml":
        raise WsmlError(f"--out {out}: the labeling config goes to FILE.xml beside it; name the tasks FILE.json")


def write_suggestions(
    suggestions: Suggestions, out: Path, fmt: str, model_version: str, image_prefix: str | None = None
) -> list[Path]:
    """Write the CSV (image, class, probability, rank), or the Label Studio tasks and their labeling config
    (`out` with the suffix .xml); each file atomically. Returns the files written."""
    if fmt == "csv":
        write_text(out, suggestions.frame().to_csv(index=False, float_format="%.6f"))
        return [out]
    tasks = suggestion_tasks(
        suggestions.images,
        suggestions.classes,
        suggestions.probabilities,
        suggestions.decided,
        model_version,
        image_prefix or LOCAL_FILES,
    )
    config = out.with_suffix(".xml")
    write_text(config, labeling_config(suggestions.classes))
    write_text(out, json.dumps(tasks, indent=1, ensure_ascii=False) + "\n")
    return [out, config]


def summary(suggestions: Suggestions, split: str, strategy: str, files: list[Path]) -> str:
    cap = "no per-class cap" if suggestions.cap is None else f"at most {suggestions.cap} a class"
    images = len(set(suggestions.images))
    return (
        f"suggested {len(suggestions.images)} entries ({strategy}, {cap}) on {images} images and "
        f"{len(set(suggestions.classes))} classes, from {suggestions.candidates} unobserved {split} entries in "
        f"{suggestions.classes_with_candidates} classes: {' and '.join(map(str, files))}"
    )
