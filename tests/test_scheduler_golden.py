"""EntropyRateScheduler against the official sampler's golden data (golden/README.md §4-§5)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from bitstream_diffusion.schedulers import EntropyRateScheduler

TABLES = ("lm1b", "owt", "owt_medium")
SAMPLER_RUNS = ("ddim_det_carry", "ddim_stoch_carry", "ddim_stoch_refined")


@pytest.fixture(scope="module")
def schedule_golden(golden_dir):
    return json.loads((golden_dir / "schedule" / "schedule.json").read_text())


@pytest.fixture(scope="module")
def schedulers(entropy_tables_dir):
    """One default scheduler per official table (validating the tables once)."""
    return {table: EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / table) for table in TABLES}


def _float32(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(torch.float32)


# ---------------------------------------------------------------------------------------------------------------------
# Grids, quantiles, windows, per-step gamma (golden/schedule)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table", TABLES)
def test_entropy_grids_match_golden_exactly(schedulers, schedule_golden, table):
    scheduler = schedulers[table]
    grids = schedule_golden["tables"][table]["entropic_grids"]
    assert len(grids) == 9
    for n, grid in grids.items():
        n = int(n)
        scheduler.set_timesteps(n)
        assert scheduler.sigmas.dtype == torch.float32 and scheduler.sigmas.shape == (n + 1,)
        assert torch.equal(scheduler.sigmas[:n], _float32(grid)), f"{table} N={n}"
        assert scheduler.sigmas[n] == 0
        assert torch.equal(scheduler.timesteps, scheduler.sigmas[:n])
        assert scheduler.init_noise_sigma == grid[0] == scheduler.sigmas[0].item()
        assert scheduler.num_model_calls() == n


@pytest.mark.parametrize("table", TABLES)
def test_entropy_karras_blend_matches_golden(entropy_tables_dir, schedule_golden, table):
    scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / table, entropic_blend_alpha=0.25)
    scheduler.set_timesteps(255)
    expected = schedule_golden["tables"][table]["entropic_blend_grids"]["N=255,alpha=0.25"]
    assert torch.equal(scheduler.sigmas[:255], _float32(expected))
    assert scheduler.init_noise_sigma == expected[0]


def test_karras_grids_match_golden(schedule_golden):
    scheduler = EntropyRateScheduler(noise_schedule="karras")  # no table needed
    for n, grid in schedule_golden["karras"].items():
        if int(n) < 2:
            continue  # one level is rejected: the final denoise needs a level of its own
        scheduler.set_timesteps(int(n))
        assert torch.equal(scheduler.sigmas[: int(n)], _float32(grid)), f"N={n}"
    assert scheduler.init_noise_sigma == 80.0


@pytest.mark.parametrize("table", TABLES)
def test_entropy_quantiles_match_golden(schedulers, schedule_golden, table):
    for q, sigma in schedule_golden["tables"][table]["quantiles"].items():
        assert schedulers[table].entropy_quantile(float(q)) == sigma, f"{table} q={q}"


@pytest.mark.parametrize("table", TABLES)
def test_churn_windows_match_golden(entropy_tables_dir, schedule_golden, table):
    windows = schedule_golden["tables"][table]["windows"]
    tables_dir = entropy_tables_dir / table
    for key, window in windows.items():
        if key.startswith("mode="):
            continue
        q_lo, q_hi = (float(v) for v in key.split(","))
        scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir, churn_window=(q_lo, q_hi))
        assert scheduler.entropy_quantile(q_lo) == window["raw_sigma_q_lo"]
        assert scheduler.entropy_quantile(q_hi) == window["raw_sigma_q_hi"]
        assert scheduler.churn_window_sigmas == (window["lo"], window["hi"]), key
    # The official "full" and "fixed" modes are windows in sigma; "deterministic" is gamma = 0.
    full = EntropyRateScheduler.from_entropy_tables(tables_dir, churn_window_mode="sigma", churn_window=(0.0, 80.0))
    assert full.churn_window_sigmas == (windows["mode=full"]["lo"], windows["mode=full"]["hi"])
    fixed = windows["mode=fixed{'s_tmin': 0.5, 's_tmax': 5.0}"]
    sigma_window = EntropyRateScheduler.from_entropy_tables(
        tables_dir, churn_window_mode="sigma", churn_window=(0.5, 5.0)
    )
    assert sigma_window.churn_window_sigmas == (fixed["lo"], fixed["hi"])
    assert not windows["mode=deterministic"]["enabled_with_s_churn_1"]
    sigma_window.set_timesteps(64, gamma=0.0)
    assert not sigma_window.gammas.any()


def test_owt_first_step_is_not_churned(schedulers):
    """q = 1 maps to 70.66 on the CoBit-S OWT table, below the first level 76.756 (golden README §4)."""
    scheduler = schedulers["owt"]
    scheduler.set_timesteps(255, gamma=0.2)
    assert scheduler.gammas[0] == 0 and (scheduler.gammas[1:] == 0.2).all()
    schedulers["lm1b"].set_timesteps(255, gamma=0.2)
    assert (schedulers["lm1b"].gammas == 0.2).all()


@pytest.mark.parametrize("table", TABLES)
def test_gamma_cases_match_golden(entropy_tables_dir, schedule_golden, table):
    """Per-step gamma (float64) and the churned sigma (float32) for every golden (N, S_churn, window)."""
    for case in schedule_golden["tables"][table]["gamma_cases"]:
        n = case["N"]
        scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / table, churn_window=case["window_q"])
        gamma = EntropyRateScheduler.gamma_from_s_churn(case["S_churn"], n)
        scheduler.set_timesteps(n, gamma=gamma)
        label = f"{table} N={n} S_churn={case['S_churn']} window={case['window_q']}"
        assert scheduler.gammas.dtype == torch.float64 and scheduler.gammas.shape == (n - 1,)
        assert scheduler.gammas.tolist() == case["gamma_per_step"], label
        assert int((scheduler.gammas > 0).sum()) == case["n_churned_steps"], label
        assert scheduler.churn_window_sigmas == (case["s_tmin"], case["s_tmax"]), label

        generator = torch.Generator().manual_seed(0)
        sample = torch.zeros(1, 1)
        sigma_hats = []
        for i in range(n - 1):
            _, sigma_hat = scheduler.churn(sample, generator=generator)
            sigma_hats.append(sigma_hat)
            scheduler.step(torch.zeros(1, 1), sigma_hat, sample)
        assert torch.equal(torch.stack(sigma_hats), _float32(case["sigma_hat_per_step"])), label


def test_paper_gamma_conversion_matches_golden(schedule_golden):
    """The paper's 0.2 at "256 NFE" (S_churn = 0.2 * 255 = 51, 255 levels) is 51/254 per step."""
    case = next(c for c in schedule_golden["tables"]["lm1b"]["gamma_cases"] if c["N"] == 255 and c["S_churn"] == 51)
    assert math.isclose(EntropyRateScheduler.gamma_from_paper(0.2, 256), case["gamma_per_step"][0], rel_tol=1e-14)
    assert EntropyRateScheduler.gamma_from_s_churn(51.0, 255) == case["gamma_per_step"][0]


