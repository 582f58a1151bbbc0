"""Tests for lightning_wsg.metrics (checked against a hand-written phraseloceval reference)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torchmetrics.utilities.data import dim_zero_sum

from lightning_wsg.boxes import phraseloceval_to_corners, xml_to_corners
from lightning_wsg.metrics import FLICKR_PHRASE_TYPES, GroundingMetrics, phrase_results, predict_boxes

# ----------------------------------------------------------------------------- reference


def ref_iou(a, b) -> float:
    """phraseloceval IoU of inclusive 1-based integer boxes ``(xmin, ymin, xmax, ymax)``."""
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    inter = max(iw, 0) * max(ih, 0)
    area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def to_inclusive(c) -> tuple[int, int, int, int]:
    """Corners (0-based, exclusive far side) -> inclusive 1-based integers."""
    x1, y1, x2, y2 = (round(float(v)) for v in c)
    return x1 + 1, y1 + 1, x2, y2


def reference(scores, proposals, proposal_mask, phrase_mask, gt_boxes, gt_box_mask, types, ks, type_names):
    """Per-phrase Python evaluation, independent of the metric's vectorised code."""
    n = correct = correct_any = pointing = upper = 0
    recall = [0] * len(ks)
    tt = dict.fromkeys(type_names, 0)
    tc = dict.fromkeys(type_names, 0)
    B, P, R = scores.shape
    for b in range(B):
        valid = [r for r in range(R) if proposal_mask[b, r]]
        for p in range(P):
            gts = [to_inclusive(gt_boxes[b, p, k]) for k in range(gt_boxes.shape[2]) if gt_box_mask[b, p, k]]
            if not phrase_mask[b, p] or not gts:
                continue
            union = (min(g[0] for g in gts), min(g[1] for g in gts), max(g[2] for g in gts), max(g[3] for g in gts))
            ranked = sorted(valid, key=lambda r: -float(scores[b, p, r]))
            hit = [ref_iou(to_inclusive(proposals[b, r]), union) >= 0.5 for r in ranked]
            top = to_inclusive(proposals[b, ranked[0]])
            ok = hit[0]
            n += 1
            correct += ok
            correct_any += any(ref_iou(top, g) >= 0.5 for g in gts)
            # centre in 1-based pixel coordinates; pixel x covers [x, x + 1)
            cx, cy = (top[0] + top[2] + 1) / 2, (top[1] + top[3] + 1) / 2
            pointing += any(g[0] <= cx < g[2] + 1 and g[1] <= cy < g[3] + 1 for g in gts)
            upper += any(hit)
            for i, k in enumerate(ks):
                recall[i] += any(hit[:k])
            for t in set(types[b][p]) if types else ():
                if t in tt:
                    tt[t] += 1
                    tc[t] += ok
    d = max(n, 1)
    out = {"acc": correct / d, "acc_any": correct_any / d, "pointing": pointing / d, "upper_bound": upper / d,
           "num_phrases": n}
    out.update({f"recall@{k}": recall[i] / d for i, k in enumerate(ks)})
    out.update({f"acc_{t}": tc[t] / tt[t] for t in type_names if tt[t]})
    return out


# ----------------------------------------------------------------------------- helpers


def single(pred_xml, gt_xmls, scores=None, decoys=()):
    """One sample, one phrase: proposals = [pred] + decoys (XML inclusive), gt chain = gt_xmls."""
    props = xml_to_corners(torch.tensor([pred_xml, *decoys], dtype=torch.float32))[None]
    R = props.shape[1]
    s = torch.tensor(scores if scores is not None else [1.0] + [0.0] * (R - 1))[None, None]
    gtb = xml_to_corners(torch.tensor(gt_xmls, dtype=torch.float32))[None, None]
    union = torch.cat([gtb[..., :2].amin(2), gtb[..., 2:].amax(2)], -1)
    return dict(
        scores=s, proposals=props, proposal_mask=torch.ones(1, R, dtype=torch.bool),
        phrase_mask=torch.ones(1, 1, dtype=torch.bool), gt_union=union, gt_boxes=gtb,
        gt_box_mask=torch.ones(1, 1, gtb.shape[2], dtype=torch.bool),
    )


