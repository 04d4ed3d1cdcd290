"""`--mix logicmix`: LogicMix's label rule and image mean, the callback on a Learner, what each scheme makes of a
mix (the registry's rule), the refusals, `wsml tune`'s search over it, and tiny end-to-end runs."""

from __future__ import annotations

import random
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from helpers import BS, TINY, C, N, callback_of, error_of, invoke, observed_labels, tiny_learner, truth_labels

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.learning.contract import MIXING_ORDER, BatchMix, WsmlCallback
from wsml_fast.schemes import SCHEMES, mixing_table
from wsml_fast.schemes.declaration import Choice
from wsml_fast.schemes.em.training import batch_pseudo_labels
from wsml_fast.schemes.large_loss.training import LargeLoss, LargeLossCallback, large_loss_parts
from wsml_fast.training.config import resolve
from wsml_fast.training.mixing import LogicMixCallback, draw_mix, logic_mix, logic_or
from wsml_fast.training.stages import IMAGES
from wsml_fast.tuning.study import check_search, scheme_ranges

DOCS = Path(__file__).parents[1] / "docs" / "mixing.md"


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# The label rule and the image mean


def test_two_images_positive_if_either_negative_only_if_both_known_negatives() -> None:
    targets = t([1, 0, -1, 0, -1, 1], [0, 0, 0, -1, -1, 1])
    mixed = logic_or(targets, torch.tensor([[0, 1], [1, 0]]))
    assert mixed.tolist() == [[1, 0, -1, -1, -1, 1]] * 2


def test_two_single_positives_give_two_positives_and_the_rest_unknown() -> None:
    targets = t([1, -1, -1, -1], [-1, -1, 1, -1])
    assert logic_or(targets, torch.tensor([[0, 1]])).tolist() == [[1, -1, 1, -1]]


def test_three_images() -> None:
    targets = t([1, 0, 0, -1, 0, 0], [0, 0, -1, -1, 0, 0], [-1, 0, 0, 0, 1, 0])
    mixed = logic_or(targets, torch.tensor([[0, 1, 2], [2, 0, 1]]))
    assert mixed.tolist() == [[1, 0, -1, -1, 1, 0]] * 2


def test_the_mix_is_the_mean_of_its_images_and_unmixed_inputs_keep_theirs() -> None:
    images = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    targets = t([1, -1], [-1, 1], [0, 0], [-1, -1])
    positions = torch.tensor([[0, 2, 3], [1, 1, 1], [2, 0, 1], [3, 3, 3]])
    mixed = torch.tensor([True, False, True, False])
    out_images, out_targets = logic_mix(images, targets, positions, mixed)
    assert out_images.dtype == torch.float32
    assert torch.equal(out_images[0], images[[0, 2, 3]].float().mean(0))
    assert torch.equal(out_images[2], images[[2, 0, 1]].float().mean(0))
    assert torch.equal(out_images[[1, 3]], images[[1, 3]].float())
    assert out_targets.tolist() == [[1, -1], [-1, 1], [1, 1], [-1, -1]]
    assert images.dtype == torch.uint8 and targets[2].tolist() == [0, 0]  # the batch itself is left alone


@pytest.mark.parametrize("n", [2, 3])
def test_partners_are_distinct_others_and_about_p_of_the_inputs_mix(n: int) -> None:
    positions, mixed = draw_mix(64, 0.5, n, torch.Generator().manual_seed(0))
    assert positions.shape == (64, n) and positions[:, 0].tolist() == list(range(64))
    for row, is_mixed in zip(positions.tolist(), mixed.tolist(), strict=True):
        assert len(set(row)) == (n if is_mixed else 1)
    assert 16 < int(mixed.sum()) < 48
    again = draw_mix(64, 0.5, n, torch.Generator().manual_seed(0))
    assert torch.equal(positions, again[0]) and torch.equal(mixed, again[1])


def test_a_batch_of_one_has_no_partner_and_is_left_alone() -> None:
    positions, mixed = draw_mix(1, 1.0, 3, torch.Generator().manual_seed(0))
    assert positions.tolist() == [[0]] and not mixed.any()


# The callback on a Learner


class SeenBatches(WsmlCallback):
    """Keeps what the loss of each training batch sees: inputs, targets, the mix and the item indices."""

    order = MIXING_ORDER + 5

    def __init__(self) -> None:
        self.batches: list[tuple] = []

    def before_batch(self) -> None:
        if self.training:
            mix = self.batch_mix
            self.batches.append((self.learn.xb[0].clone(), self.learn.yb[0].clone(), mix, self.item_index.clone()))


