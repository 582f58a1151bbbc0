"""Losses and scores checked by hand on small tensors (docs/method.md, sections 3-8)."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_wsg.losses import (
    distillation_distributions,
    distillation_kl,
    image_sentence_scores,
    info_nce,
    kd_weight,
    region_phrase_scores,
)


def _ce(logits: list[float], target: int) -> float:
    return -(logits[target] - math.log(sum(math.exp(x) for x in logits)))


SCORES = torch.tensor([[2.0, 1.0, 0.5], [0.3, 1.5, 1.4], [0.2, 0.1, 0.9]])
# sentences 1 and 2 describe the same image, shown in columns 1 and 2
SAME = torch.tensor([[True, False, False], [False, True, True], [False, True, True]])


def test_info_nce_masks_copies_of_the_positive_image():
    loss = info_nce(SCORES, torch.arange(3), SAME)
    expected = (_ce([2.0, 1.0, 0.5], 0) + _ce([0.3, 1.5], 1) + _ce([0.2, 0.9], 1)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    unmasked = (_ce([2.0, 1.0, 0.5], 0) + _ce([0.3, 1.5, 1.4], 1) + _ce([0.2, 0.1, 0.9], 2)) / 3
    assert info_nce(SCORES, torch.arange(3)).item() == pytest.approx(unmasked, rel=1e-6)


def test_info_nce_symmetric_by_hand():
    loss = info_nce(SCORES, torch.arange(3), SAME, symmetric=True)
    s2i = (_ce([2.0, 1.0, 0.5], 0) + _ce([0.3, 1.5], 1) + _ce([0.2, 0.9], 1)) / 3
    # column j picks its sentence among the rows; rows describing the same image are dropped
    i2s = (_ce([2.0, 0.3, 0.2], 0) + _ce([1.0, 1.5], 1) + _ce([0.5, 0.9], 1)) / 3
    assert loss.item() == pytest.approx((s2i + i2s) / 2, rel=1e-6)


def test_info_nce_symmetric_with_gathered_columns_by_hand():
    # rank 1 of two: columns 0-1 are rank 0's images, 2-4 this rank's (positives 2, 3, 4).
    # Sentences 1 and 2 describe one image (columns 3 and 4); rank 0's column 0 shows sentence 0's
    scores = torch.tensor([[0.4, 0.1, 2.0, 0.3, 0.2], [0.5, 0.6, 0.1, 1.5, 0.9], [0.2, 0.7, 0.3, 0.8, 1.2]])
    positives = torch.tensor([2, 3, 4])
    same = torch.tensor(
        [[True, False, True, False, False], [False, False, False, True, True], [False, False, False, True, True]]
    )
    loss = info_nce(scores, positives, same, symmetric=True)
    s2i = (_ce([0.1, 2.0, 0.3, 0.2], 1) + _ce([0.5, 0.6, 0.1, 1.5], 3) + _ce([0.2, 0.7, 0.3, 1.2], 3)) / 3
    # column positives[i] picks sentence i among the local rows; the other caption of its image is dropped
    i2s = (_ce([2.0, 0.1, 0.3], 0) + _ce([0.3, 1.5], 1) + _ce([0.2, 1.2], 1)) / 3
    assert loss.item() == pytest.approx((s2i + i2s) / 2, rel=1e-6)


def test_info_nce_gathered_columns_use_explicit_positives():
    scores = torch.tensor([[0.1, 0.2, 3.0, 0.4], [0.5, 0.6, 0.7, 2.0]])  # 2 local sentences, 4 images
    loss = info_nce(scores, torch.tensor([2, 3]))
    expected = (_ce([0.1, 0.2, 3.0, 0.4], 2) + _ce([0.5, 0.6, 0.7, 2.0], 3)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


E = torch.eye(3)


def _inputs():
    # image 0: regions e0, 0.6 e0 + 0.8 e1, padding (would win every max: 10 e0)
    # image 1: regions -e0, -0.6 e0 + 0.8 e1, padding zeros (would win a negative max)
    regions = torch.stack(
        [
            torch.stack([E[0], 0.6 * E[0] + 0.8 * E[1], 10 * E[0]]),
            torch.stack([-E[0], -0.6 * E[0] + 0.8 * E[1], torch.zeros(3)]),
        ]
    )
    region_mask = torch.tensor([[True, True, False], [True, True, False]])
    phrases = torch.stack([torch.stack([E[0], E[1], 5 * E[2]]), torch.stack([E[1], torch.zeros(3), torch.zeros(3)])])
    phrase_mask = torch.tensor([[True, True, False], [True, False, False]])
    return regions, region_mask, phrases, phrase_mask


def test_image_sentence_scores_by_hand_with_masks():
    regions, region_mask, phrases, phrase_mask = _inputs()
    S = image_sentence_scores(regions, region_mask, phrases, phrase_mask, tau=0.5)
    expected = torch.tensor([[(1.0 + 0.8) / 0.5, (-0.6 + 0.8) / 0.5], [0.8 / 0.5, 0.8 / 0.5]])
    torch.testing.assert_close(S, expected)
    S_mean = image_sentence_scores(regions, region_mask, phrases, phrase_mask, tau=0.5, phrase_reduce="mean")
    torch.testing.assert_close(S_mean, expected / torch.tensor([[2.0], [1.0]]))


def test_image_sentence_scores_logsumexp_by_hand():
    regions, region_mask, phrases, phrase_mask = _inputs()
    T = 0.1
    S = image_sentence_scores(
        regions, region_mask, phrases, phrase_mask, tau=1.0, region_reduce="logsumexp", lse_temperature=T
    )

    def lse(xs):
        return T * math.log(sum(math.exp(x / T) for x in xs))

    assert S[0, 1].item() == pytest.approx(lse([-1.0, -0.6]) + lse([0.0, 0.8]), rel=1e-5)
    assert S[1, 0].item() == pytest.approx(lse([0.0, 0.8]), rel=1e-5)


def test_region_phrase_scores_are_paired_cosines():
    regions, _, phrases, _ = _inputs()
    s = region_phrase_scores(regions, phrases)
    assert s.shape == (2, 3, 3)
    assert s[1, 0, 1].item() == pytest.approx(0.8)
    assert s[0, 0, 1].item() == pytest.approx(0.6)


def test_kl_equals_soft_cross_entropy_minus_teacher_entropy():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    proposal_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    kd_mask = torch.tensor([[True, False, True], [True, True, False]])
    # temperatures other than 1 and the defaults: each must divide its own side
    loss = distillation_kl(student, teacher, proposal_mask, kd_mask, tau_student=0.5, tau_teacher=1.5, top_k=None)
    terms = []
    for b, p in kd_mask.nonzero().tolist():
        keep = proposal_mask[b]
        t, s = teacher[b, p, keep], student[b, p, keep]
        q = F.softmax((t - t.mean()) / 1.5, dim=0)
        cross_entropy = -(q * F.log_softmax(s / 0.5, dim=0)).sum()
        entropy = -(q * q.log()).sum()
        terms.append(cross_entropy - entropy)
    torch.testing.assert_close(loss, torch.stack(terms).mean())


def test_top_k_keeps_the_regions_around_the_students_top_box():
    proposals = torch.tensor(
        [
            [
                [0.0, 0.0, 10.0, 10.0],  # the student's top box
                [0.0, 0.0, 10.0, 9.0],  # IoU 0.9
                [0.0, 0.0, 5.0, 10.0],  # IoU 0.5
                [20.0, 20.0, 30.0, 30.0],  # IoU 0
                [0.0, 0.0, 10.0, 8.0],  # IoU 0.8
                [0.0, 0.0, 10.0, 10.0],  # padding, would have IoU 1
                [20.0, 20.0, 30.0, 30.0],  # padding elsewhere, the student's highest score: not its top box
            ]
        ]
    )
    student = torch.tensor([[[0.9, 0.1, 0.5, -0.3, 0.2, 5.0, 9.0]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 2.0, 1.0, 3.0, 0.5, 9.0, 9.0]]])
    proposal_mask = torch.tensor([[True] * 5 + [False] * 2])
    kd_mask = torch.tensor([[True]])
    loss = distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=3, proposals=proposals)
    loss.backward()
    assert (student.grad[0, 0] != 0).tolist() == [True, True, False, False, True, False, False]
    keep = torch.tensor([0, 1, 4])
    sub = distillation_kl(
        student[..., keep], teacher[..., keep], torch.ones(1, 3, dtype=torch.bool), kd_mask, top_k=None
    )
    torch.testing.assert_close(loss, sub)


def _kl_by_hand(teacher: list[float], student: list[float], tau_teacher: float = 2.0) -> float:
    mean = sum(teacher) / len(teacher)
    t = [math.exp((x - mean) / tau_teacher) for x in teacher]
    q = [x / sum(t) for x in t]
    log_z = math.log(sum(math.exp(x) for x in student))
    return sum(qi * (math.log(qi) - (si - log_z)) for qi, si in zip(q, student))


def test_top_k_never_takes_padding_when_an_image_has_fewer_real_regions_than_k():
    # image 0: five real regions (so the batch pads to R = 5 and K = 4 < R restricts);
    # image 1: three real regions, fewer than K, then two padding rows that would win every
    # choice: boxes on its top box (IoU 1 and 0.95) and the highest student and teacher scores
    top, far, half = [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 5.0, 10.0]  # IoU 1, 0, 0.5
    proposals = torch.tensor(
        [
            [top, [0.0, 0.0, 10.0, 9.0], half, far, [0.0, 0.0, 10.0, 8.0]],
            [top, far, half, top, [0.0, 0.0, 10.0, 9.5]],
        ]
    )
    student = torch.tensor([[[0.9, 0.1, 0.5, -0.3, 0.2]], [[0.9, 0.1, 0.4, 50.0, 40.0]]], requires_grad=True)
    teacher = torch.tensor([[[0.0, 2.0, 1.0, 3.0, 0.5]], [[0.2, 1.5, -0.3, 9.0, 8.0]]])
    proposal_mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    kd_mask = torch.ones(2, 1, dtype=torch.bool)
    loss = distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=4, proposals=proposals)
    loss.backward()
    # image 1 keeps all three real regions, the one far from its top box (IoU 0) included
    image1 = _kl_by_hand([0.2, 1.5, -0.3], [0.9, 0.1, 0.4])
    unpadded = distillation_kl(
        student[1:, :, :3],
        teacher[1:, :, :3],
        torch.ones(1, 3, dtype=torch.bool),
        kd_mask[1:],
        top_k=4,
        proposals=proposals[1:, :3],
    )
    assert unpadded.item() == pytest.approx(image1, rel=1e-6)
    # image 0 drops its region of IoU 0 with the top box: the first case of this kind, checked above
    image0 = _kl_by_hand([0.0, 2.0, 1.0, 0.5], [0.9, 0.1, 0.5, 0.2])
    assert loss.item() == pytest.approx((image0 + image1) / 2, rel=1e-6)
    assert student.grad[1, 0, 3:].tolist() == [0.0, 0.0] and (student.grad[1, 0, :3] != 0).all()


def test_top_k_needs_proposals():
    with pytest.raises(ValueError, match="top_k needs the proposal boxes"):
        distillation_kl(
            torch.randn(1, 1, 10),
            torch.randn(1, 1, 10),
            torch.ones(1, 10, dtype=torch.bool),
            torch.ones(1, 1, dtype=torch.bool),
        )


def test_no_valid_phrase_gives_zero_with_a_graph():
    student = torch.randn(2, 3, 4, requires_grad=True)
    loss = distillation_kl(
        student,
        torch.randn(2, 3, 4),
        torch.ones(2, 4, dtype=torch.bool),
        torch.zeros(2, 3, dtype=torch.bool),
        top_k=None,
    )
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(student.grad) == 0


def test_gradients_reach_the_student_not_the_teacher():
    torch.manual_seed(1)
    student = torch.randn(2, 2, 6, requires_grad=True)
    teacher = torch.randn(2, 2, 6, requires_grad=True)
    proposals = torch.rand(2, 6, 2).repeat(1, 1, 2) * 10 + torch.tensor([0.0, 0.0, 5.0, 5.0])
    proposal_mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    kd_mask = torch.tensor([[True, True], [True, False]])
    loss = distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=3, proposals=proposals)
    loss.backward()
    assert teacher.grad is None
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert torch.count_nonzero(student.grad[1, 1]) == 0  # a phrase left out
    assert torch.count_nonzero(student.grad[1, :, 4:]) == 0  # padding regions


@pytest.mark.parametrize(
    ("step", "expected"), [(0, 0.001), (499, 0.001), (500, 1.001), (1499, 2.001), (1500, 3.0), (10**6, 3.0)]
)
def test_kd_weight_ramp(step, expected):
    assert kd_weight(step) == pytest.approx(expected)


@pytest.mark.parametrize(("step", "expected"), [(0, 0.2), (99, 0.2), (250, 1.2), (1000, 1.5)])
def test_kd_weight_custom(step, expected):
    # every setting off its default; 1000 steps would give 5.2 without the maximum
    assert kd_weight(step, initial=0.2, increment=0.5, every=100, maximum=1.5) == pytest.approx(expected)


def test_product_target_has_the_gradient_of_minus_log_expected_teacher_weight_not_its_value():
    torch.manual_seed(2)
    student = torch.randn(2, 3, 5, requires_grad=True)
    teacher = torch.randn(2, 3, 5)
    proposal_mask = torch.tensor([[True] * 5, [True, True, True, True, False]])
    kd_mask = torch.tensor([[True, True, False], [True, False, True]])
    loss = distillation_kl(
        student, teacher, proposal_mask, kd_mask, tau_student=0.1, tau_teacher=0.5, top_k=None, target="product"
    )
    loss.backward()
    grad = student.grad.clone()
    student.grad = None
    # the same gradient as -log sum_r w_r p_r with w = exp((t - mean t) / tau_T), p = softmax(s / tau_S)
    terms, values = [], []
    for b, p in kd_mask.nonzero().tolist():
        keep = proposal_mask[b]
        t = teacher[b, p, keep]
        w = torch.exp((t - t.mean()) / 0.5)
        probs = F.softmax(student[b, p, keep] / 0.1, dim=0)
        terms.append(-torch.log((w * probs).sum()))
        q = (w * probs / (w * probs).sum()).detach()
        values.append((q * torch.log(w)).sum() - torch.log((w * probs).sum()))  # KL(q || p)
    torch.stack(terms).mean().backward()
    torch.testing.assert_close(grad, student.grad)
    # the value is KL(q || p) = sum q log w - log sum w p, not -log sum w p
    torch.testing.assert_close(loss, torch.stack(values).mean())
    assert abs(loss.item() - torch.stack(terms).mean().item()) > 0.05
    assert loss.item() >= 0.0


def test_product_target_pull_vanishes_where_the_student_is_confidently_wrong():
    # region 0 is the teacher's (right) class, the student puts nearly all its mass on region 1
    student = torch.tensor([[[0.0, 0.9, 0.1]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 0.0, 0.0]]])
    args = (torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool))
    grads, losses = {}, {}
    for target in ("product", "teacher"):
        loss = distillation_kl(student, teacher, *args, tau_student=0.1, tau_teacher=0.5, top_k=None, target=target)
        loss.backward()
        grads[target], losses[target] = student.grad[0, 0, 0].item(), loss.item()
        student.grad = None
    assert losses["product"] < 0.01 and losses["teacher"] > 1.0
    assert -0.05 < grads["product"] < 0 and grads["teacher"] < -1.0


def test_product_target_leaves_the_choice_between_tied_regions_to_the_student():
    # regions 0 and 1 are two objects of the phrase's class (the teacher ties them),
    # region 2 another class; the student prefers region 1
    student = torch.tensor([[[0.2, 0.5, 0.4]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 1.0, 0.0]]])
    args = (torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool))
    distillation_kl(student, teacher, *args, tau_student=0.1, tau_teacher=0.5, top_k=None, target="product").backward()
    g_product = student.grad.clone()
    student.grad = None
    distillation_kl(student, teacher, *args, tau_student=0.1, tau_teacher=0.5, top_k=None).backward()
    g_teacher = student.grad.clone()
    # both push region 2 (the other class) down
    assert g_product[0, 0, 2] > 0 and g_teacher[0, 0, 2] > 0
    # the teacher's distribution pulls the student's second choice (region 0) up towards a tie;
    # the product target pulls its first choice (region 1) up at least as hard as region 0
    assert g_teacher[0, 0, 0] < g_teacher[0, 0, 1]
    assert g_product[0, 0, 1] <= g_product[0, 0, 0]
    with pytest.raises(ValueError, match="product"):
        distillation_kl(student, teacher, *args, top_k=None, target="mixture")


def _distillation_kl_before_the_split(
    student, teacher, proposal_mask, kd_mask, tau_student, tau_teacher, top_k, proposals, target
):
    """``distillation_kl`` as it was written in one piece, before ``distillation_distributions``
    was split out of it: the refactoring must reproduce it bit for bit."""
    from lightning_wsg.boxes import box_iou

    B, P, R = student.shape
    valid = proposal_mask[:, None, :].expand(B, P, R).clone()
    if top_k is not None and top_k < R:
        with torch.no_grad():
            top1 = student.detach().masked_fill(~valid, float("-inf")).argmax(dim=-1)
            top_boxes = torch.gather(proposals, 1, top1[..., None].expand(B, P, 4))
            iou = torch.stack([box_iou(top_boxes[b], proposals[b]) for b in range(B)])
            iou = iou.nan_to_num(0.0).masked_fill(~valid, -1.0)
            keep = iou.topk(top_k, dim=-1).indices
            chosen = torch.zeros_like(valid).scatter_(-1, keep, True)
        valid = valid & chosen
    phrases = kd_mask.to(torch.bool) & valid.any(dim=-1)
    valid = valid & phrases[..., None]
    empty = ~valid.any(dim=-1, keepdim=True)
    t = teacher.detach().float()
    t_mean = (t * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)
    t_logits = ((t - t_mean) / tau_teacher).masked_fill(~valid, float("-inf")).masked_fill(empty, 0.0)
    s_logits = (student.float() / tau_student).masked_fill(~valid, float("-inf")).masked_fill(empty, 0.0)
    log_p = F.log_softmax(s_logits, dim=-1).masked_fill(~valid, 0.0)
    if target == "product":
        t_logits = t_logits + log_p.detach()
    log_q = F.log_softmax(t_logits, dim=-1).masked_fill(~valid, 0.0)
    kl = (log_q.exp() * valid * (log_q - log_p)).sum(dim=-1)
    count = phrases.sum()
    if count == 0:
        return student.sum() * 0.0
    return (kl * phrases).sum() / count


@pytest.mark.parametrize("target", ["teacher", "product"])
@pytest.mark.parametrize("top_k", [None, 3, 12])
@pytest.mark.parametrize("empty", [False, True])
def test_distillation_kl_is_bit_identical_to_the_one_piece_version(target, top_k, empty):
    g = torch.Generator().manual_seed(3)
    B, P, R = 3, 4, 9
    student = torch.randn(B, P, R, generator=g, requires_grad=True)
    teacher = torch.rand(B, P, R, generator=g)
    corner = torch.rand(B, R, 2, generator=g) * 50
    proposals = torch.cat([corner, corner + 5 + torch.rand(B, R, 2, generator=g) * 30], dim=-1)
    proposal_mask = torch.arange(R)[None, :] < torch.tensor([[9], [6], [2]])
    kd_mask = torch.rand(B, P, generator=g) < (0.0 if empty else 0.7)
    args = (proposal_mask, kd_mask, 0.7, 1.5, top_k, proposals, target)
    new = distillation_kl(student, teacher, *args)
    (new_grad,) = torch.autograd.grad(new, student)
    old = _distillation_kl_before_the_split(student, teacher, *args)
    (old_grad,) = torch.autograd.grad(old, student)
    assert torch.equal(new, old) and torch.equal(new_grad, old_grad)
    assert (new.item() == 0.0) == empty


def test_distillation_distributions_are_the_k_regions_around_the_students_top_box():
    from lightning_wsg.losses import distillation_distributions

    proposals = torch.tensor(
        [[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [0.0, 0.0, 5.0, 10.0], [20.0, 20.0, 30.0, 30.0]]]
    )
    student = torch.tensor([[[0.9, 0.1, 0.5, -0.3], [0.0, 0.0, 0.0, 1.0]]])
    teacher = torch.tensor([[[0.0, 2.0, 1.0, 3.0], [1.0, 1.0, 1.0, 1.0]]])
    kd_mask = torch.tensor([[True, False]])
    real = torch.ones(1, 4, dtype=torch.bool)
    d = distillation_distributions(student, teacher, real, kd_mask, top_k=2, proposals=proposals)
    assert d.valid.tolist() == [[[True, True, False, False], [False, False, False, False]]]
    assert d.phrases.tolist() == [[True, False]]
    # q = softmax((t - mean t) / 2) over regions 0 and 1, p = softmax(s) there
    torch.testing.assert_close(d.log_q[0, 0, :2], F.log_softmax(torch.tensor([0.0, 2.0]) / 2.0, dim=0))
    torch.testing.assert_close(d.log_p[0, 0, :2], F.log_softmax(torch.tensor([0.9, 0.1]), dim=0))
    assert d.log_q[0, 0, 2:].tolist() == [0.0, 0.0] and not d.log_q.requires_grad


def test_image_sentence_scores_defaults_are_the_reference_ones():
    regions, region_mask, phrases, phrase_mask = _inputs()
    torch.testing.assert_close(
        image_sentence_scores(regions, region_mask, phrases, phrase_mask),
        image_sentence_scores(regions, region_mask, phrases, phrase_mask, tau=0.5, region_reduce="max"),
    )
    # the soft maximum's temperature defaults to 0.1
    torch.testing.assert_close(
        image_sentence_scores(regions, region_mask, phrases, phrase_mask, region_reduce="logsumexp"),
        image_sentence_scores(
            regions, region_mask, phrases, phrase_mask, tau=0.5, region_reduce="logsumexp", lse_temperature=0.1
        ),
    )


def test_image_without_regions_scores_zero():
    regions, region_mask, phrases, phrase_mask = _inputs()
    # a third image with no real region; 3 regions per image and 3 phrases per sentence would hide a wrong
    # reduction axis, so one region is dropped
    regions = torch.cat([regions, regions[:1]])[:, :2]
    region_mask = torch.cat([region_mask, torch.zeros(1, 3, dtype=torch.bool)])[:, :2]
    S = image_sentence_scores(regions, region_mask, phrases, phrase_mask, tau=0.5)
    expected = torch.tensor([[(1.0 + 0.8) / 0.5, (-0.6 + 0.8) / 0.5, 0.0], [0.8 / 0.5, 0.8 / 0.5, 0.0]])
    torch.testing.assert_close(S, expected)


def test_image_sentence_scores_name_an_unknown_reduction():
    regions, region_mask, phrases, phrase_mask = _inputs()
    with pytest.raises(ValueError, match="unknown region_reduce 'min'"):
        image_sentence_scores(regions, region_mask, phrases, phrase_mask, region_reduce="min")
    with pytest.raises(ValueError, match="unknown phrase_reduce 'max'"):
        image_sentence_scores(regions, region_mask, phrases, phrase_mask, phrase_reduce="max")


def test_info_nce_accepts_a_0_1_same_image_mask():
    scores = torch.tensor([[2.0, 1.0, 2.5], [0.5, 1.5, -1.0], [1.0, 0.0, 3.0]])
    positives = torch.tensor([0, 1, 2])
    same = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])
    for symmetric in (False, True):
        expected = info_nce(scores, positives, same, symmetric=symmetric)
        torch.testing.assert_close(info_nce(scores, positives, same.float(), symmetric=symmetric), expected)


def test_info_nce_stays_on_the_scores_device():
    # the meta device stands in for a GPU: an index or mask made on the CPU cannot meet it
    scores, positives = torch.zeros(3, 3, device="meta"), torch.arange(3, device="meta")
    assert info_nce(scores, positives, symmetric=True).device.type == "meta"


def _ten_regions():
    torch.manual_seed(3)
    student, teacher = torch.randn(1, 2, 10), torch.randn(1, 2, 10)
    xy = torch.rand(1, 10, 2) * 50
    proposals = torch.cat([xy, xy + 5 + torch.rand(1, 10, 2) * 30], dim=-1)
    return student, teacher, proposals, torch.ones(1, 10, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)


def test_distillation_top_k_defaults_to_8():
    student, teacher, proposals, proposal_mask, kd_mask = _ten_regions()
    d = distillation_distributions(student, teacher, proposal_mask, kd_mask, proposals=proposals)
    assert d.valid.sum(dim=-1).tolist() == [[8, 8]]
    loss = distillation_kl(student, teacher, proposal_mask, kd_mask, proposals=proposals)
    assert loss == distillation_kl(student, teacher, proposal_mask, kd_mask, proposals=proposals, top_k=8)
    assert loss != distillation_kl(student, teacher, proposal_mask, kd_mask, proposals=proposals, top_k=9)


def test_distillation_top_k_of_all_regions_needs_no_proposals():
    student, teacher, _, proposal_mask, kd_mask = _ten_regions()
    torch.testing.assert_close(
        distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=10),
        distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=None),
    )
    with pytest.raises(ValueError, match="^distillation_kl: top_k needs the proposal boxes$"):
        distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=9)


def test_distillation_left_out_phrases_are_zero_and_keep_gradients_finite():
    torch.manual_seed(4)
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4)
    proposal_mask = torch.tensor([[True, True, True, False], [False, False, False, False]])  # image 1: none
    kd_mask = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])  # a 0/1 float mask is accepted
    d = distillation_distributions(student, teacher, proposal_mask, kd_mask, top_k=None)
    assert d.phrases.tolist() == [[True, False, True], [False, False, False]]
    assert d.valid.sum(dim=-1).tolist() == [[3, 0, 3], [0, 0, 0]]
    # log-probabilities are 0 outside valid (documented: callers sum them without a mask)
    assert (d.log_p[~d.valid] == 0).all() and (d.log_q[~d.valid] == 0).all()
    loss = distillation_kl(student, teacher, proposal_mask, kd_mask, top_k=None)
    # no NaN even inside the backward pass (an all -inf row's log-softmax), which anomaly detection
    # (Trainer(detect_anomaly=True)) would report
    with torch.autograd.detect_anomaly():
        loss.backward()
    assert torch.isfinite(student.grad).all()
    assert (student.grad[0, 1] == 0).all() and (student.grad[1] == 0).all() and (student.grad[0, 0] != 0).any()
