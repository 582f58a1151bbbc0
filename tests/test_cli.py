"""The ``lightning`` command end to end: fit then test on a tiny Flickr-layout dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers.cli import FLICKR_YAML, REPO, TINY_MODEL_YAML, data_args, tiny_model_args, trainer_args

from lightning_wsg.cli import main
from lightning_wsg.grounding_module import GroundingModule


def _distillation_in_use(model: GroundingModule, monkeypatch: pytest.MonkeyPatch) -> dict:
    """What a training step of ``model`` hands the distillation: its weight by step and its arguments."""
    weights = {}
    for step in (0, 6, 7, 499, 500, 1500, 10_000):
        model._trainer = SimpleNamespace(global_step=step)
        weights[step] = model.loss.kd_weight(model.global_step)
    seen = {}
    monkeypatch.setattr(
        "lightning_wsg.contrastive_distillation.distillation_kl", lambda *args, **kwargs: seen.update(kwargs) or 0.0
    )
    batch = SimpleNamespace(
        words=[["a", "dog"]], phrase_spans=[[(0, 2)]], proposal_labels=[["dog", "cat"]],
        proposal_scores=torch.tensor([[0.9, 0.8]]), proposal_mask=torch.ones(1, 2, dtype=torch.bool),
        class_probs=None, class_names=None, phrase_mask=torch.ones(1, 1, dtype=torch.bool),
        proposals=torch.tensor([[[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 20.0]]]),
    )  # fmt: skip
    model.loss.distillation(batch, torch.eye(2, 4)[None], torch.eye(1, 4)[None])
    keys = ("tau_student", "tau_teacher", "top_k", "target")
    return {"weights": weights} | {k: seen[k] for k in keys}


def _common(tiny_flickr, tmp_path: Path) -> list[str]:
    return [
        "--config",
        FLICKR_YAML,
        "--config",
        TINY_MODEL_YAML,
        *data_args(tiny_flickr.root, tiny_flickr.image_dir, tiny_flickr.detections),
        *tiny_model_args(),
        *trainer_args(tmp_path),
        "--data.image_size=64",
        "--data.batch_size=4",
    ]


def test_fit_then_test_writes_and_reads_a_checkpoint(tiny_flickr, tmp_path: Path) -> None:
    cli = main(["fit", *_common(tiny_flickr, tmp_path), "--trainer.max_epochs=1"])
    trainer = cli.trainer
    assert trainer.state.finished
    # one epoch of batches of 4 (the last partial batch dropped: every batch has negatives to contrast)
    assert trainer.global_step == len(cli.datamodule.datasets["train"]) // 4 > 0
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/nce", "train/kd", "val/acc", "val/upper_bound", "val/num_phrases"):
        assert key in metrics, key
    assert metrics["train/loss"].isfinite()
    best = trainer.checkpoint_callback.best_model_path
    assert best and Path(best).name == "best.ckpt" and Path(best).is_file()

    cli = main(["test", *_common(tiny_flickr, tmp_path), f"--ckpt_path={best}"])
    metrics = cli.trainer.callback_metrics
    expected = {
        "test/acc",
        "test/acc_any",
        "test/pointing",
        "test/recall@1",
        "test/recall@5",
        "test/recall@10",
        "test/upper_bound",
        "test/num_phrases",
    }
    assert expected <= set(metrics)
    # the tiny dataset's proposals hold every ground-truth and union box
    assert metrics["test/upper_bound"] == pytest.approx(1.0)
    # every evaluable phrase of the 4 test images: the annotated chains with a box
    datamodule = cli.datamodule
    n = sum(len(e.phrase_spans) for e in datamodule.datasets["test"].entries)
    assert metrics["test/num_phrases"] == n > 0
    assert 0.0 <= float(metrics["test/acc"]) <= float(metrics["test/recall@5"]) <= float(metrics["test/recall@10"])
    assert any(k.startswith("test/acc_") and k != "test/acc_any" for k in metrics)


def test_stacked_configs_merge_into_the_data_init_args(monkeypatch: pytest.MonkeyPatch) -> None:
    cli = main(
        [
            "--config",
            FLICKR_YAML,
            "--config",
            TINY_MODEL_YAML,
            "--data.root=r",
            "--data.image_dir=i",
            "--data.detections=d.jsonl",
            # values other than the defaults: each must reach the training step, not only the parsed config
            "--model.loss.tau_student=0.7",
            "--model.loss.tau_teacher=1.5",
            "--model.loss.kd_top_k=3",
            "--model.loss.kd_target=product",
            "--model.loss.kd_weight_initial=0.25",
            "--model.loss.kd_weight_increment=0.5",
            "--model.loss.kd_weight_every=7",
            "--model.loss.kd_weight_unit=steps",
            "--model.loss.kd_weight_max=1.0",
        ],
        run=False,
    )
    assert _distillation_in_use(cli.model, monkeypatch) == {
        "weights": {0: 0.25, 6: 0.25, 7: 0.75, 499: 1.0, 500: 1.0, 1500: 1.0, 10_000: 1.0},
        "tau_student": 0.7,
        "tau_teacher": 1.5,
        "top_k": 3,
        "target": "product",
    }
    assert type(cli.datamodule).__name__ == "Flickr30kEntitiesDataModule"
    assert cli.datamodule.batch_size == 8 and cli.datamodule.image_size == 128  # from tiny_model.yaml
    # tiny_model.yaml changes the towers' init_args and keeps their class_path and the other arguments
    region = cli.model.hparams.region_encoder
    assert region["class_path"].endswith("RegionEncoder") and region["init_args"]["backbone"] == "resnet18"
    towers = cli.model.model
    assert region["init_args"]["roi_size"] == 7 and towers.region_encoder.roi_size == 7
    assert towers.region_encoder.embed_dim == 128 and towers.region_encoder.mlp[-1].out_features == 128
    assert towers.phrase_encoder.embed_dim == 128 and cli.model.loss.teacher.matching == "lexical"
    optimizer = cli.model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == pytest.approx(1e-3)  # Adam's own


def test_console_script_and_module_entry_points() -> None:
    for cmd in ([str(Path(sys.executable).parent / "lightning"), "--help"], [sys.executable, "-m", "lightning_wsg", "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        for sub in ("fit", "validate", "test", "predict"):
            assert sub in out.stdout


def test_small_yaml_is_the_demos_cpu_towers_and_paper_yaml_the_papers_distillation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small, paper = (str(REPO / "cli_configs" / "model" / name) for name in ("small.yaml", "paper.yaml"))
    cli = main(
        ["--config", FLICKR_YAML, "--config", small, "--config", paper,
         "--data.root=r", "--data.image_dir=i", "--data.detections=d.jsonl"],
        run=False,
    )  # fmt: skip
    region = cli.model.hparams.region_encoder["init_args"]
    assert region["backbone"] == "tf_efficientnet_lite0" and region["freeze_backbone"] is True
    assert region["pretrained_path"] == "efficientnet-lite0-imagenet" and region["roi_pooling"] == "flatten"
    towers = cli.model.model
    assert towers.region_encoder.roi_pooling == "flatten" and towers.region_encoder.freeze_backbone is True
    assert not any(p.requires_grad for p in towers.region_encoder.backbone.parameters())
    assert not any(p.requires_grad for p in towers.phrase_encoder.text_model.parameters())
    # the paper's distillation, as paper.yaml has it (the reference's ramp in absolute steps)
    hp = cli.model.hparams.loss
    assert (hp["tau_student"], hp["tau_teacher"], hp["kd_top_k"], hp["kd_target"]) == (1.0, 2.0, 8, "teacher")
    assert (hp["kd_weight_every"], hp["kd_weight_unit"]) == (500, "steps")
    assert cli.model.loss.teacher.matching == "wordnet"
    assert _distillation_in_use(cli.model, monkeypatch) == {
        "weights": {0: 0.001, 6: 0.001, 7: 0.001, 499: 0.001, 500: 1.001, 1500: 3.0, 10_000: 3.0},
        "tau_student": 1.0,
        "tau_teacher": 2.0,
        "top_k": 8,
        "target": "teacher",
    }
    assert cli.datamodule.batch_size == 32 and cli.datamodule.image_size == 128


CKD_FEATURES_YAML = str(REPO / "cli_configs" / "model" / "ckd_features.yaml")
PAPER_YAML = str(REPO / "cli_configs" / "model" / "paper.yaml")


@pytest.mark.parametrize(
    "configs, extra, expected",
    [
        # the paper's feature setting: features of 2048, distillation on (the packaged GloVe: no file)
        ([FLICKR_YAML, CKD_FEATURES_YAML, PAPER_YAML], ["--model.phrase_encoder.init_args.vectors=glove-6b-50d"],
         (True, 2048, True)),
        ([FLICKR_YAML, CKD_FEATURES_YAML], ["--model.phrase_encoder.init_args.vectors=glove-6b-50d",
                                            "--model.region_encoder.init_args.feature_dim=16",
                                            "--model.loss.use_kd=false"], (True, 16, False)),  # fmt: skip
        ([FLICKR_YAML, TINY_MODEL_YAML], [], (False, None, True)),
        ([FLICKR_YAML, TINY_MODEL_YAML], ["--model.loss.use_kd=false"], (False, None, False)),
        ([str(REPO / "cli_configs" / "refcoco.yaml"), TINY_MODEL_YAML], [], (False, None, True)),
    ],
)
def test_the_model_tells_the_datamodule_what_samples_it_needs(configs, extra, expected) -> None:
    """GroundingCLI links data.read_features / feature_dim / require_labels from the model."""
    args = [a for c in configs for a in ("--config", c)]
    cli = main([*args, "--data.root=r", "--data.detections=d.jsonl", *extra], run=False)
    dm = cli.datamodule
    assert (dm.read_features, dm.feature_dim, dm.require_labels) == expected
    assert (cli.model.reads_images, cli.model.feature_dim, cli.model.needs_labels) == (
        not expected[0], expected[1], expected[2]
    )  # fmt: skip
    assert dm.reads_images() == (not expected[0] and dm.image_dir is not None)


DATASET_CONFIGS = ("flickr.yaml", "refcoco.yaml", "demo.yaml")
FRAGMENTS = sorted(
    str(p.relative_to(REPO / "cli_configs"))
    for p in (REPO / "cli_configs").rglob("*.yaml")
    if p.name not in DATASET_CONFIGS
)


def _print_config(configs: list[str], *extra: str) -> str:
    """``lightning ... --print_config`` of stacked configs, in-process: the parsed config or the parser's error."""
    import contextlib
    import io

    out = io.StringIO()
    args = [a for c in configs for a in ("--config", str(REPO / "cli_configs" / c))]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as exit_:
        main([*args, *extra, "--print_config"], run=False)
    assert exit_.value.code == 0, out.getvalue()
    return out.getvalue()


#: the towers under each dataset config (flickr.yaml and refcoco.yaml hold no model; the demo's is complete)
TOWERS = {"flickr.yaml": ["model/resnet_bert.yaml"], "refcoco.yaml": ["model/resnet_bert.yaml"], "demo.yaml": []}


@pytest.mark.parametrize("dataset, fragment", [(d, f) for d in DATASET_CONFIGS for f in [None, *FRAGMENTS]])
def test_every_config_parses_on_every_dataset_config(dataset, fragment) -> None:
    """Each dataset config alone and with each fragment stacked after it, as the docs stack them."""
    extra = ["--data.sentences_file=inputs.jsonl"] if fragment == "predict.yaml" else []
    text = _print_config([dataset, *TOWERS[dataset]] + ([fragment] if fragment else []), *extra)
    data_class = "SentencesFileDataModule" if fragment == "predict.yaml" else None
    assert f"class_path: lightning_wsg.data.{data_class or ''}" in text
    # the shared arguments reach every dataset's data.init_args (through **kwargs)
    for name in ("batch_size", "num_workers", "image_size", "max_proposals", "vocabulary", "pin_memory"):
        assert f"    {name}: " in text, name
