"""The report page: written at the end of training and by `wsml report`, self-contained (no URL leaves the file),
every section present, the class table equal to the run's files, the gallery's marks equal to the truth, and
small and quick at 9,600 classes (a synthetic run folder, no training)."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import error_of, invoke
from PIL import Image

import wsml_fast.training.report.gallery as gallery_module
import wsml_fast.training.run
from wsml_fast.data.labels import write_label_csv
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.training.config import TrainConfig
from wsml_fast.training.report import write_report
from wsml_fast.training.report.gallery import sample_rows
from wsml_fast.training.runfolder import RunFolder


class Page(HTMLParser):
    """What a test reads from a report: sections, every URL-bearing attribute, scripts, tables (rows of cell
    text and data-v), the gallery's tiles (their image and the class of each listed label) and the notes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections, self.urls, self.scripts, self.links = [], [], [], []
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.tiles: list[dict] = []
        self.notes: list[str] = []
        self._table = self._cell = self._note = self._item = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        self.urls += [value for name, value in attrs.items() if name in ("src", "href", "action") and value]
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "script":
            self.scripts.append(attrs)
        elif tag == "link":
            self.links.append(attrs)
        elif tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag == "td" and self._table is not None:
            self._cell = [attrs.get("data-v"), ""]
        elif tag == "figure" and attrs.get("class") == "tile":
            self.tiles.append({"image": None, "labels": []})
        elif tag == "img" and self.tiles and self.tiles[-1]["image"] is None:
            self.tiles[-1]["image"] = attrs.get("alt")
        elif tag == "li" and self.tiles:
            self._item = [attrs.get("class"), ""]
        elif tag == "p" and attrs.get("class") == "note":
            self._note = ""

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1] += data
        if self._note is not None:
            self._note += data
        if self._item is not None:
            self._item[1] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self._table[-1].append((self._cell[1], self._cell[0]))
            self._cell = None
        elif tag == "tr" and self._table is not None and not self._table[-1]:
            self._table.pop()  # the heading row
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._note is not None:
            self.notes.append(self._note)
            self._note = None
        elif tag == "li" and self._item is not None:
            self.tiles[-1]["labels"].append(tuple(self._item))
            self._item = None


def read_page(run: Path) -> Page:
    page = Page((run / "report.html").read_text())
    assert not [url for url in page.urls if not url.startswith("data:")]  # only inline data, no http(s) or file
    assert not [s for s in page.scripts if "src" in s] and not page.links
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg\")", (run / "report.html").read_text())
    return page


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def test_training_writes_the_report_at_its_end(trained_run: Path) -> None:
    page = read_page(trained_run)
    assert page.sections == ["run", "curves", "classes", "best-worst"]  # an: no labels added, no memorization
    results = json.loads((trained_run / "results.json").read_text())
    with (trained_run / "thresholds.csv").open() as handle:
        fitted = list(csv.DictReader(handle))
    rows = page.tables["classes-table"]
    assert [row[0][0] for row in rows] == results["classes"] == [row["class"] for row in fitted]
    observed = pd.read_csv(
        Path(yaml.safe_load((trained_run / "config.yaml").read_text())["config"]["data"]) / "observed.csv"
    )
    train_positives = (observed[observed["split"] == "train"].iloc[:, 2:] == 1).sum()
    for row, threshold in zip(rows, fitted, strict=True):
        ap = results["test_per_class"].get(threshold["class"])
        assert row[1][1] == ("" if ap is None else str(ap))
        assert float(row[2][0]) == pytest.approx(float(threshold["threshold"]), abs=5e-4)
        assert float(row[5][0]) == pytest.approx(100 * float(threshold["f1"]), abs=0.05)
        assert row[6][0] == threshold["positives"] and int(row[7][0]) == train_positives[threshold["class"]]
    best, worst = page.tables["best"], page.tables["worst"]
    aps = sorted((ap for ap in results["test_per_class"].values() if ap is not None), reverse=True)
    assert [float(row[1][1]) for row in best] == aps[: len(best)] and float(worst[0][1][1]) == aps[-1]


def test_wsml_report_rewrites_it_in_one_line_and_says_the_size(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path)
    (run / "report.html").unlink()
    result = invoke("report", run)
    assert result.exit_code == 0, result.output
    size = (run / "report.html").stat().st_size
    assert result.output.strip().splitlines()[-1] == f"wrote {run / 'report.html'} ({size / 1e6:.2f} MB)"
    assert read_page(run).sections == ["run", "curves", "classes", "best-worst"]


