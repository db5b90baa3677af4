"""benchmarks.report: where results go, the noise flag, and the README sections benchmarks fill.
benchmarks.run's table marks untrusted ratios; the run itself is `make bench`, not a test."""

import pytest

from benchmarks import report, rl, run


def test_results_go_to_an_untracked_folder_unless_saved():
    assert report.output_dir(False) == report.SCRATCH and report.output_dir(True) == report.RESULTS
    ignored = (report.ROOT / ".gitignore").read_text().split()
    assert "bench_out/" in ignored


@pytest.mark.parametrize("times, noisy", [([1.0, 1.1, 1.2, 1.05, 1.0], False), ([9.6, 10.0, 61.0, 10.2, 9.9], True)])
def test_noise_flag(times, noisy):
    assert report.is_noisy(times) is noisy


def test_spread_uses_deciles_on_many_samples():
    times = [1.0] * 18 + [50.0, 60.0]  # two outliers out of 20 do not make a row untrusted
    assert report.spread(times) == 1.0 and not report.is_noisy(times)
    assert report.spread(times + [50.0] * 3) > report.NOISY_SPREAD


def test_replace_and_read_section(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("intro\n<!-- t:begin -->\nold\n<!-- t:end -->\nrest\n")
    assert report.replace_section(path, "t", "new\ntable\n")
    assert path.read_text() == "intro\n<!-- t:begin -->\nnew\ntable\n<!-- t:end -->\nrest\n"
    assert report.read_section(path, "t") == "new\ntable"
    assert not report.replace_section(path, "missing", "x") and report.read_section(path, "missing") is None


def _row(impl, median, noisy):
    return dict(workload="small", batch=64, steps=500, op="crm_loss", mode="fwd+bwd", impl=impl, median_ms=median,
                p10_ms=median, p90_ms=median, noisy=noisy, peak_extra_mb=None, achieved_gb_s=1.0, floor_ms=0.01,
                over_floor=1.0, over_transcendentals=1.0)  # fmt: skip


def test_table_marks_ratios_of_noisy_rows():
    rows = [_row("crm_kernels[cpu]", 0.1, False), _row("eager padded", 1.0, True),
            _row("torch.compile(eager padded)", 0.5, False)]  # fmt: skip
    run.add_ratios(rows)
    result = dict(device_name="cpu", versions={"torch": "x"}, date="d", bandwidth_gb_s=1.0, launch_us=1.0,
                  import_s={"torch": 0.9, "crm_kernels_over_torch": 0.02}, rows=rows)  # fmt: skip
    table = run.markdown_table(result)
    ours = next(line for line in table.splitlines() if "crm_kernels[cpu]" in line)
    assert "| 10.0x? | 5.0x |" in ours  # the padded baseline was noisy, the compiled one was not
    assert "0.020 s over `import torch`" in table


@pytest.mark.parametrize("section, results, render", [
    ("bench:cpu", "cpu.json", run.markdown_table),
    ("bench:rl_cpu", "rl_cpu.json", rl.markdown),
])  # fmt: skip
def test_readme_tables_are_the_saved_results(section, results, render):
    """The README's benchmark tables are what `make bench BENCH_ARGS=--save` wrote, not figures
    typed by hand or left from an older run."""
    import json

    result = json.loads((report.RESULTS / results).read_text())
    assert report.read_section(report.ROOT / "README.md", section) == render(result).rstrip("\n")
    assert (report.RESULTS / "cpu.md").read_text() == run.markdown_table(json.loads((report.RESULTS / "cpu.json").read_text())) + "\n"
