"""`wsml suggest`: the unobserved entries worth asking about, checked against a brute force over every entry's
probability (computed apart, through the Python API, on the small demo); the streamed candidate pool against the
same brute force on random keys; the Label Studio tasks' shape, and their answers merged back."""

import json
import math
import shutil
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import error_of, invoke, write

from wsml_fast.data.labels import read_label_csv
from wsml_fast.inference.candidates import CandidatePool, water_level
from wsml_fast.inference.trained import load_model

SCORING_BS = 32  # the tiny run's scoring batch size (its --bs 16, doubled): the brute force scores the same batches


def brute_force(keys: np.ndarray, candidate: np.ndarray, budget: int, cap: int | None, spread: bool) -> list:
    """(key, row, class) of the chosen entries, best first, by the rule written out: with `spread`, the cap is the
    smallest level at which the classes' candidates, each class counted up to it, fill the budget."""
    entries = sorted((keys[r, c], r, c) for r, c in zip(*np.nonzero(candidate), strict=True))
    counts = np.bincount([c for _, _, c in entries], minlength=keys.shape[1])
    if spread:
        cap = 1
        while np.minimum(counts, cap).sum() < min(budget, len(entries)):
            cap += 1
    if cap is not None:
        taken = np.zeros(keys.shape[1], int)
        kept = []
        for entry in entries:  # in key order: each class's first `cap` are its best
            if taken[entry[2]] < cap:
                kept.append(entry)
            taken[entry[2]] += 1
        entries = kept
    return entries[:budget]


@pytest.mark.parametrize("mode", ["spread", "fixed cap", "no cap"])
def test_the_streamed_pool_keeps_what_the_whole_matrix_would_choose(mode: str) -> None:
    rng = np.random.default_rng({"spread": 0, "fixed cap": 1, "no cap": 2}[mode])
    for case in range(60):
        n, c = rng.integers(1, 30), rng.integers(1, 8)
        keys = rng.integers(0, 5, (n, c)).astype(float) if case % 2 else rng.random((n, c))  # odd cases: many ties
        candidate = rng.random((n, c)) < rng.random()
        budget, cap = int(rng.integers(1, 40)), int(rng.integers(1, 6)) if mode == "fixed cap" else None
        pool = CandidatePool(c, budget, cap, spread=mode == "spread")
        bs = int(rng.integers(1, 7))
        for start in range(0, n, bs):
            rows = np.arange(start, min(n, start + bs))
            pool.add(rows, keys[rows], keys[rows].astype(np.float32), candidate[rows])
            assert len(pool.pool) <= budget + c  # what is kept follows the budget and the classes
        chosen = pool.selection()
        got = [(float(k), int(r), int(col)) for k, r, col in zip(chosen.keys, chosen.rows, chosen.cols, strict=True)]
        assert got == [
            (float(k), int(r), int(col)) for k, r, col in brute_force(keys, candidate, budget, cap, mode == "spread")
        ]


def test_the_water_level_passes_unused_shares_on() -> None:
    assert water_level(np.array([9, 9, 9]), 6) == 2  # an equal share each
    assert water_level(np.array([9, 9, 9]), 7) == 3  # ceil(7 / 3)
    assert water_level(np.array([0, 1, 9]), 6) == 5  # the class with 1 candidate leaves 2 to the other
    assert water_level(np.array([2, 1, 0]), 9) == 2  # too few candidates: all of them


@pytest.fixture(scope="module")
def scored(trained_run: Path, demo_folder: Path) -> dict:
    """Every train entry of the small demo: probability (the Python API, apart from `wsml suggest`) and label."""
    model = load_model(trained_run)
    observed = read_label_csv(demo_folder / "observed.csv")
    train = np.flatnonzero(observed.splits == "train")
    images = [observed.images[i] for i in train]
    probabilities = model.probabilities([demo_folder / "images" / image for image in images], SCORING_BS)
    labels = observed.store.to_dense()[train]
    return {"images": images, "p": probabilities.astype(np.float64), "unobserved": labels == -1, "model": model}


def suggested(run: Path, out: Path, *options: str) -> pd.DataFrame:
    result = invoke("suggest", run, "--out", out, *options)
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(str(out)) and len(result.output.strip().splitlines()) == 1
    return pd.read_csv(out, dtype={"image": str, "class": str})


def expected_rows(scored: dict, keys: np.ndarray, budget: int, cap: int | None, spread: bool) -> list[tuple]:
    chosen = brute_force(keys, scored["unobserved"], budget, cap, spread)
    classes = scored["model"].classes
    return [(scored["images"][r], classes[c], round(scored["p"][r, c], 6)) for _, r, c in chosen]


def rows_of(frame: pd.DataFrame) -> list[tuple]:
    assert frame["rank"].tolist() == list(range(1, len(frame) + 1))
    return list(zip(frame["image"], frame["class"], frame["probability"].round(6), strict=True))


def test_uncertain_picks_the_entries_nearest_their_threshold(trained_run: Path, scored: dict, tmp_path: Path) -> None:
    frame = suggested(trained_run, tmp_path / "queue.csv", "--strategy", "uncertain", "--budget", "23")
    p = np.clip(scored["p"], 1e-7, 1 - 1e-7)
    t = np.clip(scored["model"].thresholds, 1e-7, 1 - 1e-7)
    keys = np.abs(np.log(p / (1 - p)) - np.log(t / (1 - t)))
    assert rows_of(frame) == expected_rows(scored, keys, 23, None, spread=True)
    assert frame["class"].value_counts().max() <= math.ceil(23 / 10)  # every class has candidates here


