"""The report page's HTML: sections in the order a reader asks their questions (what was run, how it trained,
how each class came out, what the scheme changed), every figure inline, and `write_report`."""

from __future__ import annotations

import base64
import math
import time
from html import escape
from pathlib import Path

from wsml_fast.core.errors import WsmlError
from wsml_fast.core.version import WSML_VERSION
from wsml_fast.data.table import PartialLabelTable
from wsml_fast.schemes import FAMILIES, get_scheme, settings_of
from wsml_fast.training.config import TrainConfig
from wsml_fast.training.report.charts import line_chart
from wsml_fast.training.report.classes import ClassRow, best_and_worst, class_rows, table_cut
from wsml_fast.training.report.contents import RunContents, read_run
from wsml_fast.training.report.gallery import Gallery, Tile, build_gallery
from wsml_fast.training.runfolder import MEMORIZATION_PNG, REPORT, THRESHOLDS

LABELS_SHOWN = 4  # added labels listed under a thumbnail (the rest counted)
CURVES = {  # chart title: the metrics.csv columns it draws (those the run has)
    "losses": ("train_loss", "valid_loss"),
    "mAP": ("valid_map", "train_recovery_map"),
    "precision of the added or selected labels": ("ll_fn_precision", "ll_correction_precision", "apl_precision"),
}


def write_report(path: Path, table: PartialLabelTable | None = None) -> Path:
    """Write `report.html` into the run folder at `path` (atomically) and return where; `table`: the run's data,
    when the caller holds it."""
    contents = read_run(Path(path), table)
    try:
        page = render(contents)
    except (KeyError, TypeError, ValueError, UnicodeDecodeError) as exc:  # a run file edited or damaged by hand
        raise WsmlError(
            f"{contents.run.path}: a run file is not as wsml wrote it ({exc.__class__.__name__}: {exc}); put it "
            "back (results.json, thresholds.csv, metrics.csv) or rerun the run"
        ) from None
    contents.run.write_text(REPORT, page)
    return contents.run.file(REPORT)


def render(contents: RunContents) -> str:
    """The whole page."""
    title = f"wsml report: {contents.run.path.name}"
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="summary">{escape(_summary(contents))}</p>',
        _run_section(contents),
        _curves_section(contents),
        *_class_sections(contents),
        _gallery_section(build_gallery(contents.run, contents.table, contents.data_note)),
        _memorization_section(contents),
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(part for part in body if part)
        + f"\n<script>{SORTING}</script>\n</body>\n</html>\n"
    )


def _summary(contents: RunContents) -> str:
    results = contents.results or {}
    parts = [contents.status, f"{len(contents.epochs)} of {contents.config.total_epochs} epochs"]
    if results:
        parts.append(f"best epoch {results['best_epoch']}")
        parts.append(f"valid mAP {_fixed(results.get('valid_map'), 2) or 'n/a'}")
        parts.append(f"test mAP {_fixed(results.get('test_map'), 2) or 'n/a'}")
    parts.append(f"written by wsml {WSML_VERSION} on {time.strftime('%Y-%m-%d %H:%M')}")
    return " | ".join(parts)


# --- what was run ---


def _run_section(contents: RunContents) -> str:
    sources = contents.config.sources
    every = [(name, str(value), sources.get(name)) for name, value in contents.config.values().items()]
    data_note = contents.data_note and (
        f"data not read: {contents.data_note}; the observed counts and the thumbnails are left out"
    )
    return (
        '<section id="run">\n<h2>What was run</h2>\n'
        + _settings_table(_settings(contents), heading=True)
        + _note(data_note)
        + _f1_table((contents.results or {}).get("test_f1"))
        + f"<details><summary>every setting (config.yaml)</summary>{_settings_table(every)}</details>\n</section>"
    )


