"""EntropyRateScheduler: the loop contract, Heun, self-conditioning bookkeeping, serialization and input checks."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from bitstream_diffusion.schedulers import EntropyRateScheduler, validate_entropy_tables

DATA_MEAN, DATA_STD = 0.5, 0.1  # keeps the exact denoiser inside [0, 1]: the scheduler takes probabilities


@pytest.fixture(scope="module")
def lm1b_tables(entropy_tables_dir) -> dict[str, list[float]]:
    tables = {}
    for name in ("pdf", "cdf", "sigmas", "edges"):
        path = entropy_tables_dir / "lm1b" / f"entropy_{name}.pt"
        tables[f"entropy_{name}"] = torch.load(path, map_location="cpu", weights_only=True).tolist()
    return tables


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser E[x0 | x_sigma] for x0 ~ N(DATA_MEAN, DATA_STD^2) per coordinate."""
    return DATA_MEAN + DATA_STD**2 / (DATA_STD**2 + sigma.to(x.dtype) ** 2) * (x - DATA_MEAN)


def run_loop(scheduler, x, denoiser, generator=None):
    """The pipeline's loop (EntropyRateScheduler docstring) with a denoiser that ignores self-conditioning; returns
    the output and the number of calls."""
    calls = 0
    for _ in scheduler.timesteps:
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        denoised = denoiser(x_hat, sigma_hat)
        calls += 1
        out = scheduler.step(denoised, sigma_hat, x_hat)
        x = out.prev_sample
        if out.refine_sigma is not None:  # the refining call; its output would be the next self_cond
            denoiser(x, out.refine_sigma)
            calls += 1
    return x, calls


# ---------------------------------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------------------------------


def _final_error(solver: str, num_levels: int) -> float:
    scheduler = EntropyRateScheduler(noise_schedule="karras", solver=solver, self_conditioning="none")
    scheduler.set_timesteps(num_levels)
    start = torch.linspace(-3, 3, 16, dtype=torch.float64).reshape(2, 8) * scheduler.init_noise_sigma + DATA_MEAN
    output, _ = run_loop(scheduler, start, gaussian_denoiser)
    # Exact probability-flow ODE solution for Gaussian data, then the final denoise.
    sigma_0, sigma_t = float(scheduler.sigmas[0]), float(scheduler.sigmas[num_levels - 1])
    ratio = math.sqrt((DATA_STD**2 + sigma_t**2) / (DATA_STD**2 + sigma_0**2))
    exact_state = DATA_MEAN + (start - DATA_MEAN) * ratio
    exact = gaussian_denoiser(exact_state, torch.tensor(sigma_t, dtype=torch.float64))
    assert output.dtype == torch.float64
    return (output - exact).abs().max().item()


def test_euler_is_first_order_and_heun_second_order():
    """Global error vs number of steps on Gaussian data (exact denoiser and ODE solution): slopes 1 and 2."""
    levels = (17, 33, 65, 129)
    errors = {solver: [_final_error(solver, n) for n in levels] for solver in ("euler", "heun")}
    for solver, expected_order in (("euler", 1.0), ("heun", 2.0)):
        slope = -np.polyfit(np.log([n - 1 for n in levels]), np.log(errors[solver]), 1)[0]
        assert abs(slope - expected_order) < 0.2, (solver, errors[solver], slope)
    assert errors["heun"][-1] < errors["euler"][-1] / 10