def test_likely_positive_the_default_picks_the_highest_probabilities_under_the_cap(
    trained_run: Path, scored: dict, tmp_path: Path
) -> None:
    frame = suggested(trained_run, tmp_path / "queue.csv", "--budget", "15", "--per-class-cap", "3")
    assert rows_of(frame) == expected_rows(scored, -scored["p"], 15, 3, spread=False)
    assert frame["class"].value_counts().max() <= 3


def test_random_is_a_seeded_uniform_draw(trained_run: Path, scored: dict, tmp_path: Path) -> None:
    options = ["--strategy", "random", "--budget", "25", "--seed", "5"]
    first = suggested(trained_run, tmp_path / "a.csv", *options)
    keys = np.random.default_rng(5).random(scored["p"].shape)  # a key per entry, in row order
    assert rows_of(first) == expected_rows(scored, keys, 25, None, spread=False)
    assert suggested(trained_run, tmp_path / "b.csv", *options).equals(first)
    assert not suggested(trained_run, tmp_path / "c.csv", *options[:-1], "6").equals(first)


def test_a_budget_beyond_the_candidates_asks_each_unobserved_entry_once(
    trained_run: Path, scored: dict, tmp_path: Path
) -> None:
    frame = suggested(trained_run, tmp_path / "all.csv", "--budget", "100000")
    classes = scored["model"].classes
    unobserved = {(scored["images"][r], classes[c]) for r, c in zip(*np.nonzero(scored["unobserved"]), strict=True)}
    asked = list(zip(frame["image"], frame["class"], strict=True))
    assert len(asked) == len(set(asked)) and set(asked) == unobserved  # never an observed entry


def test_label_studio_tasks_and_their_answers_merged_back(
    trained_run: Path, scored: dict, demo_folder: Path, tmp_path: Path
) -> None:
    queue = suggested(trained_run, tmp_path / "queue.csv", "--budget", "12")
    out = tmp_path / "queue.json"
    result = invoke("suggest", trained_run, "--budget", "12", "--format", "label-studio", "--out", out)
    assert result.exit_code == 0, result.output
    assert f"{out} and {tmp_path / 'queue.xml'}" in result.output
    tasks = json.loads(out.read_text())
    model = scored["model"]
    assert isinstance(tasks, list) and len(tasks) == queue["image"].nunique()  # one task per image
    asked = {}
    for task in tasks:
        data, (prediction,) = task["data"], task["predictions"]
        image = data["wsml_image"]
        assert data["image"] == f"/data/local-files/?d={image}"
        rows = queue[queue["image"] == image]
        assert data["asked"] == rows["class"].tolist()  # best first, as in the CSV
        ticked = [
            c
            for c, p in zip(rows["class"], rows["probability"], strict=True)
            if p >= model.thresholds[model.classes.index(c)] - 1e-6
        ]
        assert isinstance(prediction["model_version"], str) and 0 <= prediction["score"] <= 1
        results = prediction["result"]
        assert [r["value"]["choices"] for r in results] == ([ticked] if ticked else [])
        assert all((r["type"], r["from_name"], r["to_name"]) == ("choices", "label", "image") for r in results)
        asked[image] = data["asked"]
    config = ElementTree.fromstring((tmp_path / "queue.xml").read_text())
    assert config.find("Image").attrib == {"name": "image", "value": "$image"}
    choices = config.find("Choices")
    assert (choices.get("name"), choices.get("toName"), choices.get("choice")) == ("label", "image", "multiple")
    assert [c.get("value") for c in choices] == list(dict.fromkeys(queue["class"]))

    # an annotator answers from truth.csv; Label Studio exports the tasks with their annotations; merge them
    truth = pd.read_csv(demo_folder / "truth.csv", dtype={"image": str}).set_index("image")
    for number, task in enumerate(tasks, 1):
        present = [c for c in task["data"]["asked"] if truth.loc[task["data"]["wsml_image"], c] == 1]
        result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": present}}]
        task |= {"id": number, "annotations": [{"id": number, "result": result, "was_cancelled": False}]}
    export = write(tmp_path / "export.json", json.dumps(tasks))
    observed = shutil.copy(demo_folder / "observed.csv", tmp_path / "observed.csv")
    result = invoke("merge", observed, export, "--out", tmp_path / "merged.csv")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("merged 12 answers")
    before, after = read_label_csv(observed), read_label_csv(tmp_path / "merged.csv")
    rows, cols = after.store.rows_and_cols()
    changed = {(after.images[r], after.classes[c]) for r, c in zip(rows, cols, strict=True)} - {
        (before.images[r], before.classes[c]) for r, c in zip(*before.store.rows_and_cols(), strict=True)
    }
    assert changed == {(image, c) for image, classes in asked.items() for c in classes}
    for image, name in changed:
        row, col = after.images.index(image), after.classes.index(name)
        assert after.store.lookup(np.array([row]), np.array([col]))[0] == truth.loc[image, name]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--budget", "0"], "--budget must be at least 1"),
        (["--budget", "5", "--strategy", "loud"], "--strategy 'loud' is not one of"),
        (["--budget", "5", "--per-class-cap", "0"], "--per-class-cap must be at least 1"),
        (["--budget", "5", "--format", "xml"], "--format 'xml' is not one of"),
        (["--budget", "5", "--split", "all"], "--split 'all' is not one of"),
    ],
)
def test_bad_options_are_one_line(trained_run: Path, tmp_path: Path, options: list[str], said: str) -> None:
    assert said in error_of("suggest", trained_run, "--out", tmp_path / "q.csv", *options)
    assert not (tmp_path / "q.csv").exists()
