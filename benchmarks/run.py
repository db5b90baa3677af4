"""The main benchmark: crm_kernels against the eager PyTorch ways of writing the same loss.

    python -m benchmarks.run            # quick sizes, a few minutes on 2 CPU cores; to bench_out/
    python -m benchmarks.run --full     # the full workloads
    python -m benchmarks.run --save     # to benchmarks/results/ and the README's table

Every row is timed in this one process and run, so ratios between rows are fair. For each row:
median and p10-p90 over repetitions after warm-up (CUDA events on GPUs), peak extra memory, and the
floor: max(bytes that must move / bandwidth measured in this run, one launch), with time / floor,
and time over torch's own softplus (+ sigmoid) on the same steps, the transcendental work any
implementation does (what bounds the ops on CPUs). A ratio is marked "?" when its row or its
baseline spread more than benchmarks.report.NOISY_SPREAD (p90 / p10): the host was too busy for it.
Also measured: `import crm_kernels` over `import torch`, in fresh interpreters.
Results go to bench_out/<device>.json (+ .md table, + .png plot of time vs batch size); with --save
to benchmarks/results/ and the README.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import crm_kernels
from benchmarks import report
from crm_kernels import reference

LOOP_SUBSAMPLE = 512  # the per-trajectory loop runs on this many trajectories, scaled to the batch


# ---- workloads ---------------------------------------------------------------------------------


@dataclass
class Workload:
    name: str
    batch: int
    mean_steps: float
    long_count: int = 0  # this many trajectories are made long_factor times longer
    long_factor: int = 100


def workloads(full: bool) -> list[Workload]:
    return [
        Workload("rl_rollouts", 65536, 16),
        Workload("per_token", 8192 if full else 512, 2048),
        Workload("small", 64, 8),
        Workload("skewed", 65536 if full else 8192, 16, long_count=64 if full else 8),
    ]


SWEEP_BATCHES = [64, 512, 4096, 32768, 65536]


@dataclass
class Inputs:
    logits: torch.Tensor
    cu_steps: torch.Tensor
    outcome: torch.Tensor
    first_error: torch.Tensor
    padded: torch.Tensor = field(repr=False, default=None)
    mask: torch.Tensor = field(repr=False, default=None)
    step_labels: torch.Tensor = field(repr=False, default=None)

    @property
    def num_steps(self):
        return self.logits.numel()

    @property
    def batch(self):
        return self.outcome.numel()

    def head(self, count):
        """The first `count` trajectories, for the loop baseline."""
        end = int(self.cu_steps[count])
        return Inputs(self.logits[:end], self.cu_steps[: count + 1], self.outcome[:count], self.first_error[:count])


def make_inputs(workload: Workload, device, dtype=torch.float32, seed=0, min_length=0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.poisson(torch.full((workload.batch,), float(workload.mean_steps)), generator=generator).long()
    lengths = lengths.clamp(min=min_length)
    if workload.long_count:
        lengths[torch.randperm(workload.batch, generator=generator)[: workload.long_count]] *= workload.long_factor
    cu_steps = torch.zeros(workload.batch + 1, dtype=torch.int32)
    cu_steps[1:] = lengths.cumsum(0)
    num_steps = int(cu_steps[-1])
    logits = torch.randn(num_steps, generator=generator).to(dtype)
    outcome = (torch.rand(workload.batch, generator=generator) < 0.5) | (lengths == 0)
    known = ~outcome & (torch.rand(workload.batch, generator=generator) < 0.5)
    first_error = torch.where(known, (torch.rand(workload.batch, generator=generator) * lengths).long(), -1)
    inputs = Inputs(logits.to(device), cu_steps.to(device), outcome.to(device), first_error.to(device))
    inputs.step_labels = torch.rand(num_steps, generator=generator).to(device)  # PRM's soft labels
    # Padded baselines get their [B, max_len] layout for free: that is how such code holds its data.
    inputs.padded, inputs.mask = reference.pad(inputs.logits, inputs.cu_steps)
    return inputs


# ---- implementations ---------------------------------------------------------------------------
# Each returns a callable that runs the op once (forward, or forward + backward) on prepared inputs.


def _run(forward, leaf: torch.Tensor, backward: bool):
    def call():
        if backward:
            leaf.grad = None
            out = forward(leaf)
            out.backward(torch.ones_like(out) if out.dim() else None)
        else:
            with torch.no_grad():
                forward(leaf)

    return call


def _kernels_only(op: str, inputs: Inputs, backend: str, backward: bool):
    """The backend's kernel functions called directly: no autograd, validation, reduction or
    custom-op dispatch. The gap to the crm_kernels row is what the host adds per call."""
    kernels = crm_kernels._backends.kernels(backend)
    x, cu, outcome, first_error = inputs.logits, inputs.cu_steps, inputs.outcome, inputs.first_error
    weights = (1.0, 1.0, 1.0)

    def call():
        if op == "crm_loss":
            losses, log_survival_total = kernels.crm_loss_forward(x, cu, outcome, first_error, *weights)
            if backward:
                kernels.crm_loss_backward(torch.ones_like(losses), x, cu, outcome, first_error, log_survival_total,
                                          *weights)  # fmt: skip
        else:
            log_survival = kernels.log_survival_forward(x, cu)
            if backward:
                kernels.log_survival_backward(torch.ones_like(log_survival), x, cu)

    return call


def implementations(op: str, inputs: Inputs, backends: list[str], compiled: dict) -> dict:
    """name -> (make(backward) -> callable, scale factor of its time)."""
    x, cu, outcome, first_error = inputs.logits, inputs.cu_steps, inputs.outcome, inputs.first_error
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    impls = {}
    for backend in backends:
        if op == "crm_loss":
            fn = lambda t, b=backend: crm_kernels.crm_loss(t, cu, outcome, first_error, backend=b)  # noqa: E731
        else:
            fn = lambda t, b=backend: crm_kernels.log_survival(t, cu, backend=b)  # noqa: E731
        impls[f"crm_kernels[{backend}]"] = (lambda bw, fn=fn: _run(fn, leaf(x), bw), 1.0)
    if backends:
        best = backends[0]
        if op == "crm_loss":
            fast = lambda t: crm_kernels.crm_loss(t, cu, outcome, first_error, validate=False, backend=best)  # noqa: E731
        else:
            fast = lambda t: crm_kernels.log_survival(t, cu, validate=False, backend=best)  # noqa: E731
        impls[f"crm_kernels[{best}] validate=False"] = (lambda bw: _run(fast, leaf(x), bw), 1.0)
        impls[f"crm_kernels[{best}] kernels only"] = (lambda bw: _kernels_only(op, inputs, best, bw), 1.0)

    mask = inputs.mask
    if op == "crm_loss":
        padded = lambda t: reference.crm_loss_from_padded(t, mask, outcome, first_error)  # noqa: E731
        compiled_fn = compiled.setdefault(op, torch.compile(reference.crm_loss_from_padded))
        padded_compiled = lambda t: compiled_fn(t, mask, outcome, first_error)  # noqa: E731
        ragged = lambda t: reference.crm_loss_ragged(t, cu, outcome, first_error)  # noqa: E731
        impls["eager ragged (index_add)"] = (lambda bw: _run(ragged, leaf(x), bw), 1.0)
    else:
        padded = lambda t: reference.log_survival_from_padded(t, mask)  # noqa: E731
        compiled_fn = compiled.setdefault(op, torch.compile(reference.log_survival_from_padded))
        padded_compiled = lambda t: compiled_fn(t, mask)  # noqa: E731
    impls["eager padded"] = (lambda bw: _run(padded, leaf(inputs.padded), bw), 1.0)
    impls["torch.compile(eager padded)"] = (lambda bw: _run(padded_compiled, leaf(inputs.padded), bw), 1.0)

    count = min(LOOP_SUBSAMPLE, inputs.batch)
    head = inputs.head(count)
    if op == "crm_loss":
        loop = lambda t: reference.crm_loss_loop(t, head.cu_steps, head.outcome, head.first_error)  # noqa: E731
    else:
        loop = lambda t: reference.log_survival_loop(t, head.cu_steps)  # noqa: E731
    scale = inputs.batch / count
    label = "eager loop" if scale == 1 else f"eager loop ({count} trajectories, x{scale:g})"
    impls[label] = (lambda bw: _run(loop, leaf(head.logits), bw), scale)
    return impls


# The baseline objectives of SPEC 7, against their eager references and torch.compile of them.
OBJECTIVES = ("prm_loss", "orm_loss", "pqm_loss")
OBJECTIVE_WORKLOADS = ("rl_rollouts", "per_token")


def objective_implementations(op: str, inputs: Inputs, backends: list[str], compiled: dict) -> dict:
    """name -> (make(backward) -> callable, 1.0) for prm_loss, orm_loss and pqm_loss. The eager
    baselines are crm_kernels.reference's: elementwise for PRM, a gather for ORM, padded for PQM."""
    x, cu, labels = inputs.logits, inputs.cu_steps, inputs.step_labels
    leaf = lambda t: t.detach().clone().requires_grad_()  # noqa: E731
    public = {"prm_loss": lambda t, b: crm_kernels.prm_loss(t, cu, labels, backend=b),
              "orm_loss": lambda t, b: crm_kernels.orm_loss(t, cu, inputs.outcome, backend=b),
              "pqm_loss": lambda t, b: crm_kernels.pqm_loss(t, cu, inputs.first_error, backend=b)}[op]  # fmt: skip
    impls = {f"crm_kernels[{b}]": (lambda bw, b=b: _run(lambda t: public(t, b), leaf(x), bw), 1.0) for b in backends}
    if op == "pqm_loss":
        eager = lambda t: reference.pqm_loss_from_padded(t, inputs.mask, inputs.first_error)  # noqa: E731
        compiled_fn = compiled.setdefault(op, torch.compile(reference.pqm_loss_from_padded))
        compiled_call = lambda t: compiled_fn(t, inputs.mask, inputs.first_error)  # noqa: E731
        impls["eager padded"] = (lambda bw: _run(eager, leaf(inputs.padded), bw), 1.0)
        impls["torch.compile(eager padded)"] = (lambda bw: _run(compiled_call, leaf(inputs.padded), bw), 1.0)
        return impls
    function = reference.prm_loss_reference if op == "prm_loss" else reference.orm_loss_reference
    arguments = (labels,) if op == "prm_loss" else (cu, inputs.outcome)
    compiled_fn = compiled.setdefault(op, torch.compile(function))
    impls["eager"] = (lambda bw: _run(lambda t: function(t, *arguments), leaf(x), bw), 1.0)
    impls["torch.compile(eager)"] = (lambda bw: _run(lambda t: compiled_fn(t, *arguments), leaf(x), bw), 1.0)
    return impls


