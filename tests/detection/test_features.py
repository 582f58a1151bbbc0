"""Per-box region features through the one detections reading path: bottom-up-attention TSV
(base64 float32 ``features`` column) and the BAN / MAF HDF5 layout, with their bad inputs."""

from __future__ import annotations

import pytest
import torch
from helpers.cli import FLICKR_YAML, REPO, trainer_args
from helpers.features import features_of, write_hdf5, write_tsv, write_vocabulary
from helpers.flickr import make_tiny_flickr
from helpers.model import TINY_TEXT
from helpers.trainer import quiet_trainer

from lightning_wsg.cli import main
from lightning_wsg.contrastive_distillation import ContrastiveDistillationLoss
from lightning_wsg.data import Flickr30kEntitiesDataModule, SentencesFileDataModule
from lightning_wsg.detection.formats import DetectionFormatError, open_detections
from lightning_wsg.detection.native import convert
from lightning_wsg.grounding_module import GroundingModule
from lightning_wsg.models import FeatureRegionEncoder, PhraseEncoder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_flickr(tmp_path_factory.mktemp("tiny"), n_images=10, seed=3, split_sizes=(2, 2))


@pytest.fixture(scope="module")
def data(tiny):
    return features_of(tiny.detections, tiny.sizes, dim=16)


def _feature_model(dim: int) -> GroundingModule:
    return GroundingModule(
        FeatureRegionEncoder(feature_dim=dim, hidden_dim=32, embed_dim=16, box_geometry=True),
        PhraseEncoder("all-MiniLM-L6-v2", pretrained=False, config_overrides=TINY_TEXT, hidden_dim=32, embed_dim=16),
        ContrastiveDistillationLoss(use_kd=False),
    )


def test_feature_mode_reads_no_image_and_normalises_with_training_statistics(tmp_path, tiny, data):
    tsv = write_tsv(tmp_path / "f.tsv", data)
    dm = Flickr30kEntitiesDataModule(tiny.root, None, str(tsv), batch_size=4, num_workers=0, max_proposals=5)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.images.shape[1:] == (3, 1, 1) and batch.region_features.shape[-1] == 16
    assert batch.image_sizes[0].tolist() == list(tiny.sizes[batch.image_ids[0]])  # from the TSV's image_w/h
    model = _feature_model(16)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    train_images = sorted({e.image_id for e in dm.datasets["train"].entries})
    kept = torch.cat([dm.store.features(i)[dm.datasets["train"].kept_proposals(i)] for i in train_images])
    region = model.model.region_encoder
    assert int(region.feature_count) == len(kept)
    assert torch.allclose(region.feature_mean, kept.mean(0), atol=1e-4)
    assert torch.allclose(region.feature_std, kept.std(0, unbiased=False), atol=1e-4)
    assert trainer.global_step > 0 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_feature_mode_refuses_other_widths_and_sources_without_features(tmp_path, tiny, data):
    tsv = write_tsv(tmp_path / "f.tsv", data)
    trainer = quiet_trainer(tmp_path, max_epochs=1, enable_checkpointing=False)
    dm = Flickr30kEntitiesDataModule(
        tiny.root, None, str(tsv), batch_size=4, num_workers=0, read_features=True, feature_dim=8
    )
    with pytest.raises(
        DetectionFormatError, match=rf"{tsv}: features of width 16 \(image \d+\), but the model's feature tower takes 8"
    ):
        trainer.fit(_feature_model(8), datamodule=dm)
    # without feature_dim the datamodule cannot know the width: the tower refuses it, naming its setting
    dm = Flickr30kEntitiesDataModule(tiny.root, None, str(tsv), batch_size=4, num_workers=0)
    with pytest.raises(ValueError, match=r"feature_dim=8"):
        trainer.fit(_feature_model(8), datamodule=dm)
    dm = Flickr30kEntitiesDataModule(tiny.root, None, str(tiny.detections), batch_size=4, num_workers=0)
    with pytest.raises(
        ValueError, match=rf"{tiny.detections} has none: give data.detections a bottom-up-attention TSV"
    ):
        trainer.fit(_feature_model(16), datamodule=dm)
    # features of an image the annotations do not know: the file and the image are named
    extra = dict(data["images"])
    extra["123"] = next(iter(data["images"].values()))
    bad = write_tsv(tmp_path / "extra.tsv", {"images": extra, "names": data["names"]})
    dm = Flickr30kEntitiesDataModule(tiny.root, None, str(bad), batch_size=4, num_workers=0)
    with pytest.raises(DetectionFormatError, match=rf"{bad}: 1 detection records for images unknown .* image 123"):
        dm.setup("fit")


def test_a_feature_model_on_a_datamodule_built_for_images_says_how_to_fix_it(tmp_path, tiny, data):
    """Python, no CLI: the datamodule is not told (read_features) and reads images; the run stops
    before the first step (the tower's statistics) or at the first batch, naming the setting."""
    tsv = write_tsv(tmp_path / "f.tsv", data)
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_val_batches=1, enable_checkpointing=False)
    dm = Flickr30kEntitiesDataModule(tiny.root, tiny.image_dir, str(tsv), batch_size=4, num_workers=0)
    with pytest.raises(ValueError, match=r"built to read images: pass read_features=True \(and feature_dim"):
        trainer.fit(_feature_model(16), datamodule=dm)
    model = _feature_model(16)
    store = open_detections(tsv)
    model.model.region_encoder.prepare(store.features(i) for i in store)  # prepared: no statistics needed
    with pytest.raises(ValueError, match=r"the batch has none: build the datamodule with read_features=True"):
        quiet_trainer(tmp_path).validate(model, datamodule=dm, verbose=False)
    # told, the same folders train: images are not read
    told = Flickr30kEntitiesDataModule(
        tiny.root, tiny.image_dir, str(tsv), batch_size=4, num_workers=0, read_features=True, feature_dim=16
    )
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(_feature_model(16), datamodule=told)
    assert trainer.global_step == 1 and not told.datasets["train"].read_images


