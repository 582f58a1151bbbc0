"""Box conventions: conversions, the +1-pixel IoU equivalence, union boxes, point tests."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_wsg.boxes import (
    box_centers,
    box_iou,
    coco_to_corners,
    corners_to_coco,
    corners_to_xywh1,
    phraseloceval_to_corners,
    points_in_boxes,
    scale_boxes,
    union_box,
    xml_to_corners,
)


def iou_plus1(a: list[int], b: list[int]) -> float:
    """The phraseloceval IoU of inclusive integer boxes ``[xmin, ymin, xmax, ymax]``."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter / (area_a + area_b - inter)


def random_inclusive_boxes(rng: random.Random, n: int, size: int = 60) -> list[list[int]]:
    boxes = []
    for _ in range(n):
        x1, x2 = sorted(rng.randint(1, size) for _ in range(2))
        y1, y2 = sorted(rng.randint(1, size) for _ in range(2))
        boxes.append([x1, y1, x2, y2])
    return boxes


def test_xml_to_corners_is_zero_based_exclusive():
    assert xml_to_corners(torch.tensor([[1, 1, 10, 10]])).tolist() == [[0.0, 0.0, 10.0, 10.0]]
    # a single pixel: width 1 in corners
    assert xml_to_corners(torch.tensor([5, 7, 5, 7])).tolist() == [4.0, 6.0, 5.0, 7.0]
    assert xml_to_corners(torch.tensor([[1, 1, 10, 10]])).dtype == torch.float32


def test_xml_to_corners_does_not_modify_its_input():
    boxes = torch.tensor([[3.0, 4.0, 9.0, 9.0]])
    xml_to_corners(boxes)
    assert boxes.tolist() == [[3.0, 4.0, 9.0, 9.0]]


def test_coco_to_corners():
    assert coco_to_corners(torch.tensor([[10.5, 20.0, 30.0, 40.25]])).tolist() == [[10.5, 20.0, 40.5, 60.25]]


def test_phraseloceval_agrees_with_xml():
    rng = random.Random(0)
    for xmin, ymin, xmax, ymax in random_inclusive_boxes(rng, 50):
        xywh1 = torch.tensor([xmin, ymin, xmax - xmin + 1, ymax - ymin + 1], dtype=torch.float32)
        corners = phraseloceval_to_corners(xywh1)
        assert corners.tolist() == xml_to_corners(torch.tensor([xmin, ymin, xmax, ymax])).tolist()
        assert corners_to_xywh1(corners).tolist() == xywh1.tolist()


def test_box_iou_equals_the_plus_one_iou_of_inclusive_boxes():
    rng = random.Random(1)
    a = random_inclusive_boxes(rng, 40)
    b = random_inclusive_boxes(rng, 30) + [a[0], [a[0][2] + 1, a[0][3] + 1, a[0][2] + 4, a[0][3] + 4]]
    got = box_iou(xml_to_corners(torch.tensor(a)), xml_to_corners(torch.tensor(b)))
    expected = torch.tensor([[iou_plus1(x, y) for y in b] for x in a])
    assert got.shape == (40, 32)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert got[0, 30] == pytest.approx(1.0)  # identical box
    assert got[0, 31] == 0.0  # touching diagonally, no shared pixel


def test_box_iou_hand_example():
    # pixels 1..10 and 6..15 on one row: 5 shared of 15 covered
    a = xml_to_corners(torch.tensor([[1, 1, 10, 1]]))
    b = xml_to_corners(torch.tensor([[6, 1, 15, 1]]))
    assert box_iou(a, b).item() == pytest.approx(5 / 15)
    assert iou_plus1([1, 1, 10, 1], [6, 1, 15, 1]) == pytest.approx(5 / 15)


def test_union_box():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 25.0, 15.0, 50.0], [12.0, 22.0, 13.0, 23.0]])
    assert union_box(boxes).tolist() == [5.0, 20.0, 30.0, 50.0]
    assert union_box(boxes[:1]).tolist() == boxes[0].tolist()
    with pytest.raises(ValueError, match="non-empty"):
        union_box(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="non-empty"):
        union_box(torch.zeros(4))


def test_points_in_boxes_exclusive_far_corner():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 6.0, 6.0]])
    points = torch.tensor([[0.0, 0.0], [9.99, 9.99], [10.0, 5.0], [5.0, 10.0], [5.5, 5.5], [-0.1, 3.0]])
    inside = points_in_boxes(points, boxes)
    assert inside.dtype == torch.bool and inside.shape == (6, 2)
    assert inside[:, 0].tolist() == [True, True, False, False, True, False]
    assert inside[:, 1].tolist() == [False, False, False, False, True, False]


