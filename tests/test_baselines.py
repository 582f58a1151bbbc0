"""The untrained baselines of the synthetic benchmark: a random proposal and the teacher alone."""

from __future__ import annotations

import pytest
import torch

from lightning_wsg.baselines import ERROR_KINDS, error_kinds, evaluate_scores, random_scores, teacher_scores
from lightning_wsg.data.batch import GroundingSample, collate
from lightning_wsg.models import Teacher

# one image: a red ball (gt), a blue ball, a loose box around the red ball, a box
BOXES = torch.tensor(
    [[10.0, 10.0, 30.0, 30.0], [50.0, 50.0, 70.0, 70.0], [5.0, 5.0, 40.0, 40.0], [80.0, 0.0, 99.0, 20.0]]
)


def _batch(scores: list[float], labels: list[str]) -> object:
    sample = GroundingSample(
        split="test",
        image_id="1",
        sentence_id="1#0",
        image=torch.zeros(3, 8, 8),
        image_size=(100, 100),
        words=["the", "red", "ball", "near", "a", "box", "."],
        phrase_spans=[(0, 3), (4, 6)],
        proposals=BOXES,
        roi_boxes=BOXES,
        proposal_scores=torch.tensor(scores),
        proposal_labels=labels,
        gt_boxes=[BOXES[:1].clone(), BOXES[3:].clone()],
        phrase_types=[["other"], ["other"]],
        phrase_ids=["1", "2"],
    )
    return collate([sample])


def test_teacher_alone_picks_the_best_scored_box_of_the_phrase_class() -> None:
    teacher = Teacher("lexical")
    right = _batch([0.9, 0.8, 0.3, 0.7], ["ball", "ball", "ball", "box"])
    torch.testing.assert_close(
        teacher_scores(teacher, right), torch.tensor([[[0.9, 0.8, 0.3, 0.0], [0.0, 0.0, 0.0, 0.7]]])
    )
    assert evaluate_scores([right], lambda b: teacher_scores(teacher, b))["acc"] == 1.0
    # the detector prefers the blue ball: the teacher cannot read "red"
    wrong = _batch([0.7, 0.9, 0.3, 0.7], ["ball", "ball", "ball", "box"])
    metrics = evaluate_scores([wrong], lambda b: teacher_scores(teacher, b))
    assert metrics["acc"] == 0.5 and metrics["num_phrases"] == 2


def test_random_baseline_is_seeded_and_covers_the_proposals() -> None:
    batch = _batch([0.9, 0.8, 0.3, 0.7], ["ball", "ball", "ball", "box"])
    a = random_scores(batch, torch.Generator().manual_seed(0))
    b = random_scores(batch, torch.Generator().manual_seed(0))
    assert a.shape == (1, 2, 4) and torch.equal(a, b)
    accs = [
        evaluate_scores([batch], lambda x, s=s: random_scores(x, torch.Generator().manual_seed(s)))["acc"]
        for s in range(40)
    ]
    assert 0.0 < sum(accs) / len(accs) < 1.0


OBJECTS = {
    "1": [
        {"box": [10.0, 10.0, 30.0, 30.0], "category": "ball", "colour": "red", "chains": [1]},
        {"box": [50.0, 50.0, 70.0, 70.0], "category": "ball", "colour": "blue", "chains": []},
        {"box": [80.0, 0.0, 99.0, 20.0], "category": "box", "colour": "green", "chains": [2]},
    ]
}


def _pick(first: int, second: int):
    """Scores choosing proposal ``first`` for "the red ball" and ``second`` for "a box"."""

    def score(batch):
        s = torch.zeros(1, 2, 4)
        s[0, 0, first] = s[0, 1, second] = 1.0
        return s

    return score


def test_error_kinds_name_what_the_top_box_hit() -> None:
    batch = _batch([0.9, 0.8, 0.3, 0.7], ["ball", "ball", "ball", "box"])
    right = error_kinds([batch], _pick(0, 3), OBJECTS)
    assert right == dict.fromkeys(ERROR_KINDS, 0.0) | {"right": 1.0, "num_phrases": 2.0}
    # the blue ball for "the red ball" (an attribute mistake), the red ball for "a box"
    wrong = error_kinds([batch], _pick(1, 0), OBJECTS)
    assert wrong["same_category"] == 0.5 and wrong["other_category"] == 0.5 and wrong["right"] == 0.0
    # the loose box around the red ball overlaps no object with IoU >= 0.5
    loose = error_kinds([batch], _pick(2, 3), OBJECTS)
    assert loose["no_object"] == 0.5 and loose["right"] == 0.5
    assert sum(loose[k] for k in ERROR_KINDS) == 1.0
    # a phrase whose box no proposal reaches is unreachable, whatever is chosen
    far = {"1": OBJECTS["1"]}
    batch.gt_union[0, 1] = torch.tensor([0.0, 60.0, 20.0, 99.0])
    assert error_kinds([batch], _pick(0, 3), far)["unreachable"] == 0.5
    with pytest.raises(KeyError, match="no objects known"):
        error_kinds([batch], _pick(1, 3), {})