CKD_YAML = str(REPO / "cli_configs" / "model" / "ckd_features.yaml")


def _ckd_args(tiny, detections, tmp_path, *extra: str) -> list[str]:
    return [
        "--config", FLICKR_YAML, "--config", CKD_YAML, "--config", str(REPO / "cli_configs" / "model" / "paper.yaml"),
        f"--data.root={tiny.root}", f"--data.detections={detections}",
        "--model.region_encoder.feature_dim=16",
        "--model.region_encoder.hidden_dim=32", "--model.region_encoder.embed_dim=16",
        "--model.phrase_encoder.vectors=glove-6b-50d", "--model.phrase_encoder.hidden_size=16",
        "--model.phrase_encoder.hidden_dim=32", "--model.phrase_encoder.embed_dim=16",
        "--model.loss.teacher.matching=lexical",
        "--data.batch_size=4", "--data.num_workers=0",
        *trainer_args(tmp_path), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("source", ["tsv", "hdf5", "native"])
def test_lightning_fit_then_test_on_precomputed_features(tmp_path, tiny, data, source):
    """``flickr.yaml`` + ``model/ckd_features.yaml`` end to end, no image folder, from each source."""
    if source == "tsv":
        detections = write_tsv(tmp_path / "vg.tsv", data)
        extra = [f"--data.vocabulary={write_vocabulary(tmp_path / 'vocab.txt', data)}"]
    elif source == "native":  # the TSV converted once; its labels travel with it
        detections = convert(
            write_tsv(tmp_path / "vg.tsv", data), tmp_path / "vg.native", write_vocabulary(tmp_path / "vocab.txt", data)
        )
        extra = []
    else:  # the BAN / MAF layout: one file per split in a folder, no labels: InfoNCE only
        (tmp_path / "h5").mkdir()
        for split, ids in tiny.splits.items():
            write_hdf5(tmp_path / "h5" / f"{split}.hdf5", data, ids)
        detections, extra = tmp_path / "h5", ["--model.loss.use_kd=false"]
    fit = main(["fit", *_ckd_args(tiny, detections, tmp_path, *extra), "--trainer.max_epochs=2"])
    assert not fit.datamodule.reads_images() and fit.trainer.global_step > 0
    assert not fit.model.model.region_encoder.needs_preparation
    metrics = fit.trainer.callback_metrics
    assert "val/acc" in metrics and ("train/kd" in metrics) == (source != "hdf5")
    best = fit.trainer.checkpoint_callback.best_model_path
    tested = main(["test", *_ckd_args(tiny, detections, tmp_path, *extra), f"--ckpt_path={best}"])
    metrics = tested.trainer.callback_metrics
    n = sum(len(e.phrase_spans) for e in tested.datamodule.datasets["test"].entries)
    assert metrics["test/num_phrases"] == n > 0 and metrics["test/upper_bound"] == pytest.approx(1.0)
    assert 0.0 <= float(metrics["test/acc"]) <= 1.0

    # the checkpoint alone rebuilds both towers and their statistics; ground() takes features
    model = GroundingModule.load_from_checkpoint(best, map_location="cpu")
    assert type(model.model.phrase_encoder).__name__ == "LstmPhraseEncoder"
    assert not model.model.region_encoder.needs_preparation
    image_id = tiny.splits["test"][0]
    d = data["images"][image_id]
    out = model.ground(
        d["size"], "[a man] next to [a dog]", proposals=d["boxes"], features=torch.from_numpy(d["features"])
    )
    assert [p["phrase"] for p in out] == ["a man", "a dog"]
    assert all(p["box"] in [[round(v, 2) for v in b] for b in d["boxes"].tolist()] for p in out)
    with pytest.raises(
        ValueError, match="reads per-box features, not pixels: give ground\\(\\) the proposals and their features"
    ):
        model.ground(d["size"], "a man")


def test_lightning_predict_with_the_feature_tower_reads_boxes_and_features(tmp_path, tiny, data):
    import json

    tsv = write_tsv(tmp_path / "f.tsv", data)
    model = _feature_model(16)
    store = open_detections(tsv)
    model.model.region_encoder.prepare(store.features(i) for i in store)
    ids = tiny.splits["test"][:2]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"image": str(tiny.image_dir / f"{i}.jpg"), "sentence": "[a man] and [a dog]"}) + "\n"
            for i in ids
        )
    )
    dm = SentencesFileDataModule(
        inputs, "detections", str(tsv), batch_size=2, num_workers=0, read_features=True, feature_dim=16
    )
    (out,) = quiet_trainer(tmp_path).predict(model, datamodule=dm)
    assert [r["image_id"] for r in out] == ids
    for record, image_id in zip(out, ids):
        assert record["image_size"] == list(tiny.sizes[image_id])  # read from the image's header
        boxes = [[round(v, 2) for v in b] for b in data["images"][image_id]["boxes"].tolist()]
        assert len(record["phrases"]) == 2 and all(p["box"] in boxes for p in record["phrases"])
    with pytest.raises(ValueError, match="the model reads per-box features: ground with data.proposals=detections"):
        SentencesFileDataModule(inputs, "grid", batch_size=2, num_workers=0, read_features=True)
    dm = SentencesFileDataModule(inputs, "detections", str(tsv), num_workers=0, read_features=True, feature_dim=8)
    with pytest.raises(DetectionFormatError, match=rf"{tsv}: features of width 16 \(image \d+\), but .* takes 8"):
        dm.setup("predict")