def _settings(contents: RunContents) -> list[tuple[str, str, str | None]]:
    """(what, value, where the value came from) of the settings a reader asks about first."""
    config, sources, results = contents.config, contents.config.sources, contents.results or {}
    scheme = get_scheme(config.scheme)
    data_key = "dataset" if config.dataset else "data" if config.data else "csv"
    head = "linear" if config.boost_lu is None else f"BoostLU, alpha {config.boost_lu:g}"
    rows = [
        ("run folder", str(contents.run.path), None),
        ("data", _data_text(contents), sources.get(data_key)),
        (
            "backbone",
            f"{config.backbone} ({results.get('weights_origin') or _weights(config)})",
            sources.get("backbone"),
        ),
        ("input size", f"{config.img_size} px", sources.get("img_size")),
        ("head", head, sources.get("boost_lu")),
        ("scheme", f"{scheme.name}: {scheme.description} ({FAMILIES[scheme.family].paper})", sources.get("scheme")),
    ]
    rows += [(f"  {name}", str(value), sources.get(name)) for name, value in settings_of(config).items()]
    rows.append(("mode", config.mode, sources.get("mode")))
    if config.mode == "linear-init":
        rows.append(("  linear epochs", str(config.linear_epochs), sources.get("linear_epochs")))
    rows += [
        ("epochs", f"{len(contents.epochs)} completed of {config.total_epochs}", sources.get("epochs")),
        ("batch size", str(config.bs), sources.get("bs")),
        ("learning rate", f"{config.lr:g} ({config.opt}, {config.schedule})", sources.get("lr")),
        ("thresholds", config.thresholds, sources.get("thresholds")),
        ("seed", str(config.seed), sources.get("seed")),
    ]
    if "device" in results:
        rows.append(("device", f"{results['device']} {results.get('precision', '')}", None))
    if "train_seconds" in results:
        rows.append(("training time", f"{results['train_seconds']} s", None))
    return rows


def _settings_table(rows: list[tuple[str, str, str | None]], heading: bool = False) -> str:
    head = "<thead><tr><th></th><th>value</th><th>from</th></tr></thead>" if heading else ""
    body = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(value)}</td><td>{escape(source or '')}</td></tr>"
        for name, value, source in rows
    )
    return f'<table class="settings">{head}<tbody>{body}</tbody></table>\n'


def _data_text(contents: RunContents) -> str:
    config, table = contents.config, contents.table
    named = config.dataset or config.data or f"{config.csv} (images under {config.images})"
    if table is None:
        return named
    counts = ", ".join(f"{len(table.rows(split)):,} {split}" for split in ("train", "valid", "test"))
    truth = "yes" if table.truth is not None else "no"
    return f"{named}: {len(table.classes):,} classes | {counts} | truth.csv: {truth}"


def _weights(config: TrainConfig) -> str:
    return config.weights or ("pretrained" if config.pretrained else "random initialization")


def _f1_table(f1: dict | None) -> str:
    """The test split's F1 family: at the fitted thresholds, at 0.5 and each image's top 3."""
    if not f1:
        return ""
    keys = ("cp", "cr", "cf1", "op", "or", "of1")
    variants = [(name, values) for name, values in f1.items() if isinstance(values, dict)]
    head = "".join(f"<th>{key.upper()}</th>" for key in keys)
    body = "".join(
        f"<tr><td>{escape(name.replace('_', ' '))}</td>"
        + "".join(f"<td>{_fixed(values.get(key), 2)}</td>" for key in keys)
        + "</tr>"
        for name, values in variants
    )
    return (
        f"<h3>Test F1 family (thresholds: {escape(str(f1.get('threshold_rule')))})</h3>"
        f'<table class="numbers"><thead><tr><th></th>{head}</tr></thead><tbody>{body}</tbody></table>\n'
    )


# --- curves ---


def _curves_section(contents: RunContents) -> str:
    epochs = [row["epoch"] for row in contents.epochs]
    best = (contents.results or {}).get("best_epoch")
    charts = []
    for title, columns in CURVES.items():
        series = {
            column: [row.get(column, math.nan) for row in contents.epochs]
            for column in columns
            if any(math.isfinite(row.get(column, math.nan)) for row in contents.epochs)
        }
        if series:
            charts.append(
                f"<figure><figcaption>{escape(title)}</figcaption>{line_chart(title, epochs, series, best)}</figure>"
            )
    columns = list(contents.epochs[0])
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_general(row[column])}</td>" for column in columns) + "</tr>" for row in contents.epochs
    )
    return (
        '<section id="curves">\n<h2>Epochs</h2>\n'
        + _note(
            "the dashed line marks the best epoch (highest valid mAP), whose weights model.pth holds" if best else None
        )
        + f'<div class="charts">{"".join(charts)}</div>\n'
        f'<details><summary>every value (metrics.csv)</summary><table class="numbers"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></details>\n</section>"
    )


# --- classes ---


