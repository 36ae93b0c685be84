"""EntropyRateScheduler as a diffusers scheduler: the contracts generic diffusers code relies on.

Our own tests of the conventions diffusers' scheduler tests check (`scale_model_input`, `order`, `begin_index`,
`set_timesteps(sigmas=...)`, `step(..., generator=...)`, `add_noise`, save/load, old config keys), and the generic
diffusers loop with churn.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusers.utils import logging as diffusers_logging
from diffusers.utils.torch_utils import randn_tensor

from bitstream_diffusion import EntropyRateScheduler


@pytest.fixture(scope="module")
def tables_dir(entropy_tables_dir):
    return entropy_tables_dir / "lm1b"


def denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in for the model: bit probabilities that depend on the state and the noise level."""
    return torch.sigmoid((x - 0.5) / (1.0 + sigma.to(x.dtype) ** 2) * 4.0)


def generic_loop(scheduler, x, generator=None):
    """The loop of any diffusers pipeline: no `churn` calls."""
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(denoiser(model_input, t), t, x, generator=generator).prev_sample
    return x


def churn_loop(scheduler, x, generator=None):
    """The pipeline's loop (official draw order)."""
    for _ in scheduler.timesteps:
        x_hat, sigma_hat = scheduler.churn(x, generator=generator)
        x = scheduler.step(denoiser(x_hat, sigma_hat), sigma_hat, x_hat).prev_sample
    return x


def initial_sample(scheduler, generator, shape=(3, 45)):
    return randn_tensor(shape, generator=generator) * scheduler.init_noise_sigma + scheduler.init_sample_mean


# ---------------------------------------------------------------------------------------------------------------------
# The generic diffusers loop with churn
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_generic_loop_gives_the_churn_loop_bits_when_the_first_level_does_not_churn(tables_dir, solver):
    """Churn inside [0.05, 50] in sigma: the first level (76.8) does not churn, every other level does."""
    scheduler = EntropyRateScheduler.from_entropy_tables(
        tables_dir, gamma=0.25, churn_window_mode="sigma", churn_window=(0.05, 50.0), solver=solver
    )
    scheduler.set_timesteps(8)
    assert scheduler.gammas[0] == 0 and (scheduler.gammas[1:] > 0).all()
    start = initial_sample(scheduler, torch.Generator().manual_seed(0))

    reference = churn_loop(scheduler, start, torch.Generator().manual_seed(1))
    scheduler.set_timesteps(8)
    generic = generic_loop(scheduler, start, torch.Generator().manual_seed(1))
    assert torch.equal(generic, reference)  # the same math and the same draws, exactly


def test_generic_loop_with_a_churned_first_level_evaluates_it_unchurned(tables_dir):
    """Nothing can churn before a generic loop's first call: it is made at the grid level; later levels churn."""
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir, gamma=0.2)
    scheduler.set_timesteps(6)
    assert (scheduler.gammas > 0).all()
    sigma_hats = scheduler.sigmas[:5] * (1 + scheduler.gammas).float()
    assert scheduler.timesteps[0] == scheduler.sigmas[0] and torch.equal(scheduler.timesteps[1:5], sigma_hats[1:])

    start = initial_sample(scheduler, torch.Generator().manual_seed(0))
    seen = []
    generator = torch.Generator().manual_seed(1)
    x = start
    for t in scheduler.timesteps:
        seen.append(float(t))
        x = scheduler.step(denoiser(x, t), t, x, generator=generator).prev_sample
    reference = torch.Generator().manual_seed(1)
    for _ in range(4):  # one draw per churned call after the first: levels 1 .. 4
        torch.randn(3, 45, generator=reference)
    assert torch.equal(generator.get_state(), reference.get_state())
    assert seen == scheduler.timesteps.tolist() and torch.all((x >= 0) & (x <= 1))
    # seeded: the run repeats
    scheduler.set_timesteps(6)
    assert torch.equal(generic_loop(scheduler, start, torch.Generator().manual_seed(1)), x)


