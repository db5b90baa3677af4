"""Builds crm_kernels._C: the C++ CPU kernels (always) and the CUDA kernels (when a CUDA build of
torch and the CUDA toolkit are present, for sm_80 and sm_90). Importing crm_kernels never requires
the extension: without it the "torch" and "triton" backends still work and `available_backends()`
says what is missing.

The extension is compiled against the torch it will run with, so the build uses the installed
torch: `pip install --no-build-isolation .`. torch is deliberately not a build requirement in
pyproject.toml: an isolated build would download a torch of its own (a multi-GB CUDA wheel) and
compile against it; instead it stops here and says what to run."""

import os
import platform
import sys
from pathlib import Path

try:
    import torch
except ImportError:
    sys.exit("crm_kernels builds against the torch installed in your environment, and this build "
             "environment has none: install torch first, then run `pip install --no-build-isolation .` "
             "(README, Installation).")  # fmt: skip
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def cpu_simd_flags():
    """AVX2+FMA when the build machine has them (the extension is built where it runs, like
    -march=native); at::vec then uses Sleef from libtorch_cpu. CRM_KERNELS_NO_SIMD=1 turns it off."""
    if os.environ.get("CRM_KERNELS_NO_SIMD") == "1" or platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    if " avx2" in flags and " fma" in flags:
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def cuda_headers_found() -> bool:
    """The CUDA toolkit's headers the kernels include (nvcc alone, as in some runtime images, is
    not enough: cuda_bf16.h ships with the full toolkit)."""
    roots = [Path(CUDA_HOME) / "include", *Path(CUDA_HOME).glob("targets/*/include")]
    return any((root / "cuda_bf16.h").is_file() for root in roots)


def build_cuda() -> bool:
    """CUDA kernels too when torch is a CUDA build and the CUDA toolkit (nvcc and headers) is
    found; otherwise the CPU kernels only, and the GPU runs the Triton backend.
    CRM_KERNELS_NO_CUDA=1 skips CUDA."""
    if os.environ.get("CRM_KERNELS_NO_CUDA") == "1" or torch.version.cuda is None or CUDA_HOME is None:
        return False
    if not cuda_headers_found():
        print(f"crm_kernels: CUDA kernels skipped, no cuda_bf16.h under {CUDA_HOME}", flush=True)
        return False
    return True


def extensions():
    relative = lambda paths: [str(p.relative_to(ROOT)) for p in paths]  # noqa: E731
    sources = relative([CSRC / "ops.cpp", CSRC / "autograd.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))])
    include_dirs = [str(CSRC / "include"), str(CSRC / "cpu")]
    # -ffp-contract=off: GCC otherwise fuses a * b + c into one FMA wherever it sees fit, so the
    # full-vector loop and the partial last vector of a block rounded the same softplus
    # differently, and results depended on where blocks (and so threads) cut the batch. The
    # kernels call fmadd where they want an FMA.
    compile_args = {"cxx": ["-O3", "-ffp-contract=off", "-fopenmp", "-Wno-unknown-pragmas", *cpu_simd_flags()]}
    link_args = ["-fopenmp"]
    if os.environ.get("CRM_KERNELS_SANITIZE") == "address":  # make asan
        compile_args["cxx"] += ["-fsanitize=address", "-fno-omit-frame-pointer", "-g", "-O1"]
        link_args.append("-fsanitize=address")
    else:
        # No debug info in the shipped library (torch's flags add -g): 10 MB -> about 1 MB.
        compile_args["cxx"].append("-g0")
    extension = CppExtension
    if build_cuda():
        # Ampere and Hopper; TORCH_CUDA_ARCH_LIST set by the user wins.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += relative([*sorted((CSRC / "cuda").glob("*.cu")), CSRC / "cuda" / "ops_cuda.cpp"])
        include_dirs.append(str(CSRC / "cuda"))
        compile_args["nvcc"] = ["-O3", "-std=c++17"]
        extension = CUDAExtension
    return [
        extension(
            "crm_kernels._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
        )
    ]


setup(
    packages=find_packages(include=["crm_kernels", "crm_kernels.*"]),
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