def _class_sections(contents: RunContents) -> list[str]:
    """The per-class table and the best and worst classes (once the run finished)."""
    if not contents.results:
        waiting = _note(f"the run is {contents.status}: the per-class figures come when it finishes")
        return [f'<section id="classes">\n<h2>Classes</h2>\n{waiting}</section>']
    table = contents.table
    train_positives = None if table is None else table.observed_of("train").count(1, axis=0)
    rows = class_rows(contents.classes, contents.results, contents.thresholds, train_positives)
    shown = table_cut(rows)
    cut = ""
    if len(shown) < len(rows):
        cut = _note(
            f"showing the {len(shown):,} classes with the most valid positives; {len(rows) - len(shown):,} more are "
            f"left out: all of them are in {THRESHOLDS} (threshold, valid precision, recall, F1, positives) and "
            f"`wsml eval {contents.run.path} --json` (test AP, precision, recall, F1 per class)"
        )
    classes = (
        '<section id="classes">\n<h2>Classes</h2>\n'
        + _note("test AP in %; the threshold and its precision, recall and F1 (%) on valid; click a heading to sort")
        + cut
        + _class_table(shown, "classes-table", sortable=True)
        + "\n</section>"
    )
    best, worst = best_and_worst(rows)
    if not best:
        lists = _note("no test AP per class (no test split, or no test positives)")
    else:
        lists = (
            '<div class="pair">'
            + "".join(
                f"<div><h3>{title} {len(part)} by test AP</h3>{_class_table(part, title.lower(), SHORT_COLUMNS)}</div>"
                for title, part in (("Best", best), ("Worst", worst))
            )
            + "</div>"
        )
    return [classes, f'<section id="best-worst">\n<h2>Best and worst classes</h2>\n{lists}\n</section>']


CLASS_COLUMNS = (  # heading, ClassRow field, decimals (the class's name first)
    ("class", "name", 0),
    ("test AP", "ap", 2),
    ("threshold", "threshold", 3),
    ("precision", "precision", 1),
    ("recall", "recall", 1),
    ("F1", "f1", 1),
    ("valid positives", "valid_positives", 0),
    ("observed train positives", "train_positives", 0),
)

SHORT_COLUMNS = (CLASS_COLUMNS[0], CLASS_COLUMNS[1], *CLASS_COLUMNS[-2:])  # the best and worst lists


def _class_table(rows: list[ClassRow], name: str, columns: tuple = CLASS_COLUMNS, sortable: bool = False) -> str:
    head = "".join(f"<th>{heading}</th>" for heading, _, _ in columns)
    body = []
    for row in rows:
        cells = [f"<td>{escape(row.name)}</td>"]
        for _, field, decimals in columns[1:]:
            value = getattr(row, field)
            cells.append(f'<td data-v="{"" if value is None else value}">{_fixed(value, decimals)}</td>')
        body.append(f'<tr data-class="{escape(row.name)}">{"".join(cells)}</tr>')
    kind = "numbers sortable" if sortable else "numbers"
    return f'<table id="{name}" class="{kind}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# --- what the scheme added ---


def _gallery_section(gallery: Gallery | None) -> str:
    if gallery is None:
        return ""
    kind = gallery.kind
    shown = sum(len(tile.added) for tile in gallery.tiles)
    marks = [label.right for tile in gallery.tiles for label in tile.added if label.right is not None]
    verdict = f"; of these, {sum(marks):,} right and {len(marks) - sum(marks):,} wrong by truth.csv" if marks else ""
    intro = (
        f"{gallery.total:,} {kind.what} labels added in training ({kind.file}); {len(gallery.tiles)} of the images "
        f"they were added to, drawn at random, with their {shown:,} added labels{verdict}"
        if gallery.tiles
        else f"no {kind.what} labels added yet ({kind.file})"
    )
    tiles = "".join(_tile_html(tile, kind.what) for tile in gallery.tiles)
    return (
        '<section id="gallery">\n<h2>Labels the scheme added</h2>\n'
        + _note(intro)
        + _note(gallery.note)
        + f'<div class="gallery">{tiles}</div>\n</section>'
    )


