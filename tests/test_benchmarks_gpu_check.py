"""`benchmarks/gpu_check.py` in its `--dry-run` mode on the CPU: every section written, and the per-setting time caps,
budget and out-of-memory handling that keep one bad setting from costing the GPU run the others."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402


@pytest.mark.slow
def test_dry_run_writes_every_section(tmp_path, golden_dir, entropy_tables_dir):
    out = tmp_path / "check.json"
    argv = ["--dry-run", "--device", "cpu", "--out", str(out), "--golden-dir", str(golden_dir)]
    returned = gpu_check.main([*argv, "--entropy-tables-dir", str(entropy_tables_dir)])
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(returned))  # the file is what the run returned

    environment = written["environment"]
    assert environment["status"] == "ok" and environment["measured_bf16_matmul_tflops"] > 0

    golden = written["golden_bf16_vs_fp32"]
    for model in ("lm1b_tiny", "owt_tiny"):
        for precision in ("bf16-autocast", "bf16-weights"):
            entry = golden[f"{model}/ddim_stoch_carry/{precision}"]
            assert entry["status"] == "ok" and 0.9 <= entry["bit_agreement"] <= 1.0, entry
            assert entry["num_bits"] == 2 * 5 * (15 if model == "lm1b_tiny" else 16)
    reproduced = golden["lm1b_tiny/ddim_stoch_carry/fp32_reproduces_golden_bits"]
    assert reproduced["status"] == "ok" and reproduced["bits_equal"], reproduced  # CPU float32 = the official bits

    tiny = written["throughput"]["tiny"]
    assert tiny["setup"]["status"] == "ok" and tiny["setup"]["gflop_per_sample_per_call"] > 0
    for mode in ("eager", "compiled"):
        entry = tiny[f"batch2/{mode}"]
        assert entry["status"] == "ok", entry
        assert entry["samples_per_s"] > 0 and entry["tokens_per_s"] == pytest.approx(entry["samples_per_s"] * 128)
        assert entry["model_calls"] == 2 and math.isfinite(entry["mfu"]) and entry["mfu"] > 0
    assert "compile_seconds" in tiny["batch2/compiled"] and "speedup_vs_eager" in tiny["batch2/compiled"]
    assert tiny["batch2/reduce-overhead"]["status"] == "skipped"
    assert "CUDA" in tiny["batch2/reduce-overhead"]["reason"]

    assert written["attention"]["status"] == "skipped" and "flash" in written["attention"]["reason"]
    assert written["targets"]["status"] == "ok" and written["targets"]["preset"] == "tiny"
    assert isinstance(written["targets"]["mfu_met"], bool) and written["elapsed_seconds"] > 0


def test_out_of_memory_is_recorded_and_the_next_setting_runs():
    budget = gpu_check.Budget(total_seconds=60, setting_seconds=10)

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    result = budget.run(oom)
    assert result["status"] == "oom" and result["reason"] == "CUDA out of memory. Tried to allocate 20.00 GiB"
    assert budget.run(lambda: {"value": 1})["status"] == "ok"


def test_a_setting_past_its_cap_is_cut_short_and_errors_are_recorded():
    budget = gpu_check.Budget(total_seconds=60, setting_seconds=0.3)
    start = time.monotonic()
    result = budget.run(lambda: time.sleep(30) or {})
    assert result["status"] == "timed_out" and time.monotonic() - start < 15  # cut short, then dynamo is reset
    assert budget.run(lambda: 1 / 0)["reason"].startswith("ZeroDivisionError")
    assert budget.run(lambda: {"value": 2}) == {"status": "ok", "value": 2, "elapsed_seconds": pytest.approx(0, abs=1)}


def test_settings_past_the_budget_are_skipped():
    budget = gpu_check.Budget(total_seconds=0.5, setting_seconds=10)
    time.sleep(0.6)
    result = budget.run(lambda: {"value": 1})
    assert result["status"] == "skipped" and "budget" in result["reason"]


def test_known_gpu_peaks():
    assert gpu_check.known_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu_check.known_bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.known_bf16_peak_tflops("NVIDIA H200") == 989.0
    assert gpu_check.known_bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_check.known_bf16_peak_tflops("NVIDIA GeForce GTX 1080") is None
