"""Every GPU kernel of the package compiled for real GPUs (sm_80, sm_90) on a machine without one,
with the resources ptxas gives each: registers, spills, stack, shared memory.

Triton. `TRITON_INTERPRET=1` runs the kernels' logic on CPU tensors but never invokes Triton's
compiler, so a kernel can pass every interpreted test and still fail to build for a GPU (crm_loss
did: issue 11). Here:

1. `record_launches` calls each op and scan through its public entry point on CPU tensors, over
   every input variant a user can pass (logits dtypes, int32/int64 offsets, every label dtype the
   validation accepts, with and without first_error, one chunk or several, forward and backward,
   16-byte-aligned inputs or not), with Triton's launch replaced by a recorder. The one stand-in:
   the device checks that send CUDA tensors to Triton are told that the CPU counts.
2. `variants` binds each launch for each target exactly as Triton's launcher does (its own binder:
   signature, constexprs, specialization attributes, options), and again with every int argument
   replaced by 1, 16, 17 and 2^31 + 17, the values Triton specializes on, so a variant that only a
   batch of another size would trigger is compiled too.
3. `compile_triton` compiles each distinct variant once per run (a fresh Triton cache, one process
   per core) with Triton's compiler and its bundled ptxas, and parses ptxas's own report.

CUDA. `compile_cuda` compiles csrc/cuda/*.cu with nvcc -Xptxas -v for the same targets.

`python -m benchmarks.gpu_resources` prints the tables; `--write` stores them in
benchmarks/results/gpu_resources.{json,md}, which tests/test_gpu_compile.py holds to a fresh run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import io
import json
import multiprocessing
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import report  # noqa: E402
from benchmarks.report import RESULTS, ROOT  # noqa: E402

ARCHS = (80, 90)
# Registers per thread allowed, per accumulation dtype. Every kernel runs 256-thread blocks (Triton:
# 8 warps; CUDA: kThreads); at most 128 registers keeps at least two blocks (16 warps) resident per
# SM of the 64k-register file. float64 fits the same budget (the cap is 255).
REGISTER_BUDGET = {"float32": 128, "float64": 128}
INT_PROBES = (1, 16, 17, 2**31 + 17)  # == 1, divisible by 16, neither, beyond int32


# ---- 1. record the launches the public functions make -----------------------------------------


@dataclass
class Launch:
    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    call: str  # the public call that launched it


@contextlib.contextmanager
def recording_launches():
    """Inside, `kernel[grid](...)` records instead of launching, and Triton serves CPU tensors."""
    assert os.environ.get("TRITON_INTERPRET") != "1", "the compiler needs real JITFunctions: unset TRITON_INTERPRET"
    import triton.runtime.jit as jit

    from crm_kernels import _backends, rl, segment

    launches: list[Launch] = []
    current = {"call": ""}
    saved = (jit.KernelInterface.__getitem__, _backends._triton_runs_on, _backends.scan_backend)
    jit.KernelInterface.__getitem__ = lambda kernel, grid: lambda *args, **kwargs: launches.append(
        Launch(kernel, args, kwargs, current["call"])
    )
    _backends._triton_runs_on = lambda device: True
    _backends.scan_backend = lambda *tensors: "triton"
    _backends.forget_availability()
    try:
        yield launches, current
    finally:
        jit.KernelInterface.__getitem__, _backends._triton_runs_on, _backends.scan_backend = saved
        _backends.forget_availability()


def _placed(tensor, aligned: bool):
    """`tensor`'s values at a 16-byte-aligned address, or one element past one (a sliced view)."""
    import torch

    if aligned:
        return tensor.clone()
    buffer = torch.empty(tensor.numel() + 1, dtype=tensor.dtype)
    buffer[1:] = tensor
    return buffer[1:]


