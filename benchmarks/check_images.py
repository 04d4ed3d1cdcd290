"""`python benchmarks/check_images.py [--images 5000] [--threads 1 2 4 8]`: images a second that the check before
training (`wsml_fast.data.table.check_images`: existence and header of every listed image) gets through with 1 and
more threads, on symlinks to small PNGs (what `wsml prepare` makes of a benchmark download). `--smoke`: 60 links.

Warm: the files are in the page cache (a first pass reads them), as on a machine that has just read the data.
Cold (`--cold`): before each pass every file's cached pages are dropped (posix_fadvise DONTNEED, file by file:
nothing else on the machine is touched), so each header is read from the disk, as on a first run over a large
dataset. Figures are the best of `--repeat` passes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from smoke import parse_args

from wsml_fast.data.table import check_images


def make_links(folder: Path, n_images: int, n_distinct: int) -> list[str]:
    """`n_distinct` small PNGs and `n_images` symlinks to them; returns the links' names."""
    rng = np.random.default_rng(0)
    (folder / "files").mkdir()
    for i in range(n_distinct):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "files" / f"{i}.png")
    names = [f"{i:07d}.png" for i in range(n_images)]
    for i, name in enumerate(names):
        os.symlink(folder / "files" / f"{i % n_distinct}.png", folder / name)
    return names


def drop_cached(folder: Path) -> None:
    """Drop the page-cache pages of every file under `folder/files` (written back first)."""
    os.sync()
    for path in (folder / "files").iterdir():
        descriptor = os.open(path, os.O_RDONLY)
        os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(descriptor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--distinct", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="drop the files from the page cache before each pass")
    args = parse_args(parser, images=60, distinct=5, threads=[1, 2], repeat=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = make_links(folder, args.images, args.distinct)
        check_images(folder, names, folder / "observed.csv", threads=1)  # warms the cache
        cache = "cold" if args.cold else "warm"
        print(f"{args.images} symlinks to {args.distinct} 48x64 PNGs, {os.cpu_count()} CPUs, {cache} cache")
        print("threads  seconds  images/s")
        for threads in args.threads:
            best = float("inf")
            for _ in range(args.repeat):
                if args.cold:
                    drop_cached(folder)
                start = time.perf_counter()
                check_images(folder, names, folder / "observed.csv", threads=threads)
                best = min(best, time.perf_counter() - start)
            print(f"{threads:7d}  {best:7.2f}  {args.images / best:8,.0f}")


if __name__ == "__main__":
    main()
