"""DistillationDiagnostics: entropies, gradient norms and top-box agreement checked by hand,
a fit that is unchanged by the callback, and a CLI fit writing the JSON Lines file."""

from __future__ import annotations

import csv
import json
import math
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch
from helpers.cli import tiny_demo_args
from helpers.model import TINY_TEXT, tiny_model
from helpers.trainer import quiet_trainer
from pytorch_lightning import seed_everything
from torch import nn

from lightning_wsg.callbacks import DistillationDiagnostics
from lightning_wsg.callbacks.kd_diagnostics import phrase_entropies, top_box_counts
from lightning_wsg.cli import main
from lightning_wsg.data import SyntheticWorldDataModule
from lightning_wsg.data.batch import GroundingBatch, GroundingSample, collate
from lightning_wsg.losses import distillation_distributions

# Four proposals: the student's top box r0, then r1 (IoU 0.4 with r0), r2 (IoU 0.11) and r3
# (IoU 0). With top_k=3 every phrase is distilled over {r0, r1, r2}; r3 is left out. No two
# boxes reach IoU 0.5 with each other, so a box is right only for its own ground truth.
BOXES = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 4.0], [8.0, 0.0, 18.0, 10.0], [60.0, 60.0, 70.0, 70.0]])
STUDENT_ROW = [1.0, 0.5, 0.2, 0.0]  # top box r0

TRAIN_KEYS = {
    "stage", "step", "epoch", "kd_weight", "loss_nce", "loss_kd", "grad_norm_nce", "grad_norm_kd",
    "grad_norm_kd_weighted", "grad_ratio_kd_nce", "num_phrases", "num_regions", "entropy_teacher",
    "entropy_student", "entropy_teacher_norm", "entropy_student_norm",
}  # fmt: skip
TOP_BOX_KEYS = {
    "num_gt_phrases", "differs", "teacher_differs_right", "student_differs_right", "teacher_right", "student_right",
}  # fmt: skip
VAL_KEYS = {
    "stage", "step", "epoch", "num_phrases", "num_regions", "entropy_teacher", "entropy_student",
    "entropy_teacher_norm", "entropy_student_norm",
} | TOP_BOX_KEYS  # fmt: skip


def _batch(num_phrases: int, gt: list[int | None] | None = None) -> GroundingBatch:
    """One image with :data:`BOXES`; phrase ``j``'s ground truth is box ``gt[j]`` (``None``: no box)."""
    gt_boxes = None
    if gt is not None:
        gt_boxes = [BOXES[[g]] if g is not None else torch.zeros(0, 4) for g in gt]
    sample = GroundingSample(
        split="val",
        image_id="0",
        sentence_id="0#0",
        image=torch.zeros(3, 1, 1),
        image_size=(100, 100),
        words=[f"w{j}" for j in range(num_phrases)],
        phrase_spans=[(j, j + 1) for j in range(num_phrases)],
        proposals=BOXES,
        roi_boxes=BOXES,
        proposal_scores=torch.ones(len(BOXES)),
        proposal_labels=["thing"] * len(BOXES),
        gt_boxes=gt_boxes,
        phrase_types=[["other"]] * num_phrases if gt is not None else None,
    )
    return collate([sample])


class ScoresModule(nn.Module):
    """A stand-in for GroundingModule whose student scores are the parameter itself, so that
    the gradients of both terms can be worked out by hand: InfoNCE is ``sum(scores * nce)``.
    ``.model`` and ``.loss`` offer what the callback reads of GroundingModel and
    ContrastiveDistillationLoss."""

    def __init__(self, student, teacher, kd_mask, nce, kd_weight: float = 0.5, top_k: int | None = 3) -> None:
        super().__init__()
        self.scores = nn.Parameter(torch.as_tensor(student, dtype=torch.float32).clone())
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.teacher_scores = torch.as_tensor(teacher, dtype=torch.float32)
        self.kd_mask = torch.as_tensor(kd_mask)
        self.nce = torch.as_tensor(nce, dtype=torch.float32)
        self.kd_weight, self.top_k = kd_weight, top_k
        self.global_step = 0
        self.model = SimpleNamespace(encode=lambda batch: (self.scores, None))
        self.loss = SimpleNamespace(
            teacher="a teacher",  # the callback only asks whether there is one
            contrastive=lambda batch, regions, phrases: (regions * self.nce).sum(),
            distillation_scores=lambda batch, regions, phrases: (regions, self.teacher_scores, self.kd_mask),
            distillation_options=lambda: {"tau_student": 1.0, "tau_teacher": 2.0, "top_k": self.top_k, "target": "teacher"},
            kd_weight=lambda step: self.kd_weight,
        )


