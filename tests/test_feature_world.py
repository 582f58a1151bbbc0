"""The feature world built from the real Flickr30K Entities files: layout, determinism, the
detector table's independence from the teacher, and a batch through the real datamodule."""

from __future__ import annotations

import filecmp
import json
import tarfile

import numpy as np
import pytest
import torch
from helpers.flickr import FLICKR_FILES
from helpers.shared import require_shared

from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.detection.formats import open_detections
from lightning_wsg.synthetic.feature_world import (
    FeatureWorldConfig,
    _ClassTable,
    _detector_class,
    build_feature_world,
    read_provenance,
    world_is_complete,
)
from lightning_wsg.lexicon.classes import COCO80

SMALL = FeatureWorldConfig(num_train=24, num_val=6, num_test=6, feature_dim=32)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    flickr = require_shared(FLICKR_FILES / "annotations.tar.gz", "the Flickr30K Entities annotations").parent
    a, b = tmp_path_factory.mktemp("world_a"), tmp_path_factory.mktemp("world_b")
    stats = build_feature_world(flickr, a, SMALL, progress=False)
    build_feature_world(flickr, b, SMALL, progress=False)
    return flickr, a, b, stats


def test_layout_holds_the_real_files_and_the_chosen_split_ids(worlds):
    flickr, world, _, stats = worlds
    ids = {s: (world / f"{s}.txt").read_text().split() for s in ("train", "val", "test")}
    assert [len(ids[s]) for s in ("train", "val", "test")] == [24, 6, 6]
    for split, chosen in ids.items():  # each id comes from its own official split
        assert set(chosen) <= set((flickr / f"{split}.txt").read_text().split())
    some = ids["test"][0]
    with tarfile.open(flickr / "annotations.tar.gz") as tar:
        member = next(m for m in tar if m.name.endswith(f"Sentences/{some}.txt"))
        assert (world / "Sentences" / f"{some}.txt").read_bytes() == tar.extractfile(member).read()
    assert (world / "classes.txt").read_text().splitlines() == list(COCO80)
    meta = json.loads((world / "world.json").read_text())
    assert meta["config"]["num_train"] == 24
    assert meta["stats"] == json.loads(json.dumps({k: v for k, v in stats.items() if k != "seconds"}))
    assert stats["images"] == 36 and stats["splits"]["test"]["phrases_with_box"] > 0
    assert 0.5 < stats["splits"]["test"]["upper_bound"] <= 1.0
    assert world_is_complete(world, SMALL) and not world_is_complete(world, FeatureWorldConfig(num_train=25))


def test_regions_carry_features_labels_and_probabilities(worlds):
    _, world, _, _ = worlds
    store = open_detections(world / "regions.native")
    assert store.class_names == list(COCO80) and store.feature_dim == 32
    provenance = read_provenance(world)
    for image_id in list(store)[:10]:
        det = store[image_id]
        feats = store.features(image_id)
        assert feats.shape == (len(det), 32) and len(det) <= SMALL.proposals
        assert torch.allclose(feats.norm(dim=1), torch.ones(len(det)), atol=1e-2)  # unit vectors (float16)
        width, height = det.image_size
        assert (det.boxes[:, 2] <= width + 1e-3).all() and (det.boxes[:, 3] <= height + 1e-3).all()
        recorded = torch.tensor([r["box"] for r in provenance[image_id]])
        assert recorded.shape == det.boxes.shape and torch.allclose(recorded, det.boxes, atol=0.01)
        if det.class_probs is not None:  # the native store keeps the probabilities
            probs = det.class_probs
            assert probs.shape == (len(det), 80) and (probs >= 0).all()
            assert (probs.sum(1) <= 1.0 + 1e-2).all()
            top2 = probs.topk(2, dim=1)
            clear = (top2.values[:, 0] - top2.values[:, 1] > 1e-3).tolist()  # float16 may tie the rest
            assert [lab for lab, c in zip(det.labels, clear) if c] == [
                COCO80[i] for i, c in zip(top2.indices[:, 0].tolist(), clear) if c
            ]
            assert torch.allclose(det.scores, probs.max(1).values, atol=2e-3)
        kinds = {r["kind"] for r in provenance[image_id]}
        assert kinds <= {"tight", "group", "partial", "background"} and "tight" in kinds


