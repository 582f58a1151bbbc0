"""Pseudo-labels for supervised grounders: ``lightning predict`` over a split of the dataset.

:class:`PseudoLabelWriter` takes each phrase's top-scoring proposal as its box and writes the
split's phrases in a layout a supervised grounder reads (:mod:`lightning_wsg.data.pseudo_labels`):
the refer layout (``<dataset>/refs(<split_by>).p`` + ``<dataset>/instances.json``, the default
for the RefCOCO family) or JSON Lines keyed by image, sentence and phrase id (the default for
Flickr30K Entities and the synthetic world). ``data.predict_split`` names the split, the
training split included; its phrases carry their ground truth where the annotations have it.

Phrases may be kept by score: ``score_threshold`` (the chosen box's score at least this) and
``top_fraction`` (the highest-scoring fraction of each split's phrases). Whatever is dropped is
counted and reported. When the split has ground truth, the pseudo-labels' accuracy is measured
with the metrics of ``lightning test`` (:class:`~lightning_wsg.metrics.GroundingMetrics`), over
every phrase and over the kept ones, printed and written to ``metrics.json`` beside the labels.

Example (stack ``cli_configs/pseudo_labels.yaml`` after the training config)::

    lightning predict --config cli_configs/demo.yaml --config cli_configs/pseudo_labels.yaml \\
        --ckpt_path outputs/demo/checkpoints/best.ckpt --data.predict_split train \\
        --trainer.callbacks.top_fraction 0.5
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pytorch_lightning import LightningModule, Trainer
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

from ..data.base import GroundingDataModule
from ..data.batch import GroundingBatch
from ..data.pseudo_labels import PseudoLabel, write_phrase_jsonl, write_refer_from_phrases, write_refer_from_refs
from ..data.refcoco import RefCOCODataModule
from ..files import atomic_write_text
from ..metrics import GroundingMetrics, PhraseOutcomes, predict_boxes

__all__ = ["LAYOUTS", "PseudoLabelWriter", "select_labels"]

logger = logging.getLogger("lightning_wsg")

#: the output layouts (``auto``: refer for a refer-layout source, else flickr_jsonl)
LAYOUTS = ("auto", "refer", "flickr_jsonl")
#: the refer-layout names of a source that has none of its own (Flickr30K Entities, the synthetic world)
PHRASE_REFER_NAMES = ("flickr30k_entities", "phrases")
JSONL_NAME = "pseudo_labels.jsonl"
METRICS_NAME = "metrics.json"


def select_labels(
    scores: Tensor, score_threshold: float | None = None, top_fraction: float | None = None
) -> tuple[Tensor, dict[str, int]]:
    """Which of one split's phrases to keep, by the scores of their chosen boxes.

    A phrase is kept when its score is at least ``score_threshold`` and it ranks among the
    ``ceil(top_fraction * N)`` highest-scoring of the ``N`` phrases (ties keep the earlier).

    Returns:
        ``(keep, counts)``: a bool mask over ``scores`` and ``{"phrases", "kept",
        "below_threshold", "outside_top_fraction"}``, the last counting phrases above the
        threshold that the fraction drops.
    """
    n = len(scores)
    above = torch.ones(n, dtype=torch.bool) if score_threshold is None else scores >= score_threshold
    top = torch.ones(n, dtype=torch.bool)
    if top_fraction is not None:
        top = torch.zeros(n, dtype=torch.bool)
        top[torch.argsort(scores, descending=True, stable=True)[: math.ceil(top_fraction * n - 1e-9)]] = True
    keep = above & top
    counts = {
        "phrases": n,
        "kept": int(keep.sum()),
        "below_threshold": int((~above).sum()),
        "outside_top_fraction": int((above & ~top).sum()),
    }
    return keep, counts


class PseudoLabelWriter(BasePredictionWriter):
    """Write each phrase's chosen box as a pseudo-label (see the module docstring).

    Files in ``output_dir``: ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``
    (refer layout) or ``pseudo_labels.jsonl``; and ``metrics.json``: the options, per split the
    counts (``phrases``, ``kept``, ``below_threshold``, ``outside_top_fraction``,
    ``with_ground_truth``, ``sentences_without_proposals``) and, with ground truth, the
    metrics of ``lightning test`` over ``all`` phrases and the ``kept`` ones.

    The written boxes and the reported accuracy come from the same unrounded scores: those
    ``GroundingModule.predict_step`` returns with its records (``SentencePredictions.scores``;
    the records round their boxes), else the batch is scored here.

    Args:
        output_dir: the output folder (default: ``<run folder>/pseudo_labels``).
        layout: ``refer``, ``flickr_jsonl`` or ``auto`` (refer for a RefCOCO-family source).
        score_threshold: keep phrases whose chosen box scores at least this (``None``: all).
        top_fraction: keep the highest-scoring fraction of each split's phrases, in ``(0, 1]``
            (``None``: all).
        refer_dataset: the refer layout's dataset folder name for a source outside the refer
            family (default ``flickr30k_entities``); a refer source keeps its own.
        refer_split_by: the refs file's ``split_by`` for such a source (default ``phrases``).

    Raises:
        ValueError: an unknown layout, a fraction outside ``(0, 1]``. TypeError: at set-up, a
            datamodule without splits (new images of a ``SentencesFileDataModule`` have none to
            label). RuntimeError: more than one process (the fraction ranks a split's phrases
            together).
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        layout: Literal["auto", "refer", "flickr_jsonl"] = "auto",
        score_threshold: float | None = None,
        top_fraction: float | None = None,
        refer_dataset: str | None = None,
        refer_split_by: str | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if top_fraction is not None and not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.layout = layout
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.top_fraction = None if top_fraction is None else float(top_fraction)
        self.refer_dataset = refer_dataset
        self.refer_split_by = refer_split_by
        #: what the last run wrote: the files and the report (``metrics.json``'s content)
        self.files: list[Path] = []
        self.report: dict[str, Any] = {}
        self._labels: dict[str, list[PseudoLabel]] = {}
        self._outcomes: dict[str, list[PhraseOutcomes]] = {}
        self._metric: GroundingMetrics | None = None

    # ------------------------------------------------------------------ set-up
    def _datamodule(self, trainer: Trainer) -> GroundingDataModule:
        dm = getattr(trainer, "datamodule", None)
        if not isinstance(dm, GroundingDataModule):
            raise TypeError(
                "PseudoLabelWriter labels a split of a dataset (a lightning_wsg GroundingDataModule, "
                f"data.predict_split names the split), got {type(dm).__name__}: new images and sentences "
                "(SentencesFileDataModule) have no split to label"
            )
        return dm

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        self._datamodule(trainer)
        if trainer.world_size > 1:
            raise RuntimeError(
                "PseudoLabelWriter runs in one process (top_fraction ranks each split's phrases together): "
                "set --trainer.devices 1"
            )
        if self.output_dir is None:
            self.output_dir = Path(trainer.log_dir or trainer.default_root_dir) / "pseudo_labels"

    def _resolved_layout(self, dm: GroundingDataModule) -> str:
        if self.layout != "auto":
            return self.layout
        return "refer" if isinstance(dm, RefCOCODataModule) else "flickr_jsonl"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._labels, self._outcomes, self.files, self.report = {}, {}, [], {}
        # the metric of `lightning test` (GroundingModule._metrics_for), used for its per-phrase outcomes
        self._metric = GroundingMetrics(phrase_types=pl_module.hparams.get("phrase_types", ()))

    # ------------------------------------------------------------------ batches
    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: GroundingBatch,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        scores = getattr(prediction, "scores", None)  # GroundingModule.predict_step's, else score again
        scores = (pl_module(batch) if scores is None else scores).float()
        top = predict_boxes(scores, batch.proposals, batch.proposal_mask, k=1)
        boxes, values = top.boxes[:, :, 0].cpu(), top.scores[:, :, 0].cpu()
        labels = self._labels.setdefault(batch.split, [])
        for i, spans in enumerate(batch.phrase_spans):
            width, height = (int(v) for v in batch.image_sizes[i].tolist())
            for j, span in enumerate(spans):
                types = batch.phrase_types[i][j] if batch.phrase_types is not None else []
                labels.append(
                    PseudoLabel(
                        split=batch.split,
                        image_id=batch.image_ids[i],
                        sentence_id=batch.sentence_ids[i],
                        words=batch.words[i],
                        span=(int(span[0]), int(span[1])),
                        phrase_id=batch.phrase_ids[i][j],
                        types=[t for t in types if t],
                        box=boxes[i, j].tolist(),
                        score=float(values[i, j]),
                        image_size=(width, height),
                    )
                )
        if batch.has_ground_truth:
            outcomes = self._metric.outcomes(
                scores, batch.proposals, batch.proposal_mask, batch.phrase_mask, batch.gt_union, batch.gt_boxes,
                batch.gt_box_mask, batch.phrase_types,
            ).flatten()  # fmt: skip
            real = batch.phrase_mask.reshape(-1).to(outcomes.counted.device)  # the labels' order: sample, phrase
            self._outcomes.setdefault(batch.split, []).append(PhraseOutcomes(*(t[real].cpu() for t in outcomes)))

    # ------------------------------------------------------------------ the end
    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        dm = self._datamodule(trainer)
        skipped = _sentences_without_proposals(trainer)
        kept: list[PseudoLabel] = []
        splits: dict[str, Any] = {}
        for split, labels in self._labels.items():
            keep, counts = select_labels(
                torch.tensor([label.score for label in labels]), self.score_threshold, self.top_fraction
            )
            kept += [label for label, k in zip(labels, keep.tolist()) if k]
            counts["sentences_without_proposals"] = skipped.get(split, 0)
            report: dict[str, Any] = dict(counts)
            outcomes = PhraseOutcomes.cat(self._outcomes[split]) if split in self._outcomes else None
            if outcomes is not None and len(outcomes.counted) != len(labels):
                logger.warning("pseudo-labels %s: only some batches carry ground truth; accuracy not measured", split)
                outcomes = None
            if outcomes is not None:
                report["with_ground_truth"] = int(outcomes.counted.sum())
                report["metrics"] = {"all": self._compute(outcomes), "kept": self._compute(outcomes.select(keep))}
            splits[split] = report
        self.files = self._write(dm, kept)
        self.report = {
            "layout": self._resolved_layout(dm),
            "files": [str(p) for p in self.files],
            "score_threshold": self.score_threshold,
            "top_fraction": self.top_fraction,
            "splits": splits,
        }
        path = self.output_dir / METRICS_NAME
        atomic_write_text(path, json.dumps(self.report, indent=2) + "\n")
        self.files.append(path)
        _print_report(self.report, path)

    def _compute(self, outcomes: PhraseOutcomes) -> dict[str, float | int]:
        metric = GroundingMetrics(phrase_types=self._metric.phrase_types)
        metric.update(outcomes=outcomes)
        return {k: (int(v) if k == "num_phrases" else float(v)) for k, v in metric.compute().items()}

    def _write(self, dm: GroundingDataModule, kept: list[PseudoLabel]) -> list[Path]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if self._resolved_layout(dm) == "flickr_jsonl":
            return [write_phrase_jsonl(self.output_dir / JSONL_NAME, kept)]
        if isinstance(dm, RefCOCODataModule):
            refs, index = dm.load_refer()
            return list(write_refer_from_refs(self.output_dir, dm.dataset, dm.split_by, refs, index, kept))
        dataset = self.refer_dataset or PHRASE_REFER_NAMES[0]
        split_by = self.refer_split_by or PHRASE_REFER_NAMES[1]
        return list(write_refer_from_phrases(self.output_dir, dataset, split_by, kept, _file_namer(dm)))