def test_generic_loop_refuses_refined_self_conditioning_when_it_churns(tables_dir):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir, gamma=0.2, self_conditioning="refined")
    scheduler.set_timesteps(4)
    with pytest.raises(ValueError, match="needs the `churn` loop"):
        generic_loop(scheduler, torch.full((1, 15), 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# The scheduler API of diffusers
# ---------------------------------------------------------------------------------------------------------------------


def test_scale_model_input_is_the_identity_and_order_counts_calls_per_step(tables_dir):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir)
    sample = torch.randn(2, 30)
    assert scheduler.scale_model_input(sample, 3.0) is sample and scheduler.scale_model_input(sample) is sample
    assert scheduler.order == 1
    heun = EntropyRateScheduler.from_entropy_tables(tables_dir, solver="heun")
    assert heun.order == 2
    heun.set_timesteps(5)
    assert len(heun.timesteps) == len(heun) == 2 * 5 - 1 and bool(heun)
    assert len(EntropyRateScheduler.from_entropy_tables(tables_dir)) == 0  # before set_timesteps; still truthy
    assert bool(EntropyRateScheduler.from_entropy_tables(tables_dir))


def test_set_begin_index_resumes_a_run(tables_dir):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir)
    scheduler.set_timesteps(6)
    assert scheduler.begin_index is None
    x = initial_sample(scheduler, torch.Generator().manual_seed(0))
    states = [x]
    for t in scheduler.timesteps:
        x = scheduler.step(denoiser(x, t), t, x).prev_sample
        states.append(x)

    scheduler.set_timesteps(6)
    scheduler.set_begin_index(3)
    assert scheduler.begin_index == 3
    x = states[3]
    for t in scheduler.timesteps[3:]:
        x = scheduler.step(denoiser(x, t), t, x).prev_sample
    assert torch.equal(x, states[-1])
    scheduler.set_timesteps(6)  # a new run starts at the first call again
    assert scheduler.begin_index is None
    for bad in (-1, 6, 2.0, True):
        with pytest.raises(ValueError, match="begin_index"):
            scheduler.set_begin_index(bad)


def test_custom_sigmas(tables_dir):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir, gamma=0.1)
    grid = [40.0, 5.0, 1.0, 0.2, 0.08]
    scheduler.set_timesteps(sigmas=grid)
    assert scheduler.num_inference_steps == 5 and scheduler.init_noise_sigma == 40.0
    assert torch.equal(scheduler.sigmas, torch.tensor([*grid, 0.0]))
    assert scheduler.num_model_calls() == 5 and len(scheduler.timesteps) == 5
    x = churn_loop(scheduler, initial_sample(scheduler, torch.Generator().manual_seed(0)), torch.Generator())
    assert x.shape == (3, 45)
    for bad, match in (
        ([1.0], "at least|>= 2"),
        ([1.0, 2.0], "decreasing"),
        ([5.0, float("inf")], "finite"),
        ([5.0, 0.0], "> 0"),
        ("abc", "noise levels"),
    ):
        with pytest.raises(ValueError, match=match):
            scheduler.set_timesteps(sigmas=bad)
    with pytest.raises(ValueError, match="pass one"):
        scheduler.set_timesteps(4, sigmas=grid)


def test_add_noise_broadcasts_one_sigma(tables_dir):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir)
    scheduler.set_timesteps(8)
    x0, noise = torch.zeros(4, 6), torch.ones(4, 6)
    for sigma in (2.0, torch.tensor(2.0), torch.tensor([2.0]), scheduler.sigmas[2][None]):
        expected = float(sigma) if not isinstance(sigma, torch.Tensor) else sigma.item()
        assert torch.equal(scheduler.add_noise(x0, noise, sigma), torch.full((4, 6), expected))
    per_row = scheduler.add_noise(x0, noise, torch.arange(4.0))
    assert torch.equal(per_row[:, 0], torch.arange(4.0))


