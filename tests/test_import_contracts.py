"""The package's import rules (docs/CONTRACTS.md), checked with import-linter's forbidden contracts.

``tests/import_contracts.ini`` holds the contracts: the networks (``lightning_wsg.models``)
import neither Lightning nor ``lightning_wsg.data``; ``lightning_wsg.detection`` never
imports ``lightning_wsg.data``. Forbidden contracts follow indirect chains too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONTRACTS = REPO / "tests" / "import_contracts.ini"


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
    return subprocess.run(
        [sys.executable, "-c", script], cwd=package_parent, capture_output=True, text=True, timeout=300
    )


def test_the_package_keeps_its_import_contracts():
    out = _lint(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Contracts: 2 kept, 0 broken." in out.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("models/phrase_encoder.py", "import pytorch_lightning", "Networks"),
        ("models/region_encoder.py", "from ..data import batch", "Networks"),
        ("models/pretrained.py", "from .. import grounding_module", "Networks"),  # indirect: it imports data
        ("detection/formats.py", "from ..data import batch", "Detection"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, contract):
    """The contracts can fail: the same check on a copy of the package with one import added."""
    shutil.copytree(REPO / "lightning_wsg", tmp_path / "lightning_wsg", ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "lightning_wsg" / module
    text = path.read_text()
    anchor = "from __future__ import annotations\n"
    assert anchor in text
    path.write_text(text.replace(anchor, f"{anchor}{line}  # planted\n", 1))
    out = _lint(tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Contracts: 1 kept, 1 broken." in out.stdout
    broken = [row for row in out.stdout.splitlines() if row.endswith("BROKEN")]
    assert len(broken) == 1 and broken[0].startswith(contract)