def test_points_in_boxes_matches_the_pixels_of_an_inclusive_box():
    xmin, ymin, xmax, ymax = 3, 4, 7, 9
    box = xml_to_corners(torch.tensor([[xmin, ymin, xmax, ymax]]))
    for i in range(1, 12):  # 1-based pixel i spans [i - 1, i) in corners
        for j in range(1, 12):
            centre = torch.tensor([[i - 0.5, j - 0.5]])
            corner = torch.tensor([[i - 1.0, j - 1.0]])
            covered = xmin <= i <= xmax and ymin <= j <= ymax
            assert points_in_boxes(centre, box).item() == covered
            assert points_in_boxes(corner, box).item() == covered


def test_box_centers_and_scale():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [2.0, 4.0, 4.0, 8.0]])
    assert box_centers(boxes).tolist() == [[5.0, 10.0], [3.0, 6.0]]
    assert scale_boxes(boxes, 0.5, 2.0).tolist() == [[0.0, 0.0, 5.0, 40.0], [1.0, 8.0, 2.0, 16.0]]


# ------------------------------------------------------------------------- properties
# Coordinates are multiples of 1/8 below 2^13 (or integers, for the inclusive conventions): every sum and
# difference the conversions take is then exact in float32, so round trips must hold exactly.
PIXELS = 8000
eighths = st.integers(0, 8 * PIXELS).map(lambda v: v / 8)


@st.composite
def inclusive_boxes(draw: st.DrawFn, max_boxes: int = 6) -> torch.Tensor:
    """``[N, 4]`` 1-based inclusive integer boxes ``xmin, ymin, xmax, ymax`` (Flickr XML)."""
    n = draw(st.integers(1, max_boxes))
    rows = []
    for _ in range(n):
        xmin, xmax = sorted(draw(st.lists(st.integers(1, PIXELS), min_size=2, max_size=2)))
        ymin, ymax = sorted(draw(st.lists(st.integers(1, PIXELS), min_size=2, max_size=2)))
        rows.append([xmin, ymin, xmax, ymax])
    return torch.tensor(rows, dtype=torch.float32)


@st.composite
def corner_boxes(draw: st.DrawFn, max_boxes: int = 6) -> torch.Tensor:
    """``[N, 4]`` 0-based corner boxes with ``x1 <= x2``, ``y1 <= y2`` (empty boxes allowed)."""
    n = draw(st.integers(1, max_boxes))
    rows = []
    for _ in range(n):
        x1, x2 = sorted(draw(st.lists(eighths, min_size=2, max_size=2)))
        y1, y2 = sorted(draw(st.lists(eighths, min_size=2, max_size=2)))
        rows.append([x1, y1, x2, y2])
    return torch.tensor(rows, dtype=torch.float32)


@st.composite
def coco_boxes(draw: st.DrawFn, max_boxes: int = 6) -> torch.Tensor:
    """``[N, 4]`` COCO ``x, y, w, h`` boxes (0-based, ``w, h >= 0``)."""
    n = draw(st.integers(1, max_boxes))
    return torch.tensor([[draw(eighths) for _ in range(4)] for _ in range(n)], dtype=torch.float32)


def corners_to_xml(corners: torch.Tensor) -> torch.Tensor:
    """The Flickr XML box of corners (the package reads XML only, so the inverse is written here)."""
    return corners + torch.tensor([1.0, 1.0, 0.0, 0.0])


def xml_to_xywh1(xml: torch.Tensor) -> torch.Tensor:
    """The phraseloceval ``x, y, w, h`` of an XML box, by its definition ``w = xmax - xmin + 1``."""
    return torch.cat([xml[:, :2], xml[:, 2:] - xml[:, :2] + 1], dim=1)


@settings(max_examples=40, deadline=None)
@given(inclusive_boxes())
def test_property_xml_round_trips_through_corners_and_phraseloceval(xml: torch.Tensor) -> None:
    """XML -> corners -> XML, and XML -> corners -> phraseloceval -> corners: the same pixels each way."""
    corners = xml_to_corners(xml)
    assert torch.equal(corners_to_xml(corners), xml)
    # an inclusive box of n pixels is n wide in corners
    assert torch.equal(corners[:, 2:] - corners[:, :2], xml[:, 2:] - xml[:, :2] + 1)
    xywh1 = corners_to_xywh1(corners)
    assert torch.equal(xywh1, xml_to_xywh1(xml))
    assert torch.equal(phraseloceval_to_corners(xywh1), corners)
    # COCO width is the pixel count too, its x the 0-based column
    assert torch.equal(coco_to_corners(corners_to_coco(corners)), corners)
    assert torch.equal(corners_to_coco(corners), torch.cat([xml[:, :2] - 1, xywh1[:, 2:]], dim=1))


@settings(max_examples=40, deadline=None)
@given(corner_boxes())
def test_property_corners_round_trip_through_coco_and_phraseloceval(corners: torch.Tensor) -> None:
    assert torch.equal(coco_to_corners(corners_to_coco(corners)), corners)
    assert torch.equal(phraseloceval_to_corners(corners_to_xywh1(corners)), corners)
    assert torch.equal(xml_to_corners(corners_to_xml(corners)), corners)