# ---- measuring ---------------------------------------------------------------------------------


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_call(call, device, min_seconds=0.25, min_reps=5, max_reps=100) -> list[float]:
    """Milliseconds per call, after warm-up (which also compiles)."""
    for _ in range(2):
        call()
    synchronize(device)
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_seconds):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            call()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def _proc_status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


M_MMAP_THRESHOLD = -3
GLIBC_DEFAULT_MAX_MMAP_THRESHOLD = 32 << 20


def peak_extra_bytes(call, device) -> int | None:
    """Peak memory one call adds over what was live before it. On GPUs: the caching allocator's
    peak. On the CPU: the resident-set high-water mark (reset through /proc/self/clear_refs), with
    glibc told, for this call only, to serve buffers over 64 KiB by mmap so that freed ones leave
    the resident set and every call's buffers are counted, reused or not."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        synchronize(device)
        return torch.cuda.max_memory_allocated() - before
    libc = _glibc()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    if libc is None:
        return None
    libc.mallopt(M_MMAP_THRESHOLD, 64 << 10)
    libc.malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _proc_status("VmRSS")
        call()
        return max(_proc_status("VmHWM") - before, 0)
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, GLIBC_DEFAULT_MAX_MMAP_THRESHOLD)


def measure_bandwidth(device) -> float:
    """Bytes per second of a large copy (bytes read + bytes written)."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 26)
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    times = time_call(lambda: dst.copy_(src), device, min_reps=10, max_reps=20)
    return 2 * src.numel() * src.element_size() / (statistics.median(times) / 1e3)