def _file_namer(dm: GroundingDataModule):
    def file_name(image_id: str) -> str:
        try:
            return Path(dm.image_path(image_id)).name
        except (TypeError, KeyError):  # no image folder (a feature tower): Flickr's own naming
            return f"{image_id}.jpg"

    return file_name


def _sentences_without_proposals(trainer: Trainer) -> dict[str, int]:
    """Per split, the sentences the loaders left out because their image has no proposals."""
    loaders = trainer.predict_dataloaders
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    out: dict[str, int] = {}
    for loader in loaders:
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and hasattr(dataset, "split"):
            out[dataset.split] = out.get(dataset.split, 0) + len(getattr(dataset, "skipped_ids", []))
    return out


_SHOWN = ("acc", "acc_any", "pointing", "recall@1", "recall@5", "recall@10", "upper_bound", "num_phrases")


def _print_report(report: dict[str, Any], path: Path) -> None:
    """The counts of each split and, with ground truth, a table of all and kept phrases."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for split, r in report["splits"].items():
        line = (
            f"pseudo-labels {split}: {r['phrases']} phrases, {r['kept']} kept; dropped {r['below_threshold']} below "
            f"the score threshold ({report['score_threshold']}), {r['outside_top_fraction']} outside the top "
            f"fraction ({report['top_fraction']}); {r['sentences_without_proposals']} sentences not grounded "
            f"(no proposals); {r.get('with_ground_truth', 0)} phrases with ground truth"
        )
        logger.info(line)
        console.print(line)
    console.print(f"pseudo-labels written: {', '.join(report['files'])}; report: {path}")
    rows = {split: r["metrics"] for split, r in report["splits"].items() if "metrics" in r}
    if not rows:
        console.print("pseudo-labels: no ground truth in the split(s), accuracy not measured")
        return
    table = Table(title="pseudo-labels against the ground truth")
    table.add_column("metric")
    for split in rows:
        table.add_column(f"{split} (all)", justify="right")
        table.add_column(f"{split} (kept)", justify="right")
    names = [n for n in _SHOWN if any(n in m["all"] for m in rows.values())]
    names += sorted({n for m in rows.values() for n in m["all"]} - set(names))
    for name in names:
        cells = []
        for m in rows.values():
            for part in ("all", "kept"):
                value = m[part].get(name)
                cells.append("-" if value is None else str(value) if isinstance(value, int) else f"{value:.4f}")
        table.add_row(name, *cells)
    console.print(table)
