"""ContrastiveDistillationLoss: its ramp, its refusals, and what it stores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers.ddp import ThreadGroup

from lightning_wsg import distributed
from lightning_wsg.contrastive_distillation import (
    REFERENCE_RAMP_FRACTION,
    ContrastiveDistillationLoss,
    gathered_info_nce,
)
from lightning_wsg.losses import distillation_kl, image_sentence_scores, info_nce
from lightning_wsg.models import Teacher


def _loss(**kwargs) -> ContrastiveDistillationLoss:
    return ContrastiveDistillationLoss(Teacher(matching="lexical"), **kwargs)


@pytest.mark.parametrize(
    ("total", "every", "expected_steps"),
    [(1000, 0.1, 100), (400, 0.1, 40), (942, REFERENCE_RAMP_FRACTION, 17), (27900, REFERENCE_RAMP_FRACTION, 500), (5, 0.01, 1)],
)
def test_the_ramp_counts_a_fraction_of_the_run(total, every, expected_steps) -> None:
    loss = _loss(kd_weight_every=every, kd_weight_initial=0.25, kd_weight_increment=0.5, kd_weight_max=1.0)
    loss.set_total_steps(total)
    assert loss.ramp_steps() == expected_steps
    assert loss.kd_weight(expected_steps - 1) == pytest.approx(0.25)
    assert loss.kd_weight(expected_steps) == pytest.approx(0.75)
    assert loss.kd_weight(2 * expected_steps) == pytest.approx(1.0)  # capped: 0.25 + 2 x 0.5 = 1.25
    assert loss.kd_weight(10**7) == pytest.approx(1.0)


def test_the_same_fraction_means_the_same_point_of_a_longer_run() -> None:
    short, long = _loss(kd_weight_every=0.05), _loss(kd_weight_every=0.05)
    short.set_total_steps(200)
    long.set_total_steps(8 * 200)  # eight processes' worth of data, or a dataset eight times larger
    for fraction in (0.0, 0.04, 0.05, 0.12, 0.2):
        assert short.kd_weight(int(fraction * 200)) == long.kd_weight(int(fraction * 1600))


def test_the_reference_ramp_counts_absolute_steps() -> None:
    loss = _loss(kd_weight_every=500, kd_weight_unit="steps")
    loss.set_total_steps(10)  # the run's length does not matter
    assert loss.ramp_steps() == 500
    assert loss.kd_weight(499) == pytest.approx(0.001) and loss.kd_weight(500) == pytest.approx(1.001)
    assert loss.kd_weight(1500) == pytest.approx(3.0)  # min(0.001 + 3, 3)


def test_a_run_relative_ramp_without_the_run_length_says_so() -> None:
    with pytest.raises(RuntimeError, match=r"kd_weight_unit='run' needs the run's length"):
        _loss().kd_weight(3)


def test_the_module_tells_the_loss_the_run_length_at_train_start() -> None:
    from helpers.model import tiny_model

    module = tiny_model(kd_weight_every=0.25, kd_weight_unit="run")
    module._trainer = SimpleNamespace(estimated_stepping_batches=40)
    module.on_train_start()
    assert module.loss.total_steps == 40 and module.loss.ramp_steps() == 10


def test_without_infonce_the_distillation_is_not_ramped() -> None:
    loss = _loss(use_nce=False)
    assert loss.kd_weight(0) == 1.0  # no run length needed either


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"kd_weight_every": 0.0}, r"kd_weight_every=0.0: with kd_weight_unit='run' it is a fraction of the run"),
        ({"kd_weight_every": 500}, r"kd_weight_every=500: with kd_weight_unit='run' it is a fraction"),
        ({"kd_weight_every": 0.5, "kd_weight_unit": "steps"}, r"kd_weight_every=0.5: .* a whole number of steps"),
        ({"kd_weight_every": 0, "kd_weight_unit": "steps"}, r"kd_weight_every=0: .* a whole number of steps >= 1"),
        ({"kd_weight_unit": "epochs"}, r"kd_weight_unit='epochs': must be one of run, steps"),
        ({"kd_target": "student"}, r"kd_target='student': must be one of teacher, product"),
        ({"phrase_reduce": "max"}, r"phrase_reduce='max': must be one of sum, mean"),
        ({"region_reduce": "mean"}, r"region_reduce='mean': must be one of max, logsumexp"),
        ({"tau_sentence": 0.0}, r"tau_sentence=0.0: a temperature must be > 0"),
        ({"tau_student": -1.0}, r"tau_student=-1.0: a temperature must be > 0"),
        ({"tau_teacher": 0}, r"tau_teacher=0: a temperature must be > 0"),
        ({"kd_top_k": 0}, r"kd_top_k=0: must be >= 1"),
        ({"use_nce": False, "use_kd": False}, r"at least one of use_nce and use_kd must be true"),
    ],
)
def test_settings_that_cannot_work_are_refused_when_built(setting, message) -> None:
    with pytest.raises(ValueError, match=message):
        _loss(**setting)


def test_config_stores_plain_values_and_the_teacher_as_a_class_path() -> None:
    loss = ContrastiveDistillationLoss(Teacher(matching="wordnet", score_floor=0.5), tau_student=0.1, kd_top_k=None)
    config = loss.config()
    assert config["teacher"]["class_path"] == "lightning_wsg.models.teacher.Teacher"
    assert config["teacher"]["init_args"]["score_floor"] == 0.5
    assert config["tau_student"] == 0.1 and config["kd_top_k"] is None and config["kd_weight_unit"] == "run"
    without = ContrastiveDistillationLoss(use_kd=False).config()
    assert without["teacher"] is None and without["use_kd"] is False


# ------------------------------------------------------------ the terms on a hand batch
def _hand_batch(class_probs: bool = False) -> SimpleNamespace:
    """Three image-sentence pairs (images "a", "b", "a"), four proposals (image 1 has three real
    ones), two phrase slots (sentences 1 and 2 have one phrase). A plain namespace, not a
    GroundingBatch: the loss reads only these fields, and ``class_names`` may be missing."""
    fields = {
        "image_ids": ["a", "b", "a"],
        "words": [["a", "dog", "near", "the", "man"], ["the", "red", "car"], ["two", "dogs"]],
        "phrase_spans": [[(0, 2), (3, 5)], [(0, 3)], [(0, 2)]],
        "phrase_mask": torch.tensor([[True, True], [True, False], [True, False]]),
        "proposal_mask": torch.tensor([[True] * 4, [True, True, True, False], [True] * 4]),
        "proposal_labels": [["dog", "man", "dog", "tree"], ["man", "dog", "car", "car"], ["tree", "dog", "man", "dog"]],
        "proposal_scores": torch.tensor([[0.9, 0.8, 0.3, 0.7], [0.6, 0.5, 0.95, 0.1], [0.4, 0.85, 0.7, 0.2]]),
        "proposals": torch.tensor(
            [[[0, 0, 10, 10], [0, 0, 9, 9], [20, 20, 30, 30], [0, 0, 30, 30]]] * 3, dtype=torch.float32
        ),
    }
    if class_probs:
        fields["class_names"] = ["dog", "man", "car"]
        fields["class_probs"] = torch.softmax(torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(3)), -1)
    return SimpleNamespace(**fields)


def _features(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit region ``[3, 4, 5]`` and phrase ``[3, 2, 5]`` features, padding zero, with gradients."""
    g = torch.Generator().manual_seed(0)
    batch = _hand_batch()
    regions = F.normalize(torch.randn(3, 4, 5, generator=g, dtype=dtype), dim=-1) * batch.proposal_mask[..., None]
    phrases = F.normalize(torch.randn(3, 2, 5, generator=g, dtype=dtype), dim=-1) * batch.phrase_mask[..., None]
    return regions.requires_grad_(), phrases.requires_grad_()