def random_batch(gen, B=3, P=4, R=12, K=3, with_padding=True):
    """Integer boxes on a small canvas, proposals partly jittered from ground truth."""

    def rand_boxes(*shape):
        xy = torch.randint(0, 30, (*shape, 2), generator=gen)
        wh = torch.randint(1, 15, (*shape, 2), generator=gen)
        return torch.cat([xy, xy + wh], -1).float()

    gt_boxes = rand_boxes(B, P, K)
    gt_box_mask = torch.rand(B, P, K, generator=gen) < 0.6
    gt_box_mask[:, :, 0] = True
    gt_boxes = gt_boxes * gt_box_mask[..., None]
    proposals = rand_boxes(B, R)
    src = gt_boxes[:, :, 0].reshape(B, P, 4)
    jitter = torch.randint(-2, 3, (B, P, 4), generator=gen).float()
    proposals[:, :P] = torch.maximum(src + jitter, torch.zeros(()))
    proposals[:, :P, 2:] = torch.maximum(proposals[:, :P, 2:], proposals[:, :P, :2] + 1)
    proposal_mask = torch.ones(B, R, dtype=torch.bool)
    phrase_mask = torch.ones(B, P, dtype=torch.bool)
    if with_padding:
        proposal_mask[0, R // 2 :] = False
        phrase_mask[1, P - 1] = False
        gt_box_mask[2, 0] = False  # a phrase without any box (notvisual-like): never counted
    union = torch.cat([torch.where(gt_box_mask[..., None], gt_boxes[..., :2], 1e9).amin(2),
                       torch.where(gt_box_mask[..., None], gt_boxes[..., 2:], -1e9).amax(2)], -1)
    union = torch.where(gt_box_mask.any(-1, keepdim=True), union, torch.zeros(()))
    pool = list(FLICKR_PHRASE_TYPES) + ["notvisual"]
    types = [[[pool[int(i)] for i in torch.randint(0, len(pool), (int(torch.randint(1, 3, (), generator=gen)),),
                                                   generator=gen)] for _ in range(P)] for _ in range(B)]
    return dict(
        scores=torch.randn(B, P, R, generator=gen), proposals=proposals, proposal_mask=proposal_mask,
        phrase_mask=phrase_mask, gt_union=union, gt_boxes=gt_boxes, gt_box_mask=gt_box_mask, phrase_types=types,
    )


def check_against_reference(out, batches, ks=(1, 5, 10), type_names=FLICKR_PHRASE_TYPES):
    B_all = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k not in ("phrase_types", "gt_union")}
    types = [t for b in batches for t in b["phrase_types"]]
    ref = reference(B_all["scores"], B_all["proposals"], B_all["proposal_mask"], B_all["phrase_mask"],
                    B_all["gt_boxes"], B_all["gt_box_mask"], types, ks, type_names)
    assert set(out) == set(ref)
    for k, v in ref.items():
        assert math.isclose(float(out[k]), v, abs_tol=1e-6), (k, float(out[k]), v)
    return ref


# ----------------------------------------------------------------------------- tests

THRESHOLD_CASES = [
    # gt (XML, inclusive 1-based), predicted box, IoU by hand with the +1 convention
    ((1, 1, 10, 10), (1, 1, 10, 5), 0.5),  # plain (no +1) IoU would be 36/81 = 0.44
    ((1, 1, 100, 1), (1, 1, 50, 1), 0.5),
    ((1, 1, 100, 1), (1, 1, 49, 1), 0.49),
    ((1, 1, 50, 1), (1, 1, 100, 1), 0.5),
    ((1, 1, 50, 1), (1, 1, 101, 1), 50 / 101),
    ((1, 1, 30, 10), (11, 1, 40, 10), 0.5),
    ((1, 1, 30, 10), (12, 1, 41, 10), 190 / 410),
    ((5, 5, 104, 104), (5, 5, 104, 54), 0.5),
    ((5, 5, 104, 104), (5, 5, 104, 53), 0.49),
    ((1, 1, 10, 10), (1, 1, 11, 5), 50 / 105),
]


@pytest.mark.parametrize("gt, pred, iou", THRESHOLD_CASES)
def test_threshold_matches_phraseloceval(gt, pred, iou):
    assert math.isclose(ref_iou(gt, pred), iou, rel_tol=1e-12)
    expected = float(ref_iou(gt, pred) >= 0.5)
    inputs = single(pred, [gt], decoys=[(200, 200, 210, 210)])
    # the union box as phraseloceval writes it (x, y, w, h; 1-based) must give the same box
    xywh = torch.tensor([gt[0], gt[1], gt[2] - gt[0] + 1, gt[3] - gt[1] + 1], dtype=torch.float32)
    assert torch.equal(phraseloceval_to_corners(xywh), inputs["gt_union"][0, 0])
    m = GroundingMetrics()
    m.update(**inputs)
    out = m.compute()
    assert out["acc"].item() == expected
    assert out["acc_any"].item() == expected  # a one-box chain: union == the box
    assert out["recall@1"].item() == expected
    assert out["upper_bound"].item() == expected


def test_union_vs_any_box_and_pointing():
    a, b = (1, 1, 10, 10), (91, 1, 100, 10)  # union (1, 1, 100, 10): IoU with either box 0.1
    m = GroundingMetrics()
    m.update(**single(a, [a, b]))
    out = m.compute()
    assert (out["acc"].item(), out["acc_any"].item(), out["pointing"].item()) == (0.0, 1.0, 1.0)

    m = GroundingMetrics()
    m.update(**single((1, 1, 100, 10), [a, b]))  # the union itself: centre falls between the boxes
    out = m.compute()
    assert (out["acc"].item(), out["acc_any"].item(), out["pointing"].item()) == (1.0, 0.0, 0.0)

    m = GroundingMetrics()
    m.update(**single((4, 4, 6, 6), [(1, 1, 10, 10)]))  # tiny box inside: points but wrong
    out = m.compute()
    assert (out["acc"].item(), out["pointing"].item()) == (0.0, 1.0)

    # centre exactly on the far edge (x = 10 in corners) is outside; on the near edge inside
    m = GroundingMetrics()
    m.update(**single((9, 1, 12, 10), [(1, 1, 10, 10)]))  # corners (8, 0, 12, 10): centre x = 10
    assert m.compute()["pointing"].item() == 0.0
    m = GroundingMetrics()
    m.update(**single((1, 1, 1, 10), [(1, 1, 10, 10), (2, 1, 12, 10)]))  # corners (0..1): centre x = 0.5
    assert m.compute()["pointing"].item() == 1.0


