from pathlib import Path

import pytest
from helpers import write
from typer.testing import CliRunner

from wsml_fast.core.errors import WsmlError
from wsml_fast.training.config import TrainConfig, resolve
from wsml_fast.training.recipes import find_recipe, shipped_recipes


def test_layers_apply_in_order_and_remember_their_source() -> None:
    config = resolve({"epochs": 3, "lr": 0.01}, "demo", {"lr": 0.5, "bs": None}, implied={"dataset": "demo"})
    assert (config.epochs, config.lr, config.bs, config.dataset) == (3, 0.5, 32, "demo")
    assert config.sources["epochs"] == "recipe:demo"
    assert config.sources["lr"] == "cli"
    assert config.sources["bs"] == "default" and config.sources["dataset"] == "default"


def test_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = resolve({"epochs": 3}, "demo", {"scheme": "bce"})
    (tmp_path / "config.yaml").write_text(config.to_yaml())
    again = TrainConfig.from_yaml(tmp_path / "config.yaml")
    assert again == config and again.sources == config.sources


def test_unknown_recipe_key_and_bad_values_are_named(tmp_path: Path) -> None:
    recipe = write(tmp_path / "r.yaml", "epochs: 2\nlearning_rate: 0.1\n")
    values, name = find_recipe(str(recipe), None)
    with pytest.raises(WsmlError, match=r"r.yaml: unknown setting\(s\) learning_rate"):
        resolve(values, name, {})
    with pytest.raises(WsmlError, match="--bs must be at least 1"):
        resolve(None, None, {"bs": 0})
    with pytest.raises(WsmlError, match="--map-convention 'x' is not one of"):
        resolve(None, None, {"map_convention": "x"})
    with pytest.raises(WsmlError, match="--recipe .*missing.yaml: file not found"):
        find_recipe(str(tmp_path / "missing.yaml"), None)


def test_the_demo_recipe_ships_with_the_package() -> None:
    assert "demo" in shipped_recipes()
    values, name = find_recipe(None, "demo")
    assert name == "demo" and values["backbone"] == "tf_efficientnet_lite0" and "description" not in values


def test_check_images_option_reaches_the_config(demo_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsml_fast.training.run
    from wsml_fast.cli import app

    seen = []
    monkeypatch.setattr(wsml_fast.training.run, "train", lambda config, source, stop, **_: seen.append(config))
    for flag in ([], ["--no-check-images"], ["--check-images"]):
        assert CliRunner().invoke(app, ["train", "--data", str(demo_folder), *flag]).exit_code == 0
    assert [(c.check_images, c.sources["check_images"]) for c in seen] == [
        (True, "default"),
        (False, "cli"),
        (True, "cli"),
    ]
