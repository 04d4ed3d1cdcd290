"""Large-loss schemes: the reference's worked example, the k table, selection, and the callback in a real Learner."""

from __future__ import annotations

import csv
import math
from functools import partial
from pathlib import Path

import fastai.callback.schedule  # noqa: F401 - adds Learner.lr_find
import pytest
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.training import GradientAccumulation
from helpers import BS, C, N, callback_of, observed_labels, tiny_learner, truth_labels

from wsml_fast.core.atomic import write_text
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.learning.contract import WsmlCallback
from wsml_fast.schemes.large_loss.training import (
    LargeLoss,
    LargeLossCallback,
    LargeLossRecordCallback,
    apply_large_loss,
    large_loss_k,
    large_loss_losses,
    large_loss_parts,
    select_large_losses,
)

# Kim et al.'s example: AN losses of five entries; the 1.8 and 1.5 are unobserved and the largest.
AN_LOSSES = [0.1, 1.8, 1.5, 0.1, 0.2]
TARGETS = torch.tensor([[1.0, -1.0, -1.0, 0.0, -1.0]])


def test_reference_example_on_losses():
    an = torch.tensor([AN_LOSSES])
    flipped = torch.tensor([[9.0, 0.2, 0.3, 9.0, 9.0]])  # loss against target 1 (only the selected matter)
    selected = select_large_losses(an, TARGETS == -1, 2)
    assert selected.tolist() == [[False, True, True, False, False]]
    assert an.mean().item() == pytest.approx(0.74)
    assert apply_large_loss(an, flipped, selected, LargeLoss.REJECTION).mean().item() == pytest.approx(0.08)
    assert apply_large_loss(an, flipped, selected, LargeLoss.TEMPORARY_CORRECTION).mean().item() == pytest.approx(0.18)


def test_reference_example_on_logits():
    """Logits by inverse softplus give those AN losses; their loss against target 1 is then -log(1 - e^-L)."""
    inverse_softplus = [math.log(math.expm1(v)) for v in AN_LOSSES]
    logits = torch.tensor([inverse_softplus], dtype=torch.float64)
    logits[0, 0] = -logits[0, 0]  # the observed positive's loss is softplus(-x)
    an, _ = large_loss_losses(logits, TARGETS, 0, LargeLoss.REJECTION)
    assert an[0].tolist() == pytest.approx(AN_LOSSES)
    llr, selected = large_loss_losses(logits, TARGETS, 2, LargeLoss.REJECTION)
    assert selected[0].tolist() == [False, True, True, False, False]
    assert llr.mean().item() == pytest.approx(0.08)
    llct, _ = large_loss_losses(logits, TARGETS, 2, LargeLoss.TEMPORARY_CORRECTION)
    flipped = -math.log(1 - math.exp(-1.8)) - math.log(1 - math.exp(-1.5))
    assert llct.mean().item() == pytest.approx((0.1 + 0.1 + 0.2 + flipped) / 5)


@pytest.mark.parametrize(
    ("num_classes", "delta", "table"),
    [
        (20, 0.2, [0, 1, 2, 2, 3, 4, 4, 5, 6, 6]),
        (80, 0.4, [0, 6, 11, 16, 21, 26, 31, 36, 41, 47]),
        (312, 0.4, [0, 20, 40, 60, 80, 100, 120, 140, 160, 180]),
    ],
)
def test_k_table(num_classes: int, delta: float, table: list[int]):
    for kind in (LargeLoss.REJECTION, LargeLoss.TEMPORARY_CORRECTION):
        assert [large_loss_k(16, num_classes, t, delta, kind) for t in range(1, 11)] == table


def test_k_of_llcp_is_constant_and_exact():
    assert [large_loss_k(16, 20, t, 0.2, LargeLoss.PERMANENT_CORRECTION) for t in range(1, 5)] == [0, 1, 1, 1]
    assert large_loss_k(16, 20, 6, 0.5, LargeLoss.REJECTION) == 8  # 320 * 5 * 0.5 / 100 exactly, not 8.000000000000007