def test_heun_timesteps_calls_and_draws(entropy_tables_dir):
    scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "owt", solver="heun", gamma=0.2)
    scheduler.set_timesteps(6)
    grid = scheduler.sigmas[:6]
    assert scheduler.num_model_calls() == 11 == len(scheduler.timesteps) == len(scheduler) and scheduler.order == 2
    assert int((scheduler.gammas > 0).sum()) == 4  # the first owt level is outside the q=1 window
    # generic-loop levels: predictors at the churned level, corrections at the next grid level
    churned = grid[1:5] * (1 + scheduler.gammas[1:5]).float()
    assert torch.equal(scheduler.timesteps[1::2], grid[1:]) and torch.equal(scheduler.timesteps[2:10:2], churned)
    assert scheduler.timesteps[0] == grid[0] and scheduler.timesteps[-1] == grid[-1]

    generator = torch.Generator().manual_seed(3)
    x = randn_tensor((2, 8), generator=generator) * scheduler.init_noise_sigma + 0.5
    seen = []
    output, calls = run_loop(scheduler, x, lambda x, s: seen.append(float(s)) or gaussian_denoiser(x, s), generator)
    assert calls == 11 and torch.isfinite(output).all()
    # Predictor at the churned level, correction at the next grid level, final denoise at the terminal level.
    assert seen[1::2] == grid[1:].tolist() and seen[-1] == seen[-2] == grid[-1].item()
    assert seen[0] == grid[0].item() and seen[2] > grid[1].item()
    reference = torch.Generator().manual_seed(3)
    for _ in range(1 + 4):
        torch.randn(2, 8, generator=reference)
    assert torch.equal(reference.get_state(), generator.get_state())  # one draw per churned step, not per call


@pytest.mark.parametrize(
    ("solver", "self_conditioning", "expected_calls"),
    [
        ("euler", "carry", 7),
        ("euler", "none", 7),
        ("euler", "refined", 13),
        ("heun", "carry", 13),
        ("heun", "refined", 19),
    ],
)
def test_model_calls_match_the_loop(lm1b_tables, solver, self_conditioning, expected_calls):
    scheduler = EntropyRateScheduler(solver=solver, self_conditioning=self_conditioning, gamma=0.1, **lm1b_tables)
    scheduler.set_timesteps(7)
    assert scheduler.num_model_calls() == expected_calls == scheduler.num_model_calls(7)
    _, calls = run_loop(scheduler, torch.zeros(1, 4), gaussian_denoiser, torch.Generator().manual_seed(0))
    assert calls == expected_calls


def test_self_conditioning_outputs(lm1b_tables):
    scheduler = EntropyRateScheduler(solver="heun", self_conditioning="carry", **lm1b_tables)
    scheduler.set_timesteps(3)
    x = torch.full((1, 2), 5.0)
    first = scheduler.step(torch.full((1, 2), 0.25), scheduler.sigmas[0], x)
    assert torch.equal(first.self_cond, torch.full((1, 2), 0.25)) and first.refine_sigma is None
    correction = scheduler.step(torch.full((1, 2), 0.75), scheduler.sigmas[1], first.prev_sample)
    # Heun carries the estimate of the step's first evaluation (the official sampler)
    assert torch.equal(correction.self_cond, torch.full((1, 2), 0.25))
    assert torch.equal(correction.pred_original_sample, torch.full((1, 2), 0.75))

    none = EntropyRateScheduler(self_conditioning="none", **lm1b_tables)
    none.set_timesteps(2)
    out = none.step(torch.full((1, 2), 0.25), none.sigmas[0], x)
    assert out.self_cond is None and out.refine_sigma is None
    final = none.step(torch.full((1, 2), 0.6), none.sigmas[1], out.prev_sample, return_dict=False)
    assert isinstance(final, tuple) and torch.equal(final[0], torch.full((1, 2), 0.6))


def test_euler_update_formula(lm1b_tables):
    scheduler = EntropyRateScheduler(**lm1b_tables)
    scheduler.set_timesteps(4)
    x, denoised = torch.tensor([[3.0, -2.0]]), torch.tensor([[0.9, 0.1]])
    out = scheduler.step(denoised, scheduler.timesteps[0], x)
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    torch.testing.assert_close(out.prev_sample, denoised + sigma_next / sigma * (x - denoised))
    assert scheduler.step_index == 1


# ---------------------------------------------------------------------------------------------------------------------
# Churn
# ---------------------------------------------------------------------------------------------------------------------


