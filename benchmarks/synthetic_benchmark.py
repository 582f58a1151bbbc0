"""What distillation adds, measured on the built-in synthetic world.

On one world (the demo's, ``cli_configs/demo.yaml``: captions say "toddler" and "puppy", the
simulated detector "person" and "dog") this trains and tests, through the ``lightning`` CLI's
own objects (``lightning_wsg.cli.main(..., run=False)``, then ``trainer.fit`` and
``trainer.test`` on the best validation checkpoint), once per seed:

(a) the full method as the paper has it (the config: InfoNCE + KL towards the teacher, WordNet
class matching, the paper's temperatures, top-K and ramp), (b) InfoNCE only, (c) the full method
with the former class matching (GloVe on the phrase's last word), (d) the ``product`` variant
(KL towards teacher x student, with the settings the demo used before), and on request
(e) distillation only;

and scores baselines without training: a random proposal (the mean of 20 draws) and the
teacher alone (argmax over proposals of the teacher score ``t(r, p)``), with either matching.

Writes ``<out>/synthetic.md`` (a markdown table: accuracy with the union box, any-box
accuracy, pointing, training time), ``<out>/synthetic_val_acc.png`` (validation accuracy
per epoch of each trained run) and ``<out>/synthetic.json`` (every number). A second table
sorts each method's test phrases by outcome (:func:`lightning_wsg.baselines.error_kinds`):
right, unreachable, another category's object, another object of the phrase's category
(an attribute mistake), the phrase's object in a loose box, or no object.

Usage::

    python benchmarks/synthetic_benchmark.py                       # every row, seeds 0 1 2
    python benchmarks/synthetic_benchmark.py --runs full nce_only &   # rows split over processes:
    python benchmarks/synthetic_benchmark.py --runs old_matching product   # then once more, all rows
    python benchmarks/synthetic_benchmark.py --epochs 1 --num-train 64 --runs full --seeds 0   # a quick try

Each trained run keeps its result in ``<work-dir>/<row>-seed<k>/result.json`` and is not
trained again (``--retrain`` forces it), so parallel processes with disjoint ``--runs`` and
an interrupted benchmark both resume; a last call with every row writes the tables.

The full default run writes into ``benchmarks/results``; any other (fewer runs, overrides,
another world) into ``<work-dir>/results`` unless ``--out`` says otherwise.

Any ``--model.*``, ``--data.*``, ``--trainer.*`` or ``--seed_everything`` argument is passed on
to every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from pytorch_lightning import Callback

from lightning_wsg.baselines import ERROR_KINDS, error_kinds, evaluate_scores, random_scores, teacher_scores
from lightning_wsg.cli import main as cli_main
from lightning_wsg.models import Teacher
from lightning_wsg.synthetic import read_objects

REPO = Path(__file__).resolve().parents[1]
# The config's settings are the paper's (cli_configs/demo.yaml); each variant names what it changes.
RUNS = {
    "full": ("full method: InfoNCE + KL towards the teacher (paper settings, WordNet matching)", []),
    "nce_only": ("InfoNCE only", ["--model.loss.use_kd=false"]),
    "old_matching": (
        "full method, former matching (GloVe on the last word)",
        ["--model.loss.teacher.matching=glove"],
    ),
    "no_top_k": ("full method without the top-K restriction", ["--model.loss.kd_top_k=null"]),
    "spread": (
        "full method, teacher spread over every confident box of its class, no top-K",
        ["--model.loss.kd_top_k=null", "--model.loss.teacher.full_score=0.5"],
    ),
    "sharp_teacher": (
        "full method, sharper temperatures (tau_student 0.1, tau_teacher 0.5)",
        ["--model.loss.tau_student=0.1", "--model.loss.tau_teacher=0.5"],
    ),
    "sharper_teacher": (
        "full method, sharper temperatures (tau_student 0.1, tau_teacher 0.1)",
        ["--model.loss.tau_student=0.1", "--model.loss.tau_teacher=0.1"],
    ),
    "product": (
        "variant: KL towards teacher x student (former demo settings)",
        [
            "--model.loss.kd_target=product",
            "--model.loss.tau_student=0.1",
            "--model.loss.tau_teacher=0.5",
            "--model.loss.kd_top_k=null",
            "--model.loss.teacher.score_floor=0.5",
            "--model.loss.kd_weight_every=100",
            "--model.loss.kd_weight_unit=steps",
        ],
    ),
    "kd_only": ("distillation only", ["--model.loss.use_nce=false"]),
    "small": ("`flickr.yaml` + `model/small.yaml` (the paper's distillation, CPU towers)", []),
    "features": (
        "full method on precomputed region features (feature tower, 112-d RoI features of the world)",
        [
            "--model.region_encoder.class_path=lightning_wsg.models.FeatureRegionEncoder",
            "--model.region_encoder.init_args.feature_dim=112",
            "--model.region_encoder.init_args.box_geometry=true",
            "--model.region_encoder.init_args.hidden_dim=256",
            "--model.region_encoder.init_args.embed_dim=128",
        ],
    ),
}
# Rows trained from other configs than --config: the Flickr30K Entities datamodule reads the
# world's files (it is written in that layout), with the dataset config's own settings.
FLICKR_ROWS = {"small": ["cli_configs/flickr.yaml", "cli_configs/model/small.yaml", "cli_configs/model/paper.yaml"]}
DEFAULT_RUNS = [
    "full", "nce_only", "old_matching", "no_top_k", "spread", "sharp_teacher", "sharper_teacher", "product", "small",
    "features",
]
METRICS = ("acc", "acc_any", "pointing")


class ValAccuracy(Callback):
    """Records ``val/acc`` after each validation run (sanity checks excluded).

    ``on_validation_end`` runs after the module's ``on_validation_epoch_end`` has logged it.
    """

    def __init__(self) -> None:
        self.history: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and "val/acc" in trainer.callback_metrics:
            self.history.append(float(trainer.callback_metrics["val/acc"]))


def _cli_args(args: argparse.Namespace, run_dir: Path, name: str | None = None) -> list[str]:
    if name in FLICKR_ROWS:
        world = args.world or _config_world(args.config)
        out = [a for config in FLICKR_ROWS[name] for a in ("--config", str(REPO / config))]
        out += [f"--trainer.default_root_dir={run_dir}", f"--data.root={world}", f"--data.image_dir={world / 'images'}"]
        out += [f"--data.detections={world / 'detections.jsonl'}"]
        if args.epochs is not None:
            out.append(f"--trainer.max_epochs={args.epochs}")
        return out + [a for a in args.override if not a.startswith("--data.num_")]
    out = ["--config", str(args.config), f"--trainer.default_root_dir={run_dir}"]
    out.append(f"--trainer.callbacks.dirpath={run_dir / 'checkpoints'}")
    if args.world:
        out.append(f"--data.root={args.world}")
    if args.num_train is not None:
        out.append(f"--data.num_train={args.num_train}")
    if args.epochs is not None:
        out.append(f"--trainer.max_epochs={args.epochs}")
    return out + list(args.override)


def _config_world(config: Path) -> Path:
    """The world folder a synthetic-world config names (``data.init_args.root``)."""
    import yaml

    root = yaml.safe_load(Path(config).read_text(encoding="utf-8"))["data"]["init_args"]["root"]
    return Path(root)


def world_features(world: Path) -> list[str]:
    """Data overrides that read the world's region features, extracted once beside it (the
    demo's backbone, EfficientNet-Lite0's stride-16 stage pooled over each proposal)."""
    from lightning_wsg.features import main as features_main

    out = world.parent / f"{world.name}-features.tsv"
    if not out.is_file():
        features_main(
            ["extract", "--images", str(world / "images"), "--detections", str(world / "detections.jsonl"),
             "--out", str(out), "--image-size", "128"]
        )  # fmt: skip
    return [f"--data.detections={out}", f"--data.vocabulary={out.with_name(out.stem + '_vocab.txt')}"]


def fit_and_test(
    cli_args: list[str], run_dir: Path, retrain: bool, describe, test: bool = True, callbacks: tuple = ()
) -> dict:
    """Fit one run from CLI arguments, test its best validation checkpoint, keep the result.

    The shared machinery of the benchmarks: the result (test metrics, validation history,
    timing, plus what ``describe(cli, model)`` adds, e.g. error kinds) is kept in
    ``<run_dir>/result.json``; a later call (another process sharing the cores, or a rerun
    after an interruption) reads it instead of training, unless ``retrain``. With ``test=False``
    the test split is not read (runs that choose settings on validation). ``callbacks`` join
    the trainer's (measurements such as :class:`~lightning_wsg.callbacks.DistillationDiagnostics`).
    """
    done = run_dir / "result.json"
    if done.is_file() and not retrain:
        return json.loads(done.read_text(encoding="utf-8"))
    cli = cli_main(cli_args, run=False)
    recorder = ValAccuracy()
    cli.trainer.callbacks.extend([recorder, *callbacks])
    start, cpu_start = time.perf_counter(), time.process_time()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    fit_seconds = time.perf_counter() - start
    fit_cpu_seconds = time.process_time() - cpu_start  # this process only; steady under load
    best = cli.trainer.checkpoint_callback.best_model_path
    metrics = {}
    if test:
        results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=best or None, verbose=False)[0]
        metrics = {k.split("/", 1)[1]: float(v) for k, v in results.items() if k.startswith("test/")}
    model = cli.model.eval()  # trainer.test loaded the best checkpoint into it
    result = {
        "test": metrics,
        "val_acc": recorder.history,
        "epochs": cli.trainer.current_epoch,
        "steps": cli.trainer.global_step,
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "best_checkpoint": best,
        "environment": environment(),
        **describe(cli, model),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return result


def environment() -> dict:
    """What a run's numbers depend on besides the code and the seed.

    The same code, seed and packages give different accuracies on CPUs with different vector
    instructions (the kernels of ATen, MKL and oneDNN round differently): the demo's world gave
    test/acc 0.892 with AVX-512 kernels and 0.877 with AVX2 ones on one machine.
    """
    from importlib.metadata import version

    packages = ("torch", "pytorch-lightning", "transformers", "timm", "numpy", "pillow", "torchmetrics")
    return {
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "packages": {name: version(name) for name in packages},
        **{name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA") if name in os.environ},
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def train_and_test(name: str, extra: list[str], args: argparse.Namespace, test_set: tuple, seed: int) -> dict:
    """One row's run for one seed on the synthetic world (see :func:`fit_and_test`)."""
    run_dir = args.work_dir / f"{name}-seed{seed}"
    if name == "features" and (args.retrain or not (run_dir / "result.json").is_file()):
        extra = [*extra, *world_features(args.world or _config_world(args.config))]

    def describe(cli, model) -> dict:
        batches, objects = test_set
        if name == "features":  # the shared batches carry no region features: this run's own
            loader = cli.datamodule.test_dataloader()
            batches = list(loader[0] if isinstance(loader, list) else loader)
        return {"label": RUNS[name][0], "seed": seed, "overrides": extra, "errors": error_kinds(batches, model, objects)}

    return fit_and_test([*_cli_args(args, run_dir, name), *extra, f"--seed_everything={seed}"], run_dir, args.retrain,
                        describe)  # fmt: skip


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of each test metric, and of the training time."""
    out = {"label": runs[0]["label"], "seeds": [r["seed"] for r in runs], "runs": runs}
    keys = [k for k in runs[0]["test"] if all(k in r["test"] for r in runs)]
    t = {k: torch.tensor([r["test"][k] for r in runs], dtype=torch.float64) for k in keys}
    out["test"] = {k: float(v.mean()) for k, v in t.items()}
    out["test_std"] = {k: float(v.std()) if len(v) > 1 else 0.0 for k, v in t.items()}
    out["fit_seconds"] = sum(r["fit_seconds"] for r in runs) / len(runs)
    out["val_acc"] = runs[0]["val_acc"]
    out["val_best"] = sum(max(r["val_acc"]) for r in runs) / len(runs) if all(r["val_acc"] for r in runs) else None
    out["epochs"] = runs[0]["epochs"]
    out["errors"] = {k: sum(r["errors"][k] for r in runs) / len(runs) for k in runs[0]["errors"]}
    return out


def baselines(args: argparse.Namespace) -> tuple[dict, tuple]:
    """The untrained baselines on the test split of the same world, and that split's
    ``(batches, objects)`` for the trained runs' error analysis."""
    cli = cli_main(_cli_args(args, args.work_dir / "baselines"), run=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("test")
    loader = dm.test_dataloader()
    loader = loader[0] if isinstance(loader, list) else loader
    batches = list(loader)
    objects = read_objects(dm.root)
    teacher = cli.model.loss.teacher  # the config's teacher, as the full method trains with it
    old = Teacher(matching="glove")
    out = {
        "teacher": {
            "label": f"teacher alone (argmax of t(r, p), {teacher.matching} matching)",
            "test": evaluate_scores(batches, lambda b: teacher_scores(teacher, b)),
            "errors": error_kinds(batches, lambda b: teacher_scores(teacher, b), objects),
        },
        "teacher_old": {
            "label": "teacher alone, former matching (GloVe on the last word)",
            "test": evaluate_scores(batches, lambda b: teacher_scores(old, b)),
            "errors": error_kinds(batches, lambda b: teacher_scores(old, b), objects),
        },
    }
    draws = []
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        draws.append(evaluate_scores(batches, lambda b, g=g: random_scores(b, g)))
    out["random"] = {
        "label": "random proposal (mean of 20 draws)",
        "test": {k: sum(d[k] for d in draws) / len(draws) for k in draws[0]},
    }
    world = json.loads((Path(dm.root) / "world.json").read_text(encoding="utf-8"))
    out["world"] = {"root": str(dm.root), "args": world["args"], "stats": world["stats"]}
    return out, (batches, objects)


def write_table(results: dict, args: argparse.Namespace, command: str) -> str:
    """The markdown report."""
    stats = results["world"]["stats"]
    upper = results["teacher"]["test"]["upper_bound"]
    lines = [
        "# Synthetic world benchmark",
        "",
        f"Reproduce: `{command}`",
        "",
        (
            f"World: `{results['world']['root']}`, {json.dumps(results['world']['args'])}; "
            f"same-category distractors in {stats['distractor_rate']:.0%} of the images, a co-occurring "
            f"category pair in {stats['cooccurrence_rate']:.0%}; test phrases: "
            f"{int(results['teacher']['test']['num_phrases'])}, of which {upper:.1%} have a proposal "
            "with IoU >= 0.5 (the upper bound of every method)."
        ),
        "",
        (
            "Accuracy: the top proposal has IoU >= 0.5 with the phrase's union box (any-box: with "
            "one of its boxes); pointing: the top box's centre lies inside a ground-truth box. "
            "Trained runs are tested on their best validation checkpoint; training time is the "
            f"wall time of `fit` (validation included) on {platform.machine()} with "
            f"{os.cpu_count()} CPU cores ({torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}), torch {torch.__version__}."
        ),
        "",
        (
            "Settings are the paper's (`cli_configs/demo.yaml`), fixed before any run; each trained "
            "row is run once per seed (model initialisation and batch order; the world is the same), "
            "its checkpoint chosen on validation accuracy, and the test split read once per run. "
            "Test accuracy is the mean +- standard deviation over seeds; 'vs InfoNCE only' is the "
            "difference of the means and whether it exceeds twice its standard error "
            "(sqrt(sd_a^2 / n_a + sd_b^2 / n_b))."
        ),
        "",
        "| method | seeds | best val acc | test acc | vs InfoNCE only | any-box acc | pointing | training time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = [k for k in [*RUNS, "teacher", "teacher_old", "random"] if k in results]
    base = results.get("nce_only")
    for key in order:
        if key not in results:
            continue
        r = results[key]
        t, sd = r["test"], r.get("test_std", {})
        trained = "fit_seconds" in r
        seeds = str(len(r["seeds"])) if trained else "-"
        seconds = f"{r['fit_seconds']:.0f} s" if trained else "none"
        acc = f"{t['acc']:.1%} +- {sd.get('acc', 0.0):.1%}" if trained else f"{t['acc']:.1%}"
        versus = "-"
        if base is not None and key != "nce_only":
            diff = t["acc"] - base["test"]["acc"]
            se = (sd.get("acc", 0.0) ** 2 / max(len(r.get("seeds", [0])), 1) + base["test_std"]["acc"] ** 2 / len(base["seeds"])) ** 0.5
            versus = f"{100 * diff:+.1f} pts" + ((" (> 2 SE)" if abs(diff) > 2 * se else " (within 2 SE)") if trained else "")
        val = f"{r['val_best']:.1%}" if r.get("val_best") is not None else "-"
        lines.append(
            f"| {r['label']} | {seeds} | {val} | {acc} | {versus} | {t['acc_any']:.1%} | {t['pointing']:.1%} | {seconds} |"
        )
    plot_path = os.path.relpath(args.out / "synthetic_val_acc.png", REPO)
    lines += ["", f"Validation accuracy per epoch: `{plot_path}`.", ""]
    lines += [
        "Where the test phrases go (shares of all test phrases; `lightning_wsg.baselines.error_kinds`): "
        "unreachable: no proposal reaches IoU 0.5; other category: the top box frames an object of "
        "another category; same category: another object of the phrase's category (an attribute "
        "mistake); loose box: the phrase's object, too loosely boxed; no object: a box on no object.",
        "",
        "| method | " + " | ".join(k.replace("_", " ") for k in ERROR_KINDS) + " |",
        "|---|" + "---|" * len(ERROR_KINDS),
    ]
    for key in order:
        errors = results[key].get("errors")
        if errors:
            lines.append(f"| {results[key]['label']} | " + " | ".join(f"{errors[k]:.1%}" for k in ERROR_KINDS) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Validation accuracy per epoch of each trained run, baselines as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in RUNS:
        if key in results and results[key]["val_acc"]:
            hist = results[key]["val_acc"]
            ax.plot(range(1, len(hist) + 1), [100 * v for v in hist], marker="o", label=results[key]["label"])
    for key, style in (("teacher", "--"), ("random", ":")):
        if key in results:
            ax.axhline(
                100 * results[key]["test"]["acc"],
                color="grey",
                linestyle=style,
                label=results[key]["label"] + " (test)",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Synthetic world: validation accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--config", type=Path, default=REPO / "cli_configs" / "demo.yaml", help="the CLI config of every run"
    )
    p.add_argument("--runs", nargs="+", choices=list(RUNS), default=DEFAULT_RUNS, help="trained runs to do")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one trained run per seed and row")
    p.add_argument("--retrain", action="store_true", help="train again even where a run's result.json exists")
    p.add_argument("--epochs", type=int, default=None, help="override trainer.max_epochs")
    p.add_argument("--num-train", type=int, default=None, help="override data.num_train (another world)")
    p.add_argument("--world", type=Path, default=None, help="override data.root (where the world is cached)")
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "benchmark", help="logs and checkpoints")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (as `make demo`)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where the table and plot go (default: benchmarks/results for the full default "
        "benchmark, <work-dir>/results for any other, so a quick try never overwrites the "
        "committed results)",
    )
    args, extra = p.parse_known_args(argv)
    bad = [a for a in extra if not a.startswith(("--model.", "--data.", "--trainer.", "--seed_everything"))]
    if bad:
        p.error(f"unrecognized arguments: {' '.join(bad)}")
    args.override = extra  # passed on to every run, e.g. --model.lr=1e-3
    if args.num_train is not None and args.world is None:  # never regenerate the demo's world in place
        args.world = args.work_dir / f"world-{args.num_train}"
    if args.out is None:
        default_run = not (args.override or args.epochs or args.num_train or args.world) and args.runs == DEFAULT_RUNS
        args.out = REPO / "benchmarks" / "results" if default_run else args.work_dir / "results"
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    command = "python benchmarks/synthetic_benchmark.py" + "".join(f" {a}" for a in (argv or []))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results, test_set = baselines(args)
    for name in args.runs:
        runs = [train_and_test(name, RUNS[name][1], args, test_set, seed) for seed in args.seeds]
        results[name] = summarise(runs)
        (args.out / "synthetic.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    table = write_table(results, args, command)
    (args.out / "synthetic.md").write_text(table, encoding="utf-8")
    plot(results, args.out / "synthetic_val_acc.png")
    print(table)
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