def test_selection_picks_exactly_k_unobserved_entries():
    losses = torch.tensor([[5.0, 4.0, 3.0], [2.0, 2.0, 2.0]])
    unobserved = torch.tensor([[False, True, True], [True, True, True]])
    one = select_large_losses(losses, unobserved, 1)  # the reference's strict `>` selected nothing for k = 1
    assert one.tolist() == [[False, True, False], [False, False, False]]
    assert select_large_losses(losses, unobserved, 3).sum().item() == 3  # ties at 2.0: exactly one of them
    assert select_large_losses(losses, unobserved, 4).sum().item() == 4
    everything = select_large_losses(losses, unobserved, 100)
    assert everything.equal(unobserved)  # never an observed entry, even when k exceeds the unobserved count


def test_selection_never_picks_observed_entries():
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        losses = torch.rand(8, 6, generator=generator) * 5
        unobserved = torch.rand(8, 6, generator=generator) < 0.7
        k = int(torch.randint(0, 60, (), generator=generator))
        selected = select_large_losses(losses, unobserved, k)
        assert not (selected & ~unobserved).any()
        assert selected.sum().item() == min(k, unobserved.sum().item())
        if selected.any() and (unobserved & ~selected).any():
            assert losses[selected].min() >= losses[unobserved & ~selected].max()


class EpochLog(WsmlCallback):
    """Keeps the values each epoch recorded in the run state, and the positive targets training batches carried."""

    order = LargeLossRecordCallback.order + 1

    def __init__(self) -> None:
        self.extras: list[dict] = []
        self.positives_seen: list[int] = []

    def before_epoch(self) -> None:
        self.positives_seen.append(0)

    def before_batch(self) -> None:
        if self.learn.training:
            self.positives_seen[-1] += int((self.learn.yb[0] == 1).sum())

    def after_epoch(self) -> None:
        self.extras.append(dict(self.run_state.values))


def large_loss_run(scheme: LargeLoss, tmp_path: Path, epochs: int = 3, workers: int = 0, delta: float = 5.0):
    labels, log = observed_labels(), EpochLog()
    tmp_path.mkdir(exist_ok=True)
    write = partial(write_text, tmp_path / "corrections.csv") if scheme.stores else None
    names = [f"img{i}.jpg" for i in range(N)]
    truth = LabelStore.from_dense(truth_labels(), fill=0)
    parts = large_loss_parts(scheme, delta, truth, (names, list("abcde")), write)
    learn = tiny_learner([log], labels, workers, parts=parts)
    learn.fit(epochs, 0.1)
    return callback_of(parts, LargeLossCallback), log, learn


