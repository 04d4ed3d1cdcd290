"""The documentation: the site builds with `mkdocs build --strict` (a broken link or a page left out of the
navigation fails), and the README stays a short front page whose links into docs/ all lead somewhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[1]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {p.relative_to(site).as_posix() for p in site.rglob("index.html")}
    assert {"index.html", "decisions/index.html", "completing/index.html", "results/index.html"} <= pages
    headings = re.findall(r"^## (.+)$", (REPO / "benchmarks" / "RESULTS.md").read_text(), re.M)
    results = (site / "results" / "index.html").read_text()
    assert headings and all(h.split("`")[0].strip() in results for h in headings)  # RESULTS.md included whole


def test_the_readme_is_a_short_front_page_into_the_docs() -> None:
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 10 and all((REPO / link).is_file() for link in links), links
    commands = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert (
        "pip install -e . && wsml train\n" in commands and "pip install -e '.[dev]' && python -m pytest\n" in commands
    )