def _entropy_module(kd_mask=((True, True, False),), kd_weight: float = 0.5) -> ScoresModule:
    # phrase 0: a flat teacher, q uniform over the 3 regions; phrase 1: q one-hot on r1;
    # phrase 2: left out (its teacher would be peaked on r3). The student is flat: p uniform
    # over the same 3 regions (its top box is the first, r0).
    teacher = [[[1.0, 1.0, 1.0, 1.0], [0.0, 100.0, 0.0, 0.0], [0.0, 0.0, 0.0, 50.0]]]
    return ScoresModule(torch.zeros(1, 3, 4), teacher, kd_mask, nce=torch.full((1, 3, 4), 0.5), kd_weight=kd_weight)


def test_entropies_are_log_k_for_a_uniform_target_and_zero_for_a_one_hot_one() -> None:
    values = DistillationDiagnostics().measure(_entropy_module(), _batch(3))
    assert values["num_phrases"] == 2 and values["num_regions"] == 3.0
    assert values["entropy_student"] == pytest.approx(math.log(3), abs=1e-6)  # over the K regions, not all 4
    assert values["entropy_student_norm"] == pytest.approx(1.0, abs=1e-6)
    assert values["entropy_teacher"] == pytest.approx((math.log(3) + 0.0) / 2, abs=1e-6)
    assert values["entropy_teacher_norm"] == pytest.approx(0.5, abs=1e-6)

    module = _entropy_module()
    real = torch.ones(1, 4, dtype=torch.bool)
    dists = distillation_distributions(
        module.scores, module.teacher_scores, real, module.kd_mask, top_k=3, proposals=BOXES[None]
    )
    h_q, h_p, n = phrase_entropies(dists)
    torch.testing.assert_close(h_q, torch.tensor([math.log(3), 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(h_p, torch.tensor([math.log(3), math.log(3)]))
    assert n.tolist() == [3, 3]


def test_grad_norms_by_hand_and_the_run_untouched() -> None:
    module = _entropy_module(kd_weight=0.5)
    values = DistillationDiagnostics().measure(module, _batch(3))
    # d InfoNCE / d scores = nce: 12 entries of 0.5
    assert values["grad_norm_nce"] == pytest.approx(math.sqrt(3.0))
    # d KL / d s = (p - q) / tau_S, averaged over the 2 phrases: phrase 0 (p = q) adds nothing,
    # phrase 1 gives (1/3, 1/3 - 1, 1/3) / 2 on r0, r1, r2
    assert values["grad_norm_kd"] == pytest.approx(math.sqrt(6.0) / 6, rel=1e-5)
    assert values["loss_kd"] == pytest.approx(math.log(3) / 2, rel=1e-5)  # KL(one-hot || uniform of 3) / 2
    assert values["kd_weight"] == 0.5
    assert values["grad_norm_kd_weighted"] == pytest.approx(0.5 * math.sqrt(6.0) / 6, rel=1e-5)
    assert values["grad_ratio_kd_nce"] == pytest.approx(0.5 * math.sqrt(6.0) / 6 / math.sqrt(3.0), rel=1e-5)
    assert module.scores.grad is None  # torch.autograd.grad, not backward()


def test_an_empty_kd_mask_or_weight_gives_a_zero_distillation_gradient() -> None:
    values = DistillationDiagnostics().measure(_entropy_module(kd_mask=((False, False, False),)), _batch(3))
    assert values["grad_norm_kd"] == 0.0 and values["loss_kd"] == 0.0 and values["grad_norm_kd_weighted"] == 0.0
    assert values["grad_norm_nce"] == pytest.approx(math.sqrt(3.0))
    assert values["num_phrases"] == 0 and values["entropy_teacher"] is None and values["entropy_student_norm"] is None
    values = DistillationDiagnostics().measure(_entropy_module(kd_weight=0.0), _batch(3))
    assert values["grad_norm_kd"] > 0.4
    assert values["grad_norm_kd_weighted"] == 0.0 and values["grad_ratio_kd_nce"] == 0.0


def _agreement_module() -> ScoresModule:
    # ground truth per phrase: r1, r0, r0, r3, r1 (left out of distillation), none
    teacher = [
        [
            [0.0, 1.0, 0.0, 0.0],  # top r1: differs from the student's r0, the teacher is right
            [0.0, 0.0, 1.0, 0.0],  # top r2: differs, the student is right
            [1.0, 0.0, 0.0, 0.0],  # top r0: agrees, both right
            [0.5, 0.0, 0.0, 1.0],  # r3 would be right, but it is outside the K regions: agrees on r0, both wrong
            [0.0, 1.0, 0.0, 0.0],  # not distilled
            [0.0, 1.0, 0.0, 0.0],  # no ground-truth box
        ]
    ]
    kd_mask = [[True, True, True, True, False, True]]
    return ScoresModule([[STUDENT_ROW] * 6], teacher, kd_mask, nce=torch.zeros(1, 6, 4))


def test_teacher_right_fractions_on_a_constructed_batch() -> None:
    module = _agreement_module()
    batch = _batch(6, gt=[1, 0, 0, 3, 1, None])
    values = DistillationDiagnostics().measure(module, batch)
    assert {k: values[k] for k in TOP_BOX_KEYS} == {
        "num_gt_phrases": 4,
        "differs": 0.5,
        "teacher_differs_right": 0.25,
        "student_differs_right": 0.25,
        "teacher_right": 0.5,
        "student_right": 0.5,
    }
    student = module.scores.detach()
    dists = distillation_distributions(
        student, module.teacher_scores, batch.proposal_mask, module.kd_mask, top_k=3, proposals=batch.proposals
    )
    counts = top_box_counts(student, module.teacher_scores, dists, batch)
    assert tuple(counts) == (4, 2, 1, 1, 2, 2)
    assert set(DistillationDiagnostics().measure(module, _batch(6)).keys()) == TRAIN_KEYS - {"stage", "step", "epoch"}


# ---------------------------------------------------------------------------- fits
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kd_diag_world")
    _datamodule(root).prepare_data()
    return root


def _datamodule(root: Path) -> SyntheticWorldDataModule:
    sizes = {"num_train": 24, "num_val": 8, "num_test": 8, "world_image_size": 64, "image_size": 64}
    return SyntheticWorldDataModule(str(root), caption_nouns="varied", batch_size=8, num_workers=0, **sizes)


def _fit(world: Path, root: Path, callbacks: list) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    seed_everything(0)
    small = {"hidden_dim": 32, "embed_dim": 16}
    # ResNet-18 trained (BatchNorm statistics move in training mode), a text tower with dropout
    model = tiny_model(
        region=small,
        phrase=small | {"pretrained": False, "config_overrides": TINY_TEXT},
        teacher={"matching": "wordnet"},
        kd_weight_initial=1.0,
    )
    assert any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.model.phrase_encoder.modules())
    trainer = quiet_trainer(root, max_steps=2, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(model, _datamodule(world))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, torch.get_rng_state()


def test_the_callback_leaves_parameters_buffers_and_rng_as_without_it(world: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    diagnostics = DistillationDiagnostics(every_n_steps=1, path=tmp_path / "diag.jsonl")
    with_state, with_rng = _fit(world, tmp_path / "with", [diagnostics])
    without_state, without_rng = _fit(world, tmp_path / "without", [])
    records = [json.loads(line) for line in (tmp_path / "diag.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert all(r["grad_norm_kd"] > 0 and r["grad_norm_nce"] > 0 and r["num_phrases"] > 0 for r in records)
    assert with_state.keys() == without_state.keys()
    changed = [k for k in with_state if not torch.equal(with_state[k], without_state[k])]
    assert not changed, f"the callback changed {changed[:5]}"
    assert torch.equal(with_rng, without_rng)


def test_a_cli_fit_writes_the_jsonl_and_logs_the_values(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cli = main(
        [
            "fit",
            *tiny_demo_args(tmp_path),
            "--trainer.logger=pytorch_lightning.loggers.CSVLogger",
            f"--trainer.logger.save_dir={tmp_path / 'logs'}",
            "--trainer.callbacks+=lightning_wsg.callbacks.DistillationDiagnostics",
            "--trainer.callbacks.every_n_steps=5",
            "--trainer.callbacks.val_batches=2",
        ]
    )
    trainer = cli.trainer
    path = Path(trainer.log_dir) / "kd_diagnostics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    train = [r for r in records if r["stage"] == "train"]
    val = [r for r in records if r["stage"] == "val"]
    steps_per_epoch = trainer.num_training_batches
    # the demo's ramp is 0.0187 of the run: here one step
    assert cli.model.loss.ramp_steps() == max(1, round(0.0187 * steps_per_epoch))
    assert [r["step"] for r in train] == list(range(0, steps_per_epoch, 5)) and len(val) == 1
    for r in train:
        assert set(r) == TRAIN_KEYS  # training batches carry no ground truth: no top-box fractions
        weight = cli.model.loss.kd_weight(r["step"])
        assert r["kd_weight"] == pytest.approx(weight) and weight == pytest.approx(min(0.001 + r["step"], 3.0))
        assert r["grad_norm_nce"] > 0 and r["grad_norm_kd"] > 0 and r["num_phrases"] > 0
        assert r["num_regions"] == 8.0  # the demo's kd_top_k
        assert 0 <= r["entropy_teacher"] <= math.log(8) + 1e-5 and 0 <= r["entropy_student_norm"] <= 1 + 1e-6
        assert r["grad_norm_kd_weighted"] == pytest.approx(weight * r["grad_norm_kd"])
    (v,) = val
    assert set(v) == VAL_KEYS and v["step"] == trainer.global_step and v["num_gt_phrases"] > 0
    assert v["teacher_differs_right"] + v["student_differs_right"] <= v["differs"] + 1e-9
    assert all(0.0 <= v[k] <= 1.0 for k in TOP_BOX_KEYS - {"num_gt_phrases"})
    with (Path(trainer.logger.log_dir) / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    logged = [float(row["diag/grad_norm_kd"]) for row in rows if row.get("diag/grad_norm_kd")]
    assert logged == pytest.approx([r["grad_norm_kd"] for r in train])
    assert any(row.get("diag/val_teacher_differs_right") for row in rows)
