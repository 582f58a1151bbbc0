"""Multi-process training: gathered InfoNCE equivalence, samplers, mid-epoch resume, DDP on CPU.

The 2-process cases run real ``torch.distributed`` process groups on CPU (gloo) started
with ``torch.multiprocessing.spawn`` on a free port; the ``slow`` case runs
``lightning fit`` and ``lightning test`` with ``cli_configs/trainer/ddp_sim.yaml``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
import torch.nn.functional as F
from helpers.cli import FLICKR_YAML, REPO, TINY_MODEL_YAML, TINY_TEXT, data_args, tiny_model_args, trainer_args
from helpers.ddp import CASES, SPLITS, B, NcclThreadGroup, ThreadGroup, hand_loss, loss_and_grads, run_two_ranks
from helpers.flickr import make_tiny_flickr
from helpers.model import tiny_model
from helpers.trainer import quiet_trainer
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DistributedSampler

from lightning_wsg import distributed
from lightning_wsg.data import Flickr30kEntitiesDataModule
from lightning_wsg.data.samplers import (
    ResumableDataLoader,
    ResumableDistributedSampler,
    evaluation_sampler,
    training_sampler,
)
from lightning_wsg.contrastive_distillation import gathered_info_nce
from lightning_wsg.distributed import _pad_to, all_gather_padded, gather_sizes, image_id_codes, slurm_environment
from lightning_wsg.grounding_module import GroundingModule

DDP_SIM_YAML = str(REPO / "cli_configs" / "trainer" / "ddp_sim.yaml")

# ---------------------------------------------------------------- the gathered InfoNCE
@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[list[tuple[float, torch.Tensor]]]:
    return run_two_ranks(tmp_path_factory.mktemp("ddp"))


def test_two_processes_match_one_process_loss_and_gradients(two_rank_results) -> None:
    """2 x B/2 pairs under DDP == B pairs on one process, for loss and DDP-averaged gradients."""
    results = iter(zip(*(r[:-1] for r in two_rank_results)))  # the last entry is the hand case
    for sizes in SPLITS:
        for case in CASES:
            (loss0, grad0), (loss1, grad1) = next(results)
            loss, grad = loss_and_grads(slice(0, B), case)
            # DDP averages the ranks' gradients; the logged loss of each rank averages the same way
            assert (loss0 + loss1) / 2 == pytest.approx(loss, rel=1e-5, abs=1e-6), (sizes, case)
            torch.testing.assert_close((grad0 + grad1) / 2, grad, rtol=1e-4, atol=1e-6, msg=f"{sizes} {case}")
        # without gathering, each rank sees only its own negatives: not the one-process loss
        (loss0, _), (loss1, _) = next(results)
        assert (loss0 + loss1) / 2 != pytest.approx(loss_and_grads(slice(0, B), CASES[0])[0], rel=1e-3)


# The hand case of helpers.ddp: S(I_j, T_i) = (1 / 0.5) * sum over phrases of the best region's
# dot product. Sentence 0 ([e1]) scores images 0, 1, 2 as 2 * (1, 0.6, 0); sentence 1
# ([d, e1], d = (0.6, 0.8)) as 2 * (0.8 + 1, 1 + 0.6, 0.8 + 0); sentence 2 ([e2]) as 2 * (1, 0.8, 1).
# Images 0 and 2 are both "a": each is removed from the other's softmax (rows and columns).


def _log1p_exp(x: float) -> float:
    return math.log1p(math.exp(x))


HAND_SENTENCE_TO_IMAGE = (
    _log1p_exp(-0.8)  # row 0: columns 0 (2.0) and 1 (1.2); column 2 is image "a" again
    + math.log(math.exp(0.4) + 1 + math.exp(-1.6))  # row 1: 3.6, 3.2 (its own), 1.6
    + _log1p_exp(-0.4)  # row 2: columns 1 (1.6) and 2 (2.0)
) / 3
HAND_IMAGE_TO_SENTENCE = (
    _log1p_exp(1.6)  # image 0 among sentences 0 (2.0) and 1 (3.6); sentence 2 is of image "a" too
    + math.log(math.exp(-2.0) + 1 + math.exp(-1.6))  # image 1: 1.2, 3.2 (its own), 1.6
    + _log1p_exp(-0.4)  # image 2 among sentences 1 (1.6) and 2 (2.0)
) / 3
HAND_SYMMETRIC = (HAND_SENTENCE_TO_IMAGE + HAND_IMAGE_TO_SENTENCE) / 2
#: phrase_reduce="mean": sentence 1's scores halve to 2 * (0.9, 0.8, 0.4)
HAND_MEAN = (_log1p_exp(-0.8) + math.log(math.exp(0.2) + 1 + math.exp(-0.8)) + _log1p_exp(-0.4)) / 3


def test_one_process_loss_equals_the_hand_computed_values() -> None:
    rows = slice(0, 3)
    assert hand_loss(rows) == pytest.approx(HAND_SENTENCE_TO_IMAGE, rel=1e-6)
    assert hand_loss(rows, symmetric=True) == pytest.approx(HAND_SYMMETRIC, rel=1e-6)
    assert hand_loss(rows, phrase_reduce="mean") == pytest.approx(HAND_MEAN, rel=1e-6)
    assert hand_loss(rows, gather=False) == pytest.approx(HAND_SENTENCE_TO_IMAGE, rel=1e-6)


def test_two_processes_give_the_hand_computed_values(two_rank_results) -> None:
    """Rank 0 holds pairs 0-1, rank 1 pair 2 (image "a" on both ranks): the mean of the ranks'
    losses is the loss of all three pairs."""
    (plain0, symmetric0), (plain1, symmetric1) = (r[-1] for r in two_rank_results)
    assert (plain0 + plain1) / 2 == pytest.approx(HAND_SENTENCE_TO_IMAGE, rel=1e-6)
    assert (symmetric0 + symmetric1) / 2 == pytest.approx(HAND_SYMMETRIC, rel=1e-6)


@st.composite
def split_batches(draw: st.DrawFn) -> dict:
    """A batch of 2-7 pairs with ragged regions and phrases and repeated images, cut into 2-4 ranks'
    shares of any sizes (at least one pair each)."""
    n = draw(st.integers(2, 7))
    world = draw(st.integers(2, min(4, n)))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=world - 1, max_size=world - 1, unique=True)))
    return {
        "sizes": [b - a for a, b in zip([0, *cuts], [*cuts, n])],
        "image_ids": draw(st.lists(st.sampled_from("abcd"), min_size=n, max_size=n)),
        "n_regions": draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)),
        "n_phrases": draw(st.lists(st.integers(1, 4), min_size=n, max_size=n)),
        "case": draw(st.sampled_from(CASES)),
        "seed": draw(st.integers(0, 2**16)),
    }


def _features(rows: slice, split: dict, n_dims: int = 8) -> dict:
    """Leaf features of the pairs ``rows``, trimmed to their own largest R and P (as one rank holds them)."""
    g = torch.Generator().manual_seed(split["seed"])
    n = len(split["image_ids"])
    r_mask = torch.arange(5)[None] < torch.tensor(split["n_regions"])[:, None]
    p_mask = torch.arange(4)[None] < torch.tensor(split["n_phrases"])[:, None]
    regions = F.normalize(torch.randn(n, 5, n_dims, generator=g), dim=-1) * r_mask[..., None]
    phrases = F.normalize(torch.randn(n, 4, n_dims, generator=g), dim=-1) * p_mask[..., None]
    r_len, p_len = max(split["n_regions"][rows]), max(split["n_phrases"][rows])
    return {
        "regions": regions[rows, :r_len].clone().requires_grad_(),
        "region_mask": r_mask[rows, :r_len],
        "phrases": phrases[rows, :p_len].clone().requires_grad_(),
        "phrase_mask": p_mask[rows, :p_len],
        "image_ids": split["image_ids"][rows],
    }


def _loss_and_grads(x: dict, case: dict) -> tuple[float, torch.Tensor, torch.Tensor]:
    loss = gathered_info_nce(**x, tau=0.5, **case)
    loss.backward()
    return loss.item(), x["regions"].grad, x["phrases"].grad


@settings(max_examples=40, deadline=None)
@given(split_batches())
def test_property_gathered_loss_equals_the_one_process_loss_for_any_split(split: dict) -> None:
    """Ranks simulated by threads (:class:`helpers.ddp.ThreadGroup`, gloo's collectives) hold any shares
    of a batch: the mean of their losses is the one-process loss, and their input gradients, averaged
    as DDP averages, the one-process gradients. The real 2-process group runs the fixed splits above."""
    case = split["case"]
    n = len(split["image_ids"])
    full_loss, full_region_grad, full_phrase_grad = _loss_and_grads(_features(slice(0, n), split), case)
    world = len(split["sizes"])
    starts = [sum(split["sizes"][:r]) for r in range(world)]
    rows = [slice(s, s + k) for s, k in zip(starts, split["sizes"])]
    group = ThreadGroup(world)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed, "dist", group)
        results = group.run(lambda rank: _loss_and_grads(_features(rows[rank], split), case))
    assert sum(loss for loss, _, _ in results) / world == pytest.approx(full_loss, rel=1e-5, abs=1e-6)
    for r, (_, region_grad, phrase_grad) in enumerate(results):
        # DDP averages over ranks; the full batch's gradient beyond a rank's own R and P is padding (zero)
        for grad, full_grad in ((region_grad, full_region_grad), (phrase_grad, full_phrase_grad)):
            expected = full_grad[rows[r]]
            torch.testing.assert_close(grad / world, expected[:, : grad.shape[1]], atol=1e-6, rtol=1e-4)
            assert not expected[:, grad.shape[1] :].any()


def test_nccl_backward_reduce_scatters_each_ranks_gradient() -> None:
    """Under NCCL the gather's backward reduce-scatters (each rank receives only its own slot's sum)
    instead of all-reducing the whole gradient as gloo must; both give the same gradients."""
    split = {"sizes": [2, 1], "image_ids": ["a", "b", "a"], "n_regions": [3, 1, 2], "n_phrases": [1, 2, 2], "seed": 5}
    case = CASES[-1]  # symmetric: the phrases are gathered with gradients too
    rows = [slice(0, 2), slice(2, 3)]
    results = {}
    for name, group in (("gloo", ThreadGroup(2)), ("nccl", NcclThreadGroup(2))):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(distributed, "dist", group)
            results[name] = group.run(lambda rank: _loss_and_grads(_features(rows[rank], split), case))
    assert group.calls and set(group.calls) == {"reduce_scatter_tensor"}
    for gloo, nccl in zip(results["gloo"], results["nccl"]):
        (loss, region_grad, phrase_grad), (nccl_loss, nccl_region, nccl_phrase) = gloo, nccl
        assert nccl_loss == pytest.approx(loss, rel=1e-6)
        torch.testing.assert_close(nccl_region, region_grad)
        torch.testing.assert_close(nccl_phrase, phrase_grad)
        assert region_grad.abs().sum() > 0 and phrase_grad.abs().sum() > 0


def test_gathered_info_nce_makes_its_tensors_on_the_features_device() -> None:
    """Under another default device (``meta`` here, as ``torch.set_default_device("cuda")`` would be
    on a GPU machine), the loss of CPU features is the same: the codes, positives and masks it makes
    are made on the features' device, on one rank and across ranks."""
    split = {"sizes": [2, 1], "image_ids": ["a", "b", "a"], "n_regions": [3, 1, 2], "n_phrases": [1, 2, 2], "seed": 9}
    rows = [slice(0, 2), slice(2, 3)]
    for case in (CASES[0], CASES[-1]):
        for one_rank in (True, False):

            def loss(rank: int, default: str, case=case, one_rank=one_rank) -> float:
                x = _features(rows[rank], split)
                with torch.device(default):
                    return gathered_info_nce(**x, tau=0.5, gather=not one_rank, **case).item()

            group = ThreadGroup(2)
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(distributed, "dist", group)
                expected = group.run(lambda rank: loss(rank, "cpu"))
                assert group.run(lambda rank: loss(rank, "meta")) == expected


