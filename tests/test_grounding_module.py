"""GroundingModule: the training objective and detector-free evaluation."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers.model import TINY_TEXT, tiny_model

from lightning_wsg.contrastive_distillation import ContrastiveDistillationLoss
from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.losses import distillation_kl, image_sentence_scores, info_nce
from lightning_wsg.metrics import GroundingMetrics


def tiny_module(region: dict | None = None, phrase: dict | None = None, **kwargs) -> GroundingModule:
    small = {"hidden_dim": 32, "embed_dim": 16}
    phrase = small | {"pretrained": False, "config_overrides": TINY_TEXT} | (phrase or {})
    return tiny_model(region=small | (region or {}), phrase=phrase, **kwargs)


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


def _noun_labelled_batch(dm):
    """A training batch whose boxes are labelled by the captions' nouns (the tiny dataset's
    labels are colours, which no phrase names): the lexical teacher then distils some phrases."""
    nouns = ["man", "dog", "car", "shirt", "box"]
    batch = _batch(dm, "train")
    return dataclasses.replace(
        batch, proposal_labels=[[nouns[k % 5] for k in range(len(labels))] for labels in batch.proposal_labels]
    )


#: the module's defaults, and a value other than the default for each term's setting (a setting the module
#: failed to pass on would then go unnoticed only if the loss functions defaulted to the same value)
OBJECTIVES = {
    "defaults": {},
    "varied": {
        "tau_sentence": 0.3,
        "phrase_reduce": "mean",
        "region_reduce": "logsumexp",
        "symmetric_nce": True,
        "tau_student": 0.7,
        "tau_teacher": 1.5,
        "kd_top_k": 5,
    },
}


@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_training_step_is_nce_plus_ramped_kd(datamodule, objective) -> None:
    torch.manual_seed(0)
    settings = OBJECTIVES[objective]
    model = tiny_module(
        kd_weight_initial=0.5, kd_weight_increment=1.0, kd_weight_every=2, kd_weight_max=3.0, **settings
    )
    hp = model.hparams
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    batch = _noun_labelled_batch(datamodule)
    assert batch.gt_union is None  # weak supervision: no box reaches training
    model.eval()  # deterministic features for the recomputation below
    loss = model.training_step(batch, 0)

    with torch.no_grad():
        regions, phrases = model.model.encode(batch)
    scores = image_sentence_scores(
        regions,
        batch.proposal_mask,
        phrases,
        batch.phrase_mask,
        tau=settings.get("tau_sentence", 0.5),
        phrase_reduce=settings.get("phrase_reduce", "sum"),
        region_reduce=settings.get("region_reduce", "max"),
    )
    same = torch.tensor([[a == b for b in batch.image_ids] for a in batch.image_ids])
    same.fill_diagonal_(False)
    nce = info_nce(scores, torch.arange(len(batch)), same, symmetric=settings.get("symmetric_nce", False))
    texts = [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(batch.words, batch.phrase_spans)]
    teacher, kd_mask = model.loss.teacher(texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask)
    student = torch.einsum("bpd,brd->bpr", phrases, regions)
    kd = distillation_kl(
        student,
        teacher,
        batch.proposal_mask,
        kd_mask & batch.phrase_mask,
        tau_student=settings.get("tau_student", 1.0),
        tau_teacher=settings.get("tau_teacher", 2.0),
        top_k=settings.get("kd_top_k", 8),
        proposals=batch.proposals,
    )
    assert {k: hp["loss"][k] for k in settings} == settings
    assert kd_mask.any(), "the lexical teacher should match some phrase of the tiny dataset"
    assert float(logged["train/nce"]) == pytest.approx(float(nce), rel=1e-5)
    assert float(logged["train/kd"]) == pytest.approx(float(kd), rel=1e-5)
    assert float(logged["train/kd_weight"]) == pytest.approx(0.5)  # step 0
    assert loss.item() == pytest.approx(float(nce) + 0.5 * float(kd), rel=1e-5)


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 0.25),  # initial
        (2, 0.25),  # every: not yet a full period
        (3, 0.85),  # one increment after `every` steps (500 would still give 0.25, increment 1.0 gives 1.25)
        (5, 0.85),
        (6, 1.45),
        (9, 1.5),  # capped at the maximum (0.25 + 3 * 0.6 = 2.05 under the default maximum 3.0)
        (10**6, 1.5),
    ],
)
def test_training_step_ramps_kd_weight_with_the_modules_schedule(datamodule, step, expected) -> None:
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = tiny_module(kd_weight_initial=0.25, kd_weight_increment=0.6, kd_weight_every=3, kd_weight_max=1.5)
    model.eval()  # the same features at every step
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    model._trainer = SimpleNamespace(global_step=step)
    assert model.global_step == step
    loss = model.training_step(_noun_labelled_batch(datamodule), 0)
    assert float(logged["train/kd_weight"]) == pytest.approx(expected)
    assert float(logged["train/kd"]) > 0
    assert loss.item() == pytest.approx(float(logged["train/nce"]) + expected * float(logged["train/kd"]), rel=1e-5)


def test_distillation_alone_is_not_ramped(datamodule) -> None:
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = tiny_module(use_nce=False, kd_weight_initial=0.25, kd_weight_every=3).eval()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    model._trainer = SimpleNamespace(global_step=4)
    loss = model.training_step(_noun_labelled_batch(datamodule), 0)
    assert "train/nce" not in logged and float(logged["train/kd_weight"]) == 1.0
    assert loss.item() == pytest.approx(float(logged["train/kd"])) and loss.item() > 0


def test_kd_target_product_reaches_the_distillation_term(datamodule) -> None:
    batch = _noun_labelled_batch(datamodule)
    kd = {}
    for target in ("teacher", "product"):
        torch.manual_seed(0)
        model = tiny_module(kd_target=target, kd_top_k=None).eval()
        logged = {}
        model.log = lambda name, value, logged=logged, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
        model.training_step(batch, 0)
        with torch.no_grad():
            regions, phrases = model.model.encode(batch)
        texts = [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(batch.words, batch.phrase_spans)]
        teacher, kd_mask = model.loss.teacher(texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask)
        student = torch.einsum("bpd,brd->bpr", phrases, regions)
        expected = distillation_kl(
            student,
            teacher,
            batch.proposal_mask,
            kd_mask & batch.phrase_mask,
            tau_teacher=2.0,
            top_k=None,
            target=target,
        )
        assert float(logged["train/kd"]) == pytest.approx(float(expected), rel=1e-5)
        kd[target] = float(logged["train/kd"])
    assert kd["teacher"] != pytest.approx(kd["product"])
    with pytest.raises(ValueError, match=r"model.loss.kd_target='student': must be one of teacher, product"):
        tiny_module(kd_target="student")


def test_the_public_pieces_rebuild_the_training_loss_exactly(datamodule) -> None:
    # what a diagnostic reads (contrastive_loss, distillation_scores, distillation_options,
    # current_kd_weight) must be the training step's own terms, not a near copy
    torch.manual_seed(0)
    model = tiny_module(kd_weight_initial=0.5, kd_top_k=4).eval()
    model.log = lambda *args, **kwargs: None
    nouns = ["man", "dog", "car", "shirt", "box"]
    batch = _batch(datamodule, "train")
    batch = dataclasses.replace(
        batch, proposal_labels=[[nouns[k % 5] for k in range(len(labels))] for labels in batch.proposal_labels]
    )
    loss = model.training_step(batch, 0)
    regions, phrases = model.model.encode(batch)
    student, teacher, kd_mask = model.loss.distillation_scores(batch, regions, phrases)
    kd = distillation_kl(
        student, teacher, batch.proposal_mask, kd_mask, proposals=batch.proposals, **model.loss.distillation_options()
    )
    assert kd > 0 and model.loss.distillation_options()["top_k"] == 4
    rebuilt = model.loss.contrastive(batch, regions, phrases) + torch.tensor(model.loss.kd_weight(model.global_step)) * kd
    assert torch.equal(loss, rebuilt)
    with pytest.raises(ValueError, match="has no teacher"):
        tiny_module(use_kd=False).loss.distillation_scores(batch, regions, phrases)


def test_ablation_switches() -> None:
    with pytest.raises(ValueError, match="at least one of use_nce and use_kd must be true"):
        tiny_module(use_nce=False, use_kd=False)
    assert tiny_module(use_kd=False).loss.teacher is None


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
    with pytest.raises(ValueError, match="split 'train': evaluation batches must carry ground-truth boxes"):
        model.validation_step(_batch(datamodule, "train"), 0)


def test_metrics_are_kept_per_split(datamodule) -> None:
    model = tiny_module().eval()
    batch = _batch(datamodule, "test")
    with torch.no_grad():
        model.test_step(batch, 0)
        model.test_step(dataclasses.replace(batch, split="testB"), 0)
        model.test_step(batch, 0)  # "test" sees the batch twice, "testB" once
    assert set(model.metrics) == {"test", "testB"}
    assert isinstance(model.metrics["testB"], GroundingMetrics)
    test, test_b = ({k: float(v) for k, v in model.metrics[s].compute().items()} for s in ("test", "testB"))
    counted = int((batch.phrase_mask & batch.gt_box_mask.any(-1)).sum())
    assert counted > 0 and test_b["num_phrases"] == counted and test["num_phrases"] == 2 * counted
    assert {k: v for k, v in test.items() if k != "num_phrases"} == pytest.approx(
        {k: v for k, v in test_b.items() if k != "num_phrases"}
    )


def test_predict_step_returns_boxes_in_original_pixels(datamodule) -> None:
    model = tiny_module().eval()
    batch = _batch(datamodule, "test")
    with torch.no_grad():
        out = model.predict_step(batch, 0)
    assert len(out) == len(batch)
    scores = out.scores.masked_fill(~batch.proposal_mask[:, None, :], float("-inf"))
    for i, record in enumerate(out):
        assert record["image_id"] == batch.image_ids[i] and record["sentence_id"] == batch.sentence_ids[i]
        assert record["image_size"] == batch.image_sizes[i].tolist()
        assert [p["span"] for p in record["phrases"]] == [list(span) for span in batch.phrase_spans[i]]
        for j, phrase in enumerate(record["phrases"]):
            best = int(scores[i, j].argmax())  # the chosen box: the highest-scoring real proposal, as given
            assert phrase["box"] == pytest.approx(batch.proposals[i, best].tolist(), abs=0.006)
            assert phrase["score"] == pytest.approx(float(scores[i, j, best]), abs=1e-6)
            assert phrase["phrase"] == " ".join(batch.words[i][slice(*batch.phrase_spans[i][j])])


def test_ground_scales_each_axis_of_a_wide_image_by_its_own_side() -> None:
    """A 160 x 60 image resized to 64 x 64: x by 64 / 160, y by 64 / 60 (a square image hides a swap)."""
    torch.manual_seed(0)
    model = tiny_module()
    seen = []
    model.model.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    image = torch.rand(3, 60, 160, generator=torch.Generator().manual_seed(0))  # [3, H, W]
    proposals = [[0.0, 0.0, 80.0, 30.0], [40.0, 15.0, 160.0, 60.0], [10.0, 6.0, 20.0, 54.0]]
    out = model.ground(image, "a [red car]", proposals=proposals, top_k=2, image_size=64)
    (batch,) = seen
    assert batch.images.shape == (1, 3, 64, 64) and batch.image_sizes.tolist() == [[160, 60]]
    expected = [[0.0, 0.0, 32.0, 32.0], [16.0, 16.0, 64.0, 64.0], [4.0, 6.4, 8.0, 57.6]]
    torch.testing.assert_close(batch.roi_boxes[0], torch.tensor(expected), rtol=0, atol=1e-5)
    # what comes back is in the image's own pixels: the proposals as given, every one ranked once
    (phrase,) = out
    returned = [phrase["box"]] + [alt["box"] for alt in phrase["alternatives"]]
    assert sorted(returned) == sorted(proposals)


def test_teacher_uses_class_probability_vectors_when_the_batch_has_them(datamodule) -> None:
    torch.manual_seed(0)
    model = tiny_module(kd_weight_initial=1.0).eval()
    logged = {}
    model.log = lambda name, value, **kw: logged.__setitem__(name, torch.as_tensor(value).detach())
    batch = _batch(datamodule, "train")
    class_names = ["man", "dog", "car", "shirt", "box"]
    B, R = batch.proposal_mask.shape
    probs = torch.softmax(torch.randn(B, R, len(class_names), generator=torch.Generator().manual_seed(0)), dim=-1)
    batch = dataclasses.replace(batch, class_probs=probs)
    # without the batch naming the classes, the vectors cannot be read: labels are used
    assert batch.class_names is None
    model.training_step(batch, 0)
    kd_labels = float(logged["train/kd"])
    batch = dataclasses.replace(batch, class_names=class_names)
    model.training_step(batch, 0)
    kd_probs = float(logged["train/kd"])

    with torch.no_grad():
        regions, phrases = model.model.encode(batch)
    student = torch.einsum("bpd,brd->bpr", phrases, regions)
    texts = [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(batch.words, batch.phrase_spans)]
    expected = {}
    for name, extra in (("labels", ()), ("probs", (probs, class_names))):
        teacher, kd_mask = model.loss.teacher(
            texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask, *extra
        )
        expected[name] = float(
            distillation_kl(
                student, teacher, batch.proposal_mask, kd_mask & batch.phrase_mask, proposals=batch.proposals
            )
        )
    assert kd_labels == pytest.approx(expected["labels"], rel=1e-5, abs=1e-7)
    assert kd_probs == pytest.approx(expected["probs"], rel=1e-5)
    assert kd_probs > 0 and kd_probs != pytest.approx(kd_labels)


def test_distillation_reads_the_batch_class_probs_by_the_store_class_names(datamodule) -> None:
    """The loss hands the batch's [B, R, C] rows and their class names to the teacher and
    distils from t(r, p) = sum_c P(c | r) m(c, p); without the names it falls back to top-1 labels."""
    from lightning_wsg.losses import region_phrase_scores

    torch.manual_seed(0)
    model = tiny_module(teacher={"matching": "wordnet"}).eval()
    batch = _batch(datamodule, "train")
    names = ["person", "dog", "car"]
    B, R = batch.proposal_mask.shape
    gen = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(B, R, len(names) + 1, generator=gen) * 3, dim=-1)[..., 1:]  # background dropped
    batch = dataclasses.replace(batch, class_probs=probs)
    calls = []
    forward = model.loss.teacher.forward
    model.loss.teacher.forward = lambda *args, **kwargs: calls.append(kwargs) or forward(*args, **kwargs)

    with torch.no_grad():
        regions, phrases = model.model.encode(batch)
        got = model.loss.distillation(dataclasses.replace(batch, class_names=names), regions, phrases)
        without_names = model.loss.distillation(batch, regions, phrases)
    assert calls[0]["class_probs"] is probs and calls[0]["class_names"] == names
    assert calls[1]["class_probs"] is None and calls[1]["class_names"] is None

    texts = [[" ".join(w[s:e]) for s, e in spans] for w, spans in zip(batch.words, batch.phrase_spans)]
    hp = model.loss

    def expected(**teacher_kwargs):
        teacher, kd_mask = forward(
            texts, batch.proposal_labels, batch.proposal_scores, batch.proposal_mask, **teacher_kwargs
        )
        return distillation_kl(
            region_phrase_scores(regions, phrases), teacher, batch.proposal_mask, kd_mask & batch.phrase_mask,
            tau_student=hp.tau_student, tau_teacher=hp.tau_teacher, top_k=hp.kd_top_k, target=hp.kd_target,
            proposals=batch.proposals,
        )  # fmt: skip

    torch.testing.assert_close(got, expected(class_probs=probs, class_names=names))
    torch.testing.assert_close(without_names, expected())
    assert got.item() > 0 and got.item() != pytest.approx(without_names.item())


def _save(model: GroundingModule, path) -> None:
    import pytorch_lightning as pl

    trainer = pl.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.strategy.connect(model)
    trainer.save_checkpoint(path)


def test_checkpoint_rebuilds_the_towers_given_in_python(datamodule, tmp_path) -> None:
    import functools

    torch.manual_seed(0)
    model = tiny_module(
        teacher={"matching": "wordnet", "score_floor": 0.25},
        optimizer=functools.partial(torch.optim.SGD, lr=0.5),
        kd_top_k=None,
    ).eval()
    _save(model, tmp_path / "m.ckpt")
    raw = torch.load(tmp_path / "m.ckpt", weights_only=True)  # plain values: no pickled network
    stored = raw["hyper_parameters"]
    assert stored["region_encoder"]["class_path"].endswith("RegionEncoder")
    assert stored["phrase_encoder"]["init_args"]["config_overrides"] == TINY_TEXT
    assert stored["loss"]["teacher"]["init_args"]["score_floor"] == 0.25
    assert stored["optimizer"] == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.5}}

    loaded = GroundingModule.load_from_checkpoint(tmp_path / "m.ckpt").eval()
    assert loaded.loss.teacher.matching == "wordnet" and loaded.loss.teacher.score_floor == 0.25
    assert loaded.loss.kd_top_k is None and loaded.hparams.loss["kd_top_k"] is None
    optimizer = loaded.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5
    batch = _batch(datamodule, "test")
    with torch.no_grad():
        assert torch.allclose(loaded(batch), model(batch))
    # and again: a loaded module saves the same configuration
    _save(loaded, tmp_path / "again.ckpt")
    again = torch.load(tmp_path / "again.ckpt", weights_only=True)["hyper_parameters"]
    assert again["region_encoder"] == stored["region_encoder"] and again["loss"] == stored["loss"]


def test_feature_tower_statistics_travel_in_the_checkpoint(datamodule, tmp_path) -> None:
    from lightning_wsg.models import FeatureRegionEncoder, PhraseEncoder

    torch.manual_seed(0)
    region = FeatureRegionEncoder(feature_dim=6, hidden_dim=16, embed_dim=16, box_geometry=True)
    phrase = PhraseEncoder(
        "all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_TEXT, hidden_dim=32, embed_dim=16
    )
    model = GroundingModule(region, phrase).eval()  # no loss: evaluation only
    batch = _batch(datamodule, "test")
    features = torch.randn(*batch.proposal_mask.shape, 6) * 3 + 5
    batch = dataclasses.replace(batch, region_features=features)
    with pytest.raises(RuntimeError, match="statistics were never computed"):
        model(batch)
    model.model.region_encoder.prepare([f[m] for f, m in zip(features, batch.proposal_mask)])
    real = features[batch.proposal_mask]
    assert torch.allclose(region.feature_mean, real.mean(0), atol=1e-5)
    assert torch.allclose(region.feature_std, real.std(0, unbiased=False), atol=1e-4)
    with torch.no_grad():
        scores = model(batch)
    _save(model, tmp_path / "f.ckpt")
    loaded = GroundingModule.load_from_checkpoint(tmp_path / "f.ckpt").eval()
    tower = loaded.model.region_encoder
    assert isinstance(tower, FeatureRegionEncoder) and not tower.needs_preparation
    assert torch.equal(tower.feature_mean, region.feature_mean)
    with torch.no_grad():
        assert torch.allclose(loaded(batch), scores, atol=1e-6)
    with pytest.raises(ValueError, match="feature_dim=6"):
        loaded(dataclasses.replace(batch, region_features=torch.randn(*batch.proposal_mask.shape, 5)))
    with pytest.raises(ValueError, match="the batch has none"):
        loaded(dataclasses.replace(batch, region_features=None))


def test_feature_tower_box_geometry_is_relative_to_each_image() -> None:
    from lightning_wsg.models import FeatureRegionEncoder

    torch.manual_seed(0)
    enc = FeatureRegionEncoder(feature_dim=3, hidden_dim=8, embed_dim=4, box_geometry=True, normalize=False).eval()
    features = torch.randn(1, 2, 3)
    mask = torch.tensor([[True, True]])
    boxes = torch.tensor([[[0.0, 0.0, 50.0, 40.0], [10.0, 10.0, 30.0, 20.0]]])
    a = enc(features, mask, boxes, torch.tensor([[100.0, 80.0]]))
    b = enc(features, mask, boxes * 2, torch.tensor([[200.0, 160.0]]))  # the same image at twice the size
    c = enc(features, mask, boxes, torch.tensor([[200.0, 160.0]]))  # boxes half as large relative to it
    assert torch.allclose(a, b, atol=1e-6) and not torch.allclose(a, c, atol=1e-3)
    # what the MLP reads after the features: x1/W, y1/H, x2/W, y2/H, w/W, h/H, wh/(WH) of a 100 x 80 image
    inputs = []
    enc.mlp.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    enc(features, mask, boxes, torch.tensor([[100.0, 80.0]]))
    expected = [[0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.25], [0.1, 0.125, 0.3, 0.25, 0.2, 0.125, 0.025]]
    torch.testing.assert_close(inputs[0][:, 3:], torch.tensor(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(inputs[0][:, :3], features[0], rtol=0, atol=0)  # normalize=False: as given


def test_towers_must_agree_and_distillation_needs_a_teacher() -> None:
    with pytest.raises(ValueError, match="disagree on the joint space"):
        tiny_module(region={"embed_dim": 8})
    model = tiny_module()
    with pytest.raises(ValueError, match="needs a teacher"):
        ContrastiveDistillationLoss(None, use_kd=True)
    towers = model.model.region_encoder, model.model.phrase_encoder
    with pytest.raises(TypeError, match="cannot be stored in a checkpoint"):
        GroundingModule(*towers, ContrastiveDistillationLoss(use_kd=False), optimizer=lambda p: None)


def test_a_feature_tower_grounds_an_image_file_by_its_size_alone(tmp_path) -> None:
    """A feature tower reads no pixels: a path gives the same result as its (width, height)."""
    from PIL import Image

    from lightning_wsg.models import FeatureRegionEncoder, PhraseEncoder

    torch.manual_seed(0)
    region = FeatureRegionEncoder(feature_dim=4, hidden_dim=8, embed_dim=8, box_geometry=True, normalize=False)
    phrase = PhraseEncoder("all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_TEXT, hidden_dim=8, embed_dim=8)
    model = GroundingModule(region, phrase).model.eval()
    Image.new("RGB", (160, 60)).save(tmp_path / "wide.png")
    boxes = [[0.0, 0.0, 80.0, 30.0], [40.0, 15.0, 160.0, 60.0]]
    features = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    args = {"proposals": boxes, "features": features}
    by_path = model.ground(tmp_path / "wide.png", "a [red car]", **args)
    assert by_path == model.ground((160, 60), "a [red car]", **args)
    assert by_path != model.ground((60, 160), "a [red car]", **args)  # the size does reach the geometry
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        model.ground(tmp_path / "missing.png", "a [red car]", **args)
