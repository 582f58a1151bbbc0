"""What distillation adds on real language: the method on the Flickr30K feature world.

The world (:mod:`lightning_wsg.synthetic.feature_world`): real Flickr30K Entities captions, phrases,
chains and boxes for a sample of the official splits; simulated region features and a
simulated detector's class probabilities over COCO-80. Every run is the paper's feature setting
(``cli_configs/flickr.yaml`` + ``cli_configs/model/ckd_features.yaml``: 30 proposals, GloVe
words + LSTM phrases, Adam 1e-4, batch 32, 6 epochs), the packaged 50-d GloVe, checkpoints
chosen on validation accuracy and the test split read once per run.

Rows (``ROWS``): InfoNCE only; the paper's method at the reference's settings; the ``product``
variant; the paper's target with sharper temperatures; plus the untrained teacher alone and a
random proposal. Rows in ``CANDIDATES`` are choices for the recommendation: ``--select`` trains
them on one seed WITHOUT reading the test split and prints their best validation accuracy;
the recommendation is the one with the best validation accuracy, then run on every seed.

Per row: test accuracy (mean +- sd over seeds), the difference to InfoNCE only with its
standard error, and where the test phrases go (right; partial box: a box on the phrase's own
chain that misses its union box; another chain's box; background; unreachable).

Usage::

    python benchmarks/feature_world_benchmark.py --flickr data/flickr30k_entities           # every row, seeds 0 1 2
    python benchmarks/feature_world_benchmark.py --flickr data/flickr30k_entities --select  # candidates, val only
    python benchmarks/feature_world_benchmark.py --flickr data/flickr30k_entities --runs nce_only --seeds 0

Each run keeps ``<work-dir>/<row>-seed<k>/result.json`` (resumable, shareable between processes
with disjoint ``--runs``); a last call with every row writes ``<out>/feature_world.md`` and
``.json``. Any ``--model.*`` / ``--data.*`` / ``--trainer.*`` argument is passed to every run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_benchmark import cli_main, fit_and_test, summarise  # noqa: E402

from lightning_wsg.baselines import evaluate_scores, random_scores, teacher_scores  # noqa: E402
from lightning_wsg.boxes import box_iou  # noqa: E402
from lightning_wsg.callbacks import DistillationDiagnostics  # noqa: E402
from lightning_wsg.synthetic.feature_world import (  # noqa: E402
    FeatureWorldConfig,
    build_feature_world,
    read_provenance,
    world_is_complete,
)

REPO = Path(__file__).resolve().parents[1]
REFERENCE_STEPS = 29_783 * 5 // 32 * 6  # the reference run: Flickr30K train, batch 32, 6 epochs
PAPER = "paper"
#: row -> (label, overrides of the paper's feature setting)
ROWS = {
    "nce_only": ("InfoNCE only", ["--model.loss.use_kd=false"]),
    PAPER: ("paper: KL towards the teacher (tau_s 1, tau_t 2, top-8)", []),
    "product": (
        "variant: KL towards teacher x student (tau_s 0.1, tau_t 0.5, no top-K)",
        ["--model.loss.kd_target=product", "--model.loss.tau_student=0.1", "--model.loss.tau_teacher=0.5", "--model.loss.kd_top_k=null"],
    ),
    "sharp": (
        "paper's target, sharp temperatures (tau_s 0.1, tau_t 0.1, top-8)",
        ["--model.loss.tau_student=0.1", "--model.loss.tau_teacher=0.1"],
    ),
    "sharp_all": (
        "paper's target, sharp temperatures (tau_s 0.1, tau_t 0.1), no top-K",
        ["--model.loss.tau_student=0.1", "--model.loss.tau_teacher=0.1", "--model.loss.kd_top_k=null"],
    ),
    "sharper": (
        "paper's target, sharper teacher (tau_s 0.1, tau_t 0.05, top-8)",
        ["--model.loss.tau_student=0.1", "--model.loss.tau_teacher=0.05"],
    ),
}
CANDIDATES = ["product", "sharp", "sharp_all", "sharper"]
DEFAULT_RUNS = ["nce_only", PAPER, "product", "sharp", "sharp_all"]
DIAGNOSTICS = {
    "train": ("entropy_teacher_norm", "entropy_student_norm", "kd_weight", "grad_norm_nce", "grad_norm_kd",
              "grad_norm_kd_weighted", "grad_ratio_kd_nce"),
    "val": ("entropy_teacher_norm", "entropy_student_norm", "differs", "teacher_differs_right",
            "student_differs_right", "teacher_right", "student_right"),
}  # fmt: skip
ERRORS = ("right", "partial_box", "other_chain", "background", "unreachable")


def world_args(args: argparse.Namespace) -> list[str]:
    world = args.world
    return [
        "--config", str(REPO / "cli_configs" / "flickr.yaml"),
        "--config", str(REPO / "cli_configs" / "model" / "ckd_features.yaml"),
        "--config", str(REPO / "cli_configs" / "model" / "paper.yaml"),  # rows change what they name
        f"--data.root={world}", f"--data.detections={world / 'regions.native'}", "--data.num_workers=0",
        "--trainer.accelerator=cpu", "--trainer.devices=1",
        f"--model.region_encoder.init_args.feature_dim={args.feature_dim}",
        "--model.phrase_encoder.init_args.vectors=glove-6b-50d",
        f"--trainer.max_epochs={args.epochs}",
        f"--model.loss.kd_weight_every={ramp_every(args)}",
        "--model.loss.kd_weight_unit=steps",  # the benchmark's runs: the reference fraction, as steps
    ]  # fmt: skip


def ramp_every(args: argparse.Namespace) -> int:
    """The reference's lambda ramp at this run's length: it steps every 500 of its ~27,900 steps
    (29,783 images x 5 captions / 32 x 6 epochs), full weight at 5.4% of the run; at 500 absolute
    steps a short run would distil at lambda 0.001 for most of it."""
    if args.ramp_every is not None:
        return args.ramp_every
    steps = math.ceil(args.num_train * 5 / 32) * args.epochs
    return max(1, round(500 * steps / REFERENCE_STEPS))


def error_kinds(batches, score_fn, provenance: dict, iou: float = 0.5) -> dict[str, float]:
    """Share of the test phrases per outcome of ``ERRORS``, from each proposal's provenance."""
    counts = dict.fromkeys(ERRORS, 0)
    for batch in batches:
        scores = score_fn(batch).masked_fill(~batch.proposal_mask[:, None, :], float("-inf"))
        top = scores.argmax(dim=-1)
        counted = batch.phrase_mask & batch.gt_box_mask.any(-1)
        for i, p in counted.nonzero().tolist():
            gt = batch.gt_union[i, p][None]
            chosen = batch.proposals[i, top[i, p]]
            if box_iou(gt, chosen[None])[0, 0] >= iou:
                counts["right"] += 1
                continue
            if box_iou(gt, batch.proposals[i][batch.proposal_mask[i]]).max() < iou:
                counts["unreachable"] += 1
                continue
            records = provenance[batch.image_ids[i]]
            boxes = torch.tensor([r["box"] for r in records])
            frames = records[int((boxes - chosen).abs().sum(-1).argmin())]["chains"]
            own = str(batch.phrase_ids[i][p])
            kind = "partial_box" if own in frames else "other_chain" if frames else "background"
            counts[kind] += 1
    total = sum(counts.values())
    return {k: v / max(1, total) for k, v in counts.items()} | {"num_phrases": float(total)}