@settings(max_examples=40, deadline=None)
@given(coco_boxes())
def test_property_coco_and_phraseloceval_round_trip_through_corners(xywh: torch.Tensor) -> None:
    assert torch.equal(corners_to_coco(coco_to_corners(xywh)), xywh)
    # phraseloceval is COCO shifted by one pixel (1-based x, y)
    xywh1 = xywh + torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert torch.equal(corners_to_xywh1(phraseloceval_to_corners(xywh1)), xywh1)
    assert torch.equal(phraseloceval_to_corners(xywh1), coco_to_corners(xywh))


@settings(max_examples=40, deadline=None)
@given(corner_boxes(), corner_boxes())
def test_property_box_iou_is_symmetric_and_in_unit_interval(a: torch.Tensor, b: torch.Tensor) -> None:
    ab, ba = box_iou(a, b), box_iou(b, a)
    assert ab.shape == (len(a), len(b))
    non_empty = (a[:, 2:] > a[:, :2]).all(1)[:, None] & (b[:, 2:] > b[:, :2]).all(1)[None, :]
    # an empty box against an empty box is 0 / 0; every other pair has a defined IoU
    assert not ab[non_empty].isnan().any()
    torch.testing.assert_close(ab, ba.T, rtol=0, atol=0, equal_nan=True)
    defined = ab[~ab.isnan()]
    assert ((defined >= 0) & (defined <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(inclusive_boxes())
def test_property_an_inclusive_box_has_iou_one_with_itself(xml: torch.Tensor) -> None:
    """Every XML box covers at least one pixel, so its IoU with itself is exactly 1."""
    corners = xml_to_corners(xml)
    iou = box_iou(corners, corners)
    assert torch.equal(iou.diagonal(), torch.ones(len(xml)))
    assert torch.equal(iou, iou.T) and ((iou >= 0) & (iou <= 1)).all()


@settings(max_examples=40, deadline=None)
@given(corner_boxes(max_boxes=8))
def test_property_union_box_contains_each_box_and_is_the_smallest(boxes: torch.Tensor) -> None:
    union = union_box(boxes)
    assert union.shape == (4,)
    assert (union[:2] <= boxes[:, :2]).all() and (union[2:] >= boxes[:, 2:]).all()
    # the smallest such box: each side touches one of the boxes
    assert torch.equal(union, torch.cat([boxes[:, :2].amin(0), boxes[:, 2:].amax(0)]))
    # and each box lies inside it: its intersection with the union is the box itself
    if ((boxes[:, 2:] > boxes[:, :2]).all(1)).all():
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        union_area = (union[2] - union[0]) * (union[3] - union[1])
        torch.testing.assert_close(box_iou(boxes, union[None])[:, 0], area / union_area)


@pytest.mark.parametrize(
    "convert", [xml_to_corners, coco_to_corners, corners_to_coco, phraseloceval_to_corners, corners_to_xywh1]
)
@pytest.mark.parametrize("given", [torch.int64, torch.float64])
def test_conversions_return_float32_whatever_they_are_given(convert, given: torch.dtype):
    # integer boxes (JSON, XML) and float64 ones (numpy) must come out in the project's float32
    out = convert(torch.tensor([[3, 4, 10, 12]], dtype=given))
    assert out.dtype == torch.float32


def test_union_box_of_integer_boxes_is_float32():
    assert union_box([[3, 4, 10, 12], [1, 6, 8, 15]]).dtype == torch.float32
    assert union_box([[3, 4, 10, 12], [1, 6, 8, 15]]).tolist() == [1.0, 4.0, 10.0, 15.0]


def test_corners_to_coco_inverts_coco_to_corners():
    coco = torch.tensor([[10.5, 20.0, 30.0, 40.25], [0.0, 0.0, 1.0, 1.0]])
    assert corners_to_coco(torch.tensor([[10.5, 20.0, 40.5, 60.25]])).tolist() == [[10.5, 20.0, 30.0, 40.25]]
    assert corners_to_coco(coco_to_corners(coco)).tolist() == coco.tolist()
    boxes = torch.tensor([[3.0, 4.0, 9.0, 9.0]])
    corners_to_coco(boxes)
    assert boxes.tolist() == [[3.0, 4.0, 9.0, 9.0]]  # the input is left alone


def test_scale_boxes_keeps_dtype_precision_and_device():
    boxes64 = torch.tensor([[1.0, 2.0, 3.0, 7.0]], dtype=torch.float64)
    out = scale_boxes(boxes64, 0.1, 1 / 3)
    # a float32 factor would round 0.1 and 1/3 before the float64 product
    assert out.dtype == torch.float64
    assert out.tolist() == [[1.0 * 0.1, 2.0 * (1 / 3), 3.0 * 0.1, 7.0 * (1 / 3)]]
    assert scale_boxes(torch.ones(2, 4, dtype=torch.float16), 2.0, 3.0).dtype == torch.float16
    # the meta device stands in for a GPU: a factor left on the CPU cannot multiply it
    assert scale_boxes(torch.ones(2, 4, device="meta"), 2.0, 3.0).device.type == "meta"