def test_recall_at_k_ranking_and_upper_bound():
    gt = (1, 1, 10, 10)
    far = [(100 + 20 * i, 100, 110 + 20 * i, 110) for i in range(11)]
    # proposal 0 is the only hit; its rank is set through the scores
    def run(rank, R=12, ks=(1, 5, 10)):
        scores = [0.0] * R
        order = list(range(1, R))
        order.insert(rank, 0)  # order[i] is the proposal at rank i
        for i, r in enumerate(order):
            scores[r] = float(R - i)
        m = GroundingMetrics(ks=ks)
        m.update(**single(gt, [gt], scores=scores, decoys=far[: R - 1]))
        return {k: v.item() for k, v in m.compute().items()}

    assert [run(0)[k] for k in ("acc", "recall@1", "recall@5", "recall@10", "upper_bound")] == [1, 1, 1, 1, 1]
    assert [run(2)[k] for k in ("acc", "recall@1", "recall@5", "recall@10", "upper_bound")] == [0, 0, 1, 1, 1]
    assert [run(4)[k] for k in ("recall@5", "recall@10")] == [1, 1]
    assert [run(5)[k] for k in ("recall@5", "recall@10")] == [0, 1]
    assert [run(11)[k] for k in ("recall@10", "upper_bound")] == [0, 1]
    # fewer proposals than k: all of them are used
    assert [run(2, R=3)[k] for k in ("recall@1", "recall@5", "recall@10")] == [0, 1, 1]
    # custom ks -> keys follow them
    assert {k for k in run(0, ks=(2, 3)) if k.startswith("recall")} == {"recall@2", "recall@3"}
    # no hit at all
    m = GroundingMetrics()
    m.update(**single(far[0], [gt], decoys=far[1:]))
    assert m.compute()["upper_bound"].item() == 0.0


def test_per_type_accuracy_with_multi_type_phrase():
    gt = xml_to_corners(torch.tensor([[1.0, 1, 10, 10]]))
    miss = xml_to_corners(torch.tensor([[50.0, 50, 60, 60]]))
    P = 5
    proposals = torch.cat([gt, miss])[None]  # [1, 2, 4]
    # phrases 0, 2, 3 pick the hit; phrase 1 picks the miss; phrase 4 is padding
    scores = torch.tensor([[[1.0, 0], [0, 1], [1, 0], [1, 0], [1, 0]]])
    phrase_mask = torch.tensor([[True, True, True, True, False]])
    types = [[["people"], ["people", "clothing"], ["clothing", "clothing"], ["foo"], ["scene"]]]
    m = GroundingMetrics()
    m.update(scores, proposals, torch.ones(1, 2, dtype=torch.bool), phrase_mask, gt.expand(1, P, 4),
             gt.expand(1, P, 1, 4), torch.ones(1, P, 1, dtype=torch.bool), types)
    out = m.compute()
    assert out["num_phrases"].item() == 4
    assert out["acc"].item() == 0.75
    assert out["acc_people"].item() == 0.5  # phrases 0 (right) and 1 (wrong)
    assert out["acc_clothing"].item() == 0.5  # phrases 1 (wrong) and 2 (right, type listed twice)
    assert not {"acc_scene", "acc_foo", "acc_animals"} & set(out)  # padding / unknown / unseen
    # no types given: no per-type keys
    m = GroundingMetrics()
    m.update(scores, proposals, torch.ones(1, 2, dtype=torch.bool), phrase_mask, gt.expand(1, P, 4),
             gt.expand(1, P, 1, 4), torch.ones(1, P, 1, dtype=torch.bool))
    assert not [k for k in m.compute() if k.startswith("acc_") and k != "acc_any"]


def test_padding_is_ignored():
    gt = xml_to_corners(torch.tensor([1.0, 1, 10, 10]))
    proposals = torch.stack([xml_to_corners(torch.tensor([50.0, 50, 60, 60])), gt])[None]  # [1, 2, 4]
    proposal_mask = torch.tensor([[True, False]])  # the perfect box is padding
    scores = torch.tensor([[[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]]], requires_grad=True)
    phrase_mask = torch.tensor([[True, True, False]])
    gt_box_mask = torch.tensor([[[True], [False], [True]]])  # phrase 1 has no box, phrase 2 is padding
    m = GroundingMetrics()
    m.update(scores, proposals, proposal_mask, phrase_mask, gt.expand(1, 3, 4), gt.expand(1, 3, 1, 4), gt_box_mask,
             [[["people"], ["other"], ["scene"]]])
    out = m.compute()
    assert out["num_phrases"].item() == 1
    for k in ("acc", "acc_any", "pointing", "recall@1", "recall@5", "recall@10", "upper_bound", "acc_people"):
        assert out[k].item() == 0.0, k
    assert "acc_other" not in out and "acc_scene" not in out

    top = predict_boxes(scores, proposals, proposal_mask, k=5)
    assert top.indices.shape == (1, 3, 2) and top.boxes.shape == (1, 3, 2, 4)
    assert top.indices[..., 0].eq(0).all() and top.indices[..., 1].eq(-1).all()
    assert top.mask[..., 0].all() and not top.mask[..., 1].any()
    assert torch.equal(top.boxes[0, 0, 0], proposals[0, 0]) and top.boxes[..., 1, :].eq(0).all()
    indices, boxes, top_scores = top  # unpacks as (indices, boxes, scores)
    assert top_scores[..., 0].eq(0).all() and top_scores[..., 1].eq(float("-inf")).all()
    assert not top_scores.requires_grad


