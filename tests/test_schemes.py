"""The scheme registry and what reads it: every scheme builds and trains, the docs and the CLI list the
registry, scheme defaults and family settings resolve, and the new methods behave in real runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from fastai.callback.core import Callback
from helpers import TINY, callback_of, error_of, invoke, observed_labels, tiny_learner, write

from wsml_fast.core.errors import WsmlError
from wsml_fast.data.labelstore import LabelStore
from wsml_fast.schemes import SCHEMES, get_scheme, markdown_table
from wsml_fast.schemes.build import SchemeParts, check_dense_state
from wsml_fast.schemes.em.training import apl_quota
from wsml_fast.schemes.gr.training import GrConfig, GrLoss, GrScheduleCallback, gr_params
from wsml_fast.schemes.role.training import RoleCallback, role_parts
from wsml_fast.training.callbacks import EarlyStopCallback
from wsml_fast.training.config import resolve
from wsml_fast.training.recipes import find_recipe

COMMANDS_PAGE = Path(__file__).parents[1] / "docs" / "commands.md"


def test_the_documented_table_is_the_registry() -> None:
    assert markdown_table() in "\n".join(line.strip() for line in COMMANDS_PAGE.read_text().splitlines())


def test_train_help_lists_every_registered_scheme() -> None:
    help_text = " ".join(invoke("train", "--help").output.replace("│", " ").split())  # the words, not the box
    assert all(f"{name}," in help_text or f"{name} (" in help_text for name in SCHEMES)
    listing = invoke("schemes").output
    assert all(listing.count(f"{name}: ") >= 1 for name in SCHEMES)


def test_iu_is_refused_without_observed_negatives(demo_folder: Path, tmp_path: Path) -> None:
    line = error_of("train", "--data", demo_folder, *TINY, "--scheme", "iu", "--out", tmp_path / "r")
    assert "--scheme iu trains on observed negatives" in line and "has none in train" in line


def test_epr_without_expected_positives_or_truth_is_refused(demo_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(demo_folder / "images")
    (data / "observed.csv").write_text((demo_folder / "observed.csv").read_text())
    assert "--apl-warmup 5: APL pseudo-labels" in error_of("train", "--data", data, *TINY, "--scheme", "em-apl")
    assert "--scheme epr needs --expected-positives" in error_of("train", "--data", data, *TINY, "--scheme", "epr")


def test_scheme_defaults_come_from_the_registry_and_say_so(demo_folder: Path, tmp_path: Path) -> None:
    config = resolve(None, None, {"scheme": "em-apl", "em_beta": 0.5})
    assert (config.em_alpha, config.em_beta, config.apl_warmup) == (0.1, 0.5, 5)
    assert config.sources["em_alpha"] == "scheme:em-apl" and config.sources["em_beta"] == "cli"
    assert resolve(None, None, {"scheme": "gr"}).gr_w == [0.0, 2.0]
    with pytest.raises(WsmlError, match="not one of: an, an-ls"):
        get_scheme("nope")
    with pytest.raises(WsmlError, match="--gr-sigma and --gr-q must be greater than 0"):
        resolve(None, None, {"scheme": "gr", "gr_sigma": (1.0, 0.0)})


def test_recipes_give_each_family_its_own_settings(tmp_path: Path) -> None:
    recipe = write(
        tmp_path / "r.yaml",
        "lr: 0.1\nbs: 4\nfamilies:\n  large-loss: {lr: 0.2, head_lr_mult: 10}\n  cole: {lr: 0.3}\n"
        "schemes:\n  llr: {delta_rel: 0.4}\n  role: {lr: 0.5}\n",
    )
    values = {scheme: find_recipe(str(recipe), None, scheme)[0] for scheme in ("llr", "llct", "an", "role", "gr")}
    assert values["llr"] == {"lr": 0.2, "bs": 4, "head_lr_mult": 10, "delta_rel": 0.4}
    assert values["llct"] == {"lr": 0.2, "bs": 4, "head_lr_mult": 10}
    assert values["an"] == {"lr": 0.3, "bs": 4} and values["role"] == {"lr": 0.5, "bs": 4}  # ROLE: Cole's family
    assert values["gr"] == {"lr": 0.1, "bs": 4}
    bad = write(tmp_path / "bad.yaml", "families:\n  large_loss: {lr: 0.2}\n")
    with pytest.raises(WsmlError, match="'families' names large_loss, not one of"):
        find_recipe(str(bad), None)


def test_shipped_recipes_follow_each_paper() -> None:
    def settings(dataset: str, scheme: str):
        values, name = find_recipe(None, dataset, scheme)
        return resolve(values, name, {"dataset": dataset, "scheme": scheme})

    coco = {scheme: settings("coco", scheme) for scheme in ("an", "role", "llr", "em-apl", "gr")}
    assert coco["an"].head_lr_mult == 1 and coco["role"].head_lr_mult == 1  # Cole et al.: no head multiplier
    assert coco["llr"].head_lr_mult == 10 and coco["llr"].delta_rel == 0.4 and coco["llr"].early_stop
    assert (coco["em-apl"].bs, coco["em-apl"].em_alpha, coco["em-apl"].em_beta) == (16, 0.1, 0.9)
    assert coco["em-apl"].early_stop_drop == 0 and coco["gr"].early_stop_drop == 2 and coco["gr"].epochs == 8
    assert settings("cub", "em-apl").apl_warmup == 3 and settings("voc", "llr").opt == "sgd"


def test_role_estimates_learn_at_ten_times_the_base_rate_whatever_the_head_multiplier() -> None:
    parts = role_parts(LabelStore.from_dense(observed_labels()), 1.5, head_lr_mult=10)
    role = callback_of(parts, RoleCallback)
    learn = tiny_learner([], observed_labels(), parts=parts)
    learn.fit(1, slice(0.01, 0.1))  # body 0.01, head x10
    assert role.estimate_opt.param_groups[0]["lr"] == pytest.approx(0.1)  # 10 x 0.01, not 10 x 0.1


class History(Callback):
    """Plays the run log: appends a row with the next valid mAP of a fixed list."""

    order = 70

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def after_epoch(self) -> None:
        self.run_state.history.append({"epoch": self.run_state.epoch, "valid_map": self.scores.pop(0)})


def test_early_stopping_fires_at_the_drop_and_not_before() -> None:
    stop = EarlyStopCallback(drop=3.0)
    learn = tiny_learner([History([50.0, 52.0, 49.5, 48.9, 60.0, 61.0]), stop], observed_labels())
    learn.fit(6, 0.1)
    assert learn.run_state.epoch == 4  # 49.5 is 2.5 below 52: goes on; 48.9 is 3.1 below: stops
    assert learn.run_state.stop_reason == "early stop: valid mAP 48.90 fell over 3 points below 52.00"


def test_gr_schedule_follows_the_runs_epochs() -> None:
    constants = GrConfig()
    loss = GrLoss(gr_params(constants, 1, 3))
    seen: list = []

    class Spy(Callback):
        order = 0

        def before_epoch(self) -> None:
            seen.append(loss.params)

    parts = SchemeParts(loss, [GrScheduleCallback(loss, constants, 3)])
    learn = tiny_learner([Spy()], observed_labels(), parts=parts)
    learn.fit(2, 0.1)
    learn.fit(1, 0.1)  # a second fit continues the run's epochs
    assert seen == [gr_params(constants, epoch, 3) for epoch in (1, 2, 3)]


def test_em_apl_pseudo_labels_each_class_by_its_quota(demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = ["--scheme", "em-apl", "--epochs", "3", "--apl-warmup", "1", "--out", out]
    result = invoke("train", "--data", demo_folder, *TINY, *args)
    assert result.exit_code == 0, result.output
    labels = pd.read_csv(out / "pseudo_labels.csv")
    observed = pd.read_csv(demo_folder / "observed.csv")
    train = observed[observed["split"] == "train"].iloc[:, 2:].to_numpy(dtype=float)  # empty cells: NaN
    unobserved = torch.as_tensor(np.isnan(train).sum(0))
    quota = apl_quota(unobserved, 3, 1).tolist()  # int(0.9 U_j / (3 - 1)) per class, once after epochs 1 and 2
    per_class = labels[labels["epoch"] == 1].groupby("class").size().reindex(observed.columns[2:], fill_value=0)
    assert per_class.tolist() == quota
    assert set(labels["epoch"]) == {1, 2} and labels["value"].between(0, 1).all()
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["apl_pseudo_labels"].tolist() == [sum(quota), len(labels), len(labels)]
    state = torch.load(out / "checkpoint.pth", weights_only=True)["callbacks"]["AplCallback"]
    assert int(state["mask"].sum()) == len(labels)


def test_boost_lu_trains_and_eval_rebuilds_its_head(demo_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "r"
    result = invoke("train", "--data", demo_folder, *TINY, "--scheme", "llr", "--boost-lu", "5", "--out", out)
    assert result.exit_code == 0, result.output
    assert "BoostLU head (alpha 5)" in result.output
    assert yaml.safe_load((out / "config.yaml").read_text())["config"]["boost_lu"] == 5.0
    report = invoke("eval", out, "--json")
    assert report.exit_code == 0, report.output
    test_map = yaml.safe_load((out / "results.json").read_text())["test_map"]
    assert yaml.safe_load(report.output)["map"] == pytest.approx(test_map, abs=1e-4)  # the boosted head again
    assert "--boost-lu needs --mode end-to-end" in error_of("train", "--boost-lu", "5", "--mode", "linear")


def test_the_feature_cache_follows_the_label_files_time_stamp(demo_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(demo_folder / "images")
    for name in ("observed.csv", "truth.csv"):
        (data / name).write_text((demo_folder / name).read_text())
    args = ["train", "--data", data, *TINY, "--mode", "linear", "--epochs", "1"]
    assert "extracted" in invoke(*args, "--out", tmp_path / "a").output
    assert "from cache" in invoke(*args, "--out", tmp_path / "b").output
    stamp = (data / "observed.csv").stat().st_mtime_ns + 10**9
    os.utime(data / "observed.csv", ns=(stamp, stamp))  # a label file that changed: features are not reused
    assert "extracted" in invoke(*args, "--out", tmp_path / "c").output


def test_schemes_with_state_per_entry_are_refused_above_the_budget() -> None:
    check_dense_state(get_scheme("role"), 2_000, 10)  # the demo: 320 KB
    check_dense_state(get_scheme("llcp"), 1_700_000, 9_600)  # no per-entry state: any size
    for scheme, gib in (("role", 14.3), ("em-apl", 21.5)):
        with pytest.raises(
            WsmlError,
            match=rf"--scheme {scheme} keeps .*: {gib} GiB for 100,000 train images x "
            r"9,600 classes, over wsml's budget of 4 GiB; these schemes .*: an, an-ls, .*llcp, em, gr$",
        ):
            check_dense_state(get_scheme(scheme), 100_000, 9_600)