def test_pad_to_pads_the_end_of_each_dim() -> None:
    x = torch.arange(6.0).reshape(2, 3)
    assert _pad_to(x, [2, 3]) is x  # nothing to pad: the tensor itself
    padded = _pad_to(x, [3, 5])
    assert padded.shape == (3, 5) and torch.equal(padded[:2, :3], x)
    assert not padded[2:].any() and not padded[:, 3:].any()
    assert _pad_to(x, [3, 3], value=-1.0)[2].tolist() == [-1.0, -1.0, -1.0]
    mask = torch.tensor([[True, False]])
    assert _pad_to(mask, [2, 3]).dtype == torch.bool
    assert _pad_to(mask, [2, 3]).tolist() == [[True, False, False], [False, False, False]]
    assert _pad_to(mask, [2, 3], value=True).tolist() == [[True, False, True], [True, True, True]]


def test_all_gather_padded_of_ragged_ranks() -> None:
    """Rank 0 holds ``[2, 3]``, rank 1 ``[1, 2]``: every rank gets the 3 rows, rank 1's padded to 3
    columns with ``value``; gradients only when asked."""
    shares = [torch.arange(6.0).reshape(2, 3), torch.tensor([[10.0, 11.0]])]
    masks = [torch.ones(2, 3, dtype=torch.bool), torch.tensor([[True, False]])]
    group = ThreadGroup(2)

    def gather(rank: int) -> tuple:
        x = shares[rank].clone().requires_grad_()
        sizes = gather_sizes(x)
        plain = all_gather_padded(x, sizes, value=-1.0)
        mask = all_gather_padded(masks[rank], sizes)
        kept = all_gather_padded(x, sizes, with_grad=True)
        kept.sum().backward()
        return sizes, plain, mask, kept, x.grad

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed, "dist", group)
        results = group.run(gather)
    for sizes, plain, mask, kept, grad in results:
        assert sizes.tolist() == [[2, 3], [1, 2]]
        assert plain.tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [10.0, 11.0, -1.0]]
        assert not plain.requires_grad  # with_grad=False by default
        assert mask.dtype == torch.bool and mask.tolist() == [[True] * 3, [True] * 3, [True, False, False]]
        assert kept.requires_grad and kept[2, 2] == 0
        assert torch.equal(grad, torch.full_like(grad, 2.0))  # both ranks' sums reach each input