def test_same_config_same_bytes(worlds):
    _, a, b, _ = worlds
    compare = filecmp.dircmp(a, b)
    assert not compare.diff_files and not compare.left_only and not compare.right_only
    for sub in ("Annotations", "Sentences"):
        assert not filecmp.dircmp(a / sub, b / sub).diff_files
    shards = sorted((a / "regions.native" / "shards").glob("*.npy"))
    assert shards
    for shard in shards:
        assert np.array_equal(np.load(shard), np.load(b / "regions.native" / "shards" / shard.name))


def test_another_seed_another_world(worlds, tmp_path):
    flickr, a, _, _ = worlds
    other = FeatureWorldConfig(num_train=24, num_val=6, num_test=6, feature_dim=32, seed=1)
    build_feature_world(flickr, tmp_path, other, progress=False)
    assert (tmp_path / "train.txt").read_text() != (a / "train.txt").read_text()


def test_the_detector_table_is_not_the_teachers_wordnet():
    table = _ClassTable(list(COCO80))

    def chain(words: list[str], kind: str) -> dict:
        return {"mentions": [words], "type": kind}

    def name(words, kind):
        c = _detector_class(chain(words, kind), table)
        return None if c is None else COCO80[c]

    assert name(["a", "toddler"], "people") == "person"  # by the annotated phrase type
    assert name(["the", "puppy"], "animals") == "dog"  # the synonym table
    assert name(["two", "dogs"], "animals") == "dog"  # a plural of the class name
    assert name(["a", "sedan"], "vehicles") is None  # WordNet would say car: the table does not
    assert name(["an", "orange", "shirt"], "clothing") is None  # a colour word names no fruit
    assert name(["an", "orange"], "other") == "orange"


def test_refuses_a_folder_holding_something_else(tmp_path):
    flickr = require_shared(FLICKR_FILES / "annotations.tar.gz", "the Flickr30K Entities annotations").parent
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no feature world"):
        build_feature_world(flickr, tmp_path, SMALL, progress=False)


def test_too_many_images_for_a_split_is_refused(tmp_path):
    flickr = require_shared(FLICKR_FILES / "annotations.tar.gz", "the Flickr30K Entities annotations").parent
    with pytest.raises(ValueError, match=r"val\.txt lists 1000 images, fewer than num_val=5000"):
        build_feature_world(flickr, tmp_path / "w", FeatureWorldConfig(num_val=5000), progress=False)


def test_a_batch_through_the_flickr_datamodule(worlds):
    _, world, _, _ = worlds
    dm = Flickr30kEntitiesDataModule(
        root=str(world), image_dir=None, detections=str(world / "regions.native"), batch_size=4, num_workers=0,
        max_proposals=30,
    )  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.region_features.shape[:2] == batch.proposal_mask.shape and batch.region_features.shape[2] == 32
    assert batch.class_probs is not None and batch.class_probs.shape[-1] == 80