def test_churn_noise_scale_and_window(lm1b_tables):
    scheduler = EntropyRateScheduler(gamma=0.3, churn_window=(0.25, 0.75), s_noise=1.0, **lm1b_tables)
    scheduler.set_timesteps(64)
    low, high = scheduler.churn_window_sigmas
    levels = scheduler.sigmas[:63].double()
    inside = (levels >= low) & (levels <= high)
    assert inside.any() and not inside.all()
    assert torch.equal(scheduler.gammas > 0, inside) and (scheduler.gammas[inside] == 0.3).all()

    generator = torch.Generator().manual_seed(1)
    x = torch.zeros(64, 512)
    for i in range(63):
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        if inside[i]:
            expected_std = math.sqrt(float(sigma_hat) ** 2 - float(scheduler.sigmas[i]) ** 2)
            assert math.isclose(x_hat.std().item(), expected_std, rel_tol=0.02)
            assert sigma_hat == (scheduler.sigmas[i] * torch.tensor(1.3, dtype=torch.float32))
        else:
            assert x_hat is x and sigma_hat == scheduler.sigmas[i]
        scheduler.step(torch.full_like(x, 0.5), sigma_hat, x_hat)


def test_gamma_per_call_override_and_cap(lm1b_tables):
    scheduler = EntropyRateScheduler(gamma=0.1, **lm1b_tables)
    scheduler.set_timesteps(16)
    assert (scheduler.gammas == 0.1).all()
    scheduler.set_timesteps(16, gamma=0.0)
    assert not scheduler.gammas.any()
    scheduler.set_timesteps(16, gamma=5.0)
    assert (scheduler.gammas == math.sqrt(2) - 1).all()
    assert scheduler.config.gamma == 0.1


def test_sigma_window_without_tables():
    scheduler = EntropyRateScheduler(
        noise_schedule="karras", gamma=0.2, churn_window_mode="sigma", churn_window=(0.5, 5.0)
    )
    scheduler.set_timesteps(32)
    levels = scheduler.sigmas[:31].double()
    assert torch.equal(scheduler.gammas > 0, (levels >= 0.5) & (levels <= 5.0))


def test_list_of_generators_draws_per_sample(lm1b_tables):
    """A list of generators makes each sample independent of the batch it runs in."""

    def sample_run(seeds):
        scheduler = EntropyRateScheduler(gamma=0.2, **lm1b_tables)
        scheduler.set_timesteps(6)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        x = randn_tensor((len(seeds), 10), generator=generators) * scheduler.init_noise_sigma + 0.5
        output, _ = run_loop(scheduler, x, gaussian_denoiser, generators)
        return output

    batch = sample_run([10, 11, 12])
    for row, seed in enumerate([10, 11, 12]):
        assert torch.equal(batch[row : row + 1], sample_run([seed]))


# ---------------------------------------------------------------------------------------------------------------------
# Helpers and serialization
# ---------------------------------------------------------------------------------------------------------------------


def test_add_noise(lm1b_tables):
    scheduler = EntropyRateScheduler(**lm1b_tables)
    x0, noise = torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([[1.0, -1.0], [2.0, 0.5]])
    sigmas = torch.tensor([0.5, 4.0])
    torch.testing.assert_close(scheduler.add_noise(x0, noise, sigmas), torch.tensor([[0.5, 0.5], [9.0, 2.0]]))
    torch.testing.assert_close(scheduler.add_noise(x0, noise, 2.0), x0 + 2 * noise)
    with pytest.raises(ValueError, match="one sigma per row"):
        scheduler.add_noise(x0, noise, torch.ones(3))


def test_gamma_conversions():
    assert EntropyRateScheduler.gamma_from_s_churn(2.2, 12) == 0.2
    assert math.isclose(EntropyRateScheduler.gamma_from_paper(0.26, 512), 0.26 * 511 / 510, rel_tol=1e-14)
    with pytest.raises(ValueError):
        EntropyRateScheduler.gamma_from_paper(0.2, 2)


def test_save_load_round_trip(entropy_tables_dir, tmp_path):
    scheduler = EntropyRateScheduler.from_entropy_tables(
        entropy_tables_dir / "owt",
        gamma=0.2,
        churn_window=(0.1, 0.9),
        solver="heun",
        self_conditioning="refined",
        entropic_blend_alpha=0.1,
    )
    scheduler.save_pretrained(tmp_path / "scheduler")
    saved = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert saved["_class_name"] == "EntropyRateScheduler" and len(saved["entropy_edges"]) == 129
    pdf = torch.load(entropy_tables_dir / "owt" / "entropy_pdf.pt", weights_only=True)
    assert torch.equal(torch.tensor(saved["entropy_pdf"], dtype=torch.float64).float(), pdf)

    loaded = EntropyRateScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    public = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    assert public == {k: v for k, v in loaded.config.items() if not k.startswith("_")}
    for s in (scheduler, loaded):
        s.set_timesteps(64)
    assert torch.equal(scheduler.sigmas, loaded.sigmas) and torch.equal(scheduler.gammas, loaded.gammas)
    assert torch.equal(scheduler.timesteps, loaded.timesteps)
    assert loaded.init_noise_sigma == scheduler.init_noise_sigma