def measure_launch(device) -> float:
    """Milliseconds of one minimal op call on this device (the fixed cost any op pays)."""
    tiny = torch.ones(1, device=device)
    return statistics.median(time_call(lambda: tiny.add_(0), device, min_reps=200, max_reps=200))


def transcendental_reference_ms(inputs: Inputs, backward: bool, device) -> float:
    """Time of the elementwise transcendentals any implementation must evaluate, done by torch's own
    vectorised kernels over the packed steps: softplus per step (forward) and sigmoid per step
    (backward). On CPUs this, not memory, is what bounds the ops."""
    x = inputs.logits.float()
    if backward:
        call = lambda: (torch.nn.functional.softplus(x), torch.sigmoid(x))  # noqa: E731
    else:
        call = lambda: torch.nn.functional.softplus(x)  # noqa: E731
    return statistics.median(time_call(call, device))


def bytes_that_must_move(op: str, inputs: Inputs, backward: bool) -> int:
    """Inputs read once, outputs written once (padding and intermediates excluded)."""
    logits = inputs.logits.numel() * inputs.logits.element_size()
    offsets = inputs.cu_steps.numel() * inputs.cu_steps.element_size()
    if op in ("crm_loss", *OBJECTIVES):
        read = {"crm_loss": (inputs.outcome, inputs.first_error), "prm_loss": (inputs.step_labels,),
                "orm_loss": (inputs.outcome,), "pqm_loss": (inputs.first_error,)}[op]  # fmt: skip
        labels = sum(t.numel() * t.element_size() for t in read)
        return logits + offsets + labels + 4 + (logits if backward else 0)  # + grad_logits
    scan = inputs.num_steps * 4
    return logits + offsets + scan + ((scan + logits) if backward else 0)  # + upstream grad, grad_logits


