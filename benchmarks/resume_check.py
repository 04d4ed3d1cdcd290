"""The resume check: a run SIGKILLed from outside during epoch 3 of 4, then `wsml train --resume`d, against the
same run uninterrupted (run meanwhile, in a process of its own). Prints, column by column, whether metrics.csv
agrees, and the model.pth digests.

    python benchmarks/resume_check.py [--scheme llcp] [--workers 0] [-- extra wsml train options]

`--smoke`: a tiny model on a demo dataset of a few dozen images, 8 epochs, killed as soon as epoch 2 is in.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args, tiny_demo

from wsml_fast.training.runfolder import CORRECTIONS, METRICS, SCHEME_STATE, WEIGHTS, RunFolder


def wsml(*args: str) -> list[str]:
    return [sys.executable, "-m", "wsml_fast", *args]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def kill_in_epoch(command: list[str], metrics: Path, epoch: int, delay: float) -> float:
    """Start `command`, SIGKILL it `delay` seconds after `epoch - 1` epochs are in metrics.csv (so during `epoch`)."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while process.poll() is None:
        if metrics.exists() and len(pd.read_csv(metrics)) >= epoch - 1:
            time.sleep(delay)  # into the epoch
            process.send_signal(signal.SIGKILL)
            process.wait()
            return time.time()
        time.sleep(0.2)
    raise SystemExit(f"the run ended (exit {process.returncode}) before epoch {epoch}")


def tiny_training(folder: Path) -> list[str]:
    """`wsml train` options of the smoke: a tiny model on a tiny demo dataset made in `folder`."""
    data = tiny_demo(folder)
    return ["--data", str(data), "--backbone", TINY_BACKBONE, "--no-pretrained", "--img-size", str(TINY_IMG_SIZE)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", default="llcp")
    parser.add_argument("--workers", default="0")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--kill-delay", type=float, default=1.0, help="seconds into epoch 3 before the kill")
    parser.add_argument("extra", nargs="*", help="more `wsml train` options (after --)")
    options = parse_args(parser, epochs=8, kill_delay=0.0)
    folder = Path(tempfile.mkdtemp(prefix="wsml-resume-check-"))
    train = ["train", "--scheme", options.scheme, "--workers", options.workers, "--epochs", str(options.epochs)]
    train += options.extra + (tiny_training(folder) if options.smoke else [])
    whole, killed = folder / "uninterrupted", folder / "killed"
    print("command:", " ".join(["wsml", *train]), flush=True)
    uninterrupted = subprocess.Popen(wsml(*train, "--out", str(whole)), stdout=subprocess.DEVNULL)
    try:
        kill_in_epoch(wsml(*train, "--out", str(killed)), killed / METRICS, 3, options.kill_delay)
    except BaseException:
        uninterrupted.kill()
        raise
    if uninterrupted.wait():
        raise SystemExit(f"the uninterrupted run failed (exit {uninterrupted.returncode})")
    status = RunFolder(killed).status()
    completed = len(pd.read_csv(killed / METRICS))
    print(
        f"killed with SIGKILL during epoch 3 ({completed} epochs in metrics.csv; status: {status['state']}, "
        f"{status['reason']})"
    )
    subprocess.run(wsml("train", "--resume", str(killed)), check=True, stdout=subprocess.DEVNULL)
    a, b = pd.read_csv(whole / METRICS), pd.read_csv(killed / METRICS)
    print(f"\n{'column':<26} {'equal':>6}")
    for column in a.columns:
        same = a[column].equals(b[column]) if column in b else False
        print(f"{column:<26} {'yes' if same else 'no':>6}")
    print(f"\n{WEIGHTS}  uninterrupted {digest(whole / WEIGHTS)}  resumed {digest(killed / WEIGHTS)}")
    for name in (CORRECTIONS, SCHEME_STATE):
        if (whole / name).exists():
            print(f"{name:<10} equal: {(whole / name).read_bytes() == (killed / name).read_bytes()}")
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
