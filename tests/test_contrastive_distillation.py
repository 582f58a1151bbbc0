"""ContrastiveDistillationLoss: its ramp, its refusals, and what it stores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lightning_wsg.contrastive_distillation import REFERENCE_RAMP_FRACTION, ContrastiveDistillationLoss
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