def mixing_learner(cbs: list, parts=None, labels: np.ndarray | None = None):
    learn = tiny_learner(cbs, observed_labels() if labels is None else labels, parts=parts)
    learn.run_state.stage = SimpleNamespace(inputs=IMAGES)  # what `_use_stage` sets in a run
    return learn


def test_the_callback_mixes_training_batches_by_the_rule_and_says_which() -> None:
    seen, labels = SeenBatches(), observed_labels()
    learn = mixing_learner([LogicMixCallback(1.0, 3, seed=0), seen], labels=labels)
    dataset = learn.dls.train.dataset
    learn.fit(1, 0.1)
    assert len(seen.batches) == N // BS
    for images, targets, mix, index in seen.batches:
        assert mix.mixed.all() and torch.equal(mix.items[:, 0], index) and torch.equal(mix.items, index[mix.positions])
        assert torch.equal(images, dataset.images[mix.items].mean(1))
        assert torch.equal(targets, logic_or(torch.from_numpy(labels), mix.items))


def test_p_zero_changes_nothing() -> None:
    weights = []
    for mixing in ([], [LogicMixCallback(0.0, 2, seed=0)]):
        seen = SeenBatches()
        random.seed(0)  # the loaders' shuffling streams, drawn from python's when they are made
        learn = mixing_learner([*mixing, seen])
        learn.fit(2, 0.1)
        assert not any(mix.mixed.any() for _, _, mix, _ in seen.batches)
        weights.append(learn.model[1].weight.detach().clone())
    assert torch.equal(*weights)


def test_validation_and_feature_stages_are_never_mixed() -> None:
    seen = SeenBatches()
    learn = mixing_learner([LogicMixCallback(1.0, 2, seed=0), seen])
    learn.run_state.stage = SimpleNamespace(inputs="features")
    learn.fit(1, 0.1)
    assert not any(mix.mixed.any() for _, _, mix, _ in seen.batches)
    learn.run_state.stage = SimpleNamespace(inputs=IMAGES)
    mixing = callback_of(SimpleNamespace(callbacks=learn.cbs), LogicMixCallback)
    state = mixing.generator.get_state()
    learn.validate()
    assert torch.equal(mixing.generator.get_state(), state)  # no draw outside training


# What a mix means for the schemes that keep per-entry state


class Selections(WsmlCallback):
    """Each training batch's large-loss selection and mix, after the loss."""

    order = 63

    def __init__(self, large_loss: LargeLossCallback) -> None:
        self.large_loss, self.batches = large_loss, []

    def before_epoch(self) -> None:
        self.batches.append([])

    def after_loss(self) -> None:
        if self.training and self.large_loss.selected is not None:
            self.batches[-1].append((self.large_loss.selected.clone(), self.batch_mix.items.clone()))


class Recorded(WsmlCallback):
    order = 69

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def after_epoch(self) -> None:
        self.rows.append(dict(self.run_state.values))


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_llcp_stores_unmixed_selections_only_and_its_precision_reads_every_image_of_a_mix(p: float) -> None:
    truth = truth_labels()
    names = ([f"img{i}.jpg" for i in range(N)], list("abcde"))
    parts = large_loss_parts(
        LargeLoss.PERMANENT_CORRECTION, 5.0, LabelStore.from_dense(truth, fill=0), names, write_corrections=None
    )
    large_loss = callback_of(parts, LargeLossCallback)
    selections, recorded = Selections(large_loss), Recorded()
    learn = mixing_learner([LogicMixCallback(p, 2, seed=0), selections, recorded], parts=parts)
    learn.fit(3, 0.1)
    unmixed_selections, hits, count = set(), 0, 0
    for selected, items in selections.batches[-1]:  # the last epoch
        for b, c in selected.nonzero().tolist():
            hits += bool((truth[items[b].numpy(), c] == 1).any())
            count += 1
            if len(set(items[b].tolist())) == 1:
                unmixed_selections.add(int(items[b, 0]) * C + c)
    assert count == recorded.rows[-1]["ll_selected"] > 0
    assert recorded.rows[-1]["ll_fn_precision"] == pytest.approx(hits / count)
    stored_now = set(large_loss.stored.keys.tolist())
    if p == 1.0:
        assert stored_now == set()
    else:
        assert unmixed_selections and unmixed_selections <= stored_now


