"""Where benchmark results go, and the README sections they fill.

A run writes to bench_out/ (untracked), so `make bench` leaves a clone clean; `--save` writes to
benchmarks/results/ (tracked) and fills the README's marked sections, for a run meant to be the
project's published figures.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SCRATCH = ROOT / "bench_out"

# A row whose p90 / p10 exceeds this is too noisy for its ratios to be trusted: the host was busy
# (on the project machine a quiet row spreads 1.0-1.2x; a busy one 1.5-6x).
NOISY_SPREAD = 1.5


def output_dir(save: bool) -> Path:
    out = RESULTS if save else SCRATCH
    out.mkdir(parents=True, exist_ok=True)
    return out


def spread(times: list[float]) -> float:
    """p90 / p10 of repeated timings (max / min below 10 samples)."""
    ordered = sorted(times)
    if len(ordered) < 10:
        return ordered[-1] / ordered[0]
    return ordered[(9 * len(ordered)) // 10 - 1] / ordered[len(ordered) // 10]


def is_noisy(times: list[float]) -> bool:
    return spread(times) > NOISY_SPREAD


def replace_section(path: Path, name: str, body: str) -> bool:
    """Put `body` between `<!-- name:begin -->` and `<!-- name:end -->` in the file at `path`.
    False (file untouched) where the markers are absent."""
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    path.write_text(head + begin + body.rstrip("\n") + "\n" + end + rest.split(end, 1)[1])
    return True


def read_section(path: Path, name: str) -> str | None:
    """What `replace_section` put between the markers (without the final newline), or None."""
    begin, end = f"<!-- {name}:begin -->\n", f"<!-- {name}:end -->"
    text = path.read_text()
    if begin not in text or end not in text:
        return None
    return text.split(begin, 1)[1].split(end, 1)[0].rstrip("\n")