def test_predict_boxes_order_ties_and_nan():
    proposals = torch.arange(16.0).reshape(1, 4, 4)
    proposals[..., 2:] += 10
    scores = torch.tensor([[[0.1, float("nan"), 0.7, 0.7], [float("-inf")] * 4]])
    top = predict_boxes(scores, proposals, torch.tensor([[True, True, True, False]]), k=3)
    assert top.indices.tolist() == [[[2, 0, 1], [0, 1, 2]]]  # ties stable, NaN last, padding never
    assert top.mask.all()
    assert top.scores[0, 0, :2].tolist() == pytest.approx([0.7, 0.1]) and top.scores[0, 0, 2].isnan()
    assert torch.equal(top.boxes[0, 0], proposals[0, [2, 0, 1]])
    with pytest.raises(ValueError, match="k must be >= 1, got 0"):
        predict_boxes(scores, proposals, torch.ones(1, 4, dtype=torch.bool), k=0)


def test_empty_metric_and_keys():
    m = GroundingMetrics()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = m.compute()
    assert set(out) == {"acc", "acc_any", "pointing", "recall@1", "recall@5", "recall@10", "upper_bound",
                        "num_phrases"}
    assert out["num_phrases"].item() == 0
    assert all(not torch.isnan(v).any() and v.item() == 0 for v in out.values())
    with pytest.raises(ValueError, match=r"ks must be distinct positive integers, got \(1, 1\)"):
        GroundingMetrics(ks=(1, 1))
    with pytest.raises(ValueError, match=r"shape mismatch: scores \(1, 2, 3\), proposals \(1, 4, 4\)"):
        m.update(torch.zeros(1, 2, 3), torch.zeros(1, 4, 4), torch.ones(1, 4, dtype=torch.bool),
                 torch.ones(1, 2, dtype=torch.bool), torch.zeros(1, 2, 4), torch.zeros(1, 2, 1, 4),
                 torch.ones(1, 2, 1, dtype=torch.bool))


def test_random_batches_accumulate_like_reference():
    gen = torch.Generator().manual_seed(0)
    batches = [random_batch(gen) for _ in range(4)]
    m = GroundingMetrics()
    for b in batches:
        m.update(**b)
    ref = check_against_reference(m.compute(), batches)
    assert ref["num_phrases"] == 4 * (3 * 4 - 2)
    assert 0 < ref["acc"] < ref["upper_bound"]  # the random data exercises both outcomes
    # a second run with reset gives the same again
    m.reset()
    for b in batches:
        m.update(**b)
    check_against_reference(m.compute(), batches)


def test_sync_semantics_sum_of_states():
    gen = torch.Generator().manual_seed(1)
    batches = [random_batch(gen, with_padding=i % 2 == 0) for i in range(4)]
    full, a, b = GroundingMetrics(), GroundingMetrics(), GroundingMetrics()
    for i, batch in enumerate(batches):
        full.update(**batch)
        (a if i < 2 else b).update(**batch)
    expected = full.compute()

    # every state is a sum-reduced tensor: adding them by hand is what DDP's sync does
    assert all(a._reductions[name] is dim_zero_sum for name in a._defaults)
    summed = copy.deepcopy(a)
    for name in a._defaults:
        assert isinstance(getattr(a, name), torch.Tensor)
        setattr(summed, name, getattr(a, name) + getattr(b, name))
    summed._computed = None
    got = summed.compute()
    assert set(got) == set(expected)
    for k in expected:
        assert torch.allclose(got[k].float(), expected[k].float()), k

    a.merge_state(b)
    got = a.compute()
    for k in expected:
        assert torch.allclose(got[k].float(), expected[k].float()), k
    check_against_reference(expected, batches)


def test_padded_gt_boxes_never_match():
    """A masked gt slot holding the predicted box must count for neither any-box nor pointing."""
    inputs = single((1, 1, 10, 10), [(50, 50, 60, 60), (1, 1, 10, 10)])
    inputs["gt_box_mask"] = torch.tensor([[[True, False]]])
    inputs["gt_union"] = xml_to_corners(torch.tensor([[[50.0, 50, 60, 60]]]))
    m = GroundingMetrics()
    m.update(**inputs)
    out = m.compute()
    assert (out["num_phrases"].item(), out["acc_any"].item(), out["pointing"].item()) == (1, 0.0, 0.0)


# ------------------------------------------------------------------------- properties
# Small integer boxes on a 24-pixel canvas: proposals often reach IoU 0.5 with a ground-truth box
# and often do not, so every outcome (correct, any-box, pointing, recall@k) takes both values.
PROPERTY_TYPES = ("people", "clothing", "notvisual")


def canvas_box(draw: st.DrawFn) -> list[float]:
    x, y = draw(st.integers(0, 20)), draw(st.integers(0, 20))
    return [float(x), float(y), float(x + draw(st.integers(1, 10))), float(y + draw(st.integers(1, 10)))]


def near_box(draw: st.DrawFn, targets: torch.Tensor) -> list[float]:
    """A proposal: a random box, or one of ``targets`` ``[N, 4]`` moved by up to a pixel per side."""
    if draw(st.integers(0, 2)) == 0:
        return canvas_box(draw)
    x1, y1, x2, y2 = (v + draw(st.integers(-1, 1)) for v in targets[draw(st.integers(0, len(targets) - 1))].tolist())
    return [x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)]