def _teacher_of(loss: ContrastiveDistillationLoss, batch: SimpleNamespace) -> tuple[torch.Tensor, torch.Tensor]:
    texts = [["a dog", "the man"], ["the red car"], ["two dogs"]]
    names = getattr(batch, "class_names", None)
    return loss.teacher(
        texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask,
        class_probs=batch.class_probs if names else None, class_names=names,
    )  # fmt: skip


#: a value other than the default for every setting of the two terms
VARIED = {
    "tau_sentence": 0.3,
    "phrase_reduce": "mean",
    "region_reduce": "logsumexp",
    "symmetric_nce": True,
    "kd_target": "product",
    "tau_student": 0.7,
    "tau_teacher": 1.5,
    "kd_top_k": 2,
}


def test_defaults_and_settings_are_kept() -> None:
    teacher = Teacher(matching="lexical")
    loss = ContrastiveDistillationLoss(teacher, kd_weight_every=0.25)
    stored = ("tau_sentence", "phrase_reduce", "region_reduce", "symmetric_nce", "gather_negatives", "use_nce",
              "use_kd", "kd_target", "tau_student", "tau_teacher", "kd_top_k")  # fmt: skip
    assert {k: getattr(loss, k) for k in stored} == {
        "tau_sentence": 0.5, "phrase_reduce": "sum", "region_reduce": "max", "symmetric_nce": False,
        "gather_negatives": True, "use_nce": True, "use_kd": True, "kd_target": "teacher", "tau_student": 1.0,
        "tau_teacher": 2.0, "kd_top_k": 8,
    }  # fmt: skip
    assert loss.teacher is teacher and loss.total_steps is None
    assert loss.ramp == {"initial": 0.001, "increment": 1.0, "every": 0.25, "unit": "run", "maximum": 3.0}
    varied = ContrastiveDistillationLoss(teacher, gather_negatives=False, use_nce=False, **VARIED)
    expected = VARIED | {"gather_negatives": False, "use_nce": False, "use_kd": True}
    assert {k: getattr(varied, k) for k in stored} == expected
    assert type(varied.kd_top_k) is int and type(varied.tau_student) is float
    # without distillation the teacher is not kept (nor saved as a submodule)
    assert ContrastiveDistillationLoss(teacher, use_kd=False).teacher is None


