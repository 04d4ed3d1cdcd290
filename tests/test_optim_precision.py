"""The optimizers (torch's, through fastai's wrapper) and mixed precision with loss scaling, on a CPU."""

from __future__ import annotations

import pytest
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from helpers import observed_labels, tiny_learner

from wsml_fast.training.callbacks import DeviceMixedPrecision
from wsml_fast.training.learner import OPTIMIZERS


def one_step(name: str, p0: float, grad: float, lr: float) -> float:
    weight = torch.nn.Parameter(torch.tensor([p0]))
    opt = OPTIMIZERS[name]([weight], lr=lr)
    weight.grad = torch.tensor([grad])
    opt.step()
    return weight.item()


def test_sgd_and_adam_first_steps_match_the_formulas() -> None:
    # SGD, momentum 0.9 (the first step has no history), L2 weight decay 1e-3 on the weight
    assert one_step("sgd", 2.0, 0.5, 0.1) == pytest.approx(2.0 - 0.1 * (0.5 + 1e-3 * 2.0))
    # Adam: the debiased first step is lr * g / (|g| + eps), no weight decay
    assert one_step("adam", 2.0, 0.5, 0.1) == pytest.approx(2.0 - 0.1 * 0.5 / (0.5 + 1e-8))


def test_discriminative_learning_rates_reach_the_torch_parameter_groups() -> None:
    body, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = OPTIMIZERS["sgd"]([[body], [head]], lr=1e-3)
    opt.set_hypers(lr=slice(1e-3, 1e-2))  # what --head-lr-mult 10 asks of fastai
    assert [group["lr"] for group in opt.opt.param_groups] == pytest.approx([1e-3, 1e-2])


class ScaleProbe(Callback):
    """Records the loss scale after each step and the dtype of the model's raw output."""

    order = MixedPrecision.order + 1

    def __init__(self, poison_first: bool = False) -> None:
        self.scales: list[float] = []
        self.dtypes: list[torch.dtype] = []
        self.poison_first = poison_first
        self.weights_before: torch.Tensor | None = None

    def before_fit(self) -> None:
        self.learn.model.register_forward_hook(lambda _m, _i, out: self.dtypes.append(out.dtype))

    def before_batch(self) -> None:
        self.weights_before = self.learn.model[1].weight.detach().clone()

    def after_backward(self) -> None:
        if self.poison_first and not self.scales:
            self.learn.model[1].weight.grad[0, 0] = float("inf")  # an overflow, as fp16 produces

    def after_batch(self) -> None:
        if self.training:
            self.scales.append(self.learn.scaler.get_scale())
            if len(self.scales) == 1:
                self.first_step_changed = not torch.equal(self.weights_before, self.learn.model[1].weight)


@pytest.mark.parametrize("poison_first", [False, True])
def test_fp16_loss_scaling_steps_or_skips_through_the_torch_optimizer(poison_first: bool) -> None:
    probe = ScaleProbe(poison_first)
    learn = tiny_learner([DeviceMixedPrecision(amp_mode="fp16"), probe], observed_labels(), opt_func=OPTIMIZERS["adam"])
    learn.fit(1, 1e-2)

    assert set(probe.dtypes) == {torch.float16}  # autocast ran the model in fp16 on the CPU
    if poison_first:  # the overflowing step is skipped and the scale halves, then training goes on
        assert not probe.first_step_changed
        assert probe.scales == [2.0**15] * len(probe.scales)
    else:
        assert probe.first_step_changed
        assert probe.scales == [2.0**16] * len(probe.scales)
    assert torch.isfinite(learn.model[1].weight).all()