@st.composite
def grounding_batches(draw: st.DrawFn) -> dict:
    """The arguments of :meth:`GroundingMetrics.update`, with padded proposals, phrases and gt boxes.

    Scores are distinct along the proposals of a phrase: with ties the stable sort keeps the
    proposal order, so the pick would rightly depend on it.
    """
    B, P, R, K = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 3))
    gt_boxes = torch.tensor([[[canvas_box(draw) for _ in range(K)] for _ in range(P)] for _ in range(B)])
    gt_box_mask = torch.tensor(draw(st.lists(st.booleans(), min_size=B * P * K, max_size=B * P * K))).reshape(B, P, K)
    gt_box_mask[..., 0] |= draw(st.booleans())  # mostly phrases with a box (those that count)
    big = torch.tensor(1e9)
    union = torch.cat(
        [torch.where(gt_box_mask[..., None], gt_boxes[..., :2], big).amin(2),
         torch.where(gt_box_mask[..., None], gt_boxes[..., 2:], -big).amax(2)], -1,
    )  # fmt: skip
    union = torch.where(gt_box_mask.any(-1, keepdim=True), union, torch.zeros(()))
    # proposals near the union boxes (the hits of the metric) and near single boxes (any-box, pointing)
    targets = torch.cat([union, gt_boxes.reshape(B, P * K, 4)], 1)
    proposals = torch.tensor([[near_box(draw, targets[b]) for _ in range(R)] for b in range(B)])
    proposal_mask = torch.tensor([draw(st.lists(st.booleans(), min_size=R, max_size=R)) for _ in range(B)])
    proposal_mask[:, 0] |= ~proposal_mask.any(1)  # every image has a real proposal (a prediction to report)
    scores = [
        draw(st.lists(st.floats(-10, 10, width=32), min_size=R, max_size=R, unique=True))
        for _ in range(B * P)
    ]
    types = [[draw(st.lists(st.sampled_from(PROPERTY_TYPES), min_size=1, max_size=2)) for _ in range(P)]
             for _ in range(B)]  # fmt: skip
    phrase_mask = torch.tensor([draw(st.lists(st.booleans(), min_size=P, max_size=P)) for _ in range(B)])
    phrase_mask[:, 0] |= draw(st.booleans())
    return {
        "scores": torch.tensor(scores, dtype=torch.float32).reshape(B, P, R),
        "proposals": proposals,
        "proposal_mask": proposal_mask,
        "phrase_mask": phrase_mask,
        "gt_union": union,
        "gt_boxes": gt_boxes * gt_box_mask[..., None],
        "gt_box_mask": gt_box_mask,
        "phrase_types": types,
    }


def evaluate(batch: dict, ks: tuple[int, ...] = (1, 2, 3)) -> tuple[dict[str, float], list]:
    """The metrics of one batch and its :func:`phrase_results` (one word per phrase)."""
    metric = GroundingMetrics(phrase_types=PROPERTY_TYPES, ks=ks)
    metric.update(**batch)
    out = {k: float(v) for k, v in metric.compute().items()}
    B, P, _ = batch["scores"].shape
    words = [[f"w{b}{p}" for p in range(P)] for b in range(B)]
    spans = [[(p, p + 1) for p in range(P)] for _ in range(B)]
    rows = phrase_results(batch["scores"], batch["proposals"], batch["proposal_mask"], words, spans, top_k=2)
    return out, rows


def take_proposals(batch: dict, columns: torch.Tensor) -> dict:
    """The batch with each image's proposals (and their scores) reordered: ``columns`` is ``[B, R']``."""
    B, P, _ = batch["scores"].shape
    return batch | {
        "scores": batch["scores"].gather(2, columns[:, None, :].expand(B, P, -1)),
        "proposals": batch["proposals"].gather(1, columns[..., None].expand(-1, -1, 4)),
        "proposal_mask": batch["proposal_mask"].gather(1, columns),
    }


@settings(max_examples=40, deadline=None)
@given(grounding_batches(), st.data())
def test_property_metrics_do_not_depend_on_proposal_order(batch: dict, data: st.DataObject) -> None:
    B, _, R = batch["scores"].shape
    perm = torch.tensor([data.draw(st.permutations(range(R))) for _ in range(B)])
    permuted = take_proposals(batch, perm)
    assert evaluate(permuted) == evaluate(batch)


@settings(max_examples=40, deadline=None)
@given(grounding_batches(), st.data())
def test_property_metrics_do_not_depend_on_padded_proposals(batch: dict, data: st.DataObject) -> None:
    """Padded proposals inserted anywhere, with any box (the ground truth itself) and any score
    (+inf, NaN), change nothing."""
    B, P, R = batch["scores"].shape
    n_pad = data.draw(st.integers(1, 4))
    # column n of the padded batch: an original proposal (index < R) or a pad (R + i), originals in order
    columns = []
    for _ in range(B):
        is_pad = data.draw(st.permutations([False] * R + [True] * n_pad))
        originals, pads = iter(range(R)), iter(range(R, R + n_pad))
        columns.append([next(pads) if pad else next(originals) for pad in is_pad])
    gt_like = batch["gt_boxes"].reshape(B, -1, 4)
    pad_boxes = torch.stack([
        torch.stack([gt_like[b, data.draw(st.integers(0, gt_like.shape[1] - 1))] if data.draw(st.booleans())
                     else torch.tensor(canvas_box(data.draw)) for _ in range(n_pad)])
        for b in range(B)
    ])  # fmt: skip
    pad_scores = torch.tensor(
        data.draw(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=B * P * n_pad,
                           max_size=B * P * n_pad))
    ).reshape(B, P, n_pad)  # fmt: skip
    wide = batch | {
        "scores": torch.cat([batch["scores"], pad_scores], 2),
        "proposals": torch.cat([batch["proposals"], pad_boxes], 1),
        "proposal_mask": torch.cat([batch["proposal_mask"], torch.zeros(B, n_pad, dtype=torch.bool)], 1),
    }
    padded = take_proposals(wide, torch.tensor(columns))
    assert evaluate(padded) == evaluate(batch)


