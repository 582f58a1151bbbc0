"""The package's import rules (docs/CONTRACTS.md), checked with import-linter.

``tests/import_contracts.ini`` holds the contracts: the networks (``lightning_wsg.models``)
import neither Lightning nor ``lightning_wsg.data``; ``lightning_wsg.detection`` never
imports ``lightning_wsg.data`` and is layered (``base`` at the bottom, the readers on it,
``open_detections`` above them, the cache and its callback on top), its readers importing
neither Lightning nor a detector library; the test report's page writer imports neither
Lightning nor torch. Forbidden and layers contracts follow indirect chains too.
docs/CONTRACTS.md shows the file; a test checks that the two hold the same contracts.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "tests" / "import_contracts.ini"
DOCS = REPO / "docs" / "CONTRACTS.md"


def _parse(text: str) -> dict[str, dict[str, list[str]]]:
    """Each section's options, every value split into its words (layout and comments aside)."""
    parser = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=None)
    parser.read_string(text)
    return {name: {k: v.split() for k, v in parser[name].items()} for name in parser.sections()}


def _contract_names() -> dict[str, str]:
    """Contract id (``networks``...) -> its name as lint-imports prints it."""
    prefix = "importlinter:contract:"
    return {s[len(prefix) :]: o["name"] for s, o in _raw(CONTRACTS.read_text()).items() if s.startswith(prefix)}


def _raw(text: str) -> dict[str, dict[str, str]]:
    parser = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=None)
    parser.read_string(text)
    return {name: dict(parser[name]) for name in parser.sections()}


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """import-linter over the ``lightning_wsg`` found first on ``package_parent`` (no cache written)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(package_parent)!r})
        from importlinter.cli import lint_imports
        sys.exit(lint_imports(config_filename={str(CONTRACTS)!r}, no_cache=True, no_logo=True))
        """
    )
    # wide enough that no contract's name wraps onto a second line of the report
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=package_parent, capture_output=True, text=True, timeout=300, env=env
    )


def _broken(stdout: str) -> list[str]:
    return [row.removesuffix(" BROKEN") for row in stdout.splitlines() if row.endswith(" BROKEN")]


def test_the_package_keeps_its_import_contracts():
    names = _contract_names()
    assert {"networks", "detection", "detection-layers", "detection-reading", "report-html"} <= set(names)
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"Contracts: {len(names)} kept, 0 broken." in out.stdout
    assert all(f"{name} KEPT" in out.stdout for name in names.values()), out.stdout


def _copy_package(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "lightning_wsg", tmp_path / "lightning_wsg", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "lightning_wsg"


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("models/phrase_encoder.py", "import pytorch_lightning", "networks"),
        ("models/region_encoder.py", "from ..data import batch", "networks"),
        ("models/pretrained.py", "from .. import grounding_module", "networks"),  # indirect: it imports data
        ("detection/formats.py", "from ..data import batch", "detection"),
        # the circle the layering removed: the types' module importing the dispatcher
        ("detection/base.py", "from . import sources", "detection-layers"),
        ("detection/jsonl.py", "from .sources import open_detections", "detection-layers"),
        ("detection/jsonl.py", "from . import tsv", "detection-layers"),  # readers are independent
        ("detection/store.py", "from .native import convert", "detection-layers"),
        ("detection/mmdet.py", "from . import torchvision", "detection-layers"),  # so are the detectors
        ("detection/tsv.py", "import pytorch_lightning", "detection-reading"),
        ("report_html.py", "import torch", "report-html"),
        ("palette.py", "from .callbacks import drawing", "report-html"),  # indirect: drawing imports Lightning
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    """The contracts can fail: the same check on a copy of the package with one import added."""
    path = _copy_package(tmp_path) / module
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    path.write_text(text.replace(anchor, f"{anchor}{line}  # planted\n", 1))
    out = _lint(tmp_path)
    names = _contract_names()
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"Contracts: {len(names) - 1} kept, 1 broken." in out.stdout, out.stdout
    assert _broken(out.stdout) == [names[contract]]


def test_a_new_detection_module_needs_a_layer(tmp_path):
    """The layers contract is exhaustive: a module of detection/ it does not place breaks it."""
    (_copy_package(tmp_path) / "detection" / "extra.py").write_text('"""A module no layer names."""\n')
    out = _lint(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert _broken(out.stdout) == [_contract_names()["detection-layers"]]
    assert "lightning_wsg.detection.extra" in out.stdout


def test_docs_show_the_contracts_of_the_ini_file():
    """docs/CONTRACTS.md's ini block holds the same sections and options as tests/import_contracts.ini."""
    blocks = re.findall(r"^```ini\n(.*?)^```$", DOCS.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1, f"{DOCS}: expected one ```ini block, found {len(blocks)}"
    assert _parse(blocks[0]) == _parse(CONTRACTS.read_text())


def test_the_report_page_writer_loads_without_lightning_or_torch():
    """At run time too: importing the page's writer (and the package above it) loads neither."""
    script = (
        "import sys, lightning_wsg.report_html; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pytorch_lightning', 'lightning'}))"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
