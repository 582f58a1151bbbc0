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
