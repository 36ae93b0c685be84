"""`benchmarks/bench_sampling.py` end to end on a tiny model: the fields it reports hang together (not its timings)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_sampling  # noqa: E402


def test_reports_flops_peak_split_and_compile_fields(monkeypatch, entropy_tables_dir):
    # the compiled mode through dynamo without inductor's code generation, so that the test takes seconds
    monkeypatch.setitem(bench_sampling.COMPILE_MODES, "compiled", dict(backend="eager", fullgraph=True, dynamic=False))
    argv = ["--preset", "tiny", "--steps", "3", "--repeats", "2", "--output-type", "bits"]
    tables = ["--entropy-tables", str(entropy_tables_dir / "lm1b")]
    result = bench_sampling.main([*argv, "--modes", "eager", "compiled", *tables])

    assert result["nfe"] == 3 and result["num_bits"] == 128 * 15 and result["schedule"].startswith("entropy:")
    assert result["model_gflop_per_call"] > 0
    assert result["sampler_gflop"] == pytest.approx(3 * result["model_gflop_per_call"])
    for mode, entry in result["modes"].items():
        assert entry["samples_per_s"] == pytest.approx(4 / entry["seconds_min"])
        assert entry["tokens_per_s"] == pytest.approx(4 * 128 / entry["seconds_min"])
        assert 0 < entry["model_seconds"] < entry["seconds_min"]
        assert 0 < entry["outside_share"] < 1 and 0 < entry["outside_share_cpu"] < 1
        assert entry["outside_ms_per_call"] == pytest.approx(1e3 * entry["outside_seconds"] / 3)
        assert entry["model_fraction_of_matmul_peak"] == pytest.approx(
            entry["model_gflops"] / entry["matmul_peak_gflops"]
        )
        assert entry["matmul_peak_gflops"] > 0 and entry["model_fraction_of_matmul_peak_cpu_time"] > 0
        assert entry["recompiles_during_timed_runs"] == 0
    assert result["modes"]["eager"]["bits_equal_to_eager"] is None and result["modes"]["eager"]["graphs_compiled"] == 0
    compiled = result["modes"]["compiled"]
    assert compiled["bits_equal_to_eager"] is True and compiled["graphs_compiled"] == 1
    assert compiled["compile_seconds"] == pytest.approx(compiled["first_call_seconds"] - compiled["seconds_min"])
