"""The package as a user installs it: `pip wheel` builds a wheel holding the compiled extension
against the installed torch (--no-build-isolation, as the README's Installation says), it installs
into a fresh folder, and it imports and computes from outside the checkout. Slow-marked: it
compiles the extension once more (about 30 s on 2 cores)."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import crm_kernels

ROOT = Path(__file__).resolve().parent.parent

SMOKE = """
import torch, crm_kernels, crm_kernels._C
from crm_kernels import reference
print(crm_kernels.__file__)
print(crm_kernels.__version__)
print(crm_kernels.available_backends("cpu"))
generator = torch.Generator().manual_seed(0)
cu_steps = torch.tensor([0, 3, 3, 10])
logits = torch.randn(10, generator=generator, dtype=torch.float64, requires_grad=True)
outcome, first_error = torch.tensor([0, 1, 0]), torch.tensor([-1, -1, 4])
loss = crm_kernels.crm_loss(logits, cu_steps, outcome, first_error, backend="cpu")
expected = reference.crm_loss_loop(logits, cu_steps, outcome, first_error)
torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
loss.backward()
print("ok", float(loss))
"""


def readme_install_commands() -> list[list[str]]:
    """The commands of the README's Installation block, split into words, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Installation", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].split() for line in block.splitlines() if line.strip()]


def pip(words: list[str], *extra: str) -> subprocess.CompletedProcess:
    """A README pip command run with this interpreter's pip, from the checkout, plus `extra`."""
    assert words[0] == "pip", words
    done = subprocess.run([sys.executable, "-m", "pip", *words[1:], *extra], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_readme_install_block_is_what_ci_runs():
    """The three README commands: the wheel and the plain install run in the slow test below; the
    editable one is what `make build` runs in every CI job (there with --no-deps: .venv is pinned)."""
    commands = readme_install_commands()
    assert commands == [["pip", "install", "--no-build-isolation", "."],
                        ["pip", "install", "--no-build-isolation", "-e", '".[dev]"'],
                        ["pip", "wheel", "--no-build-isolation", "--no-deps", "-w", "dist", "."]]  # fmt: skip
    makefile = (ROOT / "Makefile").read_text()
    assert "-m pip install --quiet --no-build-isolation --no-deps -e ." in makefile


def smoke_from_elsewhere(site: Path, tmp_path: Path) -> None:
    """Import the copy installed under `site` from a folder outside the checkout, and compute."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    # A user's environment: the tests' TRITON_INTERPRET=1 would list the interpreter as a CPU backend.
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "PYTHONPATH": str(site)}
    smoke = subprocess.run([sys.executable, "-c", SMOKE], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    where, version, backends, result = smoke.stdout.strip().splitlines()[-4:]
    assert where.startswith(str(site)), where  # the installed copy, not the checkout
    assert version == crm_kernels.__version__
    assert backends == "['cpu', 'torch']"
    assert result.startswith("ok ")


@pytest.mark.slow
def test_readme_install_into_a_fresh_folder(tmp_path):
    """`pip install --no-build-isolation .`, into a fresh target (--no-deps: torch is there)."""
    install, _, _ = readme_install_commands()
    pip(install, "--no-deps", "--target", str(tmp_path / "site"))
    smoke_from_elsewhere(tmp_path / "site", tmp_path)


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path):
    wheels = tmp_path / "wheels"
    *_, wheel_command = readme_install_commands()
    build = pip([word if word != "dist" else str(wheels) for word in wheel_command])
    assert "Deprecat" not in build.stdout + build.stderr  # a clean build: no setuptools deprecation box
    (wheel,) = wheels.glob("crm_kernels-*.whl")
    assert wheel.name.startswith(f"crm_kernels-{crm_kernels.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(re.fullmatch(r"crm_kernels/_C\..*\.so", name) for name in names), names
    assert "crm_kernels/_triton/crm_loss.py" in names and "crm_kernels/integrations/verl.py" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 2**20:.2f} MiB")

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=300)  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    smoke_from_elsewhere(target, tmp_path)


@pytest.mark.slow
def test_isolated_build_says_what_to_run(tmp_path):
    """Plain `pip install .` builds in isolation, where the user's torch is absent: it must stop
    with the command to run, not download a torch of its own and compile against that."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path), str(ROOT)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode != 0
    assert "pip install --no-build-isolation ." in done.stdout + done.stderr
    assert not list(tmp_path.glob("*.whl"))
