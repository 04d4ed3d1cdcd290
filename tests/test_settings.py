"""Scheme settings declared once: the config's fields, its validation, the `train` options, `wsml schemes --json`,
tune's ranges and GR's defaults all follow the declarations in the family packages."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import wsml_fast.training.run
from wsml_fast.cli import app
from wsml_fast.core.errors import WsmlError
from wsml_fast.schemes import SCHEMES, SETTINGS, get_scheme, option_help
from wsml_fast.schemes.declaration import Pair, Range
from wsml_fast.schemes.em import APL_WARMUP, EM_ALPHA, EM_BETA
from wsml_fast.schemes.gr.training import GrConfig, gr_config
from wsml_fast.schemes.large_loss import DELTA_REL
from wsml_fast.training.config import TrainConfig, apply_layer, resolve
from wsml_fast.tuning.study import Tuner

ROOT = Path(__file__).parents[1]


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_listing_the_schemes_imports_no_torch() -> None:
    code = (
        "import sys\nfrom wsml_fast.cli import main\ntry:\n    main(['schemes', '--json'])\nexcept SystemExit:\n"
        "    pass\nprint('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "no torch", done.stderr
    assert [scheme["name"] for scheme in json.loads(done.stdout)] == list(SCHEMES)


def test_schemes_json_lists_every_scheme_with_its_declared_settings() -> None:
    result = invoke("schemes", "--json")
    assert result.exit_code == 0, result.output
    listed = {scheme["name"]: scheme for scheme in json.loads(result.output)}
    assert list(listed) == list(SCHEMES)
    assert listed["an"]["settings"] == [] and listed["llr"]["family"] == "large-loss"
    assert listed["llr"]["settings"] == [
        {
            "name": "delta_rel",
            "option": "--delta-rel",
            "type": "float",
            "default": 0.2,
            "help": "Delta in percent, typically 0.1 to 0.5",
            "constraint": {"low": 0, "high": 100, "low_inclusive": False, "high_inclusive": False},
            "search": {"low": 0.05, "high": 1.0, "log": True, "integer": False},
        }
    ]
    gr_w = listed["gr"]["settings"][0]
    assert (gr_w["type"], gr_w["default"]) == ("float pair", [0.0, 2.0])
    assert gr_w["search"] == {"choices": [[0.0, 2.0], [0.0, 10.0]]}
    warmup = listed["em-apl"]["settings"][2]
    assert warmup["constraint"]["high"] == "total_epochs" and warmup["search"] is None
    assert [s["name"] for s in listed["em-apl"]["settings"]] == ["em_alpha", "em_beta", "apl_warmup"]


def test_each_declared_setting_is_one_config_field_after_the_general_ones(tmp_path: Path) -> None:
    names = [f.name for f in fields(TrainConfig)]
    start = names.index("boost_lu") + 1
    assert names[start : start + len(SETTINGS)] == list(SETTINGS)
    assert all(getattr(TrainConfig(), name) is None for name in SETTINGS)  # None: the scheme's default fills it
    config = resolve(None, None, {"scheme": "gr", "gr_q": (0.5, 1.0)})
    assert (config.gr_q, config.sources["gr_q"]) == ([0.5, 1.0], "cli")
    assert (config.gr_mu, config.sources["gr_mu"]) == ([0.5, 0.8], "scheme:gr")
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    assert TrainConfig.from_yaml(tmp_path / "config.yaml") == config  # a run's config.yaml reads back as written


def test_the_train_options_are_the_declared_settings() -> None:
    command = typer.main.get_command(app).commands["train"]
    options = {param.name: param for param in command.params}
    for setting in SETTINGS.values():
        option = options[setting.name]
        assert option.opts == [setting.option] and option.default is None
        assert option.help == option_help(setting)
        assert option.nargs == (2 if setting.type == Pair else 1)
    assert option_help(DELTA_REL) == "llr, llct, llcp: Delta in percent, typically 0.1 to 0.5 (default 0.2)."
    assert option_help(get_scheme("gr").settings[0]) == "gr: w's start and end (default 0 2)."


def test_scheme_options_reach_the_config(demo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(wsml_fast.training.run, "train", lambda config, source, stop, process: seen.append(config))
    result = invoke("train", "--data", demo_folder, "--scheme", "gr", "--gr-w", "0", "10", "--gr-b", "-2", "-8")
    assert result.exit_code == 0, result.output
    [config] = seen
    assert (config.gr_w, config.gr_b, config.gr_sigma) == ([0.0, 10.0], [-2.0, -8.0], [2.0, 0.5])
    assert config.sources["gr_w"] == "cli" and config.sources["gr_sigma"] == "scheme:gr"
    refused = invoke("train", "--resume", demo_folder, "--delta-rel", "0.3")
    assert "--delta-rel cannot be changed" in refused.output


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"scheme": "llr", "delta_rel": 0}, "--delta-rel must be greater than 0 (got 0)"),
        ({"scheme": "llct", "delta_rel": 100}, "--delta-rel is Delta in percent, below 100 (got 100;"),
        ({"scheme": "epr", "expected_positives": -1}, "--expected-positives must be greater than 0 (got -1)"),
        ({"scheme": "em", "em_alpha": 0}, "--em-alpha must be greater than 0"),
        ({"scheme": "em-apl", "em_beta": -0.1}, "--em-beta must be at least 0 (got -0.1)"),
        ({"scheme": "em-apl", "apl_warmup": 0}, "--apl-warmup must be at least 1 (got 0)"),
        ({"scheme": "em-apl", "epochs": 3, "apl_warmup": 3}, "before the last; with 3 epochs it would never run"),
        ({"scheme": "gr", "gr_q": (0.0, 1.0)}, "--gr-sigma and --gr-q must be greater than 0"),
        (
            {"scheme": "gr", "gr_w": [0.0, 1.0, 2.0]},
            "--gr-w takes two numbers, a start and an end (got [0.0",
        ),
        ({"scheme": "gr", "gr_w": 2}, "--gr-w takes two numbers, a start and an end (got 2)"),  # a recipe's YAML
        ({"scheme": "llr", "delta_rel": "abc"}, "--delta-rel must be a number (got 'abc')"),
        ({"scheme": "em-apl", "apl_warmup": 2.5}, "--apl-warmup must be a whole number (got 2.5)"),
        ({"scheme": "gr", "gr_mu": ["a", 1]}, "--gr-mu must be a number (got ['a', 1])"),
    ],
)
def test_validation_checks_the_chosen_schemes_declared_constraints(values: dict, error: str) -> None:
    with pytest.raises(WsmlError) as refused:
        resolve(None, None, values)
    assert error in str(refused.value)


def test_a_value_for_another_schemes_setting_is_still_checked_but_not_against_this_run() -> None:
    with pytest.raises(WsmlError, match="--delta-rel must be greater than 0"):  # a typo is found whatever the scheme
        resolve(None, None, {"scheme": "an", "delta_rel": 0})
    config = resolve(None, None, {"scheme": "em", "epochs": 3, "apl_warmup": 3})  # em does not pseudo-label
    assert config.apl_warmup == 3 and config.em_beta is None
    linear = resolve(None, None, {"scheme": "em-apl", "mode": "linear-init", "epochs": 4, "linear_epochs": 2})
    assert linear.apl_warmup == APL_WARMUP.default < linear.total_epochs  # the bound reads the run's total epochs
    with pytest.raises(WsmlError, match="--bs must be at least 1"):  # the general limits: the same intervals
        apply_layer(TrainConfig(), {"bs": 0}, "test").validate()


def test_tune_searches_the_declared_ranges() -> None:
    tuner = Tuner(lambda scheme: TrainConfig(scheme=scheme), None, ["em-apl"], {"em_beta": Range(0.5, 0.6)}, None, None)
    ranges = tuner.ranges("em-apl")
    assert set(ranges) == {"lr", "bs", "em_alpha", "em_beta"}
    assert ranges["em_alpha"] == EM_ALPHA.search and ranges["em_beta"] == Range(0.5, 0.6) != EM_BETA.search
    assert tuner.ranges("llr")["delta_rel"] == DELTA_REL.search and "em_beta" not in tuner.ranges("llr")


def test_gr_defaults_are_declared_once() -> None:
    assert gr_config(resolve(None, None, {"scheme": "gr"})) == GrConfig()
