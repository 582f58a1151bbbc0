"""What the distillation target carries, measured during training.

:class:`DistillationDiagnostics` records, every ``every_n_steps`` training steps, on the batch
about to be trained on:

* how peaked the target ``q`` and the student ``p`` are: their entropies over the
  distillation's regions (the ``kd_top_k`` regions around the student's top box, else all
  real regions), in nats and divided by ``log`` of the number of regions;
* how hard each term pulls: the norms of the gradients of the distillation term and of
  the InfoNCE term with respect to the trainable parameters, separately and unweighted,
  the distillation norm times ``lambda`` and the ratio of the two;
* whether the teacher knows something the student does not: among the distilled phrases
  with a ground-truth box, the fraction where the teacher's top box (argmax of ``t(r, p)``
  over the same regions) differs from the student's and is right (IoU ``>= 0.5`` with the
  union box, as ``val/acc`` counts it), and the fraction where it differs and the student
  is right. Training batches of the Flickr30K and synthetic datamodules carry no ground
  truth (weak supervision), so this part is measured on the first ``val_batches``
  validation batches instead and written at each validation end (with the entropies of
  those batches); a training batch that does carry ground truth gets it too.

Everything is computed through the module's own pieces
(:meth:`~lightning_wsg.model.GroundingModel.encode`,
:meth:`~lightning_wsg.contrastive_distillation.ContrastiveDistillationLoss.contrastive`,
:meth:`~lightning_wsg.contrastive_distillation.ContrastiveDistillationLoss.distillation_scores`,
:func:`~lightning_wsg.losses.distillation_kl`,
:func:`~lightning_wsg.losses.distillation_distributions`), in a forward pass of its own
that leaves the run as it was: the random number generators are restored (dropout draws
nothing from the run's stream), the buffers too (BatchNorm statistics), and gradients are
taken with ``torch.autograd.grad``, which never touches ``.grad``.

Example:
    >>> trainer = Trainer(callbacks=[DistillationDiagnostics(every_n_steps=50)])  # doctest: +SKIP
    >>> # lightning fit ... --trainer.callbacks+=lightning_wsg.callbacks.DistillationDiagnostics
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from torch import Tensor

from ..data.batch import GroundingBatch
from ..losses import DistillationDistributions, distillation_distributions, distillation_kl
from ..metrics import GroundingMetrics, predict_boxes

__all__ = [
    "DistillationDiagnostics",
    "TopBoxCounts",
    "entropy_summary",
    "phrase_entropies",
    "top_box_counts",
]

#: the file written beside the run's logs when no path is given
DEFAULT_FILE = "kd_diagnostics.jsonl"
#: the values of a ``"train"`` record besides the entropies and the top-box fractions
_TRAIN_KEYS = (
    "kd_weight",
    "loss_nce",
    "loss_kd",
    "grad_norm_nce",
    "grad_norm_kd",
    "grad_norm_kd_weighted",
    "grad_ratio_kd_nce",
)
_NO_PHRASES = (torch.zeros(0), torch.zeros(0), torch.zeros(0, dtype=torch.long))


def phrase_entropies(dists: DistillationDistributions) -> tuple[Tensor, Tensor, Tensor]:
    """Entropies of ``q`` and ``p`` of each phrase that takes part, over its own regions.

    Args:
        dists: the distributions of :func:`~lightning_wsg.losses.distillation_distributions`.

    Returns:
        ``(H(q), H(p), n)``, each ``[N]`` for the ``N`` phrases in ``dists.phrases``: the
        entropies in nats and the number of regions each phrase is distilled over.
    """
    valid, keep = dists.valid, dists.phrases
    h_q = (torch.special.entr(dists.log_q.detach().exp()) * valid).sum(-1)
    h_p = (torch.special.entr(dists.log_p.detach().exp()) * valid).sum(-1)
    return h_q[keep].float(), h_p[keep].float(), valid.sum(-1)[keep]


def entropy_summary(h_q: Tensor, h_p: Tensor, n: Tensor) -> dict[str, float | int | None]:
    """Means over phrases of :func:`phrase_entropies`, plain and divided by ``log n``.

    A phrase with one region has entropy 0 and counts 0 in the normalised means (its
    distribution is certain). All values are ``None`` when no phrase takes part.

    Returns:
        ``num_phrases``, ``num_regions`` (mean regions per phrase), ``entropy_teacher``,
        ``entropy_student``, ``entropy_teacher_norm``, ``entropy_student_norm``.
    """
    count = int(h_q.numel())
    if count == 0:
        return {"num_phrases": 0} | dict.fromkeys(
            ("num_regions", "entropy_teacher", "entropy_student", "entropy_teacher_norm", "entropy_student_norm")
        )
    log_n = n.float().log()
    norm = torch.where(n > 1, log_n, torch.ones_like(log_n))
    return {
        "num_phrases": count,
        "num_regions": float(n.float().mean()),
        "entropy_teacher": float(h_q.mean()),
        "entropy_student": float(h_p.mean()),
        "entropy_teacher_norm": float((h_q / norm).mean()),
        "entropy_student_norm": float((h_p / norm).mean()),
    }


class TopBoxCounts(NamedTuple):
    """Counts of distilled phrases with a ground-truth box, by their teacher's and student's top boxes.

    Attributes:
        phrases: distilled phrases with a ground-truth box.
        differs: those whose teacher's top box is not the student's.
        teacher_differs_right: ... differs and the teacher's box is right.
        student_differs_right: ... differs and the student's box is right.
        teacher_right: the teacher's box is right.
        student_right: the student's box is right.
    """

    phrases: int = 0
    differs: int = 0
    teacher_differs_right: int = 0
    student_differs_right: int = 0
    teacher_right: int = 0
    student_right: int = 0

    def __add__(self, other: TopBoxCounts) -> TopBoxCounts:  # type: ignore[override]
        return TopBoxCounts(*(a + b for a, b in zip(self, other)))

    def fractions(self) -> dict[str, float | int | None]:
        """``num_gt_phrases`` and each count divided by it (``None`` without phrases)."""
        out: dict[str, float | int | None] = {"num_gt_phrases": self.phrases}
        for name in self._fields[1:]:
            out[name] = getattr(self, name) / self.phrases if self.phrases else None
        return out


def top_box_counts(
    student: Tensor,
    teacher: Tensor,
    dists: DistillationDistributions,
    batch: GroundingBatch,
    iou_threshold: float = 0.5,
) -> TopBoxCounts:
    """Compare the teacher's and the student's top boxes over the distillation's regions.

    Args:
        student: ``[B, P, R]`` student scores ``s(r, p)``.
        teacher: ``[B, P, R]`` teacher scores ``t(r, p)``.
        dists: their distributions (``valid``: the regions of each phrase; ``phrases``: the
            phrases that take part).
        batch: the batch, with ground truth (``gt_union``, ``gt_boxes``, ``gt_box_mask``).
        iou_threshold: a box is right when its IoU with the union box is ``>=`` this.

    Returns:
        The :class:`TopBoxCounts` of the batch. Ties go to the first region, as the metrics'
        ranking breaks them.
    """
    batch.require_ground_truth()
    metric = GroundingMetrics(phrase_types=(), ks=(1,), iou_threshold=iou_threshold)
    outside = ~dists.valid
    tops, right = [], []
    for scores in (teacher, student):
        scores = scores.detach().float().masked_fill(outside, float("-inf"))
        tops.append(predict_boxes(scores, batch.proposals, batch.proposal_mask).indices[..., 0])
        outcomes = metric.outcomes(
            scores,
            batch.proposals,
            batch.proposal_mask,
            dists.phrases,
            batch.gt_union.to(scores.device),
            batch.gt_boxes.to(scores.device),
            batch.gt_box_mask.to(scores.device),
        )
        right.append(outcomes.correct)
    counted = outcomes.counted  # distilled phrases with a box
    differs = (tops[0] != tops[1]) & counted
    teacher_right, student_right = right
    return TopBoxCounts(
        phrases=int(counted.sum()),
        differs=int(differs.sum()),
        teacher_differs_right=int((differs & teacher_right).sum()),
        student_differs_right=int((differs & student_right).sum()),
        teacher_right=int(teacher_right.sum()),
        student_right=int(student_right.sum()),
    )


@contextlib.contextmanager
def _run_left_alone(module: torch.nn.Module) -> Iterator[None]:
    """Restore the random number generators and the module's buffers on exit."""
    device = next(module.parameters()).device
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in saved:
                    buffer.copy_(value)


