"""Training learns: a short fit of the demo config beats the teacher alone and random boxes, and
beats the same fit without distillation.

On a small generated world (the demo's generator: captions say "toddler" and "puppy" where the
simulated detector says "person" and "dog"), a fit of a few epochs is tested on its best
validation checkpoint, and the two untrained baselines are scored on the same test split.
Margins are set from measured runs (see the constants) with room for run-to-run drift.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.cli import demo_args

from lightning_wsg.baselines import evaluate_scores, random_scores, teacher_scores
from lightning_wsg.cli import main
from lightning_wsg.models import Teacher

# Measured with these settings (seed 0, 48 s here under load): the fit reached 0.665 test
# accuracy, the teacher alone 0.552 and random boxes 0.060; with 240 training images and 4
# epochs the fit stayed at the teacher (0.576 against 0.590), so the world is no smaller. A
# model that does not learn stays near random; one that only copies the teacher stays near it.
MARGIN_OVER_TEACHER = 0.05
MARGIN_OVER_RANDOM = 0.40


def _args(tmp_path: Path) -> list[str]:
    return demo_args(tmp_path, epochs=3, num_train=480, num_val=40, num_test=60)


def test_a_short_fit_beats_the_teacher_alone_and_random_boxes(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cli = main(["fit", *_args(tmp_path)])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best
    tested = main(["test", *_args(tmp_path), f"--ckpt_path={best}"])
    acc = float(tested.trainer.callback_metrics["test/acc"])

    dm = tested.datamodule
    dm.setup("test")
    loader = dm.test_dataloader()
    batches = list(loader[0] if isinstance(loader, list) else loader)
    teacher = Teacher("wordnet")
    teacher_acc = evaluate_scores(batches, lambda b: teacher_scores(teacher, b))["acc"]
    g = torch.Generator().manual_seed(0)
    random_acc = evaluate_scores(batches, lambda b: random_scores(b, g))["acc"]
    print(f"fit {acc:.3f}, teacher alone {teacher_acc:.3f}, random {random_acc:.3f}")
    assert acc >= teacher_acc + MARGIN_OVER_TEACHER, (acc, teacher_acc)
    assert acc >= random_acc + MARGIN_OVER_RANDOM, (acc, random_acc)


# Distillation on and off, measured with the settings of _kd_args (480 training, 80 validation and
# 100 test images, 4 epochs), each run tested once on its best validation checkpoint. Test accuracy
# per seed_everything, with distillation / without (model.loss.use_kd=false):
#   seed 0: 0.825 / 0.699   seed 1: 0.834 / 0.803   seed 2: 0.827 / 0.792
#   seed 3: 0.823 / 0.686   seed 4: 0.836 / 0.672
# (best validation accuracy: 0.774 / 0.674, 0.801 / 0.774, 0.785 / 0.741, 0.793 / 0.645, 0.802 / 0.650).
# With distillation the fit is steady (0.823-0.836); without it, it depends on the seed (0.672-0.803):
# InfoNCE alone must tell apart objects that co-occur, the teacher's class names tell them at once.
# The smallest gain was 0.031 (seed 1): the margin is 0.02. A floor of 0.80 on the method itself
# (0.823 at the worst seed) catches a distillation that still runs but teaches less. Settings were
# chosen on validation: with 3 epochs (40 validation images) the gain was 0.011-0.197, with
# pair_rate 1.0 or difficulty 0 it was negative for one seed of five or three.
KD_MARGIN = 0.02
KD_FLOOR = 0.80


def _kd_args(tmp_path: Path, use_kd: bool) -> list[str]:
    run = tmp_path / ("kd" if use_kd else "no_kd")
    return [
        *demo_args(run, epochs=4, num_train=480, num_val=80, num_test=100),
        f"--data.root={tmp_path / 'world'}",  # one world for both runs
        f"--model.loss.use_kd={str(use_kd).lower()}",
        # the ramp the measurements above were made with (the demo's 14 steps, absolute); the
        # demo's run-relative 0.0187 would ramp every 2 of these ~120 steps, and seed 0 then gave
        # 0.799 / 0.781 (measured once, 2026-12-05): the margin is calibrated for this schedule
        "--model.loss.kd_weight_every=14",
        "--model.loss.kd_weight_unit=steps",
    ]


def _fit_and_test(args: list[str]) -> float:
    """Test accuracy of the best validation checkpoint of a fit."""
    cli = main(["fit", *args])
    best = cli.trainer.checkpoint_callback.best_model_path
    assert best
    tested = main(["test", *args, f"--ckpt_path={best}"])
    return float(tested.trainer.callback_metrics["test/acc"])


@pytest.mark.slow
def test_distillation_beats_the_same_fit_without_it(tmp_path: Path) -> None:
    """The demo config (seed 0) against the same run with ``model.loss.use_kd=false``: about 2 minutes on
    one core. A distillation switched off anywhere (``use_kd`` ignored, a zero weight, a teacher
    that says nothing) makes the two runs equal and fails here."""
    torch.set_num_threads(1)
    with_kd = _fit_and_test(_kd_args(tmp_path, use_kd=True))
    without = _fit_and_test(_kd_args(tmp_path, use_kd=False))
    print(f"with distillation {with_kd:.3f}, without {without:.3f}")
    assert with_kd >= without + KD_MARGIN, (with_kd, without)
    assert with_kd >= KD_FLOOR, with_kd
