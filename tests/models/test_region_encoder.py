"""RegionEncoder on a random ResNet-18 and 64-pixel images."""

import pytest
import timm
import torch

from lightning_wsg.models import RegionEncoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return RegionEncoder("resnet18", pretrained=False, hidden_dim=32, embed_dim=16)


BOXES = torch.tensor(
    [
        [[0.0, 0.0, 32.0, 32.0], [16.0, 8.0, 64.0, 40.0], [0.0, 0.0, 64.0, 64.0]],
        [[4.0, 4.0, 20.0, 60.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
    ]
)
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_shapes_norms_padding_and_gradients(encoder):
    encoder.train()
    images = torch.randn(2, 3, 64, 64)
    out = encoder(images, BOXES, MASK)
    assert out.shape == (2, 3, 16)
    torch.testing.assert_close(out[MASK].norm(dim=-1), torch.ones(4))
    assert torch.count_nonzero(out[~MASK]) == 0
    out.sum().backward()
    assert encoder.backbone.conv1.weight.grad.abs().sum() > 0
    assert encoder.mlp[0].weight.grad.abs().sum() > 0
    encoder.zero_grad()


def test_padding_boxes_do_not_change_real_features(encoder):
    encoder.eval()
    images = torch.randn(2, 3, 64, 64)
    garbage = BOXES.clone()
    garbage[1, 1:] = torch.tensor([5.0, 5.0, 50.0, 50.0])
    with torch.no_grad():
        a, b = encoder(images, BOXES, MASK), encoder(images, garbage, MASK)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a[0, 0], a[0, 1])  # different boxes, different features


def test_stride_and_channels_come_from_timm(encoder):
    assert encoder.spatial_scale == pytest.approx(1 / 32)
    assert encoder.mlp[0].in_features == 512


def test_pretrained_path_loads_a_local_checkpoint(tmp_path):
    full = timm.create_model("resnet18", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    enc = RegionEncoder(
        "resnet18", pretrained=False, pretrained_path=str(tmp_path / "r18.pth"), hidden_dim=8, embed_dim=4
    )
    torch.testing.assert_close(enc.backbone.layer4[0].conv1.weight, full.layer4[0].conv1.weight)


def test_frozen_backbone_features_are_cached_per_key():
    torch.manual_seed(0)
    enc = RegionEncoder("resnet18", pretrained=False, hidden_dim=8, embed_dim=4, freeze_backbone=True, cache_size=2)
    calls = []
    enc.backbone.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = torch.randn(2, 3, 64, 64)
    enc.train()
    plain = enc(images, BOXES, MASK)
    first = enc(images, BOXES, MASK, keys=["a", "b"])
    again = enc(images.flip(0), BOXES.flip(0), MASK.flip(0), keys=["b", "a"])  # both from the cache
    assert calls == [2, 2]
    torch.testing.assert_close(first, plain)
    torch.testing.assert_close(again, first.flip(0))
    enc(images[:1], BOXES[:1], MASK[:1], keys=["c"])  # a third image evicts the least recent ("b")
    assert calls == [2, 2, 1] and len(enc._cache) == 2
    assert not any("cache" in k for k in enc.state_dict())
    assert not enc.backbone.training and all(not p.requires_grad for p in enc.backbone.parameters())
    with pytest.raises(ValueError, match="freeze_backbone"):
        RegionEncoder("resnet18", pretrained=False, cache_size=4)


def test_box_geometry_and_flattened_multi_level_pooling():
    enc = RegionEncoder("resnet18", pretrained=False, hidden_dim=8, embed_dim=4, out_index=[-3, -2], roi_size=2,
                        roi_pooling="flatten", box_geometry=True)
    assert enc.mlp[0].in_features == (128 + 256) * 4 + 7
    assert enc(torch.randn(2, 3, 64, 64), BOXES, MASK).shape == (2, 3, 4)
    from lightning_wsg.models.region_encoder import box_geometry

    geo = box_geometry(torch.tensor([[16.0, 8.0, 64.0, 40.0]]), 64, 64)
    torch.testing.assert_close(geo, torch.tensor([[0.25, 0.125, 1.0, 0.625, 0.75, 0.5, 0.375]]))