def test_contrastive_is_the_gathered_infonce_of_the_batch_with_the_loss_settings() -> None:
    batch = _hand_batch()
    regions, phrases = _features()
    for settings in ({}, VARIED):
        loss = _loss(**settings)
        expected = gathered_info_nce(
            regions, batch.proposal_mask, phrases, batch.phrase_mask, batch.image_ids,
            tau=settings.get("tau_sentence", 0.5), phrase_reduce=settings.get("phrase_reduce", "sum"),
            region_reduce=settings.get("region_reduce", "max"), symmetric=settings.get("symmetric_nce", False),
        )  # fmt: skip
        got = loss.contrastive(batch, regions, phrases)
        assert got.item() == pytest.approx(expected.item(), rel=1e-6)
        # and by hand: image_sentence_scores, positives on the diagonal, image "a" twice
        scores = image_sentence_scores(
            regions, batch.proposal_mask, phrases, batch.phrase_mask, tau=loss.tau_sentence,
            phrase_reduce=loss.phrase_reduce, region_reduce=loss.region_reduce,
        )  # fmt: skip
        same = torch.tensor([[True, False, True], [False, True, False], [True, False, True]])
        assert got.item() == pytest.approx(info_nce(scores, torch.arange(3), same, loss.symmetric_nce).item(), rel=1e-6)
    assert _loss(**VARIED).contrastive(batch, regions, phrases).item() != pytest.approx(
        _loss().contrastive(batch, regions, phrases).item(), rel=1e-3
    )


