"""Training σ draws against golden/entropy_estimator (official ContinuousForwardProcess / EntropyScheduleController).

The random draws (shapes, order, values) are compared exactly. The σ values go through exp/log, which torch runs
through MKL on x86; MKL's kernel depends on the CPU, and the golden data came from its SSE4.2 path. In this process
σ is therefore compared to within 2 ulp, and a subprocess pinned to that path (``MKL_ENABLE_INSTRUCTIONS=SSE4_2``)
checks every σ bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bitstream_diffusion.training import (
    TrainingSigmaSampler,
    edges_from_midpoints,
    entropy_mixing_weight,
    load_entropy_tables,
    sample_lognormal_sigma,
    sample_sigma_from_tables,
)

ULP2 = dict(rtol=2.4e-7, atol=0.0)  # float32: 2 ulp


@pytest.fixture(scope="module")
def draws(golden_dir):
    return torch.load(golden_dir / "entropy_estimator" / "entropy_cases.pt", map_location="cpu", weights_only=True)[
        "draws"
    ]


@pytest.fixture(scope="module")
def lm1b_tables(entropy_tables_dir):
    return load_entropy_tables(entropy_tables_dir / "lm1b")


def test_lognormal_draws(draws):
    for key in ("lognormal", "lognormal_narrow_bounds"):
        case = draws[key]
        gen = torch.Generator().manual_seed(case["seed"])
        replayed = [torch.randn(meta["shape"], generator=gen) for meta in case["rng_draws"]]
        assert all(torch.equal(a, b) for a, b in zip(replayed, case["randn_draws"], strict=True))
        sigma = sample_lognormal_sigma(
            case["bsz"],
            p_mean=case["p_mean"],
            p_std=case["p_std"],
            sigma_min=case["sigma_min"],
            sigma_max=case["sigma_max"],
            generator=torch.Generator().manual_seed(case["seed"]),
        )
        assert sigma.dtype == torch.float32 and sigma.shape == (case["bsz"],)
        torch.testing.assert_close(sigma, case["sigma"], **ULP2)
        assert sigma.min() >= case["sigma_min"] and sigma.max() <= case["sigma_max"]
    assert len(draws["lognormal_narrow_bounds"]["rng_draws"]) == 3  # the rejection loop ran three rounds


def test_rejection_loop_consumes_exactly_the_recorded_draws(draws):
    case = draws["lognormal_narrow_bounds"]
    gen = torch.Generator().manual_seed(case["seed"])
    sample_lognormal_sigma(case["bsz"], sigma_min=case["sigma_min"], sigma_max=case["sigma_max"], generator=gen)
    after = torch.Generator().manual_seed(case["seed"])
    for meta in case["rng_draws"]:
        torch.randn(meta["shape"], generator=after)
    assert torch.equal(gen.get_state(), after.get_state())


def test_table_draws(draws, lm1b_tables):
    case = draws["sample_entropy_sigma"]
    gen = torch.Generator().manual_seed(case["seed"])
    assert torch.equal(torch.rand(case["bsz"], generator=gen), case["u_bin"])
    assert torch.equal(torch.rand(case["bsz"], generator=gen), case["u_within"])
    gen = torch.Generator().manual_seed(case["seed"])
    sigma = sample_sigma_from_tables(lm1b_tables["cdf"], lm1b_tables["edges"], case["bsz"], gen)
    torch.testing.assert_close(sigma, case["sigma"], **ULP2)
    # The bin comes from the CDF alone (no transcendental op): exact.
    cdf = lm1b_tables["cdf"].clamp(min=0.0)
    cdf[-1] = 1.0
    assert torch.equal(torch.searchsorted(cdf, case["u_bin"]).clamp(0, 127), case["bin_idx"])
    assert not bool((lm1b_tables["pdf"][case["bin_idx"]] == 0).any())  # zero-mass bins are never drawn


def test_table_draws_with_edges_from_midpoints(draws, lm1b_tables):
    case = draws["sample_entropy_sigma_edges_from_midpoints"]
    edges = edges_from_midpoints(lm1b_tables["sigmas"])
    torch.testing.assert_close(edges, case["reconstructed_edges"], **ULP2)
    assert abs(edges[0].item() - 0.002) < 1e-9 and abs(edges[-1].item() - 80.0) < 1e-5
    sigma = sample_sigma_from_tables(
        lm1b_tables["cdf"], edges, case["bsz"], torch.Generator().manual_seed(case["seed"])
    )
    torch.testing.assert_close(sigma, case["sigma"], **ULP2)


def test_draw_sigma_at_step_45000(draws, lm1b_tables):
    case = draws["draw_sigma"]
    sampler = TrainingSigmaSampler()
    assert sampler.gamma(case["global_step"]) == case["gamma"] == 0.5
    gen = torch.Generator().manual_seed(case["seed"])
    replay = [
        (torch.randn if meta["fn"] == "torch.randn" else torch.rand)(meta["shape"], generator=gen)
        for meta in case["rng_draws"]
    ]
    assert all(torch.equal(a, b) for a, b in zip(replay, case["draw_values"], strict=True))
    use_table = case["draw_values"][1] < case["gamma"]
    assert torch.equal(use_table, case["derived_use_entropy_mask"])

    gen = torch.Generator().manual_seed(case["seed"])
    sigma = sampler.draw_sigma(case["bsz"], case["global_step"], gen, tables=lm1b_tables)
    torch.testing.assert_close(sigma, case["sigma"], **ULP2)
    after = torch.Generator().manual_seed(case["seed"])
    for meta in case["rng_draws"]:
        (torch.randn if meta["fn"] == "torch.randn" else torch.rand)(meta["shape"], generator=after)
    assert torch.equal(gen.get_state(), after.get_state())  # exactly the recorded draws, nothing more


def test_gamma_of_step(golden_dir):
    meta = json.loads((golden_dir / "entropy_estimator" / "entropy_cases.json").read_text())["gamma_of_step"]
    for step, expected in meta["values"].items():
        got = entropy_mixing_weight(
            int(step),
            warmup_steps=meta["warmup_steps"],
            transition_steps=meta["transition_steps"],
            gamma_max=meta["gamma_max"],
        )
        assert got == expected, step


def test_draw_sigma_uses_base_only_before_warmup_or_without_tables(lm1b_tables):
    sampler = TrainingSigmaSampler()
    base = sample_lognormal_sigma(64, generator=torch.Generator().manual_seed(3))
    for step, tables in [(39_999, lm1b_tables), (60_000, None)]:
        gen = torch.Generator().manual_seed(3)
        assert torch.equal(sampler.draw_sigma(64, step, gen, tables=tables), base)
        assert torch.equal(gen.get_state(), _state_after_randn(3, 64))  # no coin was drawn


def _state_after_randn(seed: int, n: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    torch.randn(n, generator=gen)
    return gen.get_state()


def test_draw_sigma_after_transition_is_fully_entropic(lm1b_tables):
    sigma = TrainingSigmaSampler().draw_sigma(4096, 50_000, torch.Generator().manual_seed(0), tables=lm1b_tables)
    assert sigma.min() > 0.12  # the lm1b table has no mass below ~0.1255
    tables_without_edges = {k: v for k, v in lm1b_tables.items() if k != "edges"}
    again = TrainingSigmaSampler().draw_sigma(64, 50_000, torch.Generator().manual_seed(0), tables=tables_without_edges)
    assert again.shape == (64,) and again.min() > 0.1


def test_table_sampler_rejects_bad_tables(lm1b_tables):
    with pytest.raises(ValueError, match="edges_from_midpoints"):
        sample_sigma_from_tables(lm1b_tables["cdf"], lm1b_tables["sigmas"], 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        sample_sigma_from_tables(torch.tensor([0.5, float("nan")]), torch.tensor([0.01, 0.1, 1.0]), 4)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sample_lognormal_sigma(4, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="p_std"):
        TrainingSigmaSampler(p_std=0.0)


_BIT_EXACT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from bitstream_diffusion.training import (TrainingSigmaSampler, edges_from_midpoints, load_entropy_tables,
                                              sample_lognormal_sigma, sample_sigma_from_tables)
    golden, tables_dir = Path(sys.argv[1]), Path(sys.argv[2])
    d = torch.load(golden / "entropy_estimator" / "entropy_cases.pt", weights_only=True)["draws"]
    t = load_entropy_tables(tables_dir / "lm1b")
    gen = lambda key: torch.Generator().manual_seed(d[key]["seed"])
    out = {}
    for key in ("lognormal", "lognormal_narrow_bounds"):
        c = d[key]
        s = sample_lognormal_sigma(c["bsz"], p_mean=c["p_mean"], p_std=c["p_std"], sigma_min=c["sigma_min"],
                                   sigma_max=c["sigma_max"], generator=gen(key))
        out[key] = torch.equal(s, c["sigma"])
    s = sample_sigma_from_tables(t["cdf"], t["edges"], 1000, gen("sample_entropy_sigma"))
    out["sample_entropy_sigma"] = torch.equal(s, d["sample_entropy_sigma"]["sigma"])
    c = d["sample_entropy_sigma_edges_from_midpoints"]
    edges = edges_from_midpoints(t["sigmas"])
    out["reconstructed_edges"] = torch.equal(edges, c["reconstructed_edges"])
    s = sample_sigma_from_tables(t["cdf"], edges, c["bsz"], gen("sample_entropy_sigma_edges_from_midpoints"))
    out["edges_from_midpoints"] = torch.equal(s, c["sigma"])
    c = d["draw_sigma"]
    out["draw_sigma"] = torch.equal(
        TrainingSigmaSampler().draw_sigma(c["bsz"], c["global_step"], gen("draw_sigma"), tables=t), c["sigma"])
    print(json.dumps(out))
    """
)


def test_sigma_draws_bit_exact_on_the_golden_math_path(golden_dir, entropy_tables_dir):
    if not torch.backends.mkl.is_available():
        pytest.skip("the golden exp/log path is MKL's SSE4.2 kernel; this torch build has no MKL")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, MKL_ENABLE_INSTRUCTIONS="SSE4_2", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", _BIT_EXACT_SCRIPT, str(golden_dir), str(entropy_tables_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results == {key: True for key in results} and len(results) == 6, results
