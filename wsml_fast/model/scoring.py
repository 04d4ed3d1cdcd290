"""Precision, the evaluation batch size, and batched scoring shared by training's test pass, `eval` and `predict`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch

from wsml_fast.model.metrics import APAccumulator

AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def evaluation_bs(bs: int) -> int:
    """The batch size of scoring passes (valid and test splits, training scores, features) for a run training at
    `bs`: twice as large, since they keep no gradients."""
    return bs * 2


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[precision])


@torch.inference_mode()
def scored_batches(
    model: torch.nn.Module, loader, precision: str, device: torch.device
) -> Iterator[tuple[torch.Tensor, list]]:
    """Per batch of `loader`: the sigmoid scores (B, C, fp32, on `device`) and the batch's other items (labels
    and index, or index alone), so that no caller needs every score at once."""
    model.eval()
    for inputs, *rest in loader:
        with autocast(precision, device):
            logits = model(inputs.to(device, non_blocking=True))
        yield torch.sigmoid(logits.float()), rest


def predict_scores(model: torch.nn.Module, loader, precision: str, device: torch.device) -> np.ndarray:
    """Sigmoid scores (N, C) for every item of `loader` (images, or features for a bare head), in dataset order:
    for schemes that need every training score at once; scoring a split streams instead (`score_split`)."""
    scores, order = [], []
    for batch_scores, rest in scored_batches(model, loader, precision, device):
        scores.append(batch_scores.cpu())
        order.append(rest[-1].cpu())
    result = np.zeros((len(loader.dataset), scores[0].shape[1]), dtype=np.float32)
    result[torch.cat(order).numpy()] = torch.cat(scores).numpy()
    return result


def score_split(
    model: torch.nn.Module,
    dataset,
    precision: str,
    device: torch.device,
    bs: int,
    workers: int,
    targets: Callable[[torch.Tensor], torch.Tensor] | None = None,
    top_k: int = 0,
) -> APAccumulator:
    """The labelled entries of `model`'s scores on a dataset of (input, index) items, for mAP (`.result`), and
    thresholds and the F1 family (`.entries()`, with top-k flags when `top_k`): training's test pass and
    recovery diagnostic, threshold fitting, and `wsml eval` all score this one way. Batch by batch, keeping
    only the labelled entries; each batch's labels are made dense on the device from the dataset's store (or by
    `targets`: item indices to dense label rows, -1 unlabelled)."""
    from wsml_fast.data.loaders import make_loader

    loader = make_loader(dataset, bs, False, workers, device)
    targets = targets or dataset.labels.to(device).dense
    accumulator = APAccumulator(top_k)
    for scores, rest in scored_batches(model, loader, precision, device):
        accumulator.add(scores, targets(rest[-1]))
    return accumulator