def _drive_public_api(current):
    """Every public call that reaches a Triton kernel, over the input variants users can pass."""
    import torch

    import crm_kernels
    from crm_kernels import _validate, rl, segment

    generator = torch.Generator().manual_seed(0)
    # One chunk (single launch) and several (reduce, carries, rescan); empties and singles inside.
    shapes = {"one chunk": [0, 1, 5, 30, 4], "several chunks": [0, 1, 700, 2300, 3, 900]}
    for shape, lengths in shapes.items():
        lengths = torch.tensor(lengths)
        num_steps, batch = int(lengths.sum()), len(lengths)
        for index_dtype in _validate.OFFSET_DTYPES:
            cu_offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(index_dtype)
            for aligned in (True, False):
                cu_steps = _placed(cu_offsets, aligned)
                for dtype in _validate.LOGIT_DTYPES:
                    acc = torch.float64 if dtype == torch.float64 else torch.float32
                    logits = _placed(torch.randn(num_steps, generator=generator).to(dtype), aligned).requires_grad_()
                    current["call"] = f"log_survival {dtype} {index_dtype} aligned={aligned} {shape}"
                    log_survival = crm_kernels.log_survival(logits, cu_steps, backend="triton")
                    log_survival.backward(_placed(torch.ones(num_steps, dtype=acc), aligned))
                    for outcome_dtype in (torch.bool, *_validate.INTEGER_DTYPES):
                        outcome = _placed(((lengths == 0) | (torch.arange(batch) % 2 == 0)).to(outcome_dtype), aligned)
                        for first_error_dtype in (None, *_validate.OFFSET_DTYPES):
                            first_error = None
                            if first_error_dtype is not None:
                                known = torch.where(outcome.bool(), -1, lengths - 1)
                                first_error = _placed(known.to(first_error_dtype), aligned)
                            current["call"] = (f"crm_loss {dtype} {index_dtype} outcome {outcome_dtype} "
                                               f"first_error {first_error_dtype} aligned={aligned} {shape}")  # fmt: skip
                            losses = crm_kernels.crm_loss(logits, cu_steps, outcome, first_error, backend="triton",
                                                          reduction="none")  # fmt: skip
                            losses.backward(_placed(torch.ones(batch, dtype=acc), aligned))
                    # The SPEC 7 baselines; ORM without validation, as these shapes hold empty trajectories.
                    step_labels = _placed(torch.rand(num_steps, generator=generator).to(dtype), aligned)
                    current["call"] = f"prm_loss {dtype} aligned={aligned} {shape}"
                    crm_kernels.prm_loss(logits, cu_steps, step_labels, backend="triton").backward()
                    for outcome_dtype in (torch.bool, *_validate.INTEGER_DTYPES):
                        outcome = _placed((torch.arange(batch) % 2 == 0).to(outcome_dtype), aligned)
                        current["call"] = f"orm_loss {dtype} {index_dtype} outcome {outcome_dtype} aligned={aligned} {shape}"
                        crm_kernels.orm_loss(logits, cu_steps, outcome, backend="triton", validate=False).backward()
                    for first_error_dtype in _validate.OFFSET_DTYPES:
                        first_error = _placed(torch.where(lengths > 1, 1, -1).to(first_error_dtype), aligned)
                        current["call"] = f"pqm_loss {dtype} {index_dtype} first_error {first_error_dtype} aligned={aligned} {shape}"
                        crm_kernels.pqm_loss(logits, cu_steps, first_error, backend="triton").backward()
                for dtype in (torch.float32, torch.float64):
                    values = _placed(torch.randn(num_steps, generator=generator).to(dtype), aligned)
                    current["call"] = f"segment scans {dtype} {index_dtype} aligned={aligned} {shape}"
                    segment.segment_cumsum(values, cu_steps)
                    segment.segment_reverse_discounted_sum(values, cu_steps, 0.9)
                    rl.returns_to_go(values, cu_steps, 0.9)
        for dtype in (torch.float32, torch.float64):
            rows = torch.randn(batch, int(lengths.max()), generator=generator, dtype=dtype)
            mask = torch.arange(rows.shape[1])[None, :] < lengths[:, None]
            current["call"] = f"rl.gae {dtype} {shape}"
            rl.gae(rows, rows.clone(), mask, 0.99, 0.95)


def record_launches() -> list:
    with recording_launches() as (launches, current):
        _drive_public_api(current)
    return launches


def package_kernels() -> dict:
    """Every launchable Triton kernel defined in crm_kernels (named *_kernel), by qualified name."""
    import triton

    import crm_kernels._triton as package

    found = {}
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.jit.JITFunction) and name.endswith("_kernel"):
                if value.fn.__module__ == module.__name__:
                    found[f"{module.__name__}.{name}"] = value
    return found