def test_a_mix_is_pseudo_labelled_where_each_of_its_images_is_a_known_or_pseudo_negative() -> None:
    observed = t([0, -1, -1, -1, 1], [-1, -1, -1, 0, -1])
    mask = torch.tensor([[False, True, True, False, False], [False, True, False, False, False]])
    values = t([0, 0.2, 0.1, 0, 0], [0, 0.5, 0, 0, 0])
    items = torch.tensor([[0, 1], [1, 1]])
    mix = BatchMix(positions=items, items=items, mixed=torch.tensor([True, False]))
    batch_mask, batch_values = batch_pseudo_labels(mask, values, observed, mix)
    # the mix: class 0 known negative + unknown without label; class 1 both pseudo; class 2 pseudo + unlabelled;
    # class 3 unlabelled + known negative
    assert batch_mask.tolist() == [[False, True, False, False, False], mask[1].tolist()]
    assert batch_values[0, 1] == pytest.approx(1 - 0.8 * 0.5)
    assert torch.equal(batch_values[1], values[1])  # an unmixed input: its own, exactly


def test_every_scheme_says_what_a_mix_means_and_the_docs_show_it() -> None:
    assert all(scheme.mixing.means for scheme in SCHEMES.values())
    assert [name for name, scheme in SCHEMES.items() if scheme.mixing.refused] == ["role"]
    assert mixing_table() in DOCS.read_text()


# Refusals and settings


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"mix": "cutmix"}, "--mix 'cutmix' is not one of: logicmix"),
        ({"mix": "logicmix", "scheme": "role"}, "--mix logicmix cannot train --scheme role: its label estimates"),
        ({"mix": "logicmix", "mode": "linear"}, "--mode linear trains on cached features"),
        ({"mix": "logicmix", "mix_p": 0.0}, "--mix-p must be greater than 0"),
        ({"mix": "logicmix", "mix_p": 1.5}, "--mix-p must be at most 1"),
        ({"mix": "logicmix", "mix_n": 4}, "--mix-n must be at most 3"),
        ({"mix": "logicmix", "mix_n": 1}, "--mix-n must be at least 2"),
    ],
)
def test_refusals_are_one_line_naming_the_option(cli: dict, message: str) -> None:
    with pytest.raises(WsmlError, match=re.escape(message)):
        resolve(None, None, {"dataset": "demo", **cli})


def test_a_recipe_mixes_and_the_run_folder_keeps_it() -> None:
    config = resolve({"mix": "logicmix", "mix_n": 3}, "mine", {"dataset": "demo", "mix_p": 0.25})
    assert (config.mix, config.mix_n, config.mix_p) == ("logicmix", 3, 0.25)
    assert config.sources["mix"] == "recipe:mine" and config.sources["mix_p"] == "cli"


def test_the_command_line_refuses_role_with_mixing_in_one_line() -> None:
    assert "cannot train --scheme role" in error_of("train", "--scheme", "role", "--mix", "logicmix")


def test_tune_searches_mixing_on_request_only(tmp_path: Path) -> None:
    bases = {s: resolve(None, None, {"dataset": "demo", "scheme": s}) for s in ("an", "llr")}
    assert "mix" not in scheme_ranges(bases["an"], {})
    space = {"mix": Choice((None, "logicmix")), "mix_n": Choice((2, 3))}
    check_search(tmp_path / "search.yaml", space, bases)
    assert scheme_ranges(bases["llr"], space)["mix"] == Choice((None, "logicmix"))
    with pytest.raises(WsmlError, match="mix: 'logicmix' cannot be used .*cannot train --scheme role"):
        role = resolve(None, None, {"dataset": "demo", "scheme": "role"})
        check_search(tmp_path / "search.yaml", space, {"role": role})


# End to end


@pytest.mark.parametrize("scheme", ["an", "llr"])
def test_a_tiny_run_trains_with_logicmix(scheme: str, demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / scheme
    result = invoke("train", "--data", demo_folder, *TINY, "--scheme", scheme, "--mix", "logicmix", "--out", out)
    assert result.exit_code == 0, result.output
    said = f"mixing: LogicMix, each training image with probability 0.5 the mean of 2 images | {scheme}:"
    assert said in result.output
    config = yaml.safe_load((out / "config.yaml").read_text())["config"]
    assert (config["mix"], config["mix_p"], config["mix_n"]) == ("logicmix", 0.5, 2)
    assert "LogicMixCallback" in torch.load(out / "checkpoint.pth", weights_only=True)["callbacks"]
