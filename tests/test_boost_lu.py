"""BoostLU head: identity at alpha = 1, the boost on a hand-built feature map, its gradients, and which backbones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsml_fast.core.errors import WsmlError
from wsml_fast.model.classifier import Classifier, build_model

# A 2-channel 2 x 2 feature map and a 2-class head: class 0 = channel 0 + 0.5, class 1 = -channel 1.
FEATURE_MAP = [[[1.0, -2.0], [3.0, -1.0]], [[0.0, 1.0], [-2.0, 4.0]]]
WEIGHT, BIAS = [[1.0, 0.0], [0.0, -1.0]], [0.5, 0.0]


class FixedMap(nn.Module):
    """A body whose feature map is a fixed (learnable) tensor, whatever the images."""

    num_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.feature_map = nn.Parameter(torch.tensor([FEATURE_MAP]))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.feature_map.expand(images.shape[0], -1, -1, -1)


def _hand_built(alpha: float) -> Classifier:
    model = Classifier(FixedMap(), 2, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), boost_lu=alpha)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor(WEIGHT))
        model.head.bias.copy_(torch.tensor(BIAS))
    return model


IMAGE = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)


def test_boost_on_a_hand_built_feature_map() -> None:
    """CAM_0 = [[1.5, -1.5], [3.5, -0.5]] -> x5 where > 0: [[7.5, -1.5], [17.5, -0.5]], mean 23/4.
    CAM_1 = [[0, -1], [2, -4]] -> [[0, -1], [10, -4]] (0 is not boosted), mean 5/4. Unboosted: 3/4 and -3/4."""
    assert _hand_built(5.0)(IMAGE).tolist() == [[5.75, 1.25]]
    assert _hand_built(1.0)(IMAGE).tolist() == [[0.75, -0.75]]


def test_gradients_flow_through_the_boost() -> None:
    """d logit_c / d CAM_c(h, w) = alpha / 4 where CAM_c > 0, else 1 / 4: factors [[5, 1], [5, 1]] and [[1, 1],
    [5, 1]]. So d/d bias = (12/4, 8/4); d/d W_c. = factor-weighted means of the map; d/d map = sum_c W_cd factor."""
    model = _hand_built(5.0)
    model(IMAGE).sum().backward()
    assert model.head.bias.grad.tolist() == [3.0, 2.0]
    # class 0: (5*1 + 1*-2 + 5*3 + 1*-1)/4, (5*0 + 1*1 + 5*-2 + 1*4)/4; class 1: (1 - 2 + 15 - 1)/4, (0 + 1 - 10 + 4)/4
    assert model.head.weight.grad.tolist() == [[4.25, -1.25], [3.25, -1.25]]
    expected_map = [[[1.25, 0.25], [1.25, 0.25]], [[-0.25, -0.25], [-1.25, -0.25]]]
    assert model.body.feature_map.grad[0].tolist() == expected_map


@pytest.mark.parametrize("name", ["test_efficientnet", "test_resnet"])
def test_alpha_one_is_gap_then_linear(name: str) -> None:
    model, _, _ = build_model(name, 5, pretrained=False, img_size=64, boost_lu=1.0)
    model.eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model(images), model.head(model.features(images)))


def test_boosted_model_keeps_the_plain_state_dict_and_channels_last() -> None:
    torch.manual_seed(0)  # a draw with positive class activations, which the boost then changes
    plain, _, _ = build_model("test_resnet", 5, pretrained=False, img_size=32)
    boosted, _, _ = build_model("test_resnet", 5, pretrained=False, img_size=32, boost_lu=5.0)
    boosted.load_state_dict(plain.state_dict(), strict=True)
    boosted.eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = boosted(images)
    assert not torch.allclose(expected, plain.eval()(images))
    torch.testing.assert_close(boosted.use_channels_last()(images), expected)


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("test_vit", "gives 3-D features"),
        ("test_convnext", "does more than average"),
        ("test_mambaout", "channels-last or an MLP"),
    ],
)
def test_backbones_without_a_plain_average_head_are_refused(name: str, why: str) -> None:
    with pytest.raises(WsmlError, match=f"^--boost-lu: backbone {name} .*{why}"):
        build_model(name, 5, pretrained=False, img_size=32, boost_lu=5.0)


def test_the_probe_leaves_the_body_in_training_mode_with_its_statistics() -> None:
    model, _, _ = build_model("test_resnet", 5, pretrained=False, img_size=32, boost_lu=5.0)
    assert model.body.training
    assert all(int(m.num_batches_tracked) == 0 for m in model.body.modules() if isinstance(m, nn.BatchNorm2d))


def test_alpha_below_one_is_refused() -> None:
    with pytest.raises(WsmlError, match="--boost-lu 0.5: must be at least 1"):
        build_model("test_resnet", 5, pretrained=False, img_size=32, boost_lu=0.5)