# ---------------------------------------------------------------------------------------------------------------------
# Trajectories (golden/sampler): churn + Euler with the stored denoiser outputs
# ---------------------------------------------------------------------------------------------------------------------


def _load_run(golden_dir, name):
    meta = json.loads((golden_dir / "sampler" / f"{name}.json").read_text())
    tensors = torch.load(golden_dir / "sampler" / f"{name}.pt", map_location="cpu", weights_only=True)
    return meta, tensors


def _scheduler_for_run(entropy_tables_dir, meta) -> EntropyRateScheduler:
    stochastic = meta["stochastic"]
    num_levels = meta["num_steps_N (grid points)"]
    scheduler = EntropyRateScheduler.from_entropy_tables(
        entropy_tables_dir / meta["entropy_table"],
        s_noise=stochastic["s_noise"],
        churn_window=(stochastic["entropy_quantile_lo"], stochastic["entropy_quantile_hi"]),
        self_conditioning=meta["sc_refresh_mode"],
    )
    gamma = 0.0
    if stochastic["enabled_cfg"]:
        gamma = EntropyRateScheduler.gamma_from_s_churn(stochastic["s_churn"], num_levels)
    scheduler.set_timesteps(num_levels, gamma=gamma)
    return scheduler


@pytest.mark.parametrize("name", SAMPLER_RUNS)
def test_schedule_and_noise_draws_match_golden_run(golden_dir, entropy_tables_dir, name):
    meta, run = _load_run(golden_dir, name)
    scheduler = _scheduler_for_run(entropy_tables_dir, meta)
    num_levels = meta["num_steps_N (grid points)"]
    assert torch.equal(scheduler.sigmas[:num_levels], run["grid"])
    assert torch.equal(scheduler.gammas, run["gamma"])
    assert scheduler.gammas.nonzero().flatten().tolist() == run["churned_steps"].tolist() == meta["churned_steps"]
    assert scheduler.num_model_calls() == meta["n_network_calls"]

    # The draws: the initial [B, S] noise, then one [B, S] draw per churned step, from one seeded generator.
    generator = torch.Generator().manual_seed(meta["seed"])
    noise = randn_tensor(tuple(run["init_noise"].shape), generator=generator, dtype=torch.float32)
    assert torch.equal(noise, run["init_noise"])
    assert torch.equal(noise * scheduler.init_noise_sigma + 0.5, run["x_init"])
    for expected in run["churn_noise"]:
        assert torch.equal(torch.randn(expected.shape, generator=generator), expected)


