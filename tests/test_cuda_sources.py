"""The CUDA sources compile, on any machine with nvcc, even without a GPU or a CUDA build of torch:
every .cu for sm_80 and sm_90, and the torch glue (ops_cuda.cpp) against torch's headers."""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch.utils.cpp_extension

ROOT = Path(__file__).resolve().parent.parent
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
NVCC = shutil.which("nvcc")
TORCH_INCLUDES = [f"-I{path}" for path in torch.utils.cpp_extension.include_paths()]
OWN_INCLUDES = [f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cuda'}"]

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources not compiled")


def run(command):
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "warning" not in result.stderr.lower(), result.stderr[-4000:]


def test_cuda_sources_exist():
    assert {p.name for p in CUDA_SOURCES} >= {"crm_loss.cu", "log_survival.cu"}


@needs_nvcc
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda p: p.name)
def test_cu_file_compiles_for_ampere_and_hopper(source, tmp_path):
    run([NVCC, "-c", str(source), "-o", str(tmp_path / "out.o"), "-std=c++17", "-O3",
         "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
         *OWN_INCLUDES, *TORCH_INCLUDES])  # fmt: skip


@needs_nvcc
def test_torch_glue_compiles(tmp_path):
    # nvcc drives the host compiler (-x c++) so the toolkit's headers are on the path.
    run([NVCC, "-c", "-x", "c++", "-std=c++20", str(ROOT / "csrc" / "cuda" / "ops_cuda.cpp"),
         "-o", str(tmp_path / "glue.o"), *OWN_INCLUDES, *TORCH_INCLUDES, f"-I{sysconfig.get_paths()['include']}"])  # fmt: skip