# ------------------------------------------------------------------ ranking, outcomes, batches


def test_rank_proposals_keeps_the_proposal_order_among_ties():
    """40 tied scores (enough for an unstable sort to reorder them): real proposals first, each
    group in index order; a 0/1 integer mask means the same as a bool one."""
    from lightning_wsg.metrics import rank_proposals

    R = 40
    mask = torch.tensor([[i % 3 != 1 for i in range(R)]])
    real = [i for i in range(R) if i % 3 != 1]
    pads = [i for i in range(R) if i % 3 == 1]
    for given in (mask, mask.long()):
        order, valid = rank_proposals(torch.zeros(1, 2, R), given)
        assert order.tolist() == [[real + pads] * 2]
        assert valid.dtype == torch.bool and valid.tolist() == [[[True] * len(real) + [False] * len(pads)] * 2]


def test_rank_proposals_puts_nan_below_every_real_score():
    from lightning_wsg.metrics import rank_proposals

    scores = torch.tensor([[[float("nan"), -5.0, -1e30, 2.0]]], dtype=torch.float16)
    order, valid = rank_proposals(scores, torch.ones(1, 4, dtype=torch.bool))
    # float16 cannot hold -1e30 (it is -inf there); NaN still ranks after it, as -inf in float32
    assert order.tolist() == [[[3, 1, 2, 0]]] and valid.all()


def test_predict_boxes_defaults_to_the_top_one_and_accepts_an_integer_mask():
    proposals = torch.tensor([[[0.0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]]])
    scores = torch.tensor([[[0.1, 0.9, 0.5]]])
    top = predict_boxes(scores, proposals, torch.tensor([[1, 0, 1]]))
    assert top.indices.tolist() == [[[2]]] and top.mask.dtype == torch.bool
    assert top.boxes.tolist() == [[[[4.0, 4, 5, 5]]]] and top.scores.tolist() == [[[0.5]]]
    top = predict_boxes(scores, proposals, torch.tensor([[1, 0, 1]]), k=3)
    assert top.indices.tolist() == [[[2, 0, -1]]]
    assert top.boxes[0, 0, 2].tolist() == [0.0] * 4 and top.scores[0, 0, 2].item() == float("-inf")
    with pytest.raises(ValueError, match="k must be >= 1, got -1"):
        predict_boxes(scores, proposals, torch.ones(1, 3, dtype=torch.bool), k=-1)


def test_phrase_results_lists_the_chosen_box_and_the_next_ones():
    proposals = torch.tensor(
        [[[0.0, 0, 10.123456, 10], [1.005, 2.994, 3.5, 4.25], [5.0, 5, 9, 9], [0, 0, 1, 1]],
         [[0.0, 0, 2, 2], [7.0, 7, 8, 8], [0, 0, 0, 0], [0, 0, 0, 0]]]
    )  # fmt: skip
    proposal_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    scores = torch.tensor(
        [[[0.1234567891, 0.9, 0.5, 99.0], [0.3, 0.2, 0.1, 99.0]],
         [[0.25, 0.75, 99.0, 99.0], [0.0, 0.0, 0.0, 0.0]]]
    )  # fmt: skip
    words = [["a", "tall", "man", "in", "blue"], ["the", "dog"]]
    spans = [[(0, 3), (3, 5)], [(1, 2)]]
    rows = phrase_results(scores, proposals, proposal_mask, words, spans, top_k=2)
    assert [[r["phrase"] for r in s] for s in rows] == [["a tall man", "in blue"], ["dog"]]
    first = rows[0][0]
    assert first["span"] == [0, 3] and all(type(v) is int for v in first["span"])
    assert first["box"] == [1.0, 2.99, 3.5, 4.25] and first["score"] == 0.9
    # the next top_k real proposals, best first, rounded like the chosen one (padding never listed)
    assert first["alternatives"] == [
        {"box": [5.0, 5.0, 9.0, 9.0], "score": 0.5},
        {"box": [0.0, 0.0, 10.12, 10.0], "score": 0.123457},
    ]
    assert rows[0][1]["box"] == [0.0, 0.0, 10.12, 10.0] and rows[0][1]["score"] == 0.3
    # the second image has two real proposals: one alternative only
    assert rows[1][0] == {"phrase": "dog", "span": [1, 2], "box": [7.0, 7.0, 8.0, 8.0], "score": 0.75,
                          "alternatives": [{"box": [0.0, 0.0, 2.0, 2.0], "score": 0.25}]}
    for top_k in (0, -3):  # no alternatives, the chosen box still
        rows = phrase_results(scores, proposals, proposal_mask, words, spans, top_k=top_k)
        assert rows[0][0]["alternatives"] == [] and rows[0][0]["box"] == [1.0, 2.99, 3.5, 4.25]
    rows = phrase_results(scores, proposals, proposal_mask, words, spans)  # default: 5 alternatives at most
    assert len(rows[0][0]["alternatives"]) == 2
    wide = torch.zeros(1, 1, 8)
    rows = phrase_results(wide, torch.zeros(1, 8, 4), torch.ones(1, 8, dtype=torch.bool), [["x"]], [[(0, 1)]])
    assert len(rows[0][0]["alternatives"]) == 5