@pytest.mark.parametrize("name", SAMPLER_RUNS)
def test_teacher_forced_steps_match_golden(golden_dir, entropy_tables_dir, name):
    """Each churn and Euler update from the stored state: Euler is bit-exact, churn within one ulp of its scale."""
    meta, run = _load_run(golden_dir, name)
    scheduler = _scheduler_for_run(entropy_tables_dir, meta)
    generator = torch.Generator().manual_seed(meta["seed"])
    randn_tensor(tuple(run["init_noise"].shape), generator=generator)
    x = run["x_init"]
    exact_churns = 0
    for i in range(len(run["grid"]) - 1):
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        assert torch.equal(sigma_hat, run["sigma_hat"][i])
        assert torch.equal(sigma_hat.expand(x.shape[0]), run["step_sigma_label"][i])
        assert (x_hat - run["x_state"][i]).abs().max() <= 4e-6, f"step {i}"
        exact_churns += torch.equal(x_hat, run["x_state"][i])
        out = scheduler.step(run["step_D"][i], sigma_hat, run["x_state"][i])
        assert torch.equal(out.prev_sample, run["x_after_step"][i]), f"step {i}"
        assert torch.equal(out.pred_original_sample, run["step_D"][i])
        x = run["x_after_step"][i]
    # The official sqrt(sigma_hat^2 - sigma^2) at step 1 of the stochastic runs is one float32 ulp below the
    # documented float32 op order; every other churn is bit-exact.
    assert exact_churns >= len(run["grid"]) - 2
    final_x, final_sigma = scheduler.churn(run["final_x"], generator=generator)
    assert final_x is run["final_x"] and torch.equal(final_sigma.expand(x.shape[0]), run["final_sigma_label"])
    final = scheduler.step(run["final_probs"], final_sigma, final_x)
    assert torch.equal(final.prev_sample, run["final_probs"])
    assert torch.equal((final.prev_sample > 0.5).to(torch.uint8), run["final_bits"])


@pytest.mark.parametrize("name", SAMPLER_RUNS)
def test_free_running_loop_matches_golden(golden_dir, entropy_tables_dir, name):
    """The pipeline's loop with the stored denoiser outputs: states, self-conditioning inputs, call count, bits."""
    meta, run = _load_run(golden_dir, name)
    scheduler = _scheduler_for_run(entropy_tables_dir, meta)
    num_levels = len(run["grid"])
    batch = run["init_noise"].shape[0]
    generator = torch.Generator().manual_seed(meta["seed"])

    x = randn_tensor(tuple(run["init_noise"].shape), generator=generator, dtype=torch.float32)
    x = x * scheduler.init_noise_sigma + 0.5
    self_cond = torch.zeros_like(x)
    calls, worst = 0, 0.0
    for i, _ in enumerate(scheduler.timesteps):
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        last = i == num_levels - 1
        worst = max(worst, (x_hat - (run["final_x"] if last else run["x_state"][i])).abs().max().item())
        assert torch.equal(self_cond, run["final_sc_in"] if last else run["step_sc_in"][i])
        assert torch.equal(sigma_hat.expand(batch), run["final_sigma_label"] if last else run["step_sigma_label"][i])
        denoised = run["final_probs"] if last else run["step_D"][i]  # the stored D(x_hat, sigma_hat, self_cond)
        calls += 1
        out = scheduler.step(denoised, sigma_hat, x_hat)
        x, self_cond = out.prev_sample, out.self_cond
        if out.refine_sigma is not None:
            assert meta["sc_refresh_mode"] == "refined"
            assert torch.equal(out.refine_sigma.expand(batch), run["refine_sigma_label"][i])
            assert torch.equal(self_cond, run["refine_sc_in"][i])
            worst = max(worst, (x - run["refine_x_in"][i]).abs().max().item())
            self_cond = run["refine_D"][i]
            calls += 1
        elif not last:
            assert meta["sc_refresh_mode"] == "carry"
    assert worst <= 1e-5
    assert calls == meta["n_network_calls"] == scheduler.num_model_calls()
    assert torch.equal((x > 0.5).to(torch.uint8), run["final_bits"])

    # Exactly the documented draws were consumed: the initial noise and one per churned step.
    reference = torch.Generator().manual_seed(meta["seed"])
    for _ in range(1 + len(meta["churned_steps"])):
        torch.randn(tuple(run["init_noise"].shape), generator=reference)
    assert torch.equal(reference.get_state(), generator.get_state())
