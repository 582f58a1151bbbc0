"""GroundingModule: the training objective and detector-free evaluation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.losses import distillation_kl, image_sentence_scores, info_nce, kd_weight
from lightning_wsg.metrics import GroundingMetrics

TINY_TEXT = {"num_hidden_layers": 1, "hidden_size": 64, "num_attention_heads": 2, "intermediate_size": 128}


def tiny_module(**kwargs) -> GroundingModule:
    args = dict(
        backbone="resnet18",
        pretrained_backbone=False,
        text_encoder="all-MiniLM-L6-v2",
        pretrained_text_encoder=False,
        text_encoder_overrides=TINY_TEXT,
        hidden_dim=32,
        embed_dim=16,
        teacher_matching="lexical",
    )
    args.update(kwargs)
    return GroundingModule(**args)


@pytest.fixture(scope="module")
def datamodule(tiny_flickr) -> Flickr30kEntitiesDataModule:
    dm = Flickr30kEntitiesDataModule(
        tiny_flickr.root, tiny_flickr.image_dir, tiny_flickr.detections, batch_size=6, num_workers=0, image_size=64
    )
    dm.setup("fit")
    dm.setup("test")
    return dm


def _batch(dm, split):
    loader = dm.train_dataloader() if split == "train" else dm._dataloader_factory(split)
    return next(iter(loader))


def test_training_step_is_nce_plus_ramped_kd(datamodule) -> None:
    torch.manual_seed(0)
    model = tiny_module(kd_weight_initial=0.5, kd_weight_increment=1.0, kd_weight_every=2, kd_weight_max=3.0)
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    batch = _batch(datamodule, "train")
    assert batch.gt_union is None  # weak supervision: no box reaches training
    # the tiny dataset labels boxes by colour; name them by the captions' nouns instead
    nouns = ["man", "dog", "car", "shirt", "box"]
    batch = dataclasses.replace(
        batch, proposal_labels=[[nouns[k % 5] for k in range(len(labels))] for labels in batch.proposal_labels]
    )
    model.eval()  # deterministic features for the recomputation below
    loss = model.training_step(batch, 0)

    regions, phrases = model.encode(batch)
    scores = image_sentence_scores(regions, batch.proposal_mask, phrases, batch.phrase_mask, tau=0.5)
    same = torch.tensor([[a == b for b in batch.image_ids] for a in batch.image_ids])
    same.fill_diagonal_(False)
    nce = info_nce(scores, torch.arange(len(batch)), same)
    texts = [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(batch.words, batch.phrase_spans)]
    teacher, kd_mask = model.teacher(texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask)
    student = torch.einsum("bpd,brd->bpr", phrases, regions)
    kd = distillation_kl(
        student, teacher, batch.proposal_mask, kd_mask & batch.phrase_mask, tau_teacher=2.0, top_k=8,
        proposals=batch.proposals,
    )
    assert kd_mask.any(), "the lexical teacher should match some phrase of the tiny dataset"
    assert float(logged["train/nce"]) == pytest.approx(float(nce), rel=1e-5)
    assert float(logged["train/kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(logged["train/kd_weight"]) == pytest.approx(0.5)  # step 0
    assert float(loss) == pytest.approx(float(nce) + 0.5 * float(kd), rel=1e-5)
    assert kd_weight(5, initial=0.5, increment=1.0, every=2, maximum=3.0) == pytest.approx(2.5)


def test_kd_target_product_reaches_the_distillation_term(datamodule) -> None:
    nouns = ["man", "dog", "car", "shirt", "box"]
    batch = _batch(datamodule, "train")
    batch = dataclasses.replace(
        batch, proposal_labels=[[nouns[k % 5] for k in range(len(labels))] for labels in batch.proposal_labels]
    )
    kd = {}
    for target in ("teacher", "product"):
        torch.manual_seed(0)
        model = tiny_module(kd_target=target, kd_top_k=None).eval()
        logged = {}
        model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
        model.training_step(batch, 0)
        regions, phrases = model.encode(batch)
        texts = [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(batch.words, batch.phrase_spans)]
        teacher, kd_mask = model.teacher(texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask)
        student = torch.einsum("bpd,brd->bpr", phrases, regions)
        expected = distillation_kl(
            student, teacher, batch.proposal_mask, kd_mask & batch.phrase_mask, tau_teacher=2.0, top_k=None,
            target=target,
        )
        assert float(logged["train/kd"]) == pytest.approx(float(expected), rel=1e-5)
        kd[target] = float(logged["train/kd"])
    assert kd["teacher"] != pytest.approx(kd["product"])
    with pytest.raises(ValueError, match="kd_target"):
        tiny_module(kd_target="student")


def test_same_image_pairs_are_masked_as_negatives() -> None:
    mask = GroundingModule._same_image_mask(["a", "b", "a"], ["a", "b", "a"])
    assert mask.tolist() == [[True, False, True], [False, True, False], [True, False, True]]


def test_ablation_switches() -> None:
    with pytest.raises(ValueError, match="at least one"):
        tiny_module(use_nce=False, use_kd=False)
    assert tiny_module(use_kd=False).teacher is None


def test_predictions_ignore_detector_labels_and_scores(datamodule) -> None:
    torch.manual_seed(0)
    model = tiny_module().eval()
    batch = _batch(datamodule, "val")
    assert batch.proposal_labels is not None
    g = torch.Generator().manual_seed(1)
    shuffled = dataclasses.replace(
        batch,
        proposal_labels=[list(reversed(labels)) for labels in batch.proposal_labels],
        proposal_scores=batch.proposal_scores[:, torch.randperm(batch.proposal_scores.shape[1], generator=g)],
    )
    removed = dataclasses.replace(batch, proposal_labels=None, proposal_scores=torch.zeros_like(batch.proposal_scores))
    with torch.no_grad():
        reference = model(batch)
        for other in (shuffled, removed):
            assert torch.equal(model(other), reference)

    results = []
    for b in (batch, shuffled, removed):
        model.metrics.clear()
        with torch.no_grad():
            model.validation_step(b, 0)
        results.append({k: float(v) for k, v in model.metrics["val"].compute().items()})
    assert results[0] == results[1] == results[2]
    assert results[0]["num_phrases"] > 0


def test_evaluation_refuses_batches_without_ground_truth(datamodule) -> None:
    model = tiny_module().eval()
    with pytest.raises(ValueError, match="ground-truth"):
        model.validation_step(_batch(datamodule, "train"), 0)


def test_metrics_are_kept_per_split(datamodule) -> None:
    model = tiny_module().eval()
    batch = _batch(datamodule, "test")
    with torch.no_grad():
        model.test_step(batch, 0)
        model.test_step(dataclasses.replace(batch, split="testB"), 0)
    assert set(model.metrics) == {"test", "testB"}
    assert isinstance(model.metrics["testB"], GroundingMetrics)
    assert model.metrics["test"].compute()["num_phrases"] == model.metrics["testB"].compute()["num_phrases"]


def test_predict_step_returns_boxes_in_original_pixels(datamodule) -> None:
    model = tiny_module().eval()
    batch = _batch(datamodule, "test")
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    assert len(out) == len(batch)
    for i, record in enumerate(out):
        assert len(record["phrases"]) == len(batch.phrase_spans[i])
        w, h = batch.image_sizes[i].tolist()
        for phrase in record["phrases"]:
            x1, y1, x2, y2 = phrase["box"]
            assert 0 <= x1 <= x2 <= w + 1e-3 and 0 <= y1 <= y2 <= h + 1e-3
            proposals = batch.proposals[i][batch.proposal_mask[i]].tolist()
            assert any(all(abs(a - b) < 0.01 for a, b in zip(phrase["box"], p)) for p in proposals)


def test_teacher_uses_class_probability_vectors_when_the_batch_has_them(datamodule) -> None:
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = tiny_module(kd_weight_initial=1.0).eval()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    batch = _batch(datamodule, "train")
    class_names = ["man", "dog", "car", "shirt", "box"]
    B, R = batch.proposal_mask.shape
    probs = torch.softmax(torch.randn(B, R, len(class_names), generator=torch.Generator().manual_seed(0)), dim=-1)
    batch = dataclasses.replace(batch, class_probs=probs)
    # without a datamodule telling the class names, the vectors cannot be read: labels are used
    assert model._detector_class_names() is None
    model.training_step(batch, 0)
    kd_labels = float(logged["train/kd"])
    store = SimpleNamespace(class_names=class_names)
    model._trainer = SimpleNamespace(global_step=0, datamodule=SimpleNamespace(store=store))
    assert model._detector_class_names() == class_names
    model.training_step(batch, 0)
    kd_probs = float(logged["train/kd"])
    assert kd_probs > 0 and kd_probs != pytest.approx(kd_labels)