def _test_batches(cli) -> list:
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("test")
    loader = dm.test_dataloader()
    return list(loader[0] if isinstance(loader, list) else loader)


def baselines(args: argparse.Namespace, provenance: dict) -> tuple[dict, list]:
    cli = cli_main([*world_args(args), f"--trainer.default_root_dir={args.work_dir / 'baselines'}"], run=False)
    batches = _test_batches(cli)
    teacher, names = cli.model.loss.teacher, cli.datamodule.store.class_names

    def score(b):
        return teacher_scores(teacher, b, class_names=names)

    out = {
        "teacher": {
            "label": f"teacher alone (argmax of t(r, p) = sum_c P(c|r) m(c, p), {teacher.matching} matching)",
            "test": evaluate_scores(batches, score),
            "errors": error_kinds(batches, score, provenance),
        }
    }
    draws = [evaluate_scores(batches, lambda b, s=s: random_scores(b, torch.Generator().manual_seed(s))) for s in range(5)]
    out["random"] = {"label": "random proposal (mean of 5 draws)",
                     "test": {k: sum(d[k] for d in draws) / len(draws) for k in draws[0]}}  # fmt: skip
    return out, batches


def run_row(name: str, args: argparse.Namespace, seed: int, provenance: dict, test: bool = True) -> dict:
    run_dir = args.work_dir / f"{name}-seed{seed}" if test else args.work_dir / "select" / f"{name}-seed{seed}"
    cli_args = [*world_args(args), f"--trainer.default_root_dir={run_dir}", *ROWS[name][1], *args.override,
                f"--seed_everything={seed}"]  # fmt: skip

    diagnose = name != "nce_only" and seed == args.seeds[0]
    diag_path = run_dir / "kd_diagnostics.jsonl"
    if diagnose and (args.retrain or not (run_dir / "result.json").is_file()):
        diag_path.unlink(missing_ok=True)

    def describe(cli, model) -> dict:
        out = {"label": ROWS[name][0], "seed": seed, "overrides": ROWS[name][1]}
        if test:
            out["errors"] = error_kinds(_test_batches(cli), model, provenance)
        if diagnose:
            out["diagnostics"] = summarise_diagnostics(diag_path)
        return out

    callbacks = (DistillationDiagnostics(every_n_steps=50, path=diag_path, val_batches=8),) if diagnose else ()
    return fit_and_test(cli_args, run_dir, args.retrain, describe, test=test, callbacks=callbacks)