def test_contrastive_gathers_negatives_unless_told_not_to() -> None:
    """Two ranks (threads) holding pairs 0-1 and 2: with ``gather_negatives`` the ranks' mean is
    the one-process loss; without, each rank scores its own images only."""
    batch = _hand_batch()
    regions, phrases = _features()
    rows = [slice(0, 2), slice(2, 3)]

    def share(rank: int) -> SimpleNamespace:
        r = rows[rank]
        return SimpleNamespace(
            proposal_mask=batch.proposal_mask[r], phrase_mask=batch.phrase_mask[r], image_ids=batch.image_ids[r]
        )

    def run(loss: ContrastiveDistillationLoss) -> list[float]:
        group = ThreadGroup(2)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(distributed, "dist", group)
            return group.run(
                lambda rank: loss.contrastive(share(rank), regions[rows[rank]], phrases[rows[rank]]).item()
            )

    for settings in ({}, VARIED):  # every setting passed on across ranks too
        whole = _loss(**settings).contrastive(batch, regions, phrases).item()
        assert sum(run(_loss(**settings))) / 2 == pytest.approx(whole, rel=1e-6)
    whole = _loss().contrastive(batch, regions, phrases).item()
    local = [
        gathered_info_nce(regions[r], batch.proposal_mask[r], phrases[r], batch.phrase_mask[r], batch.image_ids[r])
        for r in rows
    ]
    assert run(_loss(gather_negatives=False)) == pytest.approx([x.item() for x in local], rel=1e-6)
    assert sum(x.item() for x in local) / 2 != pytest.approx(whole, rel=1e-3)


@pytest.mark.parametrize("class_probs", [False, True], ids=["labels", "class_probs"])
def test_distillation_scores_are_the_student_cosines_and_the_teacher(class_probs: bool) -> None:
    batch = _hand_batch(class_probs)
    regions, phrases = _features(torch.float64)
    loss = _loss()
    student, teacher, kd_mask = loss.distillation_scores(batch, regions, phrases)
    expected_teacher, expected_mask = _teacher_of(loss, batch)
    torch.testing.assert_close(student, torch.einsum("bpd,brd->bpr", phrases, regions))
    assert student.grad_fn is not None and not teacher.requires_grad
    assert teacher.dtype == torch.float64  # the student's dtype
    torch.testing.assert_close(teacher, expected_teacher.double())
    assert kd_mask.dtype == torch.bool and kd_mask.tolist() == (expected_mask & batch.phrase_mask).tolist()
    # the phrases are read from the words (joined by spaces): the labels teach "dog", "man", "car"
    if not class_probs:
        assert kd_mask.tolist() == [[True, True], [True, False], [True, False]]
        assert teacher[0, 0, :3].argmax() == 0 and teacher[1, 0, 2] == teacher[1, 0].max()


def test_distillation_scores_keep_only_the_batch_phrases() -> None:
    """A phrase the batch masks out takes no part, whatever the teacher says of its words."""
    batch = _hand_batch()
    batch.phrase_mask = torch.tensor([[True, False], [True, False], [True, False]])
    regions, phrases = _features()
    _, _, kd_mask = _loss().distillation_scores(batch, regions, phrases)
    assert kd_mask.tolist() == [[True, False], [True, False], [True, False]]


def test_distillation_scores_refuse_a_loss_without_teacher_or_a_batch_without_labels() -> None:
    regions, phrases = _features()
    no_teacher = r"^distillation_scores: this loss has no teacher \(model.loss.use_kd=false\)$"
    with pytest.raises(ValueError, match=no_teacher):
        ContrastiveDistillationLoss(use_kd=False).distillation_scores(_hand_batch(), regions, phrases)
    batch = _hand_batch()
    batch.proposal_labels = None
    with pytest.raises(ValueError) as refused:
        _loss().distillation_scores(batch, regions, phrases)
    assert str(refused.value) == (
        "distillation needs detector labels for every proposal, but this batch has none "
        "(a detections source without labels?); set model.loss.use_kd=false to train without them"
    )


def test_distillation_options_are_the_loss_settings() -> None:
    assert _loss().distillation_options() == {"tau_student": 1.0, "tau_teacher": 2.0, "top_k": 8, "target": "teacher"}
    assert _loss(**VARIED).distillation_options() == {
        "tau_student": 0.7, "tau_teacher": 1.5, "top_k": 2, "target": "product"
    }  # fmt: skip
    assert _loss(kd_top_k=None).distillation_options()["top_k"] is None