def _tile_html(tile: Tile, what: str) -> str:
    picture = (
        f'<img src="{tile.thumbnail}" alt="{escape(tile.image)}">'
        if tile.thumbnail
        else '<div class="missing">no image</div>'
    )
    items = []
    for label in tile.added[:LABELS_SHOWN]:
        mark = {True: ("right", " &#10003;"), False: ("wrong", " &#10007;"), None: ("unknown", "")}[label.right]
        value = (
            ""
            if label.value is None or (isinstance(label.value, float) and math.isnan(label.value))
            else f" s={label.value:.2f}"
        )
        epoch = f'<span class="epoch">(epoch {label.epoch})</span>'
        items.append(f'<li class="{mark[0]}">{escape(label.name)}{value} {epoch}{mark[1]}</li>')
    more = len(tile.added) - LABELS_SHOWN
    if more > 0:
        items.append(f'<li class="more">+{more:,} more</li>')
    observed = (
        f'<div class="observed">observed: {escape(", ".join(tile.observed) or "-")}</div>' if tile.observed else ""
    )
    return (
        f'<figure class="tile">{picture}<figcaption><div class="image">{escape(tile.image)}</div>{observed}'
        f'<div class="what">added {escape(what)}:</div><ul>{"".join(items)}</ul></figcaption></figure>'
    )


def _memorization_section(contents: RunContents) -> str:
    path = contents.run.file(MEMORIZATION_PNG)
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        '<section id="memorization">\n<h2>Memorization</h2>\n'
        + _note("losses of sampled unobserved entries (--track-memorization): false negatives and true negatives")
        + f'<img class="wide" src="data:image/png;base64,{data}" alt="memorization">\n</section>'
    )


# --- small pieces ---


def _note(text: str | None) -> str:
    return f'<p class="note">{escape(text)}</p>\n' if text else ""


def _fixed(value: float | None, decimals: int) -> str:
    """A number with `decimals` decimals (a count with thousands separators); empty when there is none."""
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:,.0f}" if decimals == 0 else f"{value:.{decimals}f}"


def _general(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6g}"


STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1240px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; border-bottom: 1px solid #ddd; margin-top: 28px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
.summary { color: #444; margin-top: 0; } .note { color: #555; font-size: 13px; margin: 6px 0; }
table { border-collapse: collapse; margin: 6px 0; } td, th { padding: 2px 8px; border-bottom: 1px solid #eee; }
th { text-align: left; background: #f6f6f6; } table.numbers td { text-align: right; }
table.numbers td:first-child { text-align: left; } table.settings td:first-child { white-space: pre; color: #555; }
table.settings td:last-child { color: #777; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[data-sort=up]::after { content: " \\25B2"; }
table.sortable th[data-sort=down]::after { content: " \\25BC"; }
details { margin: 8px 0; } summary { cursor: pointer; color: #335; }
.charts { display: flex; flex-wrap: wrap; gap: 12px; } figure { margin: 0; }
figcaption { font-weight: 600; font-size: 13px; } svg.chart text { font-size: 11px; fill: #333; }
.pair { display: flex; flex-wrap: wrap; gap: 32px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 10px; }
.tile { display: flex; gap: 8px; border: 1px solid #e4e4e4; border-radius: 4px; padding: 6px; }
.tile img, .tile .missing { width: 64px; height: 64px; object-fit: contain; background: #f3f3f3; flex: none; }
.tile .missing { font-size: 11px; color: #999; display: flex; align-items: center; justify-content: center; }
.tile figcaption { font-weight: normal; font-size: 12px; min-width: 0; }
.tile .image { color: #666; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.tile ul { margin: 2px 0 0; padding-left: 16px; } .tile .epoch { color: #888; }
.right { color: #17752d; } .wrong { color: #b3261e; font-weight: 600; } .more { color: #888; list-style: none; }
img.wide { max-width: min(100%, 760px); }
"""

SORTING = """
for (const table of document.querySelectorAll("table.sortable")) {
  table.tHead.addEventListener("click", (event) => {
    const th = event.target.closest("th");
    if (!th) return;
    const column = th.cellIndex, numeric = column > 0;
    const up = th.dataset.sort ? th.dataset.sort === "down" : !numeric;
    for (const other of th.parentNode.cells) delete other.dataset.sort;
    th.dataset.sort = up ? "up" : "down";
    const key = (row) => row.cells[column].dataset.v ?? row.cells[column].textContent;
    const rows = [...table.tBodies[0].rows].sort((a, b) => {
      const x = key(a), y = key(b);
      if (x === "" || y === "") return (x === "") - (y === "");
      const order = numeric ? x - y : x.localeCompare(y);
      return up ? order : -order;
    });
    table.tBodies[0].append(...rows);
  });
}
"""
