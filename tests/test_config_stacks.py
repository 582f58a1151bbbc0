"""Every config stack the README, docs/ and the configs' own comments show parses.

The commands are read from the text itself (``lightning fit --config A --config B ...``, with
``\\`` continuations, in Markdown and in YAML comments), so a stack a page shows cannot drift
from what the parser takes. Elided stacks (``...``, ``<placeholders>``) start with no dataset
config and are skipped; the listed ones are parsed with ``--print_config`` (no download, no
instantiation), as ``lightning`` would before a run.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from lightning_wsg.cli import main

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("cli_configs/flickr.yaml", "cli_configs/refcoco.yaml", "cli_configs/demo.yaml")
_COMMAND = re.compile(r"(?:\blightning|-m lightning_wsg|train\.sbatch)\s+(?:fit|test|validate|predict)?\b")


def _texts() -> list[tuple[str, str]]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "cli_configs").rglob("*.yaml"))]
    out = []
    for path in files:
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".yaml":  # commands live in the comments
            lines = [line.lstrip()[1:] for line in lines if line.lstrip().startswith("#")]
        joined, buffer = [], ""
        for line in lines:
            if line.rstrip().endswith("\\"):
                buffer += line.rstrip()[:-1] + " "
                continue
            joined.append(buffer + line)
            buffer = ""
        out += [(str(path.relative_to(REPO)), line) for line in joined]
    return out


def shown_stacks() -> dict[tuple[str, ...], str]:
    """``{(config, ...): "file it appears in"}`` of every command that starts with a dataset config."""
    stacks: dict[tuple[str, ...], str] = {}
    for where, line in _texts():
        if not _COMMAND.search(line) or " ... " in line:  # elided: not a whole stack
            continue
        configs = re.findall(r"--config[ =](\S+)", line)
        if not configs or configs[0].strip("`'\"") not in DATASETS:
            continue
        configs = [c.strip("`'\"") for c in configs]
        if any(not c.startswith("cli_configs/") or "<" in c for c in configs):
            continue
        stacks.setdefault(tuple(configs), where)
    return stacks


STACKS = shown_stacks()
#: the stack that once dropped or refused settings depending on its order, shown in the docs
PAPER_DDP = ("cli_configs/flickr.yaml", "cli_configs/model/ckd_features.yaml", "cli_configs/model/paper.yaml",
             "cli_configs/trainer/ddp.yaml")  # fmt: skip


def _print_config(configs: tuple[str, ...]) -> tuple[int, str]:
    args = [a for c in configs for a in ("--config", str(REPO / c))]
    if "cli_configs/predict.yaml" in configs:
        args.append("--data.sentences_file=inputs.jsonl")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as exit_:
        main([*args, "--print_config"], run=False)
    return exit_.value.code, out.getvalue()


def test_the_docs_show_the_stacks_that_matter() -> None:
    assert len(STACKS) >= 10, sorted(STACKS)
    assert PAPER_DDP in STACKS or any(set(PAPER_DDP) <= set(s) for s in STACKS), "docs/scale.md shows the paper under DDP"


@pytest.mark.parametrize("stack", sorted(STACKS), ids=lambda s: "+".join(Path(c).stem for c in s))
def test_a_shown_stack_parses(stack: tuple[str, ...]) -> None:
    code, text = _print_config(stack)
    assert code == 0, f"{STACKS[stack]}: {' '.join(stack)}\n{text[-2000:]}"
    # a whole run: towers and a datamodule (a dataset config alone holds no model)
    assert re.search(r"region_encoder:\s*\n\s*class_path:", text), f"{STACKS[stack]}: no towers in {stack}"
    assert "class_path: lightning_wsg.data." in text


def test_the_gpu_fragment_is_refused_on_a_tower_that_reads_no_pixels() -> None:
    code, text = _print_config(
        ("cli_configs/flickr.yaml", "cli_configs/model/ckd_features.yaml", "cli_configs/model/gpu.yaml")
    )
    assert code != 0 and "channels_last" in text and "not accepted" in text


def test_the_paper_under_ddp_keeps_every_setting_of_each_layer() -> None:
    code, text = _print_config(PAPER_DDP)
    assert code == 0, text
    assert "class_path: lightning_wsg.models.FeatureRegionEncoder" in text and "strategy: ddp" in text
    assert "kd_weight_unit: steps" in text and "precision: bf16-mixed" in text