@pytest.mark.parametrize("workers", [0, 2])
def test_llcp_stores_k_entries_per_batch_that_persist(tmp_path: Path, workers: int):
    ll, log, _ = large_loss_run(LargeLoss.PERMANENT_CORRECTION, tmp_path, workers=workers)
    k = large_loss_k(BS, C, 2, 5.0, LargeLoss.PERMANENT_CORRECTION)
    assert k == 2
    per_epoch = k * N // BS  # 8 corrections in each of epochs 2 and 3
    assert [e["ll_selected"] for e in log.extras] == [0, per_epoch, per_epoch]
    assert [e["ll_corrections"] for e in log.extras] == [0, per_epoch, 2 * per_epoch]
    # stored positives: exactly the corrections, all of them entries that were unobserved
    keys = ll.stored.keys.cpu()
    assert len(keys) == 2 * per_epoch and len(set(keys.tolist())) == len(keys)
    assert (observed_labels().reshape(-1)[keys.numpy()] == -1).all()
    assert ll.stored.epochs.tolist().count(2) == ll.stored.epochs.tolist().count(3) == per_epoch
    # epoch 3's batches carry epoch 2's corrections although the workers' Dataset copies never saw them
    assert log.positives_seen == [N, N, N + per_epoch]
    with (tmp_path / "corrections.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["2"] * per_epoch + ["3"] * per_epoch
    stored = {(int(r["image"][3:-4]), "abcde".index(r["class"])) for r in rows}
    assert stored == {divmod(key, C) for key in keys.tolist()}
    truth = truth_labels() == 1
    precision = sum(truth[i, c] for i, c in stored) / len(stored)
    assert log.extras[-1]["ll_correction_precision"] == pytest.approx(precision)


def test_llcp_is_not_llct(tmp_path: Path):
    """The reference's LL-Cp ran as LL-Ct: growing k and nothing stored."""
    llcp, cp_log, cp_learn = large_loss_run(LargeLoss.PERMANENT_CORRECTION, tmp_path / "cp")
    llct, ct_log, ct_learn = large_loss_run(LargeLoss.TEMPORARY_CORRECTION, tmp_path / "ct")
    assert [e["ll_selected"] for e in cp_log.extras] == [0, 8, 8]
    assert [e["ll_selected"] for e in ct_log.extras] == [0, 8, 16]
    assert llct.stored is None and len(llcp.stored.keys) == 16
    assert "ll_corrections" not in ct_log.extras[-1] and 0 <= ct_log.extras[-1]["ll_fn_precision"] <= 1
    weights = [learn.model[1].weight.detach() for learn in (cp_learn, ct_learn)]
    assert not torch.allclose(*weights)


def test_llr_rejects_without_storing(tmp_path: Path):
    ll, log, _ = large_loss_run(LargeLoss.REJECTION, tmp_path)
    assert [e["ll_selected"] for e in log.extras] == [0, 8, 16]
    assert ll.stored is None and ll.state_dict() == {}


def test_lr_find_neither_advances_the_epoch_nor_changes_labels(tmp_path: Path):
    ll, log, learn = large_loss_run(LargeLoss.PERMANENT_CORRECTION, tmp_path, epochs=2)
    keys, csv_text = ll.stored.keys.clone(), (tmp_path / "corrections.csv").read_text()
    learn.lr_find(num_it=10, show_plot=False)
    assert learn.run_state.epoch == 2
    assert ll.stored.keys.equal(keys)
    assert (tmp_path / "corrections.csv").read_text() == csv_text
    learn.fit(1, 0.1)  # training goes on with epoch 3
    assert learn.run_state.epoch == 3 and log.extras[-1]["ll_corrections"] == 16


class FirstGradient(Callback):
    """Keeps the weight gradient at the first optimizer step, then stops."""

    order = 20  # after GradientAccumulation (6) has skipped the accumulation batches

    def before_step(self) -> None:
        self.grad = self.learn.model[1].weight.grad.clone()
        raise CancelFitException()


def test_gradient_accumulation_over_half_batches_equals_one_batch():
    grads = []
    for bs, cbs in ((BS, []), (BS // 2, [GradientAccumulation(n_acc=BS)])):
        spy = FirstGradient()
        tiny_learner([*cbs, spy], observed_labels(), bs=bs, shuffle=False).fit(1, 0.1)
        grads.append(spy.grad)
    torch.testing.assert_close(grads[0], grads[1])


class LossSpy(Callback):
    """Keeps loss_grad / loss of each training batch, as GradientAccumulation left it, and the loss function of
    each training and validation batch."""

    order = GradientAccumulation.order + 1

    def __init__(self) -> None:
        self.ratios: list[float] = []
        self.losses: dict[bool, set[int]] = {True: set(), False: set()}

    def after_loss(self) -> None:
        self.losses[self.learn.training].add(id(self.learn.loss_func))
        if self.learn.training:
            self.ratios.append(float((self.learn.loss_grad / self.learn.loss).detach()))


def test_the_learner_trains_on_the_large_loss_and_validates_on_an():
    """The Learner holds the scheme's training loss while it trains (GradientAccumulation divides it like any
    loss) and AN on validation and after the fit."""
    parts = large_loss_parts(LargeLoss.REJECTION, 5.0, None, ([str(i) for i in range(N)], list("abcde")), None)
    spy = LossSpy()
    learn = tiny_learner([GradientAccumulation(n_acc=BS), spy], observed_labels(), bs=BS // 2, parts=parts)
    learn.fit(2, 0.1)
    assert learn.run_state.epoch == 2 and spy.ratios == pytest.approx([0.5] * len(spy.ratios))
    assert spy.losses == {True: {id(parts.loss)}, False: {id(parts.evaluation_loss)}}
    assert learn.loss_func is parts.evaluation_loss and parts.loss.selected is not None  # epoch 2 selected
