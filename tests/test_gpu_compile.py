"""Every GPU kernel compiled for sm_80 and sm_90 by the real compilers, on this GPU-less machine.

The interpreter (TRITON_INTERPRET=1, which the other Triton tests use) never invokes Triton's
compiler, so this is the test that the Triton kernels build for a GPU: benchmarks/gpu_resources.py
records the launches the public functions make, compiles each distinct variant with Triton's
compiler and bundled ptxas, and compiles csrc/cuda with nvcc -Xptxas -v. It runs once per session
in a subprocess, since this process has the interpreter switched on. The one stand-in is named
there: the device check that sends CUDA tensors to Triton is told that CPU tensors count.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from benchmarks import gpu_resources, report  # noqa: E402

# One xdist worker takes the whole module (make test: --dist loadgroup), so the other keeps running
# the rest of the suite while this one compiles.
pytestmark = pytest.mark.xdist_group("gpu_compile")
ROOT = Path(__file__).resolve().parent.parent
NVCC = shutil.which("nvcc")
SIZE_PARAMETERS = ("num_steps", "num_trajectories", "num_values", "num_segments")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """The compile runs once per test run, whichever xdist worker asks first (pytest-xdist's
    pattern for a shared fixture: a file in the workers' common temp folder, under a lock)."""
    from filelock import FileLock

    out = tmp_path_factory.getbasetemp().parent / "gpu_resources.json"
    with FileLock(f"{out}.lock"):
        if not out.exists():
            env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
            command = [sys.executable, "-m", "benchmarks.gpu_resources", "--json", str(out), *([] if NVCC else ["--no-cuda"])]
            run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
            assert out.exists(), run.stderr[-6000:]
    return json.loads(out.read_text())


def test_every_package_kernel_is_launched_by_the_public_functions(compiled):
    """A kernel added to crm_kernels/_triton that no recorded public call launches fails here."""
    assert compiled["package_kernels"], "no Triton kernels found"
    assert compiled["launched_kernels"] == compiled["package_kernels"]
    built = {(variant["kernel"], variant["arch"]) for variant in compiled["triton_variants"]}
    assert built == {(kernel, arch) for kernel in compiled["package_kernels"] for arch in gpu_resources.ARCHS}


def test_every_triton_variant_compiles(compiled):
    errors = [variant for variant in compiled["triton_variants"] if "error" in variant]
    assert not errors, f"{len(errors)} variants failed, first: {errors[0]['kernel']} sm_{errors[0]['arch']}: {errors[0]['error']}"


def test_no_spills_and_registers_within_budget(compiled):
    for variant in compiled["triton_variants"]:
        where = f"{variant['kernel']} sm_{variant['arch']} {variant['constexprs']} {variant['types']}"
        assert variant["spill_stores"] == variant["spill_loads"] == variant["stack"] == 0, where
        assert variant["registers"] <= gpu_resources.REGISTER_BUDGET[gpu_resources.accumulation(variant)], where


def _variants_of(compiled, kernel_suffix):
    return [variant for variant in compiled["triton_variants"] if variant["kernel"].endswith(kernel_suffix)]


@pytest.mark.parametrize("kernel", ["_crm_loss_forward_kernel", "_crm_loss_backward_kernel",
                                    "_log_survival_forward_kernel", "_log_survival_backward_kernel"])  # fmt: skip
def test_op_kernels_cover_every_input_variant(compiled, kernel):
    variants = _variants_of(compiled, kernel)
    seen = {(variant["types"]["logits_ptr"], variant["types"]["cu_steps_ptr"], "logits_ptr" in variant["divisible_by_16"])
            for variant in variants}  # fmt: skip
    assert seen == {(logits, offsets, aligned) for logits in ("*fp16", "*bf16", "*fp32", "*fp64")
                    for offsets in ("*i32", "*i64") for aligned in (True, False)}  # fmt: skip
    if "FINAL" in variants[0]["constexprs"]:
        assert {variant["constexprs"]["FINAL"] for variant in variants} == {True, False}
    if kernel.startswith("_crm_loss"):
        assert {variant["constexprs"]["HAS_FIRST_ERROR"] for variant in variants} == {True, False}
        with_first_error = {variant["types"]["first_error_ptr"] for variant in variants if variant["constexprs"]["HAS_FIRST_ERROR"]}
        assert with_first_error == {"*i32", "*i64"}
        # Loss weights arrive in float64: a Python float is otherwise passed as float32, and the
        # float64 loss with w = 0.1 would be off by 1.5e-8 relatively (the interpreter hides it).
        assert {variant["types"][name] for variant in variants for name in ("w_survive", "w_wrong", "w_first_error")} == {"fp64"}
        # Labels of every accepted dtype reach the kernels as one byte each (one compiled variant).
        assert {variant["types"]["outcome_ptr"] for variant in variants} == {"*u8"}


def test_scan_kernels_cover_both_directions_and_dtypes(compiled):
    variants = _variants_of(compiled, "_linear_scan_kernel")
    seen = {(variant["types"]["values_ptr"], variant["types"]["offsets_ptr"], variant["constexprs"]["REVERSE"],
             variant["constexprs"]["FINAL"]) for variant in variants}  # fmt: skip
    assert seen == {(values, offsets, reverse, final) for values in ("*fp32", "*fp64") for offsets in ("*i32", "*i64")
                    for reverse in (True, False) for final in (True, False)}  # fmt: skip


def test_sizes_are_int64_whatever_the_batch(compiled):
    """Launches were also bound with every int argument at 1, 16, 17 and 2^31 + 17: step and
    trajectory counts stay int64 (a batch past 2^31 steps indexes correctly) and no value makes
    a variant of its own (no recompiles as batch shapes change)."""
    for variant in compiled["triton_variants"]:
        for name in SIZE_PARAMETERS:
            if name in variant["types"]:
                assert variant["types"][name] == "i64", (variant["kernel"], name)
        assert not set(variant["constexprs"]) & {*SIZE_PARAMETERS, "search_steps", "num_chunks"}, variant["kernel"]
        assert not set(variant["divisible_by_16"]) & {*SIZE_PARAMETERS, "search_steps", "num_chunks"}, variant["kernel"]


def test_float64_kernels_use_no_float32_approximations(compiled):
    """README "Accuracy on GPUs": float32 kernels use ex2.approx.f32 (tl.exp) and div.full.f32;
    float64 kernels must not fall back to them."""
    for variant in compiled["triton_variants"]:
        approximate = variant["approximate"]
        if gpu_resources.accumulation(variant) == "float64":
            assert not [name for name in approximate if name.endswith(".f32")], (variant["kernel"], approximate)
        assert variant["enable_fp_fusion"] is False, variant["kernel"]  # set explicitly (Triton 3.10 flips the default)


@pytest.mark.skipif(NVCC is None, reason="nvcc not found: CUDA sources not compiled")
def test_cuda_kernels_compile_without_spills_or_warnings(compiled):
    kernels = compiled["cuda_kernels"]
    assert {kernel["source"] for kernel in kernels} == {path.name for path in (ROOT / "csrc" / "cuda").glob("*.cu")}
    assert {kernel["arch"] for kernel in kernels} == set(gpu_resources.ARCHS)
    for kernel in kernels:
        assert "error" not in kernel, kernel.get("error")
        assert not kernel["warnings"], kernel["warnings"]
        assert kernel["spill_stores"] == kernel["spill_loads"] == kernel["stack"] == 0, kernel["kernel"]
        assert kernel["registers"] <= 128, kernel["kernel"]


def test_committed_resource_table_is_current(compiled):
    """benchmarks/results/gpu_resources.{json,md} (shown in the README) are what the compilers give
    now: regenerate with `python -m benchmarks.gpu_resources --write` after changing a kernel."""
    committed = json.loads((ROOT / "benchmarks" / "results" / "gpu_resources.json").read_text())
    assert committed["triton"] == compiled["triton"]
    assert committed["triton_version"] == compiled["triton_version"] and committed["ptxas"] == compiled["ptxas"]
    if NVCC is not None:
        assert committed["cuda"] == compiled["cuda"] and committed["nvcc"] == compiled["nvcc"]
    table = {key: committed[key] for key in ("triton_version", "ptxas", "nvcc", "triton", "cuda")}
    assert (ROOT / "benchmarks" / "results" / "gpu_resources.md").read_text() == gpu_resources.markdown(table)
    assert report.read_section(ROOT / "README.md", gpu_resources.README_SECTION) == gpu_resources.markdown(table).rstrip("\n")