@pytest.mark.parametrize(
    "settings", [{}, VARIED, {"kd_top_k": 3}, {"kd_top_k": None}], ids=["defaults", "varied", "top3", "all"]
)
def test_distillation_is_the_kl_of_the_scores_with_the_loss_settings(settings: dict) -> None:
    batch = _hand_batch()
    regions, phrases = _features()
    loss = _loss(**settings)
    teacher, kd_mask = _teacher_of(loss, batch)
    student = torch.einsum("bpd,brd->bpr", phrases, regions)
    expected = distillation_kl(
        student, teacher, batch.proposal_mask, kd_mask & batch.phrase_mask, proposals=batch.proposals,
        tau_student=settings.get("tau_student", 1.0), tau_teacher=settings.get("tau_teacher", 2.0),
        top_k=settings.get("kd_top_k", 8), target=settings.get("kd_target", "teacher"),
    )  # fmt: skip
    got = loss.distillation(batch, regions, phrases)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6) and got.item() > 0
    got.backward()
    assert regions.grad.abs().sum() > 0 and phrases.grad.abs().sum() > 0


def test_distillation_top_k_changes_the_term() -> None:
    """Four proposals: top 2, top 3 and all of them give three different terms (each setting is
    passed on, and 8 is not 2 or 3)."""
    batch = _hand_batch()
    regions, phrases = _features()
    values = [_loss(kd_top_k=k).distillation(batch, regions, phrases).item() for k in (2, 3, None)]
    assert len({round(v, 6) for v in values}) == 3
    assert _loss().distillation(batch, regions, phrases).item() == pytest.approx(values[2], rel=1e-6)


@pytest.mark.parametrize(
    ("settings", "keys"),
    [
        ({}, {"loss", "nce", "kd", "kd_weight"}),
        ({"use_kd": False}, {"loss", "nce"}),
        ({"use_nce": False}, {"loss", "kd", "kd_weight"}),
    ],
    ids=["both", "nce_only", "kd_only"],
)
def test_forward_adds_the_terms_with_the_ramped_weight(settings: dict, keys: set) -> None:
    batch = _hand_batch()
    regions, phrases = _features()
    loss = _loss(kd_weight_initial=0.25, kd_weight_increment=0.5, kd_weight_every=0.1, **settings)
    loss.set_total_steps(50)  # a ramp step of 5 optimizer steps
    terms = loss(batch, regions, phrases, step=11)  # two increments
    assert set(terms) == keys
    nce = loss.contrastive(batch, regions, phrases).item() if loss.use_nce else 0.0
    kd = loss.distillation(batch, regions, phrases).item() if loss.use_kd else 0.0
    weight = 1.25 if loss.use_nce else 1.0  # without InfoNCE nothing is ramped
    if "nce" in keys:
        assert terms["nce"].item() == pytest.approx(nce, rel=1e-6)
    if "kd" in keys:
        assert terms["kd"].item() == pytest.approx(kd, rel=1e-6) and kd > 0
        assert terms["kd_weight"].item() == pytest.approx(weight) and terms["kd_weight"].shape == ()
        assert terms["kd_weight"].device == regions.device
    assert terms["loss"].item() == pytest.approx(nce + weight * kd, rel=1e-6)
    assert terms["loss"].shape == ()
    terms["loss"].backward()
    assert regions.grad.abs().sum() > 0 and phrases.grad.abs().sum() > 0


def test_forward_follows_the_step() -> None:
    batch = _hand_batch()
    regions, phrases = _features()
    loss = _loss(kd_weight_unit="steps", kd_weight_every=4, kd_weight_initial=0.5, kd_weight_max=2.0)
    weights = [loss(batch, regions, phrases, step)["kd_weight"].item() for step in (0, 3, 4, 9, 100)]
    assert weights == pytest.approx([0.5, 0.5, 1.5, 2.0, 2.0])


def test_gathered_info_nce_defaults_to_the_reference_temperature() -> None:
    batch = _hand_batch()
    regions, phrases = _features()
    args = (regions, batch.proposal_mask, phrases, batch.phrase_mask, batch.image_ids)
    assert gathered_info_nce(*args).item() == pytest.approx(gathered_info_nce(*args, tau=0.5).item(), rel=1e-7)
    assert gathered_info_nce(*args).item() != pytest.approx(gathered_info_nce(*args, tau=1.5).item(), rel=1e-3)