# ---- the run -----------------------------------------------------------------------------------


def device_description(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__, "crm_kernels": crm_kernels.__version__}
    try:
        import triton

        found["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        found["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                         cwd=Path(__file__).parent, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        pass
    return found


def kernel_backends(device) -> list[str]:
    # The Triton interpreter on CPU tensors is a correctness tool, not something to time.
    return [b for b in crm_kernels.available_backends(device) if b != "torch" and not (b == "triton" and device.type == "cpu")]


def bench_rows(device, full: bool, log) -> list[dict]:
    rows, compiled = [], {}
    bandwidth, launch_ms = measure_bandwidth(device), measure_launch(device)
    log(f"bandwidth {bandwidth / 1e9:.1f} GB/s (copy, read + write), one launch {launch_ms * 1e3:.1f} us")
    runs = [(w, make_inputs(w, device), ("crm_loss", "log_survival")) for w in workloads(full)]
    # ORM reads each trajectory's last step: its batches have none empty.
    runs += [(w, make_inputs(w, device, min_length=1), OBJECTIVES) for w in workloads(full) if w.name in OBJECTIVE_WORKLOADS]
    for workload, inputs, ops in runs:
        for op in ops:
            maker = objective_implementations if op in OBJECTIVES else implementations
            for backward in (False, True):
                mode = "fwd+bwd" if backward else "fwd"
                moved = bytes_that_must_move(op, inputs, backward)
                floor_ms = max(moved / bandwidth * 1e3, launch_ms)
                transcendentals_ms = transcendental_reference_ms(inputs, backward, device)
                for name, (make, scale) in maker(op, inputs, kernel_backends(device), compiled).items():
                    call = make(backward)
                    times = [t * scale for t in time_call(call, device)]
                    median = statistics.median(times)
                    quantiles = statistics.quantiles(times, n=10) if len(times) > 1 else [median] * 9
                    peak = peak_extra_bytes(call, device) if scale == 1 else None
                    rows.append(dict(
                        workload=workload.name, batch=inputs.batch, steps=inputs.num_steps, op=op, mode=mode,
                        impl=name, median_ms=median, p10_ms=quantiles[0], p90_ms=quantiles[-1], reps=len(times),
                        noisy=report.is_noisy(times),
                        peak_extra_mb=None if peak is None else peak / 2**20, bytes_moved=moved,
                        achieved_gb_s=moved / (median / 1e3) / 1e9, floor_ms=floor_ms, over_floor=median / floor_ms,
                        transcendentals_ms=transcendentals_ms, over_transcendentals=median / transcendentals_ms,
                    ))  # fmt: skip
                    log(f"{workload.name:12s} {op:12s} {mode:7s} {name:42s} {median:10.3f} ms")
    add_ratios(rows)
    return rows, dict(bandwidth_gb_s=bandwidth / 1e9, launch_us=launch_ms * 1e3)


def add_ratios(rows: list[dict]) -> None:
    """Each row's speed-up over the padded eager and compiled baselines of its workload, op and
    mode, and whether both timings were quiet enough to trust the ratio."""
    for row in rows:
        same = [r for r in rows if (r["workload"], r["op"], r["mode"]) == (row["workload"], row["op"], row["mode"])]
        base = {r["impl"]: r for r in same}
        # The objectives' elementwise baselines have no padding: "eager" and its compile.
        for key, baseline in (("eager_padded", "eager padded"), ("compiled", "torch.compile(eager padded)")):
            baseline = baseline if baseline in base else baseline.replace(" padded", "")
            row[f"speedup_vs_{key}"] = base[baseline]["median_ms"] / row["median_ms"]
            row[f"speedup_vs_{key}_trusted"] = not (row["noisy"] or base[baseline]["noisy"])


def sweep_rows(device, log) -> list[dict]:
    """crm_loss forward + backward against batch size (mean 16 steps), for the plot."""
    rows, compiled = [], {}
    for batch in SWEEP_BATCHES:
        inputs = make_inputs(Workload("sweep", batch, 16), device)
        for name, (make, scale) in implementations("crm_loss", inputs, kernel_backends(device), compiled).items():
            if "validate=False" in name or "kernels only" in name or "loop" in name:
                continue
            median = statistics.median(time_call(make(True), device)) * scale
            rows.append(dict(batch=batch, steps=inputs.num_steps, impl=name, median_ms=median))
            log(f"sweep B={batch:6d} {name:42s} {median:10.3f} ms")
    return rows


def ratio(row: dict, key: str) -> str:
    mark = "" if row[f"{key}_trusted"] else "?"
    return f"{row[key]:.1f}x{mark}"


def markdown_table(result: dict) -> str:
    imports = result["import_s"]
    lines = [
        f"Device: {result['device_name']}; torch {result['versions']['torch']}; {result['date']}; "
        f"copy bandwidth {result['bandwidth_gb_s']:.1f} GB/s, one launch {result['launch_us']:.1f} us; "
        f"`import crm_kernels` {imports['crm_kernels_over_torch']:.3f} s over `import torch` ({imports['torch']:.2f} s).",
        "",
        "| workload | op | mode | implementation | median ms (p10-p90) | vs eager padded | vs compiled | peak extra MB | GB/s | floor ms | x floor | x transcendentals |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["mode"] != "fwd+bwd":
            continue
        peak = "-" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        lines.append(
            f"| {r['workload']} (B={r['batch']}, N={r['steps']}) | {r['op']} | {r['mode']} | {r['impl']} | "
            f"{r['median_ms']:.3f} ({r['p10_ms']:.3f}-{r['p90_ms']:.3f}) | {ratio(r, 'speedup_vs_eager_padded')} | "
            f"{ratio(r, 'speedup_vs_compiled')} | {peak} | {r['achieved_gb_s']:.2f} | {r['floor_ms']:.3f} | {r['over_floor']:.1f} | "
            f"{r['over_transcendentals']:.1f} |"
        )
    lines.append("")
    lines.append("Forward-only rows are in the JSON. The loop baseline runs on a subsample and is scaled. "
                 f"A ratio marked ? had its row or its baseline spread over {report.NOISY_SPREAD}x (p90 / p10): "
                 "the host was busy; rerun before trusting it. "
                 "\"x transcendentals\": time over torch's own vectorised softplus (+ sigmoid for the backward) "
                 "over the same steps, the elementwise work no implementation avoids.")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for impl in dict.fromkeys(r["impl"] for r in result["sweep"]):
        points = [(r["batch"], r["median_ms"]) for r in result["sweep"] if r["impl"] == impl]
        ax.plot(*zip(*points), marker="o", label=impl)
    ax.set(xscale="log", yscale="log", xlabel="trajectories (Poisson mean 16 steps)", ylabel="median ms",
           title=f"crm_loss forward + backward\n{result['device_name']}")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def import_seconds(repeats: int = 7) -> dict:
    """Medians over fresh interpreters of the wall time of `import torch`, and of `import
    crm_kernels` right after it in the same interpreter (issue 13: at most 0.3 s)."""
    import sys

    code = ("import time; t0 = time.perf_counter(); import torch; t1 = time.perf_counter(); import crm_kernels; "
            "print(t1 - t0, time.perf_counter() - t1)")  # fmt: skip
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=report.ROOT).stdout.split()
            for _ in range(repeats)]  # fmt: skip
    return {"torch": statistics.median(float(run[0]) for run in runs),
            "crm_kernels_over_torch": statistics.median(float(run[1]) for run in runs)}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="full workload sizes (per_token: 8192 x 2048 steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", action="store_true", help="write to benchmarks/results/ and the README table")
    parser.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep and its plot")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    log = lambda message: print(message, flush=True)  # noqa: E731
    rows, floors = bench_rows(device, args.full, log)
    result = dict(
        device=device.type, device_name=device_description(device), versions=versions(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        full=args.full, threads=torch.get_num_threads(), import_s=import_seconds(), **floors, rows=rows,
        sweep=[] if args.no_sweep else sweep_rows(device, log),
    )  # fmt: skip
    slug = device.type if device.type == "cpu" else torch.cuda.get_device_name(device).replace(" ", "_")
    out = report.output_dir(args.save)
    (out / f"{slug}.json").write_text(json.dumps(result, indent=1))
    (out / f"{slug}.md").write_text(markdown_table(result) + "\n")
    if result["sweep"]:
        plot(result, out / f"{slug}.png")
    print()
    print(markdown_table(result))
    if args.save:
        report.replace_section(report.ROOT / "README.md", f"bench:{slug}", markdown_table(result))
    print(f"\nwrote {out / slug}.json/.md" + ("/.png" if result["sweep"] else ""))


if __name__ == "__main__":
    main()