def test_metric_arguments_are_checked():
    assert GroundingMetrics(ks=(1,)).ks == (1,)  # the smallest k is allowed
    for ks in ((0,), (2, -1)):
        with pytest.raises(ValueError, match="ks must be distinct positive integers"):
            GroundingMetrics(ks=ks)
    with pytest.raises(ValueError, match=r"duplicate phrase types in \('people', 'scene', 'people'\)"):
        GroundingMetrics(phrase_types=("people", "scene", "people"))
    m = GroundingMetrics()
    assert m.phrase_types == FLICKR_PHRASE_TYPES and m.ks == (1, 5, 10) and m.iou_threshold == 0.5
    inputs = single((1, 1, 10, 10), [(1, 1, 10, 10)])
    with pytest.raises(ValueError, match=r"shape mismatch: gt_union \(1, 1, 4\), gt_boxes \(1, 1, 2, 4\), "
                                         r"gt_box_mask \(1, 1, 1\) for scores \(1, 1, 1\)"):
        m.update(**(inputs | {"gt_boxes": inputs["gt_boxes"].expand(1, 1, 2, 4).clone()}))
    with pytest.raises(ValueError, match=r"gt_box_mask \(1, 1\) for scores"):
        m.update(**(inputs | {"gt_box_mask": torch.ones(1, 1, dtype=torch.bool)}))
    with pytest.raises(ValueError, match=r"gt_union \(1, 4\), gt_boxes"):
        m.update(**(inputs | {"gt_union": inputs["gt_union"][0]}))
    with pytest.raises(ValueError, match=r"proposal_mask \(1, 2\), phrase_mask \(1, 1\)"):
        m.update(**(inputs | {"proposal_mask": torch.ones(1, 2, dtype=torch.bool)}))
    with pytest.raises(ValueError, match=r"phrase_mask \(1, 2\)$"):
        m.update(**(inputs | {"phrase_mask": torch.ones(1, 2, dtype=torch.bool)}))


def test_iou_threshold_and_counts_are_exact():
    inputs = single((1, 1, 10, 10), [(1, 1, 10, 5)])  # IoU exactly 0.5
    for threshold, expected in ((0.5, 1.0), (0.51, 0.0)):
        m = GroundingMetrics(iou_threshold=threshold)
        m.update(**inputs)
        assert m.compute()["acc"].item() == expected
    m = GroundingMetrics()
    m.update(**inputs)
    m.update(**inputs)
    out = m.compute()
    assert out["num_phrases"].dtype == torch.long and out["num_phrases"].item() == 2
    assert m.total.dtype == m.recall.dtype == m.type_total.dtype == torch.long


def test_outcomes_are_bool_even_for_integer_masks():
    gen = torch.Generator().manual_seed(6)
    batch = scored_batch(gen)
    m = GroundingMetrics(ks=(1, 2))
    want = m.outcomes(**batch)
    ints = batch | {k: batch[k].to(torch.uint8) for k in ("proposal_mask", "phrase_mask", "gt_box_mask")}
    got = m.outcomes(**ints)
    for name, a, b in zip(want._fields, want, got):
        assert b.dtype == torch.bool and torch.equal(a, b), name
    assert want.recall.shape == (3, 4, 2) and want.types.shape == (3, 4, len(FLICKR_PHRASE_TYPES))
    assert want.counted.sum() == 10 and want.types.any() and want.correct.any() and not want.correct.all()
    # types only where the phrase counts
    assert not (want.types & ~want.counted[..., None]).any()
    none = m.outcomes(**(batch | {"phrase_types": None}))
    assert none.types.shape == want.types.shape and not none.types.any()
    # every field on the device of the batch (the meta device standing in for a GPU), types too
    for types in (batch["phrase_types"], None):
        on_meta = m.outcomes(**{k: v.to("meta") if torch.is_tensor(v) else v for k, v in batch.items()} | {
            "phrase_types": types})  # fmt: skip
        assert [t.device.type for t in on_meta] == ["meta"] * 7 and on_meta.types.shape == want.types.shape


def scored_batch(gen, **kwargs) -> dict:
    """:func:`random_batch` whose phrase p mostly picks proposal p (jittered from its first gt box),
    so that every outcome takes both values."""
    batch = random_batch(gen, **kwargs)
    P = batch["scores"].shape[1]
    batch["scores"][:, range(P), range(P)] += 2.0
    return batch


def outcomes_of(batches, metric=None):
    metric = metric or GroundingMetrics(ks=(1, 2))
    return [metric.outcomes(**b) for b in batches]