def test_gathered_info_nce_stays_on_the_features_device() -> None:
    """On the ``meta`` device (standing in for a GPU): the codes, the positives and the same-image
    mask must be made on the features' device, or the loss mixes devices."""
    batch = _hand_batch()
    regions, phrases = (x.detach().to("meta") for x in _features())
    masks = batch.proposal_mask.to("meta"), batch.phrase_mask.to("meta")
    for symmetric in (False, True):
        out = gathered_info_nce(regions, masks[0], phrases, masks[1], batch.image_ids, symmetric=symmetric)
        assert out.device.type == "meta" and out.shape == ()


def test_refusals_say_exactly_what_to_set() -> None:
    cases = [
        (lambda: _loss(use_nce=False, use_kd=False), "model.loss: at least one of use_nce and use_kd must be true"),
        (
            lambda: ContrastiveDistillationLoss(),
            "model.loss.use_kd=true needs a teacher: set model.loss.teacher "
            "(class_path: lightning_wsg.models.Teacher) or model.loss.use_kd=false",
        ),
        (
            lambda: _loss(kd_weight_every=2.5, kd_weight_unit="steps"),
            "model.loss.kd_weight_every=2.5: with kd_weight_unit='steps' it is a whole number of steps >= 1",
        ),
        (
            lambda: _loss(kd_weight_every=1.5),
            "model.loss.kd_weight_every=1.5: with kd_weight_unit='run' it is a fraction of the run in (0, 1]",
        ),
    ]
    for build, message in cases:
        with pytest.raises(ValueError) as refused:
            build()
        assert str(refused.value) == message
    with pytest.raises(RuntimeError) as refused:
        _loss().ramp_steps()
    assert str(refused.value) == (
        "model.loss.kd_weight_unit='run' needs the run's length: call set_total_steps(total) "
        "(GroundingModule does, from trainer.estimated_stepping_batches)"
    )


def test_the_limits_of_the_settings_are_allowed() -> None:
    assert _loss(kd_top_k=1).kd_top_k == 1
    whole_run = _loss(kd_weight_every=1.0)  # one step: the whole run
    whole_run.set_total_steps(30)
    assert whole_run.ramp_steps() == 30
    assert _loss(kd_weight_every=1, kd_weight_unit="steps").ramp_steps() == 1
    short = _loss(kd_weight_every=0.5)
    for total, expected in ((0, 1), (1, 1), (3, 2)):  # at least one step, rounded
        short.set_total_steps(total)
        assert short.total_steps == max(1, total) and short.ramp_steps() == expected


def test_distillation_scores_are_on_the_features_device() -> None:
    """The teacher runs where the batch's detections are (here the CPU); the scores and the mask
    it returns join the features' device (``meta`` standing in for a GPU)."""
    batch = _hand_batch()
    batch.phrase_mask = batch.phrase_mask.to("meta")
    regions, phrases = (x.detach().to("meta") for x in _features())
    student, teacher, kd_mask = _loss().distillation_scores(batch, regions, phrases)
    assert {student.device.type, teacher.device.type, kd_mask.device.type} == {"meta"}
    assert teacher.shape == student.shape == (3, 2, 4) and kd_mask.shape == (3, 2)


def test_forward_makes_the_weight_on_the_features_device() -> None:
    """Under another default device (``meta``, as ``torch.set_default_device("cuda")``), the weight
    is made on the features' device. The terms are stubbed: the teacher computes its matching on
    the default device."""
    batch = _hand_batch()
    regions, phrases = _features()
    loss = _loss(kd_weight_unit="steps", kd_weight_every=2, kd_weight_initial=0.5)
    loss.contrastive = lambda batch, regions, phrases: regions.sum() * 0 + 1.5
    loss.distillation = lambda batch, regions, phrases: phrases.sum() * 0 + 0.25
    with torch.device("meta"):
        terms = loss(batch, regions, phrases, step=2)
    assert {t.device.type for t in terms.values()} == {"cpu"}
    assert terms["kd_weight"].item() == pytest.approx(1.5) and terms["loss"].item() == pytest.approx(1.5 + 1.5 * 0.25)
