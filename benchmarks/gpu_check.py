"""`make gpu-check`: everything this project can only verify on a GPU, in one command, one JSON.

On a machine with a CUDA GPU and a CUDA build of torch (PyPI's torch==2.13.0 for Linux x86-64,
which requirements-dev.txt pins, is one), in order:

1. build the extension with its CUDA kernels (setup.py; sm_80 and sm_90 unless TORCH_CUDA_ARCH_LIST
   says otherwise) and check that both GPU backends, "cuda" and "triton", are available;
2. `pytest -m gpu tests`: both backends against float64 math in every dtype, gradcheck,
   determinism, CUDA-graph capture, torch.compile, the Triton RL scans;
3. compute-sanitizer's memcheck over the CUDA-backend tests (torch's caching allocator off, so
   an access past a tensor's end is past an allocation's end);
4. `make bench BENCH_ARGS="--full --save"` (benchmarks.run at full sizes, then benchmarks.rl).

Each step's command, exit status, time and output tail go to
benchmarks/results/gpu_check_<device>.json, with the device and versions; the run goes on after a
failing step so that one run reports everything, and exits non-zero if any step failed.
`--dry-run` prints the plan without running it (CI checks that plan on a machine without a GPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class Step:
    name: str
    command: list
    env: dict = field(default_factory=dict)
    timeout_s: int = 3600


def plan(python: str = sys.executable, make: str = "make") -> list:
    """The steps, as commands run from the repository root."""
    cuda_tests = "tests/test_gpu.py"
    return [
        Step("build", [python, "setup.py", "--quiet", "build_ext", "--inplace"]),
        Step("backends", [python, "-c", "import crm_kernels, sys; available = crm_kernels.available_backends('cuda'); "
                                        "print(available); sys.exit(0 if {'cuda', 'triton'} <= set(available) else 1)"]),  # fmt: skip
        Step("pytest_gpu", [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]),
        Step("memcheck_cuda", ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "99",
                               python, "-m", "pytest", "-q", "-m", "gpu", "-k", "cuda", "-p", "no:cacheprovider",
                               cuda_tests],  # fmt: skip
             env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}, timeout_s=7200),
        Step("bench_full", [make, "bench", "BENCH_ARGS=--full --save", f"PY={python}"], timeout_s=7200),
    ]


def missing_requirements() -> list:
    """What this machine lacks for the check, in words (empty when it can run)."""
    import torch

    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is not a CUDA build (pip install torch==2.13.0 from PyPI on Linux is)")
    elif not torch.cuda.is_available():
        missing.append("no CUDA device is visible to torch")
    if shutil.which("nvcc") is None:
        missing.append("nvcc is not on PATH (the CUDA kernels are built with it)")
    if shutil.which("compute-sanitizer") is None:
        missing.append("compute-sanitizer is not on PATH (it ships with the CUDA toolkit)")
    return missing


def run_step(step: Step) -> dict:
    started = time.perf_counter()
    env = {**os.environ, **step.env}
    try:
        done = subprocess.run(step.command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=step.timeout_s)
        status, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as timeout:
        status, output = "timeout", f"{timeout}"
    print(output[-3000:], flush=True)
    return {"step": step.name, "command": step.command, "env": step.env, "exit_status": status,
            "seconds": round(time.perf_counter() - started, 1), "output_tail": output[-20000:]}  # fmt: skip


def device_report() -> dict:
    import torch

    report = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        report.update(device=properties.name, capability=f"sm_{properties.major}{properties.minor}",
                      memory_GiB=round(properties.total_memory / 2**30, 1))  # fmt: skip
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the steps and what is missing, run nothing")
    args = parser.parse_args(argv)
    steps = plan()
    missing = missing_requirements()
    if args.dry_run:
        print(json.dumps({"steps": [vars(step) for step in steps], "missing": missing}, indent=1))
        return 0
    if missing:
        print("make gpu-check cannot run here:\n  - " + "\n  - ".join(missing), file=sys.stderr)
        return 2
    results = [run_step(step) for step in steps]
    report = {**device_report(), "steps": results, "passed": all(r["exit_status"] == 0 for r in results)}
    out = RESULTS / f"gpu_check_{report['device'].replace(' ', '_')}.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"\nwrote {out}: " + ", ".join(f"{r['step']} {'ok' if r['exit_status'] == 0 else 'FAILED'}" for r in results))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