def kernel_name(kernel) -> str:
    return f"{kernel.fn.__module__}.{kernel.fn.__name__}"


# ---- 2. bind each launch as Triton's launcher would, per target -------------------------------


@dataclass
class Variant:
    kernel: object
    arch: int
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    calls: list = field(default_factory=list)

    @property
    def key(self):
        return (kernel_name(self.kernel), self.arch, repr(sorted(self.signature.items())), repr(sorted(self.constexprs.items())),
                repr(sorted(self.attrs.items())), repr(sorted(self.options.items())))  # fmt: skip

    def describe(self) -> dict:
        """The variant in words: parameter types, constexpr values, parameters with 16-byte
        alignment (pointers) or divisibility (ints), options that are not defaults."""
        names = list(self.signature)
        constexprs = {names[path[0]]: _plain(value) for path, value in self.constexprs.items()}
        divisible = sorted(names[path[0]] for path, value in self.attrs.items() if value)
        return {
            "types": {name: kind for name, kind in self.signature.items() if kind != "constexpr"},
            "constexprs": constexprs,
            "divisible_by_16": divisible,
            "num_warps": self.options["num_warps"],
            "enable_fp_fusion": self.options["enable_fp_fusion"],
        }


def _plain(value):
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def _bind(kernel, args, kwargs, arch: int) -> Variant:
    """Triton's own JITFunction.run path up to the compile call (triton 3.9: binder, _pack_args)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    kwargs["fpsan_homomorphic_casts"] = knobs.compilation.fpsan_homomorphic_casts
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return Variant(kernel, arch, signature, constexprs, attrs, dict(options.__dict__))


def variants(launches) -> list:
    """The distinct compiled variants the launches need on each target, including those the same
    launches would need with any int argument at each value class Triton specializes on."""
    found: dict = {}
    for launch in launches:
        int_positions = [i for i, arg in enumerate(launch.args) if isinstance(arg, int) and not isinstance(arg, bool)]
        probes = [launch.args] + [
            launch.args[:i] + (value,) + launch.args[i + 1 :] for i in int_positions for value in INT_PROBES
        ]
        for arch in ARCHS:
            for args in probes:
                variant = _bind(launch.kernel, args, launch.kwargs, arch)
                found.setdefault(variant.key, variant).calls.append(launch.call)
    return list(found.values())


# ---- 3. compile, read ptxas's report ----------------------------------------------------------

_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_FUNCTION = re.compile(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?")


def parse_ptxas(log: str) -> dict:
    """{function: {registers, stack, spill_stores, spill_loads}} from `ptxas -v` output."""
    report: dict = {}
    function = None
    for line in log.splitlines():
        if match := _PTXAS_FUNCTION.search(line):
            function = match.group(1)
            report.setdefault(function, {})
        if function is None:
            continue
        if match := _PTXAS_USED.search(line):
            report[function]["registers"] = int(match.group(1))
        if match := _PTXAS_FRAME.search(line):
            stack, stores, loads = map(int, match.groups())
            report[function].update(stack=stack, spill_stores=stores, spill_loads=loads)
    return report


# PTX instructions whose accuracy differs from the interpreter's numpy arithmetic (README
# "Accuracy on GPUs"): approximate transcendentals and divisions, and flush-to-zero forms.
_PTX_APPROXIMATE = re.compile(r"\b((?:ex2|lg2|rcp|rsqrt|sqrt|sin|cos|tanh|div)\.(?:approx|full)[.\w]*)")


def approximate_instructions(ptx: str) -> dict:
    found: dict = {}
    for name in _PTX_APPROXIMATE.findall(ptx):
        found[name] = found.get(name, 0) + 1
    return dict(sorted(found.items()))


_VARIANTS: list = []  # filled before the workers fork, read by index in them


def _compile_one(index: int) -> dict:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    variant = _VARIANTS[index]
    result = {"kernel": kernel_name(variant.kernel), "arch": variant.arch, **variant.describe()}
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed by Triton's make_cubin
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(variant.kernel, variant.signature, variant.constexprs, variant.attrs),
                target=GPUTarget("cuda", variant.arch, 32),
                options=variant.options,
            )
    except Exception as error:  # reported per variant; the caller fails on any
        result["error"] = f"{type(error).__name__}: {error}"[:4000]
        return result
    report = parse_ptxas(log.getvalue()).get(compiled.metadata.name)
    if report is None or "registers" not in report:
        result["error"] = f"no ptxas report for {compiled.metadata.name}: {log.getvalue()[:2000]}"
        return result
    result.update(report, shared=compiled.metadata.shared, approximate=approximate_instructions(compiled.asm["ptx"]))
    return result


def compile_triton(found, workers: int | None = None) -> list:
    """Compiles every variant, a fresh cache per run so that ptxas really runs for each."""
    global _VARIANTS
    _VARIANTS = found
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        context = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers or os.cpu_count(), mp_context=context) as pool:
            results = list(pool.map(_compile_one, range(len(found)), chunksize=4))
    for result, variant in zip(results, found):
        result["calls"] = len(variant.calls)
        result["example_call"] = variant.calls[0]
    return results


def cuda_include_flags() -> list:
    """The csrc headers and torch's, as setup.py's CUDAExtension passes them to nvcc."""
    import torch.utils.cpp_extension

    own = [f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'csrc' / 'cuda'}"]
    return own + [f"-I{path}" for path in torch.utils.cpp_extension.include_paths()]


def compile_cuda(nvcc: str | None = None) -> list:
    """Per-kernel resources of csrc/cuda/*.cu from nvcc -Xptxas -v, for each target, with the
    flags setup.py builds them with."""
    nvcc = nvcc or shutil.which("nvcc")
    includes = cuda_include_flags()
    results = []
    with tempfile.TemporaryDirectory() as out:
        for source in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            for arch in ARCHS:
                command = [nvcc, "-cubin", str(source), "-o", f"{out}/kernel.cubin", "-O3", "-std=c++17",
                           f"-arch=sm_{arch}", "-Xptxas", "-v", *includes]  # fmt: skip
                run = subprocess.run(command, capture_output=True, text=True)
                if run.returncode != 0:
                    results.append({"source": source.name, "arch": arch, "error": run.stderr[-4000:]})
                    continue
                reports = parse_ptxas(run.stderr)
                names = _demangle(list(reports))
                warnings = [line for line in run.stderr.splitlines() if "warning" in line.lower()]
                for mangled, report in reports.items():
                    results.append({"source": source.name, "arch": arch, "kernel": names[mangled], "warnings": warnings,
                                    **report})  # fmt: skip
    return results


def _demangle(names: list) -> dict:
    if not names or shutil.which("c++filt") is None:
        return {name: name for name in names}
    output = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, output))


def short_kernel_name(demangled: str) -> str:
    """`void crm::cuda::(anonymous namespace)::k<true, float, long, float>(...)` -> `k<true, float, long, float>`."""
    name = demangled.removeprefix("void ").replace("(anonymous namespace)::", "").replace("crm::cuda::", "")
    return name.split("(", 1)[0]


# ---- tables -----------------------------------------------------------------------------------


def accumulation(result: dict) -> str:
    acc = result.get("constexprs", {}).get("ACC")
    if acc is not None:
        return "float64" if "fp64" in str(acc) else "float32"
    return "float64" if any("fp64" in kind for kind in result.get("types", {}).values()) else "float32"


def triton_summary(results: list) -> list:
    """One row per (kernel, target, accumulation dtype): variants and the worst resources."""
    rows: dict = {}
    for result in results:
        key = (result["kernel"].rsplit(".", 1)[-1], f"sm_{result['arch']}", accumulation(result))
        row = rows.setdefault(key, {"kernel": key[0], "target": key[1], "accumulate": key[2], "variants": 0,
                                    "max_registers": 0, "spill_bytes": 0, "max_stack": 0, "max_shared": 0})  # fmt: skip
        row["variants"] += 1
        row["max_registers"] = max(row["max_registers"], result.get("registers", 0))
        row["spill_bytes"] += result.get("spill_stores", 0) + result.get("spill_loads", 0)
        row["max_stack"] = max(row["max_stack"], result.get("stack", 0))
        row["max_shared"] = max(row["max_shared"], result.get("shared", 0))
    return [rows[key] for key in sorted(rows)]


def cuda_summary(results: list) -> list:
    """One row per (kernel template, target, accumulation dtype): instantiations and the worst."""
    rows: dict = {}
    for result in results:
        if "error" in result:
            continue
        name = short_kernel_name(result["kernel"])
        key = (name.split("<", 1)[0], f"sm_{result['arch']}", "float64" if "double" in name else "float32")
        row = rows.setdefault(key, {"kernel": key[0], "target": key[1], "accumulate": key[2], "variants": 0,
                                    "max_registers": 0, "spill_bytes": 0, "max_stack": 0})  # fmt: skip
        row["variants"] += 1
        row["max_registers"] = max(row["max_registers"], result.get("registers", 0))
        row["spill_bytes"] += result.get("spill_stores", 0) + result.get("spill_loads", 0)
        row["max_stack"] = max(row["max_stack"], result.get("stack", 0))
    return [rows[key] for key in sorted(rows)]


def markdown(summary: dict) -> str:
    ptxas = ", ".join(f"{version} for {target}" for target, version in summary["ptxas"].items())
    lines = [f"Triton {summary['triton_version']} (its ptxas {ptxas}); nvcc {summary['nvcc']}. Compiled, never run.", ""]
    lines += ["| Triton kernel | target | accumulate | variants | max registers | spill bytes | max stack | max shared B |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in summary["triton"]:
        lines.append(f"| `{row['kernel']}` | {row['target']} | {row['accumulate']} | {row['variants']} | "
                     f"{row['max_registers']} | {row['spill_bytes']} | {row['max_stack']} | {row['max_shared']} |")  # fmt: skip
    lines += ["", "| CUDA kernel | target | accumulate | instantiations | max registers | spill bytes | max stack |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for row in summary["cuda"]:
        lines.append(f"| `{row['kernel']}` | {row['target']} | {row['accumulate']} | {row['variants']} | "
                     f"{row['max_registers']} | {row['spill_bytes']} | {row['max_stack']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


README_SECTION = "gpu-resources"  # the README's <!-- gpu-resources:begin/end --> markers


def _tool_versions(nvcc: str | None) -> dict:
    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    def version(path):
        text = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        match = re.search(r"release (\S+),", text)
        return match.group(1) if match else "?"

    ptxas = {f"sm_{arch}": version(get_ptxas(arch).path) for arch in ARCHS}
    return {"triton_version": triton.__version__, "ptxas": ptxas, "nvcc": version(nvcc) if nvcc else None}


def measure(with_cuda: bool = True, workers: int | None = None) -> dict:
    launches = record_launches()
    found = variants(launches)
    results = compile_triton(found, workers)
    nvcc = shutil.which("nvcc") if with_cuda else None
    cuda = compile_cuda(nvcc) if nvcc else []
    launched = sorted({kernel_name(launch.kernel) for launch in launches})
    return {
        **_tool_versions(nvcc),
        "launched_kernels": launched,
        "package_kernels": sorted(package_kernels()),
        "launches_recorded": len(launches),
        "triton_variants": results,
        "cuda_kernels": cuda,
        "triton": triton_summary(results),
        "cuda": cuda_summary(cuda),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="store the tables under benchmarks/results/")
    parser.add_argument("--json", type=Path, help="write the full results (every variant) to this file")
    parser.add_argument("--no-cuda", action="store_true", help="skip the CUDA sources")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    summary = measure(with_cuda=not args.no_cuda, workers=args.workers)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, default=str))
    table = {key: summary[key] for key in ("triton_version", "ptxas", "nvcc", "triton", "cuda")}
    print(markdown(table))
    if args.write:
        (RESULTS / "gpu_resources.json").write_text(json.dumps(table, indent=1) + "\n")
        (RESULTS / "gpu_resources.md").write_text(markdown(table))
        report.replace_section(ROOT / "README.md", README_SECTION, markdown(table))
    errors = [r for r in summary["triton_variants"] + summary["cuda_kernels"] if "error" in r]
    for error in errors[:5]:
        print("ERROR", error.get("kernel", error.get("source")), error["error"][:2000], file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
