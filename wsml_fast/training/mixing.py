"""`--mix logicmix`: LogicMix (Chong et al., 2024), mixing that keeps unknown labels unknown.

While training, each image of a batch is, with probability p, replaced by the mean of itself and N-1 partners
drawn at random from the same batch (distinct, none itself). Its target per class is 1 where any mixed image's
is 1, 0 only where every one is a known 0, and -1 (unknown) otherwise: blending the targets as numbers, as
fastai's MixUp and timm's mixup do, would turn an unknown into a wrong label.

The callback acts after the batch's targets are made and any scheme state is laid over them (LL-Cp's stored
positives), and before the loss sees them (`MIXING_ORDER`); it tells the Learner which inputs are mixes and of
which items (`BatchMix`), so schemes and diagnostics that look entries up by item can. Validation, `lr_find`'s
fits and the stages on cached features are never mixed. Its draws come from a generator of its own, seeded
from the run's seed and checkpointed, which gives each batch a seed of its own: a resumed run mixes as the
uninterrupted one did, and in a data-parallel run every process draws the same positions for its own batch.
"""

from __future__ import annotations

import numpy as np
import torch

from wsml_fast.learning.contract import MIXING_ORDER, BatchMix, CheckpointedState, WsmlCallback
from wsml_fast.schemes import get_scheme
from wsml_fast.training.setup import Setup
from wsml_fast.training.stages import IMAGES

MIX_STREAM = 0x4D4958  # sets the mixing generator's stream apart from the run's other streams of the same seed


def draw_mix(batch_size: int, p: float, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions B x min(n, B): each input's own position, then its partners' where it is mixed, else its own
    repeated; mixed B) for one batch. Partners are distinct and never the input itself."""
    mixed = torch.rand(batch_size, generator=generator) < p
    width = min(n, batch_size)
    if width < 2:
        mixed[:] = False
    own = torch.arange(batch_size)[:, None]
    keys = torch.rand(batch_size, batch_size, generator=generator)
    keys.fill_diagonal_(2.0)  # above every draw: no input is its own partner
    partners = keys.argsort(dim=1)[:, : width - 1]
    return torch.where(mixed[:, None], torch.cat([own, partners], 1), own), mixed


def logic_or(targets: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """LogicMix's targets (B x C, 1 / 0 / -1) of inputs mixed from the rows at `positions` (B x N): 1 where any
    is 1, 0 where every one is 0, -1 otherwise."""
    group = targets[positions]  # B x N x C
    negative = torch.where((group == 0).all(1), 0.0, -1.0).to(targets.dtype)
    return torch.where((group == 1).any(1), 1.0, negative).to(targets.dtype)


def logic_mix(
    images: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor, mixed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch with its `mixed` inputs replaced by the mean of the images at their `positions` and their targets
    by `logic_or`; the other inputs keep their values exactly. The images come back as float32: a mean of uint8
    pixels has fractions, and the model normalizes float pixels (0 to 255) as it does uint8 ones."""
    images, targets = images.to(torch.float32, copy=True), targets.clone()
    images[mixed] = images[positions[mixed]].mean(1)
    targets[mixed] = logic_or(targets, positions[mixed])
    return images, targets


class LogicMixCallback(WsmlCallback, CheckpointedState):
    """Mix each training batch of an image stage (see the module docstring)."""

    order = MIXING_ORDER

    def __init__(self, p: float, n: int, seed: int) -> None:
        self.p, self.n = p, n
        stream = np.random.SeedSequence((seed, MIX_STREAM)).generate_state(1)[0]
        self.generator = torch.Generator().manual_seed(int(stream))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def before_batch(self) -> None:
        if not self.training or self.stage.inputs != IMAGES:
            return
        batch_seed = int(torch.randint(2**62, (), generator=self.generator))  # one draw a batch, whatever its size
        positions, mixed = draw_mix(len(self.item_index), self.p, self.n, torch.Generator().manual_seed(batch_seed))
        device = self.item_index.device
        positions, any_mixed, mixed = positions.to(device), bool(mixed.any()), mixed.to(device)
        if any_mixed:  # told on the host before the draws move: no device synchronisation
            images, targets = logic_mix(self.learn.xb[0], self.learn.yb[0], positions, mixed)
            self.learn.xb, self.learn.yb = (images,), (targets,)
        self.learn.batch_targets.mix = BatchMix(positions, self.item_index[positions], mixed)


def mixing_callbacks(setup: Setup) -> list[LogicMixCallback]:
    """The run's mixing callback, if it mixes, said in its first lines with what a mix means for its scheme."""
    config = setup.config
    if config.mix is None:
        return []
    scheme = get_scheme(config.scheme)
    where = " (in the end-to-end stage)" if config.mode == "linear-init" else ""
    setup.say(
        f"mixing: LogicMix{where}, each training image with probability {config.mix_p:g} the mean of "
        f"{config.mix_n} images | {config.scheme}: {scheme.mixing.means}"
    )
    return [LogicMixCallback(config.mix_p, config.mix_n, config.seed)]
