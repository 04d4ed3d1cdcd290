"""The report page: a run folder on one self-contained HTML page (`report.html`), written at the end of training
and by `wsml report RUN_DIR`.

The page reads the run folder's files and the run's data (for the observed counts, the thumbnails and the
truth); it inlines everything (SVG charts, base64 thumbnails, the memorization PNG, a few lines of JavaScript to
sort the class table), so that it opens from a file:// URL, from a mail or an artifact store, with no network.
It stays small and quick at any number of classes: the class table and the gallery are capped, and the page says
where the full figures are.

contents.py   what the page shows, read from the run folder and its data
charts.py     per-epoch curves as inline SVG (no plotting library: a report at the end of every run costs ms)
classes.py    the per-class rows, the table's cut and the best and worst classes
gallery.py    training images with the labels a scheme added, and whether each was right
page.py       the HTML itself, and `write_report`
"""

from __future__ import annotations

from wsml_fast.training.report.page import write_report

__all__ = ["write_report"]
