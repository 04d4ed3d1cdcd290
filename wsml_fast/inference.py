"""Device and precision choices, and batched scoring shared by training's test pass, `eval` and `predict`."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from wsml_fast.errors import WsmlError

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`auto` means fp16 mixed precision on CUDA and fp32 elsewhere; fp16 on a CPU is refused."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise WsmlError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    return precision


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


@torch.inference_mode()
def predict_scores(model: torch.nn.Module, loader, precision: str, device: torch.device) -> np.ndarray:
    """Sigmoid scores (N, C) for every item of `loader` (images, or features for a bare head), in dataset order."""
    model.eval()
    scores, order = [], []
    for inputs, _, index in loader:
        with autocast(precision, device):
            logits = model(inputs.to(device, non_blocking=True))
        scores.append(torch.sigmoid(logits.float()).cpu())
        order.append(index.cpu())
    result = np.zeros((len(loader.dataset), scores[0].shape[1]), dtype=np.float32)
    result[torch.cat(order).numpy()] = torch.cat(scores).numpy()
    return result


def score_split(
    model: torch.nn.Module,
    dataset,
    classes: list[str],
    convention: str,
    precision: str,
    device: torch.device,
    bs: int,
    workers: int,
):
    """mAP and per-class AP of `model` on a dataset of (input, labels, index) items: training's test pass and
    recovery diagnostic, and `wsml eval`, all score this one way."""
    from wsml_fast.data import make_loader
    from wsml_fast.metrics import mean_average_precision

    loader = make_loader(dataset, bs, False, workers, device)
    scores = predict_scores(model, loader, precision, device)
    return mean_average_precision(scores, dataset.labels.to_dense(), classes, convention)
