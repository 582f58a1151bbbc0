"""benchmarks/synthetic_benchmark.py: its arguments and its report (the runs themselves are
measured by hand; README has the numbers)."""

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
    for argv in (["--runs", "full"], ["--epochs", "1"], ["--model.lr=1e-3"], ["--num-train", "8"]):
        args = bench.parse_args([*argv, "--work-dir", str(tmp_path)])
        assert args.out == tmp_path / "results", argv
    assert bench.parse_args(["--runs", "full", "--out", str(tmp_path)]).out == tmp_path
    args = bench.parse_args(["--num-train", "8", "--work-dir", str(tmp_path), "--seed_everything=1"])
    assert args.world == tmp_path / "world-8" and args.override == ["--seed_everything=1"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--optimizer.lr=1"])


def test_report_lists_every_run_and_its_error_kinds(bench, tmp_path):
    kinds = dict.fromkeys(bench.ERROR_KINDS, 0.0)
    test = {"acc": 0.9, "acc_any": 0.91, "pointing": 0.95, "upper_bound": 0.93, "num_phrases": 100.0}
    results = {
        "world": {"root": "w", "args": {}, "stats": {"distractor_rate": 0.5, "cooccurrence_rate": 0.9}},
        "teacher": {"label": "teacher alone", "test": test, "errors": kinds | {"right": 0.9}},
        "random": {"label": "random", "test": test},
        "full": {
            "label": "full method",
            "test": test,
            "errors": kinds | {"right": 0.9, "same_category": 0.1},
            "val_acc": [0.8, 0.9],
            "epochs": 2,
            "fit_seconds": 120.0,
        },
    }
    args = bench.parse_args(["--out", str(tmp_path)])
    table = bench.write_table(results, args, "python benchmarks/synthetic_benchmark.py")
    assert "| full method | 90.0% | 91.0% | 95.0% | 90.0% | 2 | 2.0 min (120 s) |" in table
    assert "| random | 90.0% | 91.0% | 95.0% | - | - | none |" in table
    assert "| full method | 90.0% | 0.0% | 0.0% | 10.0% | 0.0% | 0.0% |" in table
    bench.plot(results, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").stat().st_size > 1000
