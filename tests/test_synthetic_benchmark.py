"""benchmarks/synthetic_benchmark.py: its arguments and its report (the runs themselves are
measured by hand; docs/benchmarks.md has the numbers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("synthetic_benchmark", REPO / "benchmarks" / "synthetic_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_only_the_full_default_run_writes_the_committed_results(bench, tmp_path):
    assert bench.parse_args([]).out == REPO / "benchmarks" / "results"
    for argv in (["--runs", "full"], ["--epochs", "1"], ["--model.optimizer.lr=1e-3"], ["--num-train", "8"]):
        args = bench.parse_args([*argv, "--work-dir", str(tmp_path)])
        assert args.out == tmp_path / "results", argv
    assert bench.parse_args(["--runs", "full", "--out", str(tmp_path)]).out == tmp_path
    args = bench.parse_args(["--num-train", "8", "--work-dir", str(tmp_path), "--seed_everything=1"])
    assert args.world == tmp_path / "world-8" and args.override == ["--seed_everything=1"]
    with pytest.raises(SystemExit, match="2"):
        bench.parse_args(["--optimizer.lr=1"])


def _run(bench, seed, acc, kinds):
    test = {"acc": acc, "acc_any": acc + 0.01, "pointing": 0.95, "upper_bound": 0.93, "num_phrases": 100.0}
    return {"label": "x", "seed": seed, "test": test, "errors": kinds | {"right": acc}, "val_acc": [0.8, 0.9],
            "epochs": 2, "fit_seconds": 120.0}


def test_seeds_are_summarised_with_mean_and_spread(bench):
    kinds = dict.fromkeys(bench.ERROR_KINDS, 0.0)
    s = bench.summarise([_run(bench, 0, 0.90, kinds), _run(bench, 1, 0.92, kinds), _run(bench, 2, 0.94, kinds)])
    assert s["seeds"] == [0, 1, 2]
    assert s["test"]["acc"] == pytest.approx(0.92) and s["test_std"]["acc"] == pytest.approx(0.02)
    assert s["errors"]["right"] == pytest.approx(0.92)


def test_report_lists_every_run_and_its_error_kinds(bench, tmp_path):
    kinds = dict.fromkeys(bench.ERROR_KINDS, 0.0)
    test = {"acc": 0.9, "acc_any": 0.91, "pointing": 0.95, "upper_bound": 0.93, "num_phrases": 100.0}
    full = bench.summarise([_run(bench, 0, 0.90, kinds), _run(bench, 1, 0.92, kinds), _run(bench, 2, 0.94, kinds)])
    full["label"] = "full method"
    nce = bench.summarise([_run(bench, 0, 0.89, kinds), _run(bench, 1, 0.90, kinds), _run(bench, 2, 0.91, kinds)])
    nce["label"] = "InfoNCE only"
    product = bench.summarise([_run(bench, s, a, kinds) for s, a in ((0, 0.95), (1, 0.96), (2, 0.97))])
    product["label"] = "product"
    results = {
        "world": {"root": "w", "args": {}, "stats": {"distractor_rate": 0.5, "cooccurrence_rate": 0.9}},
        "teacher": {"label": "teacher alone", "test": test, "errors": kinds | {"right": 0.9}},
        "random": {"label": "random", "test": test},
        "full": full,
        "nce_only": nce,
        "product": product,
    }
    args = bench.parse_args(["--out", str(tmp_path)])
    table = bench.write_table(results, args, "python benchmarks/synthetic_benchmark.py")
    # +2.0 points, SE = sqrt(0.02^2 / 3 + 0.01^2 / 3) = 1.29 points: within 2 SE
    assert "| full method | 3 | 90.0% | 92.0% +- 2.0% | +2.0 pts (within 2 SE) | 93.0% | 95.0% | 120 s |" in table
    # +6.0 points, SE = sqrt(0.01^2 / 3 + 0.01^2 / 3) = 0.82 points: beyond 2 SE
    assert "| product | 3 | 90.0% | 96.0% +- 1.0% | +6.0 pts (> 2 SE) |" in table
    assert "| InfoNCE only | 3 | 90.0% | 90.0% +- 1.0% | - |" in table
    assert "| random | - | - | 90.0% | +0.0 pts | 91.0% | 95.0% | none |" in table
    assert "| full method | 92.0% | 0.0% | 0.0% |" in table
    bench.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