def test_gather_sizes_of_one_or_two_tensors_on_their_device() -> None:
    group = ThreadGroup(2)
    shapes = [((2, 3, 4), (2, 5)), ((1, 7, 4), (1, 2))]

    def sizes(rank: int) -> tuple:
        a, b = (torch.zeros(s) for s in shapes[rank])
        return gather_sizes(a), gather_sizes(a, b), gather_sizes(torch.zeros(shapes[rank][0], device="meta"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(distributed, "dist", group)
        results = group.run(sizes)
    for one, two, meta in results:
        assert one.dtype == torch.long and one.tolist() == [[2, 3], [1, 7]]
        assert two.tolist() == [[2, 3, 2, 5], [1, 7, 1, 2]]
        assert meta.device.type == "meta" and meta.shape == (2, 2)


def test_image_id_codes_are_stable_and_distinct() -> None:
    codes = image_id_codes(["a", "b", "a", "1000092795"])
    assert codes.dtype == torch.long and codes[0] == codes[2] and len(set(codes.tolist())) == 3
    # 64 bits read as signed: half of all ids have a negative code (unsigned, they would not fit int64)
    many = image_id_codes([str(i) for i in range(64)])
    assert (many < 0).any() and (many > 0).any()
    assert image_id_codes(["a"], "meta").device.type == "meta"


def test_one_process_is_rank_0_of_1() -> None:
    assert not torch.distributed.is_initialized()
    assert distributed.world_size_and_rank() == (1, 0)


def test_image_id_codes_agree_across_processes_with_different_hash_seeds() -> None:
    """Ranks are separate processes, each with its own str-hash salt: the codes must not use it."""
    script = (
        "import json; from lightning_wsg.distributed import image_id_codes; "
        "print(json.dumps([image_id_codes(['a', 'b', '1000092795']).tolist(), hash('a')]))"
    )
    runs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    (codes1, salted1), (codes2, salted2) = runs
    assert salted1 != salted2  # the two processes really hash strings differently
    assert codes1 == codes2 == image_id_codes(["a", "b", "1000092795"]).tolist()


# ------------------------------------------------------------------------- samplers
class _FakeTrainer:
    def __init__(self, num_replicas: int, rank: int) -> None:
        self.distributed_sampler_kwargs = {"num_replicas": num_replicas, "rank": rank}


def test_evaluation_split_has_no_duplicates() -> None:
    data = list(range(15))  # odd: Lightning's default DistributedSampler would repeat one sample
    shares = [list(evaluation_sampler(data, _FakeTrainer(2, r))) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == data
    assert [len(s) for s in shares] == [8, 7]
    assert evaluation_sampler(data, None) is None and evaluation_sampler(data, _FakeTrainer(1, 0)) is None
    assert isinstance(evaluation_sampler(data, _FakeTrainer(2, 0)), DistributedSampler)  # Lightning keeps it


def test_training_loader_resumes_after_the_consumed_batches() -> None:
    data = list(range(23))

    def loader(trainer=None) -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=4, sampler=training_sampler(data, trainer), drop_last=True)

    full = loader()
    full.sampler.set_epoch(3)
    epoch = [b.tolist() for b in full]
    assert len(epoch) == 5 and sorted(sum(epoch, [])) != data[:20]  # shuffled, seed + epoch
    first = loader()
    first.sampler.set_epoch(3)
    it = iter(first)
    seen = [next(it).tolist() for _ in range(2)]
    state = first.state_dict()
    assert state["batches"] == 2 and state["epoch"] == 3

    resumed = loader()
    resumed.load_state_dict(state)
    rest = [b.tolist() for b in resumed]
    assert seen + rest == epoch
    assert resumed.state_dict()["batches"] == 0  # a finished epoch restarts at batch 0
    assert len([b for b in resumed]) == 5  # the skip applies once
    # two ranks: disjoint shares of the same permutation
    data = list(range(24))  # even: DistributedSampler pads an odd training set with a repeat
    shares = [sum((b.tolist() for b in loader(_FakeTrainer(2, r))), []) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 12 and not set(shares[0]) & set(shares[1])
    assert isinstance(loader().sampler, ResumableDistributedSampler)


def test_training_order_follows_the_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each seed of a benchmark (``seed_everything`` sets PL_GLOBAL_SEED) sees its own batch order."""
    data = list(range(40))

    def order(seed: str | None, epoch: int = 0) -> list[int]:
        if seed is None:
            monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
        else:
            monkeypatch.setenv("PL_GLOBAL_SEED", seed)
        sampler = training_sampler(data)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order("1")) == data
    assert order("1") == order("1") and order("2") == order("2")
    assert order("1") != order("2") and order("1") != order("1", epoch=1)
    # DistributedSampler draws the permutation from seed + epoch (seed 7 at epoch 0 is seed 5 at epoch 2); no seed: 0
    expected = torch.randperm(len(data), generator=torch.Generator().manual_seed(7)).tolist()
    assert order("7") == expected and order("5", epoch=2) == expected
    assert order(None) == torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()


def test_sampler_skip_applies_to_the_next_iteration_only() -> None:
    data = list(range(23))
    sampler = training_sampler(data, shuffle=False)
    assert list(sampler) == data  # shuffle=False is passed on: the dataset's order
    sampler.skip_next(2)
    assert list(sampler) == data[2:]
    assert list(sampler) == data  # the skip is used up
    for n in (0, -3):  # nothing to skip
        sampler.skip_next(n)
        assert list(sampler) == data


def test_sampler_replicas_default_to_one_process() -> None:
    data = list(range(15))

    class _Trainer:
        def __init__(self, **kwargs) -> None:
            if kwargs:
                self.distributed_sampler_kwargs = kwargs

    single = training_sampler(data, _Trainer())  # a trainer without the attribute: one process
    assert (single.num_replicas, single.rank) == (1, 0)
    assert evaluation_sampler(data, _Trainer()) is None
    only_rank = training_sampler(data, _Trainer(rank=0))
    assert (only_rank.num_replicas, only_rank.rank) == (1, 0)
    assert evaluation_sampler(data, _Trainer(rank=0)) is None
    only_count = training_sampler(data, _Trainer(num_replicas=2))
    assert (only_count.num_replicas, only_count.rank) == (2, 0)


def test_evaluation_sampler_keeps_the_dataset_order() -> None:
    data = list(range(15))
    shares = [list(evaluation_sampler(data, _FakeTrainer(2, r))) for r in range(2)]
    assert shares == [data[0::2], data[1::2]]  # strided, unshuffled: predictions stay in file order


def test_training_loader_state_before_and_without_a_saved_position() -> None:
    data = list(range(23))

    def loader(batch_size: int = 4) -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=batch_size, sampler=training_sampler(data), drop_last=True)

    fresh = loader()
    assert fresh.state_dict() == {"epoch": 0, "batches": 0, "batch_size": 4, "num_replicas": 1, "num_samples": 23}
    # an empty state (a checkpoint from before the loader was stateful) changes nothing
    empty = loader()
    empty.sampler.set_epoch(3)
    empty.load_state_dict({})
    assert empty.sampler.epoch == 3 and len(list(empty)) == 5
    # missing keys: epoch 0, no batch skipped
    partial = loader()
    partial.sampler.set_epoch(5)
    partial.load_state_dict({"batches": 1, "batch_size": 4, "num_replicas": 1, "num_samples": 23})
    assert partial.sampler.epoch == 0 and len(list(partial)) == 4
    no_batches = loader()
    no_batches.load_state_dict({"epoch": 2, "batch_size": 4, "num_replicas": 1, "num_samples": 23})
    assert no_batches.sampler.epoch == 2 and len(list(no_batches)) == 5
    # a plain DataLoader (no resumable sampler) ignores the state and starts at its first batch
    plain = ResumableDataLoader(data, batch_size=4)
    plain.load_state_dict({"epoch": 1, "batches": 2})
    assert plain.state_dict() == {} and next(iter(plain)).tolist() == [0, 1, 2, 3]


def test_training_loader_warns_when_resumed_with_another_layout(caplog: pytest.LogCaptureFixture) -> None:
    data = list(range(23))

    def loader(batch_size: int) -> ResumableDataLoader:
        return ResumableDataLoader(data, batch_size=batch_size, sampler=training_sampler(data), drop_last=True)

    first = loader(4)
    it = iter(first)
    next(it)
    state = first.state_dict()
    with caplog.at_level(logging.WARNING, logger="lightning_wsg"):
        loader(4).load_state_dict(state)
        assert caplog.records == []  # the same layout: silent
        loader(2).load_state_dict(state)
    assert [r.getMessage() for r in caplog.records] == [
        "resuming with another batch size, process count or dataset size (saved (4, 1, 23), now (2, 1, 23)): "
        "the epoch goes on after the same number of batches, but not at the same samples"
    ]


# --------------------------------------------------------------- mid-epoch resume (fit)
class _Recorder(Callback):
    """Records ``(epoch, batch_idx, sentence ids)`` of every training batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int, tuple[str, ...]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append((trainer.current_epoch, batch_idx, tuple(batch.sentence_ids)))


def _datamodule(tiny) -> Flickr30kEntitiesDataModule:
    # str paths: a pathlib.Path in the saved hyperparameters fails torch.load(weights_only=True) on resume
    return Flickr30kEntitiesDataModule(
        str(tiny.root), str(tiny.image_dir), str(tiny.detections), batch_size=16, num_workers=0, image_size=32,
        max_proposals=8,
    )


def _tiny_module(region: dict | None = None, **kwargs) -> GroundingModule:
    return tiny_model(
        region={"out_index": -2, "roi_size": 3, "hidden_dim": 32, "embed_dim": 16} | (region or {}),
        phrase={"pretrained": False, "config_overrides": json.loads(TINY_TEXT), "hidden_dim": 32, "embed_dim": 16},
        **kwargs,
    )


def _fit(tiny, root: Path, max_steps: int, ckpt_path: str | None = None) -> tuple[Trainer, _Recorder]:
    model = _tiny_module()
    recorder = _Recorder()
    checkpoints = [
        ModelCheckpoint(dirpath=root / "ckpt", filename=f"every{n}-{{step}}", every_n_train_steps=n, save_top_k=-1)
        for n in (4, 6)
    ]
    trainer = quiet_trainer(
        root, max_epochs=2, max_steps=max_steps, limit_val_batches=0, callbacks=[recorder, *checkpoints]
    )
    trainer.fit(model, _datamodule(tiny), ckpt_path=ckpt_path)
    return trainer, recorder


def test_resume_from_a_mid_epoch_checkpoint_continues_the_epoch(tiny_flickr, tmp_path: Path) -> None:
    """4 batches an epoch: stop at step 6 (epoch 1, batch 2), resume: batches 2, 3 of the same order."""
    dm = _datamodule(tiny_flickr)
    dm.setup("fit")
    loader = dm.train_dataloader()
    expected = []  # the training order of 2 epochs, without running a model
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        ids = [loader.dataset.entries[i].sentence_id for i in loader.sampler]
        expected += [(epoch, b, tuple(ids[16 * b : 16 * b + 16])) for b in range(len(loader))]
    assert len(expected) == 8  # 79 training pairs, 16 a batch, the last 15 dropped

    stopped_trainer, stopped = _fit(tiny_flickr, tmp_path / "run", max_steps=6)
    assert stopped_trainer.global_step == 6
    assert stopped.batches == expected[:6]

    mid = tmp_path / "run" / "ckpt" / "every6-step=6.ckpt"
    resumed_trainer, resumed = _fit(tiny_flickr, tmp_path / "resumed", max_steps=-1, ckpt_path=str(mid))
    assert resumed_trainer.global_step == 8
    assert resumed.batches[0][:2] == (1, 2)  # not batch 0 again
    assert resumed.batches == expected[6:]  # the same samples, in the same order

    # a checkpoint at the end of epoch 0 resumes at the first batch of epoch 1
    end = tmp_path / "run" / "ckpt" / "every4-step=4.ckpt"
    _, next_epoch = _fit(tiny_flickr, tmp_path / "next", max_steps=5, ckpt_path=str(end))
    assert next_epoch.batches == expected[4:5]


# --------------------------------------------------------------------------- SLURM
def test_slurm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    assert slurm_environment() is None
    env = {
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "16",
        "SLURM_PROCID": "9",
        "SLURM_LOCALID": "1",
        "SLURM_NTASKS_PER_NODE": "8(x2)",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    info = slurm_environment()
    assert info == {
        "job_id": "42",
        "num_nodes": 2,
        "node_rank": 1,
        "num_tasks": 16,
        "global_rank": 9,
        "local_rank": 1,
        "tasks_per_node": 8,
    }


def test_slurm_environment_outside_a_step_and_with_few_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_JOB_ID", "42")  # an allocation (salloc), no step: no rank yet
    assert slurm_environment() is None
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert slurm_environment() is None
    # a step that sets only some variables, the node count under its older name, uneven tasks per node
    step = {"SLURM_JOB_ID": "7", "SLURM_NNODES": "3", "SLURM_NTASKS_PER_NODE": "4,2", "SLURM_NTASKS": "n/a"}
    for k, v in step.items():
        monkeypatch.setenv(k, v)
    assert slurm_environment() == {
        "job_id": "7", "num_nodes": 3, "node_rank": None, "num_tasks": None, "global_rank": 0,
        "local_rank": None, "tasks_per_node": 4,
    }  # fmt: skip


# ------------------------------------------------------------ trainer fragments parse
@pytest.mark.parametrize("fragment", ["ddp_sim", "ddp", "slurm"])
def test_trainer_fragments_compose(fragment: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_wsg.cli import main

    if fragment == "slurm":  # the fragment names SLURMEnvironment: inside a (fake) SLURM step
        for k, v in {"SLURM_NTASKS": "2", "SLURM_JOB_NAME": "t", "SLURM_NODEID": "0", "SLURM_PROCID": "0",
                     "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1", "SLURM_NTASKS_PER_NODE": "2"}.items():  # fmt: skip
            monkeypatch.setenv(k, v)
    fragment_yaml = str(REPO / "cli_configs" / "trainer" / f"{fragment}.yaml")
    args = ["--config", FLICKR_YAML, "--config", TINY_MODEL_YAML, "--config", fragment_yaml]
    args += ["--data.root=r", "--data.image_dir=i", "--data.detections=d.jsonl", *tiny_model_args()]
    if fragment != "ddp_sim":  # GPU fragments on this CPU machine
        args += ["--trainer.accelerator=cpu", "--trainer.devices=2"]
    cli = main(args, run=False)
    trainer = cli.trainer
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.world_size == 2
    assert cli.model.loss.gather_negatives  # the loss's default: negatives from every process
    if fragment == "ddp_sim":
        assert trainer.strategy._process_group_backend == "gloo" and trainer.precision == "32-true"
    else:
        assert trainer.precision == "bf16-mixed"
    # a trainer fragment sets trainer keys only: the towers and the loaders stay as configured
    assert not cli.model.model.region_encoder.channels_last and not cli.datamodule.pin_memory
    fragment_doc = yaml.safe_load(Path(fragment_yaml).read_text())
    assert set(fragment_doc) == {"trainer"}
    if fragment == "slurm":
        assert type(trainer.strategy.cluster_environment).__name__ == "SLURMEnvironment"


# ------------------------------------------------------------ lightning fit under DDP
def _csv_metrics(folder: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for path in sorted(folder.rglob("metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                metrics.update({k: float(v) for k, v in row.items() if v not in ("", None)})
    return metrics


@pytest.mark.slow
def test_ddp_sim_fit_and_test_count_each_phrase_once(tmp_path: Path) -> None:
    """``lightning fit`` / ``test`` with 2 CPU processes: metrics synced, each phrase counted once."""
    tiny = make_tiny_flickr(tmp_path / "data", n_images=12, seed=0, split_sizes=(3, 3))  # 15 val, 15 test pairs
    common = [
        "--config", FLICKR_YAML, "--config", TINY_MODEL_YAML, "--config", DDP_SIM_YAML,
        *data_args(tiny.root, tiny.image_dir, tiny.detections), *tiny_model_args(),
        "--data.image_size=32", "--data.batch_size=4", "--data.max_proposals=8",
        "--model.region_encoder.hidden_dim=32", "--model.region_encoder.embed_dim=16",
        "--model.phrase_encoder.hidden_dim=32", "--model.phrase_encoder.embed_dim=16",
        "--model.region_encoder.out_index=-2", "--model.region_encoder.roi_size=3",
        "--trainer.logger=pytorch_lightning.loggers.CSVLogger", "--trainer.log_every_n_steps=1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    env["TOKENIZERS_PARALLELISM"] = "false"
    lightning = str(Path(sys.executable).parent / "lightning")

    def run(*args: str) -> None:
        out = subprocess.run([lightning, *args], capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]

    fit_dir = tmp_path / "fit"
    run("fit", *common, *trainer_args(fit_dir), f"--trainer.logger.save_dir={fit_dir}", "--trainer.max_epochs=1")
    best = next(fit_dir.rglob("best.ckpt"))  # <logger dir>/checkpoints/best.ckpt
    test_dir = tmp_path / "test"
    run("test", *common, *trainer_args(test_dir), f"--trainer.logger.save_dir={test_dir}", f"--ckpt_path={best}")

    dm = Flickr30kEntitiesDataModule(tiny.root, tiny.image_dir, tiny.detections, num_workers=0)
    dm.setup()
    expected = {split: sum(len(e.phrase_spans) for e in dm.datasets[split].entries) for split in ("val", "test")}
    assert len(dm.datasets["val"]) % 2 == 1 and len(dm.datasets["test"]) % 2 == 1  # padding would repeat one
    fit_metrics, test_metrics = _csv_metrics(fit_dir), _csv_metrics(test_dir)
    assert fit_metrics["val/num_phrases"] == expected["val"] > 0
    assert test_metrics["test/num_phrases"] == expected["test"] > 0
    assert 0.0 <= test_metrics["test/acc"] <= test_metrics["test/upper_bound"] <= 1.0
    assert "train/loss" in fit_metrics and fit_metrics["epoch"] == 0


# ---------------------------------------------------------------------- the GPU path
def test_channels_last_and_compile_keep_the_checkpoint_layout() -> None:
    plain = _tiny_module()
    fast = _tiny_module(region={"channels_last": True, "compile": True})
    assert list(fast.state_dict()) == list(plain.state_dict())  # compiled in place: no _orig_mod. keys
    conv = fast.model.region_encoder.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.model.region_encoder.backbone._compiled_call_impl is not None


def test_bf16_mixed_channels_last_training_step(tiny_flickr, tmp_path: Path) -> None:
    """The GPU fragments' settings (bf16-mixed, channels_last) train on CPU autocast too."""
    trainer = quiet_trainer(tmp_path, precision="bf16-mixed", fast_dev_run=2)
    model = _tiny_module(region={"channels_last": True})
    trainer.fit(model, _datamodule(tiny_flickr))
    assert trainer.global_step == 2 and trainer.callback_metrics["train/loss"].isfinite()