def _grad_norm(loss: Tensor, params: Sequence[Tensor], retain_graph: bool) -> float:
    """``|| d loss / d params ||_2`` over all parameters together (0 for a loss without a graph)."""
    if not loss.requires_grad:
        return 0.0
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    return float(torch.nn.utils.get_total_norm([g for g in grads if g is not None]))


class DistillationDiagnostics(Callback):
    """Measure what the distillation target carries while a :class:`GroundingModule` trains.

    Every ``every_n_steps`` optimizer steps (from step 0), before the training step runs on
    its batch, the callback encodes that batch again (in the module's mode, under the
    trainer's precision) and records a ``"train"`` record; at the end of each validation
    (not the sanity check) it records a ``"val"`` record from the first ``val_batches``
    batches of the first validation loader. Each record is appended as one JSON line to
    ``path`` and its numbers are logged to every logger of the trainer as ``diag/<key>``
    (training) or ``diag/val_<key>`` (validation), at the trainer's ``global_step``. It is
    sent to the loggers directly rather than by ``pl_module.log``, which from a hook would
    reach them only on the trainer's own ``log_every_n_steps`` cadence.

    Records (``null`` where a value cannot be measured: no phrase taking part, no ground
    truth, a module without a teacher):

    * both: ``stage`` (``"train"`` or ``"val"``), ``step``, ``epoch``, ``num_phrases``
      (phrases taking part: real, matched by the teacher), ``num_regions`` (mean regions per
      such phrase: ``kd_top_k`` or fewer), ``entropy_teacher`` and ``entropy_student``
      (mean over those phrases of ``H(q)`` and ``H(p)``, nats; ``q`` is the target the
      module distils towards: the teacher's distribution, or teacher times student with
      ``kd_target="product"``), ``entropy_teacher_norm`` and ``entropy_student_norm``
      (each divided by ``log`` of the phrase's number of regions: 1 is uniform, 0 one-hot);
    * ``"train"`` only: ``kd_weight`` (``lambda``), ``loss_nce``, ``loss_kd``,
      ``grad_norm_nce``, ``grad_norm_kd`` (unweighted), ``grad_norm_kd_weighted``
      (``lambda`` times ``grad_norm_kd``) and ``grad_ratio_kd_nce``
      (``grad_norm_kd_weighted / grad_norm_nce``). The InfoNCE term is measured even when
      the module trains without it (``use_nce=false``; ``lambda`` is then 1);
    * ``"val"``, and ``"train"`` when the training batch has ground truth:
      ``num_gt_phrases`` (phrases taking part with a ground-truth box), and as fractions of
      them ``differs`` (the teacher's top box is not the student's), ``teacher_differs_right``,
      ``student_differs_right``, ``teacher_right``, ``student_right``.

    Under DDP every process measures its own batch (the InfoNCE term gathers across
    processes, so all must take part) and only the first process writes and logs.

    Args:
        every_n_steps: measure on the batch of every this many optimizer steps.
        path: the JSON Lines file (default: ``kd_diagnostics.jsonl`` in the trainer's
            ``log_dir``, else its ``default_root_dir``); records are appended.
        val_batches: validation batches measured at each validation (0: none).
    """

    def __init__(self, every_n_steps: int = 50, path: str | Path | None = None, val_batches: int = 4) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if val_batches < 0:
            raise ValueError(f"val_batches must be >= 0, got {val_batches}")
        self.every_n_steps = int(every_n_steps)
        self.path: Path | None = Path(path) if path is not None else None
        self.val_batches = int(val_batches)
        #: the last record written (``None`` before the first)
        self.last_record: dict[str, Any] | None = None
        self._last_step: int | None = None
        self._val: list[tuple[Tensor, Tensor, Tensor]] = []
        self._val_counts = TopBoxCounts()

    # ----------------------------------------------------------------- set-up
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.path is None:
            self.path = Path(trainer.log_dir or trainer.default_root_dir) / DEFAULT_FILE

    # --------------------------------------------------------------- training
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: GroundingBatch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step % self.every_n_steps or step == self._last_step:  # accumulated batches share a step
            return
        self._last_step = step
        with trainer.precision_plugin.train_step_context():
            values = self.measure(pl_module, batch)
        self._emit(trainer, {"stage": "train", "step": step, "epoch": trainer.current_epoch, **values})

    def measure(self, pl_module: LightningModule, batch: GroundingBatch) -> dict[str, Any]:
        """The ``"train"`` values of one batch (see the class docstring), leaving the run alone.

        Args:
            pl_module: a :class:`~lightning_wsg.grounding_module.GroundingModule`.
            batch: a batch on the module's device.
        """
        params = [p for p in pl_module.parameters() if p.requires_grad]
        loss = pl_module.loss
        has_teacher = loss.teacher is not None
        values: dict[str, Any] = dict.fromkeys(_TRAIN_KEYS) | entropy_summary(*_NO_PHRASES)
        with _run_left_alone(pl_module), torch.enable_grad():
            regions, phrases = pl_module.model.encode(batch)
            nce = loss.contrastive(batch, regions, phrases)
            if has_teacher:
                student, teacher, kd_mask = loss.distillation_scores(batch, regions, phrases)
                options = loss.distillation_options()
                kd = distillation_kl(
                    student, teacher, batch.proposal_mask, kd_mask, proposals=batch.proposals, **options
                )
                values["loss_kd"] = float(kd.detach())
                values["grad_norm_kd"] = _grad_norm(kd, params, retain_graph=True)
            values["loss_nce"] = float(nce.detach())
            values["grad_norm_nce"] = _grad_norm(nce, params, retain_graph=False)
        if not has_teacher:
            return values
        values["kd_weight"] = weight = loss.kd_weight(pl_module.global_step)
        values["grad_norm_kd_weighted"] = weighted = weight * values["grad_norm_kd"]
        if values["grad_norm_nce"] > 0:
            values["grad_ratio_kd_nce"] = weighted / values["grad_norm_nce"]
        with torch.no_grad():
            student = student.detach()
            dists = distillation_distributions(
                student, teacher, batch.proposal_mask, kd_mask, proposals=batch.proposals, **options
            )
            values |= entropy_summary(*phrase_entropies(dists))
            if batch.has_ground_truth:
                values |= top_box_counts(student, teacher, dists, batch).fractions()
        return values

    # ------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val, self._val_counts = [], TopBoxCounts()

    @torch.no_grad()
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: GroundingBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            trainer.sanity_checking
            or dataloader_idx != 0
            or batch_idx >= self.val_batches
            or pl_module.loss is None
            or pl_module.loss.teacher is None
            or batch.proposal_labels is None
        ):
            return
        with trainer.precision_plugin.val_step_context():
            regions, phrases = pl_module.model.encode(batch)
            student, teacher, kd_mask = pl_module.loss.distillation_scores(batch, regions, phrases)
        options = pl_module.loss.distillation_options()
        dists = distillation_distributions(
            student, teacher, batch.proposal_mask, kd_mask, proposals=batch.proposals, **options
        )
        self._val.append(phrase_entropies(dists))
        if batch.has_ground_truth:
            self._val_counts = self._val_counts + top_box_counts(student, teacher, dists, batch)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._val:
            return
        h_q, h_p, n = (torch.cat([part[i].cpu() for part in self._val]) for i in range(3))
        record = {"stage": "val", "step": trainer.global_step, "epoch": trainer.current_epoch}
        record |= entropy_summary(h_q, h_p, n) | self._val_counts.fractions()
        self._val, self._val_counts = [], TopBoxCounts()
        self._emit(trainer, record)

    # ----------------------------------------------------------------- output
    def _emit(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """Append ``record`` to the file and log its numbers (first process only)."""
        self.last_record = record
        if not trainer.is_global_zero:
            return
        if self.path is None:  # measured outside a fit (setup not called)
            self.path = Path(trainer.log_dir or trainer.default_root_dir) / DEFAULT_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        prefix = "diag/" if record["stage"] == "train" else f"diag/{record['stage']}_"
        skip = ("stage", "step", "epoch")
        metrics = {
            prefix + key: float(value)
            for key, value in record.items()
            if key not in skip and isinstance(value, (int, float)) and math.isfinite(value)
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