def test_step_output_as_dict_or_tuple(tables_dir):
    results = []
    for return_dict in (True, False):
        scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir)
        scheduler.set_timesteps(3)
        x = torch.full((2, 15), 0.7)
        out = scheduler.step(denoiser(x, scheduler.timesteps[0]), scheduler.timesteps[0], x, return_dict=return_dict)
        results.append(out if return_dict is False else (out.prev_sample, out.pred_original_sample))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_save_load_gives_the_same_steps(tables_dir, tmp_path):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir, gamma=0.3, solver="heun")
    scheduler.save_pretrained(tmp_path)
    loaded = EntropyRateScheduler.from_pretrained(tmp_path)
    outputs = []
    for s in (scheduler, loaded):
        s.set_timesteps(5)
        outputs.append(generic_loop(s, torch.full((2, 15), 0.5), torch.Generator().manual_seed(4)))
    assert torch.equal(*outputs)


# ---------------------------------------------------------------------------------------------------------------------
# Config names and readable configs
# ---------------------------------------------------------------------------------------------------------------------


def test_old_config_key_still_loads_without_noise(tables_dir, tmp_path, caplog):
    scheduler = EntropyRateScheduler.from_entropy_tables(tables_dir, noise_schedule="karras")
    scheduler.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    assert config["noise_schedule"] == "karras" and "sigma_schedule" not in config
    config["sigma_schedule"] = config.pop("noise_schedule")  # as version 0.1 wrote it
    (tmp_path / "scheduler_config.json").write_text(json.dumps(config))

    diffusers_logging.enable_propagation()
    try:
        with caplog.at_level(logging.INFO):
            loaded = EntropyRateScheduler.from_pretrained(tmp_path)
    finally:
        diffusers_logging.disable_propagation()
    assert loaded.config.noise_schedule == "karras" and "sigma_schedule" not in loaded.config
    assert "entropy_pdf" not in caplog.text and "sigma_schedule" not in caplog.text
    assert EntropyRateScheduler.from_config(loaded.config).config.noise_schedule == "karras"

    with pytest.warns(FutureWarning, match="noise_schedule"):
        old_keyword = EntropyRateScheduler(sigma_schedule="karras")
    assert old_keyword.config.noise_schedule == "karras"
    assert EntropyRateScheduler.from_config(old_keyword.config).config.noise_schedule == "karras"
    with pytest.raises(ValueError, match="keep only `noise_schedule`"):
        EntropyRateScheduler.from_config({**config, "noise_schedule": "entropy"})  # both names, different values
    with pytest.raises(ValueError, match="pass one of them"):
        EntropyRateScheduler(sigma_schedule="karras", noise_schedule="entropy")
    with pytest.raises(TypeError, match="unexpected keyword"):
        EntropyRateScheduler(noise_schedule="karras", sigma_scheudle="karras")


def test_edm_euler_reads_the_shared_keys(tables_dir):
    """`sigma_schedule` meant something else in EDMEulerScheduler; with our key renamed, its from_config works."""
    ours = EntropyRateScheduler.from_entropy_tables(tables_dir)
    edm = EDMEulerScheduler.from_config(ours.config)
    assert edm.config.sigma_schedule == "karras"
    assert (edm.config.sigma_min, edm.config.sigma_max, edm.config.sigma_data) == (0.002, 80.0, 0.5)


def test_repr_abbreviates_the_table(tables_dir):
    text = repr(EntropyRateScheduler.from_entropy_tables(tables_dir))
    assert len(text) < 1500 and "entropy_pdf='[128 floats" in text and "entropy_edges='[129 floats" in text


def test_string_values_in_a_config_file_name_the_key(tables_dir, tmp_path):
    EntropyRateScheduler.from_entropy_tables(tables_dir).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "scheduler_config.json").read_text())
    for key, value in (("sigma_max", "80.0"), ("terminal_sigma", "0.08"), ("s_noise", None)):
        broken = {**config, key: value}
        (tmp_path / "scheduler_config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=f"`{key}` must be a finite number"):
            EntropyRateScheduler.from_pretrained(tmp_path)