def test_a_run_without_its_data_still_gets_a_page_that_says_so(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(re.sub(r"(\n  data: ).*", r"\1/nowhere/data", config))
    write_report(run)
    page = read_page(run)
    assert any(note.startswith("data not read: --data /nowhere/data: folder not found") for note in page.notes)
    assert {row[7][0] for row in page.tables["classes-table"]} == {""}  # no observed counts without the data


def test_an_unfinished_run_gets_its_epochs_and_a_note_for_the_rest(trained_run: Path, tmp_path: Path) -> None:
    run = copy_run(trained_run, tmp_path)
    for name in ("results.json", "thresholds.csv", "report.html"):
        (run / name).unlink()
    RunFolder(run).write_status("interrupted", reason="SIGTERM", epoch=2)
    write_report(run)
    page = read_page(run)
    assert page.sections == ["run", "curves", "classes"]
    assert "the run is interrupted: the per-class figures come when it finishes" in page.notes


def test_not_a_run_or_no_completed_epoch_is_one_line(tmp_path: Path) -> None:
    assert "not a wsml run folder" in error_of("report", tmp_path)
    RunFolder(tmp_path).write_config(TrainConfig())
    assert "no trained weights yet" in error_of("report", tmp_path)


def test_a_run_file_edited_by_hand_is_one_line(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "report.html").unlink()
    thresholds = (run / "thresholds.csv").read_text().splitlines()
    (run / "thresholds.csv").write_text("\n".join([thresholds[0], "zero,high,x,y,z,many", *thresholds[2:]]) + "\n")
    line = error_of("report", run)
    assert "a run file is not as wsml wrote it (ValueError" in line and not (run / "report.html").exists()


def test_a_failing_page_leaves_the_finished_run_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(path, table):
        raise OSError("disk full")

    said = []
    monkeypatch.setattr(wsml_fast.training.run, "write_report", broken)
    setup = SimpleNamespace(process=SimpleNamespace(writes=True), run=RunFolder(Path("runs/x")), table=None)
    wsml_fast.training.run._write_report(SimpleNamespace(**vars(setup), say=said.append))
    assert said == ["warning: report.html not written (disk full); `wsml report runs/x` tries again"]


def added_labels(run: Path, demo: Path, kind: str) -> dict[str, dict[str, bool]]:
    """Write an llcp (positives) or em-apl (soft negatives) file of added labels into `run`: for each of 12
    train images a class whose truth makes the label right and one that makes it wrong; returns image ->
    class -> right, from truth.csv."""
    truth = pd.read_csv(demo / "truth.csv")
    train = truth[truth["split"] == "train"].head(12)
    rows, expected = [], {}
    for i, (_, row) in enumerate(train.iterrows()):
        labels = row.iloc[2:]
        right = labels.index[labels == (1 if kind == "positive" else 0)][0]
        wrong = labels.index[labels == (0 if kind == "positive" else 1)][0]
        expected[row["image"]] = {right: True, wrong: False}
        rows += [[row["image"], right, 1 + i % 2], [row["image"], wrong, 2]]
    frame = pd.DataFrame(rows, columns=["image", "class", "epoch"])
    if kind == "positive":
        frame.to_csv(run / "corrected_labels.csv", index=False)
    else:
        frame.insert(2, "value", 0.125)
        frame.to_csv(run / "pseudo_labels.csv", index=False)
    return expected


@pytest.mark.parametrize("kind", ["positive", "soft negative"])
def test_the_gallery_marks_each_added_label_by_the_truth(
    kind: str, trained_run: Path, demo_folder: Path, tmp_path: Path
) -> None:
    run = copy_run(trained_run, tmp_path)
    expected = added_labels(run, demo_folder, kind)
    Image.new("RGB", (40, 30), "white").save(run / "memorization.png")  # as --track-memorization leaves it
    write_report(run)
    page = read_page(run)
    assert page.sections == ["run", "curves", "classes", "best-worst", "gallery", "memorization"]
    assert {tile["image"] for tile in page.tiles} == set(expected)
    for tile in page.tiles:
        marks = {re.match(r"\S+", text).group(): css for css, text in tile["labels"]}
        assert marks == {name: "right" if right else "wrong" for name, right in expected[tile["image"]].items()}
        if kind == "soft negative":
            assert all("s=0.12" in text for _, text in tile["labels"])
    assert any(
        "with their 24 added labels; of these, 12 right and 12 wrong by truth.csv" in note for note in page.notes
    )
    assert sum(url.startswith("data:image/jpeg;base64,") for url in page.urls) == 12
    assert sum(url.startswith("data:image/png;base64,") for url in page.urls) == 1  # the memorization figure


def test_the_sample_read_in_chunks_is_the_sample_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "corrected_labels.csv"
    images = rng.integers(0, 500, 3000)
    pd.DataFrame(
        {"image": [f"i{i}.png" for i in images], "class": "c", "epoch": np.sort(rng.integers(1, 5, 3000))}
    ).to_csv(path, index=False)
    whole, total = sample_rows(path, images=20)
    monkeypatch.setattr(gallery_module, "CHUNK_ROWS", 401)
    chunked, chunked_total = sample_rows(path, images=20)
    assert total == chunked_total == 3000 and whole["image"].nunique() == 20
    pd.testing.assert_frame_equal(whole.reset_index(drop=True), chunked.reset_index(drop=True))
    path.write_text("image,class,epoch\n")  # no label added yet
    assert sample_rows(path)[0].empty and sample_rows(path)[1] == 0


def synthetic_run(folder: Path, classes: int = 9600, rows: int = 2000, corrections: int = 200_000) -> Path:
    """A finished llcp run folder of `classes` classes over a dataset of `rows` images (one PNG linked under
    every name; no truth.csv: at this width only the wide form, 19 million cells, would do), made from files
    alone: metrics, results, thresholds, corrections and a placeholder model file."""
    rng = np.random.default_rng(0)
    names = [f"class {c:04d}" for c in range(classes)]
    images = [f"{i:05d}.png" for i in range(rows)]
    splits = rng.choice(["train", "valid", "test"], rows, p=[0.8, 0.1, 0.1])
    keys = np.unique(np.arange(rows) * classes + rng.zipf(1.5, rows) % classes)
    data = folder / "data"
    observed = LabelStore(rows, classes, keys, np.ones(len(keys), np.int8))
    write_label_csv(data / "observed.csv", images, splits, names, observed, compact=True)
    (data / "images").mkdir()
    Image.new("RGB", (28, 28), "gray").save(data / "digit.png")
    for image in images:
        os.symlink(data / "digit.png", data / "images" / image)
    run = RunFolder(folder / "run")
    run.path.mkdir()
    run.write_config(TrainConfig(data=str(data), scheme="llcp", delta_rel=0.2, img_size=64, epochs=8))
    run.write_metrics(
        [{"epoch": e, "train_loss": 1 / e, "valid_map": 30 + e, "ll_fn_precision": 0.5} for e in range(1, 9)]
    )
    aps = rng.uniform(0, 100, classes)
    results = {"best_epoch": 8, "valid_map": 38.0, "test_map": 40.0, "classes": names, "status": "finished"}
    results["test_per_class"] = {name: (None if c % 7 == 0 else float(aps[c])) for c, name in enumerate(names)}
    run.write_results(results)
    run.write_text(
        "thresholds.csv",
        "class,threshold,precision,recall,f1,positives\n"
        + "".join(f"{n},0.5,0.5,0.5,0.5,{rng.integers(0, 30)}\n" for n in names),
    )
    train = np.flatnonzero(splits == "train")
    pd.DataFrame(
        {
            "image": np.asarray(images)[rng.choice(train, corrections)],
            "class": np.asarray(names)[rng.integers(0, classes, corrections)],
            "epoch": np.sort(rng.integers(2, 9, corrections)),
        }
    ).to_csv(run.file("corrected_labels.csv"), index=False)
    run.write_bytes("model.pth", b"(not read by the report)")
    return run.path


def test_at_9600_classes_the_page_is_cut_small_and_quick(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path)
    started = time.perf_counter()
    path = write_report(run)
    seconds = time.perf_counter() - started
    size = path.stat().st_size
    assert seconds < 5 and size < 1_000_000, (seconds, size)
    page = read_page(run)
    assert page.sections == ["run", "curves", "classes", "best-worst", "gallery"]
    assert len(page.tables["classes-table"]) == 500 and len(page.tiles) == 48
    assert sum(url.startswith("data:image/jpeg;base64,") for url in page.urls) == 48  # the data was read
    assert all(row[7][0] for row in page.tables["classes-table"]) and not any("not read" in n for n in page.notes)
    assert any(
        note.startswith("showing the 500 classes with the most valid positives; 9,100 more")
        and "thresholds.csv" in note
        and "--json" in note
        for note in page.notes
    )
    fitted = pd.read_csv(run / "thresholds.csv")
    shown = [row[0][0] for row in page.tables["classes-table"]]
    assert fitted.set_index("class").loc[shown, "positives"].min() >= fitted["positives"].nlargest(500).min()
    assert len(page.tables["best"]) == len(page.tables["worst"]) == 10