def test_tables_from_tensors_are_stored_as_floats(lm1b_tables):
    tensors = {k: torch.tensor(v) for k, v in lm1b_tables.items()}
    scheduler = EntropyRateScheduler(**tensors)
    assert scheduler.config.entropy_cdf == lm1b_tables["entropy_cdf"]
    assert all(isinstance(v, float) for v in scheduler.config.entropy_sigmas)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_levels", [0, 1, 2.5, True, None])
def test_rejects_fewer_than_two_levels(lm1b_tables, num_levels):
    scheduler = EntropyRateScheduler(**lm1b_tables)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 2"):
        scheduler.set_timesteps(num_levels)


@pytest.mark.parametrize("gamma", [-0.1, float("nan"), float("inf")])
def test_rejects_bad_gamma(lm1b_tables, gamma):
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        EntropyRateScheduler(gamma=gamma, **lm1b_tables)
    scheduler = EntropyRateScheduler(**lm1b_tables)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0"):
        scheduler.set_timesteps(8, gamma=gamma)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"churn_window": (0.9, 0.1)}, "low <= high"),
        ({"churn_window": (0.0, 1.5)}, "quantiles in \\[0, 1\\]"),
        ({"churn_window": (5.0, 0.5), "churn_window_mode": "sigma"}, "low <= high"),
        ({"churn_window": (0.1,)}, "pair"),
        ({"churn_window_mode": "full"}, "churn_window_mode"),
        ({"noise_schedule": "entropic"}, "noise_schedule"),
        ({"sigma_max": float("inf"), "noise_schedule": "karras"}, "`sigma_max` must be a finite number"),
        ({"rho": float("nan")}, "`rho` must be a finite number"),
        ({"sigma_min": "0.002"}, "`sigma_min` must be a finite number, got '0.002' \\(str\\)"),
        ({"churn_window": ("0.1", "0.9")}, "churn_window must be a pair of finite numbers"),
        ({"solver": "dpm"}, "solver"),
        ({"self_conditioning": "refresh"}, "self_conditioning"),
        ({"terminal_sigma": 0.001}, "sigma_min <= terminal_sigma"),
        ({"terminal_sigma": 90.0}, "sigma_min <= terminal_sigma"),
        ({"s_noise": -1.0}, "s_noise >= 0"),
        ({"entropic_blend_alpha": 2.0}, "entropic_blend_alpha"),
    ],
)
def test_rejects_bad_config(lm1b_tables, kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropyRateScheduler(**{**lm1b_tables, **kwargs})


def test_entropy_schedule_needs_tables():
    with pytest.raises(ValueError, match="noise_schedule='entropy' needs the entropy-rate table"):
        EntropyRateScheduler()
    with pytest.raises(ValueError, match="churn_window_mode='sigma'"):
        EntropyRateScheduler(noise_schedule="karras", gamma=0.2)
    karras = EntropyRateScheduler(noise_schedule="karras")
    with pytest.raises(ValueError, match="needs the entropy table"):
        karras.set_timesteps(8, gamma=0.2)
    karras.set_timesteps(8)  # deterministic Karras needs no table


def _broken(tables, name, edit):
    values = list(tables[f"entropy_{name}"])
    edit(values)
    return {**tables, f"entropy_{name}": values}


@pytest.mark.parametrize(
    ("name", "edit", "match"),
    [
        ("pdf", lambda v: v.__setitem__(100, -v[100]), "negative mass"),
        ("pdf", lambda v: v.__setitem__(100, v[100] + 0.01), "sum to 1"),
        ("cdf", lambda v: v.__setitem__(80, v[80] + 0.1), "non-decreasing"),
        ("cdf", lambda v: v.__setitem__(-1, 0.9), "end at 1"),
        ("cdf", lambda v: v.reverse(), "non-decreasing"),
        ("pdf", lambda v: v.pop(), "lengths K, K, K and K\\+1"),
        ("edges", lambda v: v.pop(), "lengths K, K, K and K\\+1"),
        ("sigmas", lambda v: v.reverse(), "strictly increasing"),
        ("edges", lambda v: v.__setitem__(3, v[5]), "strictly increasing"),
        ("sigmas", lambda v: v.__setitem__(7, float("nan")), "NaN"),
    ],
)
def test_rejects_broken_tables(lm1b_tables, name, edit, match):
    with pytest.raises(ValueError, match=match):
        EntropyRateScheduler(**_broken(lm1b_tables, name, edit))


def test_rejects_a_single_bin_table(lm1b_tables):
    one_bin = {"entropy_pdf": [1.0], "entropy_cdf": [1.0], "entropy_sigmas": [1.0], "entropy_edges": [0.5, 2.0]}
    with pytest.raises(ValueError, match="K >= 2"):
        EntropyRateScheduler(**{**lm1b_tables, **one_bin})


def test_a_string_in_scheduler_config_json_names_the_field_and_the_file(lm1b_tables, tmp_path):
    """A hand-edited file with a quoted number is refused on load, not carried into the grid as a string."""
    EntropyRateScheduler(**lm1b_tables).save_pretrained(tmp_path)
    path = tmp_path / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["sigma_max"] = "80.0"
    path.write_text(json.dumps(config))
    message = r"Invalid scheduler config .*scheduler_config\.json: `sigma_max` must be a finite number, got '80\.0'"
    with pytest.raises(ValueError, match=message):
        EntropyRateScheduler.from_pretrained(tmp_path)


def test_rejects_swapped_and_partial_tables(lm1b_tables, entropy_tables_dir, tmp_path):
    swapped = {**lm1b_tables, "entropy_pdf": lm1b_tables["entropy_cdf"], "entropy_cdf": lm1b_tables["entropy_pdf"]}
    with pytest.raises(ValueError):
        EntropyRateScheduler(**swapped)
    partial = {k: v for k, v in lm1b_tables.items() if k != "entropy_edges"}
    with pytest.raises(ValueError, match="incomplete"):
        EntropyRateScheduler(**partial)
    with pytest.raises(FileNotFoundError, match="entropy_"):
        EntropyRateScheduler.from_entropy_tables(tmp_path)
    pdf, *_ = validate_entropy_tables(*(lm1b_tables[f"entropy_{n}"] for n in ("pdf", "cdf", "sigmas", "edges")))
    assert pdf.dtype == torch.float32 and pdf.shape == (128,)


@pytest.mark.parametrize(
    ("bad_value", "match"),
    [(float("nan"), "at level 1 .* NaN or infinite"), (7.0, "at level 1 .* outside \\[0, 1\\].* not logits")],
)
def test_rejects_bad_model_output_once_per_run(lm1b_tables, bad_value, match):
    """A NaN or a logit (7.0) among the outputs is reported at the final call, naming the first bad level."""
    scheduler = EntropyRateScheduler(**lm1b_tables)
    scheduler.set_timesteps(4)
    x = torch.zeros(2, 3)
    for i in range(3):
        denoised = torch.full((2, 3), 0.5)
        if i >= 1:
            denoised[1, 2] = bad_value
        x = scheduler.step(denoised, scheduler.timesteps[i], x).prev_sample  # no error before the final call
    with pytest.raises(ValueError, match=match):
        scheduler.step(torch.full((2, 3), 0.5), scheduler.timesteps[3], x)
    scheduler.set_timesteps(2)  # a new run starts clean
    scheduler.step(torch.full((2, 3), 0.5), scheduler.timesteps[0], x)
    assert scheduler.step(torch.ones(2, 3), scheduler.timesteps[1], x).prev_sample.eq(1).all()
    with pytest.raises(ValueError, match="shape"):
        scheduler.set_timesteps(2)
        scheduler.step(torch.zeros(2, 4), scheduler.timesteps[0], torch.zeros(2, 3))


def test_refining_output_is_checked_with_the_run(lm1b_tables):
    scheduler = EntropyRateScheduler(self_conditioning="refined", **lm1b_tables)
    scheduler.set_timesteps(2)
    x_hat, sigma = scheduler.churn(torch.zeros(1, 2))
    out = scheduler.step(torch.full((1, 2), 0.5), sigma, x_hat)
    scheduler.record_model_output(torch.tensor([[0.5, float("inf")]]), out.refine_sigma)
    x_hat, sigma = scheduler.churn(out.prev_sample)
    with pytest.raises(ValueError, match="refining call at sigma=0.08 contains NaN or infinite"):
        scheduler.step(torch.full((1, 2), 0.5), sigma, x_hat)


def test_rejects_misuse_of_the_loop(lm1b_tables):
    scheduler = EntropyRateScheduler(gamma=0.2, **lm1b_tables)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        scheduler.churn(torch.zeros(1, 2))
    scheduler.set_timesteps(3)
    x = torch.zeros(1, 2)
    x_hat, sigma_hat = scheduler.churn(x, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="the sigma returned by `churn`"):
        scheduler.step(torch.zeros(1, 2), scheduler.sigmas[0], x_hat)
    with pytest.raises(ValueError, match="one per row"):
        scheduler.churn(x, generator=[torch.Generator(), torch.Generator()])
    out = scheduler.step(torch.zeros(1, 2), sigma_hat.expand(1), x_hat)
    with pytest.raises(RuntimeError, match="call `scheduler.churn"):  # a `churn` loop must churn every churned step
        scheduler.step(torch.zeros(1, 2), scheduler.timesteps[1], out.prev_sample)
    x_hat, sigma_hat = scheduler.churn(out.prev_sample, generator=torch.Generator().manual_seed(1))
    out = scheduler.step(torch.zeros(1, 2), sigma_hat, x_hat)
    final_x, final_sigma = scheduler.churn(out.prev_sample)
    scheduler.step(torch.zeros(1, 2), final_sigma, final_x)
    with pytest.raises(RuntimeError, match="are done"):
        scheduler.churn(final_x)
    # a generic loop churns at the end of each step: `churn` must not be called on top of it
    scheduler.set_timesteps(3)
    out = scheduler.step(torch.zeros(1, 2), scheduler.timesteps[0], x, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="already churned"):
        scheduler.churn(out.prev_sample)


def test_cdf_rounding_above_one_is_accepted_but_real_decreases_are_not(lm1b_tables, entropy_tables_dir):
    """The estimator's float32 cumsum can put cdf[-2] one ulp above the final 1.0 before an empty last bin (the owt
    table has one); the official sampler accepts it."""
    rounded = {
        f"entropy_{name}": torch.load(entropy_tables_dir / "owt" / f"entropy_{name}.pt", weights_only=True).tolist()
        for name in ("pdf", "cdf", "sigmas", "edges")
    }
    assert rounded["entropy_pdf"][-1] == 0.0 and rounded["entropy_cdf"][-2] == 1.0
    rounded["entropy_cdf"][-2] = 1.0000001
    scheduler = EntropyRateScheduler(**rounded)
    scheduler.set_timesteps(16)
    assert torch.all(scheduler.sigmas[:-2] > scheduler.sigmas[1:-1])
    broken = dict(lm1b_tables)
    broken["entropy_cdf"] = list(lm1b_tables["entropy_cdf"])
    broken["entropy_cdf"][100] = broken["entropy_cdf"][99] - 0.01
    with pytest.raises(ValueError, match="non-decreasing"):
        EntropyRateScheduler(**broken)


def test_config_changes_after_construction_invalidate_cached_grids(lm1b_tables):
    scheduler = EntropyRateScheduler(**lm1b_tables, gamma=0.2)
    scheduler.set_timesteps(8)
    assert scheduler.sigmas[7].item() == pytest.approx(0.08)
    scheduler.register_to_config(terminal_sigma=0.1, churn_window=(0.5, 1.0))
    scheduler.set_timesteps(8)
    fresh = EntropyRateScheduler(**{**lm1b_tables, "terminal_sigma": 0.1, "churn_window": (0.5, 1.0)}, gamma=0.2)
    fresh.set_timesteps(8)
    assert torch.equal(scheduler.sigmas, fresh.sigmas) and torch.equal(scheduler.gammas, fresh.gammas)
    assert scheduler.sigmas[7].item() == pytest.approx(0.1)
