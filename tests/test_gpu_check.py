"""`make gpu-check` (benchmarks/gpu_check.py) as far as it can be checked without a GPU: the
plan's commands select real tests and make recipes, the backend probe runs, and the check refuses
clearly where it cannot run. What needs the GPU itself (the build with CUDA, the runs, memcheck,
the full benchmark) is not exercised here."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def _step(name):
    (step,) = [step for step in gpu_check.plan() if step.name == name]
    return step


def _collect(arguments):
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *arguments],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_plan_runs_every_gpu_test():
    arguments = _step("pytest_gpu").command[3:]
    collected = _collect(arguments[1:])  # without "-q", already given
    assert len(collected) >= 30
    assert any("test_gpu_gradcheck_float64" in test for test in collected)
    assert any("test_gpu_deterministic_and_graph_capture" in test for test in collected)


def test_memcheck_runs_the_cuda_backend_tests_only_without_the_caching_allocator():
    step = _step("memcheck_cuda")
    assert step.command[:5] == ["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "99"]
    assert step.env == {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    collected = _collect(step.command[step.command.index("pytest") + 2 :])
    assert collected and all("cuda" in test.split("[", 1)[1] for test in collected)


def test_bench_step_runs_the_full_benchmark_and_the_rl_one():
    command = _step("bench_full").command
    dry = subprocess.run([*command, "-n"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "benchmarks.run --full --save" in dry.stdout and "benchmarks.rl --save" in dry.stdout


def test_make_gpu_check_target_exists():
    dry = subprocess.run(["make", "-n", "gpu-check"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "benchmarks.gpu_check" in dry.stdout


def test_backend_probe_runs_and_fails_without_the_cuda_backend():
    done = subprocess.run(_step("backends").command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == (0 if torch.cuda.is_available() else 1), done.stderr
    assert done.stdout.startswith("[")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check can run for real")
def test_refuses_clearly_without_a_gpu(capsys):
    assert gpu_check.main([]) == 2
    message = capsys.readouterr().err
    assert "cannot run here" in message and ("CUDA build" in message or "no CUDA device" in message)
    dry = json.loads(subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--dry-run"], cwd=ROOT,
                                    capture_output=True, text=True).stdout)  # fmt: skip
    assert [step["name"] for step in dry["steps"]] == ["build", "backends", "pytest_gpu", "memcheck_cuda", "bench_full"]
    assert dry["missing"]