def test_phrase_outcomes_flatten_cat_and_select():
    from lightning_wsg.metrics import PhraseOutcomes

    gen = torch.Generator().manual_seed(4)
    batches = [scored_batch(gen), scored_batch(gen, P=3)]
    parts = outcomes_of(batches)
    flat = parts[0].flatten()
    assert [tuple(t.shape) for t in flat] == [(12,)] * 5 + [(12, 2), (12, len(FLICKR_PHRASE_TYPES))]
    for a, b in zip(parts[0], flat):
        assert torch.equal(a.reshape(b.shape), b)
    both = PhraseOutcomes.cat(parts)
    assert both.counted.shape == (21,) and both.recall.shape == (21, 2)
    assert torch.equal(both.counted, torch.cat([parts[0].counted.reshape(-1), parts[1].counted.reshape(-1)]))
    assert torch.equal(both.types[12:], parts[1].types.reshape(9, -1))

    # accumulating the concatenated outcomes is accumulating the batches
    direct, from_outcomes = GroundingMetrics(ks=(1, 2)), GroundingMetrics(ks=(1, 2))
    for b in batches:
        direct.update(**b)
    from_outcomes.update(outcomes=both)
    expected = direct.compute()
    got = from_outcomes.compute()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)

    # keeping some phrases (an integer mask) is evaluating the batches with only those phrases
    keep = (torch.arange(21) % 3 != 0).to(torch.uint8)
    kept = both.select(keep)
    assert all(t.dtype == torch.bool for t in kept)
    assert torch.equal(kept.counted, both.counted & keep.bool())
    assert torch.equal(kept.recall, both.recall & keep.bool()[:, None])
    assert torch.equal(kept.types, both.types & keep.bool()[:, None])
    masked = [b | {"phrase_mask": b["phrase_mask"] & k.reshape(b["phrase_mask"].shape).bool()}
              for b, k in zip(batches, keep.split([12, 9]))]  # fmt: skip
    reference_metric, selected = GroundingMetrics(ks=(1, 2)), GroundingMetrics(ks=(1, 2))
    for b in masked:
        reference_metric.update(**b)
    selected.update(outcomes=kept)
    expected = reference_metric.compute()
    got = selected.compute()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert expected["num_phrases"] < direct.compute()["num_phrases"]
    # select on the unflattened [B, P] outcomes too
    part = parts[1].select(torch.zeros(3, 3, dtype=torch.bool))
    assert not any(t.any() for t in part)
    # outcomes kept on another device than the mask (the meta device standing in for a GPU)
    on_meta = PhraseOutcomes(*(t.to("meta") for t in both)).select(keep)
    assert all(t.device.type == "meta" for t in on_meta) and on_meta.types.shape == both.types.shape


def test_update_takes_tensors_or_outcomes_not_both():
    inputs = single((1, 1, 10, 10), [(1, 1, 10, 10)])
    m = GroundingMetrics()
    o = m.outcomes(**inputs)
    message = r"^update\(\) takes either the batch's tensors or outcomes=, not both$"
    with pytest.raises(TypeError, match=message):
        m.update(inputs["scores"], outcomes=o)
    with pytest.raises(TypeError, match=message):
        m.update(scores=inputs["scores"], outcomes=o)
    m.update(outcomes=o)
    assert m.compute()["acc"].item() == 1.0 and m.total.item() == 1


def test_outcomes_of_other_phrase_types_count_without_per_type_accuracy():
    gen = torch.Generator().manual_seed(5)
    batch = scored_batch(gen)
    other = GroundingMetrics(phrase_types=("people", "scene"), ks=(1, 2)).outcomes(**batch)
    m = GroundingMetrics(ks=(1, 2))
    m.update(outcomes=other)
    out = m.compute()
    assert out["num_phrases"].item() == 10 and not [k for k in out if k.startswith("acc_") and k != "acc_any"]
    # a metric without phrase types reports no per-type accuracy, with or without types given
    untyped = GroundingMetrics(phrase_types=(), ks=(1, 2))
    untyped.update(**batch)
    out = untyped.compute()
    assert out["num_phrases"].item() == 10 and not [k for k in out if k.startswith("acc_") and k != "acc_any"]


def test_update_batch_reads_the_batch_ground_truth():
    from lightning_wsg.data.batch import GroundingBatch

    gen = torch.Generator().manual_seed(6)
    b = scored_batch(gen)
    B, P, _ = b["scores"].shape
    R = b["proposals"].shape[1]

    def make(**gt) -> GroundingBatch:
        return GroundingBatch(
            split="val", image_ids=[str(i) for i in range(B)], sentence_ids=[f"{i}#0" for i in range(B)],
            images=torch.zeros(B, 3, 1, 1), image_sizes=torch.full((B, 2), 50), words=[["w"] * P] * B,
            phrase_spans=[[(p, p + 1) for p in range(P)]] * B, phrase_ids=[[str(p) for p in range(P)]] * B,
            phrase_mask=b["phrase_mask"], proposals=b["proposals"], roi_boxes=b["proposals"],
            proposal_mask=b["proposal_mask"], proposal_scores=torch.ones(B, R), **gt,
        )

    via_batch, direct = GroundingMetrics(), GroundingMetrics()
    via_batch.update_batch(b["scores"], make(gt_union=b["gt_union"], gt_boxes=b["gt_boxes"],
                                             gt_box_mask=b["gt_box_mask"], phrase_types=b["phrase_types"]))
    direct.update(**b)
    expected, got = direct.compute(), via_batch.compute()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert any(k.startswith("acc_") and k != "acc_any" for k in got)  # the types were passed on
    with pytest.raises(ValueError, match="split 'val': evaluation batches must carry ground-truth boxes"):
        GroundingMetrics().update_batch(b["scores"], make())
