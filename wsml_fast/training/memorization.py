"""`--track-memorization`: the losses of a fixed sample of unobserved training entries, iteration by iteration.

Large Loss Matters' key figure: under assume-negative training the loss of a false negative (an unobserved
true positive, labelled 0) first rises, then falls to zero as the network memorizes the wrong label, while
a true negative's loss falls from the start. This callback records both kinds and draws that figure.
"""

from __future__ import annotations

import io

import numpy as np
import torch

from wsml_fast.core.distributed import bare
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.learning.contract import CheckpointedState, WsmlCallback
from wsml_fast.schemes.losses import negative_term
from wsml_fast.training.runfolder import MEMORIZATION_CSV, MEMORIZATION_PNG, RunFolder, csv_text


def sample_entries(
    train_labels: LabelStore, truth: LabelStore, per_kind: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image rows, classes, is false negative) of up to `per_kind` unobserved false and true negatives.

    False negatives are drawn from the truth's positives that are unobserved; true negatives by drawing cells
    at random and keeping the unobserved negatives (a list of all of them would be images x classes).
    """
    rng = np.random.default_rng(seed)
    rows, cols = truth.entries(1)
    unseen = train_labels.lookup(rows, cols) == -1
    chosen = rng.permutation(int(unseen.sum()))[:per_kind]
    false_negatives = rows[unseen][chosen], cols[unseen][chosen]
    cells = rng.integers(0, truth.n_rows * truth.n_classes, size=100 * per_kind)
    cells = cells[np.sort(np.unique(cells, return_index=True)[1])]  # each cell once, in drawing order
    r, c = np.divmod(cells, truth.n_classes)
    negative = (truth.lookup(r, c) == 0) & (train_labels.lookup(r, c) == -1)
    true_negatives = r[negative][:per_kind], c[negative][:per_kind]
    kinds = np.concatenate([np.ones(len(chosen), bool), np.zeros(len(true_negatives[0]), bool)])
    return (
        np.concatenate([false_negatives[0], true_negatives[0]]),
        np.concatenate([false_negatives[1], true_negatives[1]]),
        kinds,
    )


class MemorizationCallback(WsmlCallback, CheckpointedState):
    """Every `every` training iterations, score the sampled images in eval mode and record the AN loss of each
    sampled entry (target 0); write `memorization.csv` and `memorization.png` at the end of each fit."""

    order = 66

    def __init__(
        self, rows: np.ndarray, classes: np.ndarray, false_negative: np.ndarray, every: int, run_folder: RunFolder
    ) -> None:
        self.rows, self.every, self.run_folder = rows, max(1, every), run_folder
        self.classes = torch.as_tensor(classes)
        self.false_negative = np.asarray(false_negative, dtype=bool)
        self.iteration, self.records = 0, []

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "records": [(i, torch.from_numpy(v)) for i, v in self.records]}

    def load_state_dict(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.records = [(i, values.numpy()) for i, values in state["records"]]

    def before_fit(self) -> None:
        """The sampled images as the stage in progress sees them (images, or the frozen body's features)."""
        self.inputs = torch.stack([self.stage.truth_view[i][0] for i in self.rows])

    def after_batch(self) -> None:
        if not self.learn.training:
            return
        if self.iteration % self.every == 0:
            model, device = bare(self.learn.model), self.device
            model.eval()
            with torch.no_grad():
                logits = model(self.inputs.to(device)).float()
            model.train()
            entry = torch.arange(len(self.classes), device=device)
            losses = negative_term(logits[entry, self.classes.to(device)])
            self.records.append((self.iteration, losses.cpu().numpy()))
        self.iteration += 1

    def after_fit(self) -> None:
        if not self.records:
            return
        self._write_csv()
        self._plot()

    def _write_csv(self) -> None:
        rows = [
            {
                "iteration": iteration,
                "entry": entry,
                "kind": "false_negative" if fn else "true_negative",
                "loss": f"{loss:.5f}",
            }
            for iteration, losses in self.records
            for entry, (loss, fn) in enumerate(zip(losses, self.false_negative, strict=True))
        ]
        self.run_folder.write_text(MEMORIZATION_CSV, csv_text(rows))

    def _plot(self) -> None:
        from matplotlib.figure import Figure  # a figure of its own: no pyplot, so no process-wide backend to set

        iterations = np.array([i for i, _ in self.records])
        losses = np.stack([values for _, values in self.records])
        figure = Figure(figsize=(7, 4))
        axis = figure.subplots()
        for fn, color, name in ((True, "tab:red", "false negatives"), (False, "tab:blue", "true negatives")):
            kind = losses[:, self.false_negative == fn]
            if kind.size:
                axis.plot(iterations, kind, color=color, alpha=0.15, linewidth=0.8)
                axis.plot(
                    iterations, kind.mean(1), color=color, linewidth=2.5, label=f"{name} (mean of {kind.shape[1]})"
                )
        axis.set_xlabel("training iteration")
        axis.set_ylabel("loss against the assumed-negative label")
        axis.set_title("Memorization of unobserved labels")
        axis.legend()
        figure.tight_layout()
        image = io.BytesIO()
        figure.savefig(image, format="png", dpi=120)
        self.run_folder.write_bytes(MEMORIZATION_PNG, image.getvalue())