def summarise_diagnostics(path: Path) -> dict:
    """Per epoch, the mean of each diagnostic over its training records and its validation records."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out: dict[str, dict] = {}
    for stage in ("train", "val"):
        for epoch in sorted({r["epoch"] for r in records if r["stage"] == stage}):
            rows = [r for r in records if r["stage"] == stage and r["epoch"] == epoch]
            keys = [k for k in DIAGNOSTICS[stage] if any(r.get(k) is not None for r in rows)]
            out.setdefault(stage, {})[str(epoch)] = {
                k: sum(r[k] for r in rows if r.get(k) is not None) / sum(r.get(k) is not None for r in rows)
                for k in keys
            }
    return out


def write_table(results: dict, args: argparse.Namespace, command: str, world: dict) -> str:
    stats = world["stats"]
    lines = [
        "# The Flickr30K feature world benchmark", "", f"Reproduce: `{command}`", "",
        f"World: {json.dumps(world['config'])}; {stats['images']} images; test: "
        f"{stats['splits']['test']['phrases_with_box']} phrases with a box, upper bound "
        f"{stats['splits']['test']['upper_bound']:.1%}; {stats['distinct_heads']} distinct head words; "
        f"{stats['chains_per_image']} boxed chains per image, {stats['boxes_per_chain']} boxes per chain; "
        f"{stats['images_with_two_objects_of_one_class']:.0%} of the images hold two objects of one detector class, "
        f"{stats['images_with_a_strongly_cooccurring_pair']:.0%} a strongly co-occurring class pair.",
        "",
        f"Setting: `cli_configs/flickr.yaml` + `cli_configs/model/ckd_features.yaml`, {args.epochs} epochs, "
        f"checkpoint chosen on validation accuracy, test read once per run; {platform.machine()}, "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s). Mean +- sd over seeds; 'vs InfoNCE only': "
        "difference of means and whether it exceeds 2 standard errors (sqrt(sd_a^2/n_a + sd_b^2/n_b)).",
        "",
        "| method | seeds | best val acc | test acc | vs InfoNCE only | vs paper | any-box acc | training time |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip

    def versus(r: dict, base: dict | None) -> str:
        if base is None or r is base or "test_std" not in r:
            return "-"
        if len(r["seeds"]) < 2:
            return f"{100 * (r['test']['acc'] - base['test']['acc']):+.1f} pts (1 seed: no spread)"
        diff = r["test"]["acc"] - base["test"]["acc"]
        se = (r["test_std"]["acc"] ** 2 / len(r["seeds"]) + base["test_std"]["acc"] ** 2 / len(base["seeds"])) ** 0.5
        return f"{100 * diff:+.1f} pts" + (" (> 2 SE)" if abs(diff) > 2 * se else " (within 2 SE)")

    order = [k for k in [*ROWS, "teacher", "random"] if k in results]
    for key in order:
        r = results[key]
        trained = "test_std" in r
        acc = f"{r['test']['acc']:.1%} +- {r['test_std']['acc']:.1%}" if trained else f"{r['test']['acc']:.1%}"
        val = f"{r['val_best']:.1%}" if r.get("val_best") is not None else "-"
        lines.append(
            f"| {r['label']} | {len(r['seeds']) if trained else '-'} | {val} | {acc} | "
            f"{versus(r, results.get('nce_only'))} | {versus(r, results.get(PAPER))} | {r['test']['acc_any']:.1%} | "
            f"{(str(round(r['fit_seconds'])) + ' s') if trained else 'none'} |"
        )
    lines += ["", "Where the test phrases go (shares of all test phrases):", "",
              "| method | " + " | ".join(k.replace("_", " ") for k in ERRORS) + " |", "|---|" + "---|" * len(ERRORS)]  # fmt: skip
    for key in order:
        if results[key].get("errors"):
            lines.append(f"| {results[key]['label']} | " + " | ".join(f"{results[key]['errors'][k]:.1%}" for k in ERRORS) + " |")
    lines += diagnosis_table(results)
    return "\n".join(lines) + "\n"


def diagnosis_table(results: dict) -> list[str]:
    """Per distilling row (first seed), per epoch: the entropies of the target q and the student p
    over the distilled regions (divided by log of their number), lambda, the gradient norms of the
    two terms, and on validation batches how often the teacher's top box differs from the
    student's and is right (and the other way round)."""
    lines = ["", "Diagnosis (first seed; `lightning_wsg.callbacks.DistillationDiagnostics` every 50 steps on the "
             "training batch, and on 8 validation batches at each validation):", "",
             "| method | epoch | H(q)/log K | H(p)/log K | lambda | grad KD | grad NCE | lambda grad KD / grad NCE "
             "| teacher's top differs, right | student's top differs, right |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for key in ROWS:
        runs = results.get(key, {}).get("runs", [])
        diag = runs[0].get("diagnostics") if runs else None
        if not diag:
            continue
        for epoch, t in sorted(diag.get("train", {}).items(), key=lambda kv: int(kv[0])):
            v = diag.get("val", {}).get(epoch, {})
            lines.append(
                f"| {key} | {int(epoch) + 1} | {t['entropy_teacher_norm']:.3f} | {t['entropy_student_norm']:.3f} | "
                f"{t['kd_weight']:.3g} | {t['grad_norm_kd']:.3g} | {t['grad_norm_nce']:.3g} | "
                f"{t['grad_ratio_kd_nce']:.3g} | {v.get('teacher_differs_right', float('nan')):.1%} | "
                f"{v.get('student_differs_right', float('nan')):.1%} |"
            )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--flickr", type=Path, default=Path("data/flickr30k_entities"), help="the Flickr30K Entities release")
    p.add_argument("--world", type=Path, default=None, help="where the world is built (default: <work-dir>/world)")
    p.add_argument("--num-train", type=int, default=4000)
    p.add_argument("--num-val", type=int, default=500)
    p.add_argument("--num-test", type=int, default=1000)
    p.add_argument("--feature-dim", type=int, default=128)
    p.add_argument("--runs", nargs="+", choices=list(ROWS), default=DEFAULT_RUNS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6, help="the paper's 6")
    p.add_argument("--ramp-every", type=int, default=None,
                   help="kd_weight_every (default: the reference's 500 scaled to this run's steps)")  # fmt: skip
    p.add_argument("--one-seed", nargs="*", default=[], choices=list(ROWS),
                   help="rows run on the first seed only (candidates left behind on validation)")  # fmt: skip
    p.add_argument("--select", action="store_true", help="train CANDIDATES on the first seed, validation only")
    p.add_argument("--retrain", action="store_true")
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "feature_world")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="table and json (default: <work-dir>/results)")
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith(("--model.", "--data.", "--trainer."))]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    args.override = extra
    args.world = args.world or args.work_dir / "world"
    args.out = args.out or args.work_dir / "results"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = "python benchmarks/feature_world_benchmark.py" + "".join(f" {a}" for a in (argv or []))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    config = FeatureWorldConfig(num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
                                feature_dim=args.feature_dim)  # fmt: skip
    if not world_is_complete(args.world, config):
        build_feature_world(args.flickr, args.world, config)
    world = json.loads((args.world / "world.json").read_text(encoding="utf-8"))
    provenance = read_provenance(args.world)
    if args.select:
        chosen = {name: run_row(name, args, args.seeds[0], provenance, test=False) for name in CANDIDATES}
        for name, r in chosen.items():
            print(f"{name}: best val acc {max(r['val_acc']):.4f} ({r['label']})")
        best = max(chosen, key=lambda n: max(chosen[n]["val_acc"]))
        print(f"recommended (best validation accuracy): {best}")
        return chosen
    args.out.mkdir(parents=True, exist_ok=True)
    results, _ = baselines(args, provenance)
    for name in args.runs:
        seeds = args.seeds[:1] if name in args.one_seed else args.seeds
        results[name] = summarise([run_row(name, args, seed, provenance) for seed in seeds])
        (args.out / "feature_world.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = write_table(results, args, command, world)
    (args.out / "feature_world.md").write_text(table, encoding="utf-8")
    print(table)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
