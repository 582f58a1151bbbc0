"""Mutation testing of the core modules with mutmut, each module against its own fast tests.

mutmut 3.x reads one ``[tool.mutmut]`` section from the ``pyproject.toml`` of the folder it runs in
and keeps its state (the mutated copy, the test-to-function map, the verdicts) in ``mutants/``
there. To give every module its own test selection and its own state, each module runs in a
folder of its own, ``.mutation/<module>/``: a copy of the package, the tests, ``cli_configs/``
(which the tests' helpers read) and the project's ``pyproject.toml`` with a ``[tool.mutmut]``
section appended that names the module's files (``only_mutate``) and its tests
(``pytest_add_cli_args_test_selection``). A second run in the same folder re-uses the verdicts of
unchanged mutants; ``--fresh`` starts over.

Usage::

    python scripts/mutation.py                    # every module, smallest first
    python scripts/mutation.py boxes samplers     # only these
    python scripts/mutation.py --list             # the modules and their tests
    python scripts/mutation.py --table-only       # the table of the runs already done
    python scripts/mutation.py boxes --survivors  # after adding tests: re-run only the survivors

Each run writes ``.mutation/<module>/summary.json`` (counts, wall time, the surviving mutants'
names); the table of all the summaries is printed at the end and written to
``.mutation/summary.md``. ``mutmut show <name>`` inside ``.mutation/<module>/`` prints a mutant's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / ".mutation"


@dataclass(frozen=True)
class Module:
    """One mutmut run: the files it mutates and the tests that must kill the mutants.

    Attributes:
        name: the run's folder under ``.mutation/``.
        files: ``only_mutate`` globs, relative to the repository root.
        tests: pytest arguments that select the module's own tests.
    """

    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]


# Smallest first, so that a run cut short has finished the cheap modules.
MODULES: tuple[Module, ...] = (
    Module("boxes", ("lightning_wsg/boxes.py",), ("tests/test_boxes.py",)),
    Module(
        "samplers",
        ("lightning_wsg/data/samplers.py",),
        # the sampler tests; the mid-epoch resume (a fit, ~20 s a mutant) is left out
        ("tests/test_distributed.py", "-k", "sampler or evaluation_split or training_loader or training_order"),
    ),
    Module("losses", ("lightning_wsg/losses.py",), ("tests/test_losses.py",)),
    Module("model_folder", ("lightning_wsg/model_folder.py",), ("tests/test_model_folder.py",)),
    Module("metrics", ("lightning_wsg/metrics.py",), ("tests/test_metrics.py",)),
    Module(
        "distributed",
        ("lightning_wsg/distributed.py", "lightning_wsg/contrastive_distillation.py"),
        # left out: the fits and CLI parses that only build the loss (seconds a mutant; the loss's
        # settings are checked by its own tests)
        (
            "tests/test_distributed.py", "tests/test_contrastive_distillation.py", "-m", "not slow",
            "-k", "not resume_from and not bf16 and not trainer_fragments and not channels_last",
        ),
    ),
    Module("lexicon", ("lightning_wsg/lexicon/*.py",), ("tests/test_lexicon.py",)),
    Module("teacher", ("lightning_wsg/models/teacher.py",), ("tests/models/test_teacher.py",)),
    Module(
        "readers",
        tuple(
            f"lightning_wsg/detection/{name}.py" for name in ("base", "jsonl", "tsv", "hdf5", "native_store")
        ),
        ("tests/detection/test_formats.py", "tests/detection/test_native.py", "tests/detection/test_sources.py"),
    ),
    Module(
        "report_html",
        ("lightning_wsg/report_html.py",),
        # the page from hand records; left out: the `lightning test` fixture (seconds a mutant), the
        # browser that reads its page, the two-process run, and the wheel's file list (it would
        # count mutmut's own files beside the mutated module)
        (
            "tests/test_report.py", "-m", "not slow",
            "-k", "not holds_the_runs and not headless_browser and not wheel_carries",
        ),
    ),
)

# What the tests need besides the package: tests/ itself and the configs its helpers point at.
COPIED = ("lightning_wsg", "tests", "cli_configs")  # cli_configs: also_copy puts it beside the mutants

STATUS_KEYS = ("killed", "survived", "timeout", "suspicious", "no_tests", "skipped", "segfault")


def _toml_list(values: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def prepare(module: Module, fresh: bool) -> Path:
    """Lay out ``.mutation/<module>/`` for mutmut and return it.

    Args:
        module: the run to prepare.
        fresh: drop an earlier run's state (its verdicts are otherwise re-used).

    Returns:
        The folder mutmut runs in.
    """
    folder = WORK / module.name
    if fresh and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for name in COPIED:
        target = folder / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(REPO / name, target, ignore=ignore)
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    if "[tool.mutmut]" in pyproject:
        raise SystemExit("pyproject.toml has its own [tool.mutmut]; this script writes one per module")
    # forkserver: torch is not fork-safe once a test has run in the parent, so mutants fork
    # from a server that has only imported and collected the tests.
    pyproject += (
        "\n[tool.mutmut]\n"
        'source_paths = ["lightning_wsg"]\n'
        'also_copy = ["cli_configs"]\n'
        f"only_mutate = {_toml_list(module.files)}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list(module.tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]\n'
        'process_isolation = "forkserver"\n'
        "use_git_change_detection = false\n"
    )
    (folder / "pyproject.toml").write_text(pyproject, encoding="utf-8")
    return folder


def _mutmut() -> str:
    beside = Path(sys.executable).with_name("mutmut")
    found = str(beside) if beside.exists() else shutil.which("mutmut")
    if not found:
        raise SystemExit("mutmut is not installed: pip install -e '.[mutation]'")
    return found


def run(module: Module, fresh: bool, max_children: int, survivors: bool = False) -> dict:
    """Run mutmut over one module and return its summary (also written to ``summary.json``).

    Args:
        module: the run.
        fresh: start without an earlier run's verdicts.
        max_children: mutmut's worker processes.
        survivors: re-run only the mutants the last run did not kill (after adding tests); the
            wall time stays the last full run's, this re-run's goes to ``survivors_rerun_s``.

    Returns:
        The counts per status, the wall time in seconds and the surviving mutants' names.
    """
    previous_file = WORK / module.name / "summary.json"
    previous = json.loads(previous_file.read_text(encoding="utf-8")) if previous_file.exists() else None
    names: list[str] = []
    if survivors:
        if previous is None or previous.get("failed"):
            raise SystemExit(f"{module.name}: no finished run whose survivors could be re-run")
        names = [n for status, group in previous["not_killed"].items() if status != "skipped" for n in group]
        if not names:
            return previous
    folder = prepare(module, fresh and not survivors)
    # an interrupted run leaves mutants "not checked"; resuming it (no --fresh) adds to its time
    interrupted = previous is not None and bool(previous.get("not_killed", {}).get("not checked"))
    earlier = previous["wall_s"] if interrupted else 0.0
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("PYTHONPATH", None)  # the copy in mutants/ must be the one the tests import
    # the tests find the real annotation files beside the checkout, which .mutation/<module>/ is not
    env.setdefault("LIGHTNING_WSG_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    mutmut = _mutmut()
    print(f"== {module.name}: {' '.join(module.files)} against {' '.join(module.tests)}", flush=True)
    start = time.monotonic()
    proc = subprocess.run([mutmut, "run", "--max-children", str(max_children), *names], cwd=folder, env=env)
    wall = time.monotonic() - start
    subprocess.run([mutmut, "export-cicd-stats"], cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL)
    stats = json.loads((folder / "mutants" / "mutmut-cicd-stats.json").read_text(encoding="utf-8"))
    if proc.returncode != 0:
        # e.g. the clean test run failed: its counts would say "0 killed" for mutants never tried
        print(f"   mutmut failed on {module.name} (exit {proc.returncode}); see its output above", flush=True)
        summary = {"module": module.name, "exit_code": proc.returncode, "wall_s": round(wall, 1), "failed": True}
        (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        return summary
    listing = subprocess.run([mutmut, "results"], cwd=folder, env=env, check=True, capture_output=True, text=True)
    not_killed: dict[str, list[str]] = {}
    for line in listing.stdout.splitlines():
        name, _, status = line.strip().rpartition(": ")
        if name:
            not_killed.setdefault(status, []).append(name)
    summary = {
        "module": module.name,
        "files": list(module.files),
        "tests": list(module.tests),
        "exit_code": proc.returncode,
        "wall_s": previous["wall_s"] if survivors else round(wall + (earlier if not fresh else 0.0), 1),
        "mutants": stats["total"],
        **{key: stats.get(key, 0) for key in STATUS_KEYS},
        "not_killed": not_killed,
    }
    if survivors:
        summary["first_run"] = previous.get("first_run") or {k: previous[k] for k in ("killed", "survived", "no_tests")}
        summary["survivors_rerun_s"] = round(wall, 1)
    (folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def table(summaries: list[dict]) -> str:
    """The markdown table of the runs: one row per module."""
    rows = [
        "| module | mutants | killed | survived | timeout | suspicious | no tests | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        if s.get("failed"):
            rows.append(f"| {s['module']} | mutmut failed (exit {s['exit_code']}) | | | | | | |")
            continue
        rows.append(
            f"| {s['module']} | {s['mutants']} | {s['killed']} | {s['survived']} | {s['timeout']} "
            f"| {s['suspicious']} | {s['no_tests']} | {s['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="run only these (default: all, smallest first)")
    parser.add_argument("--fresh", action="store_true", help="forget earlier verdicts")
    parser.add_argument("--survivors", action="store_true", help="re-run only the last run's surviving mutants")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (default 1)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--table-only", action="store_true", help="print the table of the runs already done")
    args = parser.parse_args(argv)

    by_name = {m.name: m for m in MODULES}
    unknown = [name for name in args.modules if name not in by_name]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; known: {', '.join(by_name)}")
    chosen = [by_name[name] for name in args.modules] or list(MODULES)
    if args.list:
        for m in chosen:
            print(f"{m.name:14} {' '.join(m.files)}  <-  {' '.join(m.tests)}")
        return 0
    if not args.table_only:
        for m in chosen:
            s = run(m, args.fresh, args.max_children, args.survivors)
            if s.get("failed"):
                continue
            print(f"   {s['module']}: {s['killed']}/{s['mutants']} killed, {s['survived']} survived, "
                  f"{s['wall_s']:.0f} s", flush=True)
    done = [json.loads(p.read_text()) for m in MODULES if (p := WORK / m.name / "summary.json").exists()]
    text = table(done)
    WORK.mkdir(exist_ok=True)
    (WORK / "summary.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
