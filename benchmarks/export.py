"""`python benchmarks/export.py [--backbone tf_efficientnet_lite0] [--img-size 224] [--batch 16] [--repeats 10]`:
`wsml export`'s ONNX file against PyTorch eager on the CPU, in one run: the largest absolute difference of their
probabilities on one batch, and images a second of each (median of `--repeats` batches after `--warmup` batches).

The model is the backbone with random weights and a random head (speed and parity do not depend on the values),
except that every batch-norm scale is drawn from 0.5 to 1.5: timm starts the last one of each residual block at 0,
which no trained network keeps, and ONNX's constant folding would drop those blocks' branches (a ResNet-18 file
shrank by a quarter). It is exported by `wsml_fast.inference.export.export_model` into a temporary folder.
PyTorch and onnxruntime get the same number of threads: torch's (OMP_NUM_THREADS, else one a core). `--smoke`:
test_efficientnet at 32 px, 2 repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from smoke import TINY_BACKBONE, TINY_IMG_SIZE, parse_args

from wsml_fast.inference.export import INPUT, OUTPUT, Probabilities, export_model
from wsml_fast.model.modelfile import ModelFile, ModelSpec

IMAGENET = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def median_seconds(run: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--boost-lu", type=float, default=None, help="the BoostLU head with this alpha")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parse_args(parser, backbone=TINY_BACKBONE, img_size=TINY_IMG_SIZE, batch=4, warmup=1, repeats=2)

    torch.manual_seed(0)
    classes = tuple(f"class{i}" for i in range(args.classes))
    spec = ModelSpec(args.backbone, classes, args.img_size, *IMAGENET, args.boost_lu)
    classifier = spec.build()
    for module in classifier.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
    model_file = ModelFile.unfitted(spec, classifier.state_dict(), {})
    threads = torch.get_num_threads()
    batch = torch.randint(0, 256, (args.batch, 3, args.img_size, args.img_size), dtype=torch.uint8)
    with tempfile.TemporaryDirectory(prefix="wsml-export-") as folder:
        path = Path(folder) / "model.onnx"
        export_model(model_file, "onnx", path, print)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    model = Probabilities(model_file.classifier("cpu"))
    pixels = batch.numpy()
    with torch.inference_mode():
        difference = float(np.abs(session.run([OUTPUT], {INPUT: pixels})[0] - model(batch).numpy()).max())
        eager = median_seconds(lambda: model(batch), args.warmup, args.repeats)
    onnx = median_seconds(lambda: session.run([OUTPUT], {INPUT: pixels}), args.warmup, args.repeats)

    each = f"{threads} thread{'s' if threads > 1 else ''} each"
    print(
        f"\n{args.backbone} at {args.img_size} px, {args.classes} classes, {spec.head} head; batch {args.batch}, "
        f"{each}; median of {args.repeats} batches after {args.warmup} warm-up batches\n"
    )
    print("| runtime | images/s | ms a batch |\n| --- | --- | --- |")
    for name, seconds in (("PyTorch eager", eager), ("onnxruntime (CPU)", onnx)):
        print(f"| {name} | {args.batch / seconds:.1f} | {1000 * seconds:.1f} |")
    print(
        f"\nonnxruntime / PyTorch: {eager / onnx:.2f}x; largest absolute difference of the probabilities on the "
        f"batch: {difference:.1e}"
    )


if __name__ == "__main__":
    main()
