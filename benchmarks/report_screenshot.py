"""`python benchmarks/report_screenshot.py [--run RUN_DIR] [--out docs/images/report.png]`: a run's report page
(report.html) rendered by headless Chromium to a PNG: the check that the page looks right in a real browser, and
the picture the README shows.

Without `--run` it first trains a demo run: llcp on the demo dataset, whose truth.csv lets the gallery mark each
label LL-Cp added right or wrong, with `--track-memorization` (tf_efficientnet_lite0 at 64 px, 4 epochs: about a
minute on 2 CPU cores). The browser is Debian's `chromium` package (`apt-get install chromium`), run as
`chromium --headless --screenshot=PNG --window-size=1280,2400 file://.../report.html`.

`--smoke`: test_efficientnet at 32 px on a few dozen demo images for 2 epochs, in a temporary folder, the
screenshot there too; where no Chromium is found (CI has none) the page is still written and checked, and one line
says the screenshot was skipped.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args, scratch, tiny_demo

from wsml_fast.training.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TILE_PARTS = (("figure", "tile"), ("li", "right"), ("li", "wrong"))  # counted in the page's text
SECTIONS = ("run", "curves", "classes", "best-worst", "gallery", "memorization")  # of an llcp run, tracked


def train_demo_run(folder: Path, data: Path | None, args: argparse.Namespace) -> Path:
    """A fresh llcp run on `data` (None: the demo dataset), by the `wsml train` command."""
    run = folder / "demo-llcp"
    command = [sys.executable, "-m", "wsml_fast", "train", "--scheme", "llcp", "--track-memorization"]
    command += ["--backbone", args.backbone, "--img-size", str(args.img_size), "--epochs", str(args.epochs)]
    command += (["--data", str(data), "--no-pretrained", "--bs", "16"] if data else []) + ["--out", str(run)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return run


def screenshot(page: Path, out: Path, width: int, height: int) -> bool:
    """Render `page` with headless Chromium into `out`; False when no Chromium is installed."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        return False
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]  # (--no-sandbox: root)
    command += [f"--screenshot={out}", f"--window-size={width},{height}", page.resolve().as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return out.is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a run folder (default: train a demo llcp run)")
    parser.add_argument("--out", type=Path, default=Path("docs/images/report.png"))
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parse_args(parser, backbone=TINY_BACKBONE, img_size=TINY_IMG_SIZE, epochs=2, out=None)

    with scratch("wsml-report-") as folder:
        run = args.run or train_demo_run(folder, tiny_demo(folder) if args.smoke else None, args)
        started = time.perf_counter()
        page = write_report(run)
        seconds = time.perf_counter() - started
        text = page.read_text()
        sections = re.findall(r'<section id="([\w-]+)"', text)
        tiles, right, wrong = (text.count(f'<{tag} class="{name}">') for tag, name in TILE_PARTS)
        size = page.stat().st_size / 1e6
        print(f"report.html: {size:.2f} MB, written in {seconds:.2f} s; sections: {', '.join(sections)}")
        print(f"gallery: {tiles} images; added labels shown: {right} right, {wrong} wrong")
        if args.run is None and tuple(sections) != SECTIONS:
            sys.exit(f"failed: the demo run's page lacks {sorted(set(SECTIONS) - set(sections))}")
        out = args.out or folder / "report.png"
        shot = folder / "screenshot.png"  # rendered aside, then put in place whole
        if screenshot(page, shot, args.width, args.height):
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(shot, out)
            print(f"screenshot: {out} ({args.width} x {args.height} px, {out.stat().st_size / 1e3:.0f} kB)")
        elif args.smoke:
            print("screenshot skipped: no Chromium found (Debian: apt-get install chromium)")
        else:
            sys.exit("failed: no Chromium found; install it (Debian: apt-get install chromium)")


if __name__ == "__main__":
    main()