def test_the_synthetic_cli_builds_and_then_reuses_it(tmp_path, capsys):
    from lightning_wsg.synthetic import main

    flickr = require_shared(FLICKR_FILES / "annotations.tar.gz", "the Flickr30K Entities annotations").parent
    argv = ["features", "--flickr", str(flickr), "--out", str(tmp_path), "--num-train", "5", "--num-val", "2",
            "--num-test", "2", "--feature-dim", "16", "--vocabulary", "coco"]  # fmt: skip
    stats = main(argv)
    assert stats["images"] == 9 and "reused" not in stats
    assert json.loads((tmp_path / "world.json").read_text())["config"]["feature_dim"] == 16
    assert main(argv)["reused"] is True
    assert '"images": 9' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("fragment", "expected"),
    [
        ("paper.yaml", {"kd_target": "teacher", "tau_student": 1.0, "tau_teacher": 2.0, "kd_top_k": 8}),
        ("recommended.yaml", {"kd_target": "product", "tau_student": 0.1, "tau_teacher": 0.5, "kd_top_k": None}),
    ],
)
def test_paper_and_recommended_fragments_train_on_the_feature_world(worlds, tmp_path, fragment, expected):
    """``flickr.yaml`` + ``model/ckd_features.yaml`` + the fragment: the settings reach the module, and
    one training step distils from the world's class probabilities (a batch with them, a finite loss)."""
    from helpers.cli import FLICKR_YAML, REPO, trainer_args

    from lightning_wsg.cli import main

    _, world, _, _ = worlds
    args = [
        "--config", FLICKR_YAML, "--config", str(REPO / "cli_configs" / "model" / "ckd_features.yaml"),
        "--config", str(REPO / "cli_configs" / "model" / fragment),
        f"--data.root={world}", f"--data.detections={world / 'regions.native'}", "--data.num_workers=0",
        "--data.batch_size=4", "--model.region_encoder.feature_dim=32", "--model.region_encoder.hidden_dim=16",
        "--model.region_encoder.embed_dim=8", "--model.phrase_encoder.vectors=glove-6b-50d",
        "--model.phrase_encoder.hidden_size=8", "--model.phrase_encoder.hidden_dim=16",
        "--model.phrase_encoder.embed_dim=8", "--trainer.accelerator=cpu", "--trainer.devices=1",
        "--trainer.fast_dev_run=1", *trainer_args(tmp_path),
    ]  # fmt: skip
    fit = main(["fit", *args])
    assert {k: fit.model.hparams.loss[k] for k in expected} == expected
    assert {k: getattr(fit.model.loss, k) for k in expected if k != "kd_weight_every"} == {
        k: v for k, v in expected.items() if k != "kd_weight_every"
    }  # what the loss uses, not only what was parsed
    assert fit.model.hparams.loss["teacher"]["init_args"]["matching"] == "wordnet"
    assert fit.datamodule.store.class_names == list(COCO80)
    assert torch.isfinite(fit.trainer.callback_metrics["train/kd"]) and fit.trainer.global_step == 1


def test_a_visual_genome_vocabulary_gives_1600_probability_columns(tmp_path):
    """The Visual Genome detector's 1,600 classes (first synonym of each line): a man is a man there."""
    flickr = require_shared(FLICKR_FILES / "annotations.tar.gz", "the Flickr30K Entities annotations").parent
    vocab = require_shared(FLICKR_FILES.parent / "visual_genome" / "vg_objects_vocab.txt", "the VG vocabulary")
    config = FeatureWorldConfig(num_train=4, num_val=1, num_test=1, feature_dim=16, vocabulary=str(vocab))
    build_feature_world(flickr, tmp_path, config, progress=False)
    store = open_detections(tmp_path / "regions.native")
    assert len(store.class_names) == 1600 and store.class_names[:3] == ["yolk", "goal", "bathroom"]
    det = store[next(iter(store))]
    assert det.class_probs.shape == (len(det), 1600)
    table = _ClassTable(store.class_names)
    assert store.class_names[_detector_class({"mentions": [["a", "man"]], "type": "people"}, table)] == "man"


def test_world_json_does_not_depend_on_string_hashing(worlds, tmp_path):
    """Another interpreter (another PYTHONHASHSEED) writes the same world.json: set iteration order
    once decided the order of tied head words in its statistics."""
    import os
    import subprocess
    import sys

    flickr, world, _, _ = worlds
    code = (
        "import sys; from lightning_wsg.synthetic.feature_world import FeatureWorldConfig, build_feature_world; "
        "build_feature_world(sys.argv[1], sys.argv[2], FeatureWorldConfig(num_train=24, num_val=6, num_test=6, "
        "feature_dim=32), progress=False)"
    )
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(flickr), str(tmp_path / "w")], check=True, env=env)
    assert (tmp_path / "w" / "world.json").read_bytes() == (world / "world.json").read_bytes()
