"""Training learns: a short fit of the demo config beats the teacher alone and random boxes.

On a small generated world (the demo's generator: captions say "toddler" and "puppy" where the
simulated detector says "person" and "dog"), a fit of a few epochs is tested on its best
validation checkpoint, and the two untrained baselines are scored on the same test split.
Margins are set from measured runs (see the constants) with room for run-to-run drift.
"""

from __future__ import annotations

from pathlib import Path

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
