"""The variational bound: parity with the official estimator, its statistics, and its input checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bitstream_diffusion import SDTConfig, SDTModel
from bitstream_diffusion.evaluation import VLBOutput, compute_vlb
from bitstream_diffusion.evaluation.vlb import vlb_terms
from bitstream_diffusion.evaluation.vlb_draws import VLBDraws, draw_vlb_noise, importance_weights

# The golden numbers come from the official estimator on the same models. Our float32 forward pass differs from the
# official one by up to ~1e-5 in the logits on this machine's kernels (tests/test_modeling_sdt.py allows 2e-5). The
# diffusion and prior terms are held to 1e-6 relative. The reconstruction term is ~1e-13 bits per bit: a sum of
# BCE = exp(-|logit|) of saturated logits (|logit| ~ 30), whose relative error *equals* the absolute logit error, so
# it is held to the logit tolerance of the model tests.
COMPONENT_RTOL = 1e-6
RECON_RTOL = 2e-5
COMPONENTS = ("vlb_bpd", "recon_bpd", "diff_bpd", "prior_bpd")


@pytest.fixture(scope="module")
def golden_vlb(golden_dir):
    cases = torch.load(golden_dir / "vlb" / "vlb_cases.pt", map_location="cpu", weights_only=True)
    meta = json.loads((golden_dir / "vlb" / "vlb_cases.json").read_text())
    return cases, meta


@pytest.fixture(scope="module")
def golden_models(golden_dir):
    models = {}
    for name in ("lm1b_tiny", "owt_tiny"):
        folder = golden_dir / "model" / name
        config = json.loads((folder / "official_config.json").read_text())
        models[name] = SDTModel.from_official_checkpoint(folder / "release.pt", config=config)
    return models


def _settings(case: dict) -> dict:
    settings, result = case["settings"], case["result"]
    return dict(
        batch_size=settings["B"],
        num_mc_samples=settings["K"],
        sigma_sampling=settings["sigma_sampling"],
        sigma_min=result["sigma_min_eval"],
        sigma_max=result["sigma_max_eval"],
        include_prior=settings["include_prior"],
    )


def _assert_matches_golden(values: dict[str, float], expected: dict[str, float]) -> dict[str, float]:
    errors = {}
    for name in COMPONENTS:
        rtol = RECON_RTOL if name == "recon_bpd" else COMPONENT_RTOL
        if expected[name] == 0.0:
            assert values[name] == 0.0, name
            errors[name] = 0.0
            continue
        errors[name] = abs(values[name] - expected[name]) / abs(expected[name])
        assert errors[name] <= rtol, (name, values[name], expected[name], errors[name])
    return errors


CASES = ["lm1b_loguniform_k1", "lm1b_lognormal_k3_prior", "lm1b_loguniform_k2_narrow", "owt_loguniform_k2"]


@pytest.mark.parametrize("name", CASES)
def test_seeded_generator_reproduces_official_bound(name, golden_vlb, golden_models):
    cases, meta = golden_vlb
    case = cases[name]
    bits = torch.cat(case["batches"])
    generator = torch.Generator().manual_seed(case["seed"])
    out = compute_vlb(
        golden_models[case["model"]], bits, generator=generator, show_progress=False, **_settings(case)
    )
    expected = meta[name]["result"]
    assert out.num_examples == expected["num_examples"] and out.num_bits == expected["S_dim"]
    assert out.num_mc_samples == expected["K"] and out.sigma_sampling == expected["sigma_sampling"]
    _assert_matches_golden(out.to_dict(), expected)


@pytest.mark.parametrize("name", CASES)
def test_draws_equal_the_official_model_inputs(name, golden_vlb):
    """The random inputs alone, bit for bit: the draw order and float32 arithmetic of the official estimator."""
    cases, _ = golden_vlb
    case = cases[name]
    settings = _settings(case)
    generator = torch.Generator().manual_seed(case["seed"])
    for index, batch in enumerate(case["batches"]):
        draws = draw_vlb_noise(
            batch.float(),
            settings["num_mc_samples"],
            sigma_sampling=settings["sigma_sampling"],
            sigma_min=settings["sigma_min"],
            sigma_max=settings["sigma_max"],
            generator=generator,
        )
        recon_sigma, diff_sigma = case["call_sigmas"][2 * index : 2 * index + 2]
        recon_input, diff_input = case["call_noisy_bits"][2 * index : 2 * index + 2]
        assert torch.equal(recon_sigma, torch.full_like(recon_sigma, settings["sigma_min"]))
        assert torch.equal(draws.recon_noisy_bits, recon_input)
        assert torch.equal(draws.sigmas.reshape(-1), diff_sigma)
        assert torch.equal(draws.noisy_bits.reshape(diff_input.shape), diff_input)


@pytest.mark.parametrize("name", CASES)
def test_injected_official_inputs_give_official_bound(name, golden_vlb, golden_models):
    """The arithmetic alone: the recorded official model inputs, injected, without any generator."""
    cases, meta = golden_vlb
    case = cases[name]
    settings = _settings(case)
    model = golden_models[case["model"]]
    batch_size, num_draws = settings["batch_size"], settings["num_mc_samples"]
    totals = {"recon": 0.0, "diff": 0.0, "prior": 0.0}
    num_rows = 0
    for index, batch in enumerate(case["batches"]):
        x0 = batch.float()
        sigmas = case["call_sigmas"][2 * index + 1].view(batch_size, num_draws)
        draws = VLBDraws(
            recon_noisy_bits=case["call_noisy_bits"][2 * index],
            sigmas=sigmas,
            noisy_bits=case["call_noisy_bits"][2 * index + 1].view(batch_size, num_draws, -1),
            importance_weights=importance_weights(
                sigmas.log(),
                sigma_sampling=settings["sigma_sampling"],
                sigma_min=settings["sigma_min"],
                sigma_max=settings["sigma_max"],
            ),
        )
        terms = vlb_terms(
            model, x0, draws, sigma_min=settings["sigma_min"], sigma_max=settings["sigma_max"],
            include_prior=settings["include_prior"],
        )
        for key in totals:
            totals[key] += float(getattr(terms, key).double().sum())
        num_rows += batch.shape[0]
    denominator = num_rows * x0.shape[1] * math.log(2.0)
    values = {f"{key}_bpd": total / denominator for key, total in totals.items()}
    values["vlb_bpd"] = values["recon_bpd"] + values["diff_bpd"] + values["prior_bpd"]
    _assert_matches_golden(values, meta[name]["result"])


def _matched_filter_model() -> SDTModel:
    """The official initialisation: adaLN-Zero makes the network output exactly 0, so D is the matched filter."""
    model = SDTModel(SDTConfig(bits_per_token=15, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, content_dim=8, head_hidden_size=16)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 30), torch.tensor([1.0])).network_logits.abs().max() == 0
    return model


def test_bound_is_one_bit_per_bit_for_fair_coins_with_the_exact_denoiser():
    """For i.i.d. fair bits the matched filter is the exact posterior mean, so the bound is the entropy, 1 bit/bit
    (up to the ends of the integral, here below 1e-4). An error in a weight, a sigma power or the units fails."""
    bits = torch.randint(0, 2, (32, 8 * 15), generator=torch.Generator().manual_seed(0))
    model = _matched_filter_model()
    for sampling in ("log-uniform", "log-normal"):
        out = compute_vlb(model, bits, batch_size=32, num_mc_samples=64, sigma_sampling=sampling,
                          include_prior=True, generator=torch.Generator().manual_seed(100), show_progress=False)
        assert abs(out.vlb_bpd - 1.0) < 4 * out.vlb_bpd_stderr, (sampling, out.vlb_bpd, out.vlb_bpd_stderr)
        assert out.vlb_bpd_stderr < 0.05 and abs(out.vlb_bpd - 1.0) < 0.1
        assert out.recon_bpd < 1e-9
        assert out.prior_bpd == pytest.approx(0.5 * float(bits.float().mean()) / 80.0**2 / math.log(2.0), rel=1e-6)


def test_a_worse_denoiser_gets_a_higher_bound(tiny_sdt_factory):
    """Same draws for both models (same seed): the random network is worse than the exact denoiser on fair bits."""
    bits = torch.randint(0, 2, (32, 8 * 15), generator=torch.Generator().manual_seed(1))
    exact = compute_vlb(_matched_filter_model(), bits, batch_size=32, num_mc_samples=4,
                        generator=torch.Generator().manual_seed(2), show_progress=False)
    worse = compute_vlb(tiny_sdt_factory(seed=0, scale=0.3), bits, batch_size=32, num_mc_samples=4,
                        generator=torch.Generator().manual_seed(2), show_progress=False)
    paired = worse.vlb_bpd_per_row - exact.vlb_bpd_per_row
    assert paired.mean() > 4 * paired.std() / math.sqrt(paired.numel())


def test_output_fields_are_consistent(tiny_sdt_factory):
    model = tiny_sdt_factory(seed=0, scale=0.1)
    bits = torch.randint(0, 2, (7, 4 * 15), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    out = compute_vlb(model, bits, batch_size=3, num_mc_samples=3, generator=torch.Generator().manual_seed(4),
                      include_prior=True, show_progress=False)
    assert isinstance(out, VLBOutput)
    assert out.num_examples == 7 and out.num_bits == 60 and out.bits_per_token == 15
    for name in ("vlb", "recon", "diff", "prior"):
        per_row = getattr(out, f"{name}_bpd_per_row")
        assert per_row.shape == (7,) and per_row.dtype == torch.float64
        assert float(per_row.mean()) == pytest.approx(getattr(out, f"{name}_bpd"), rel=1e-12)
    assert out.vlb_bpd == pytest.approx(out.recon_bpd + out.diff_bpd + out.prior_bpd, rel=1e-12)
    assert out.bits_per_token_bound == pytest.approx(out.vlb_bpd * 15, rel=1e-12)
    assert out.ppl_bound == pytest.approx(2.0 ** out.bits_per_token_bound, rel=1e-12)
    assert out.vlb_bpd_stderr == pytest.approx(float(out.vlb_bpd_per_row.std() / math.sqrt(7)), rel=1e-9)
    assert 0 < out.mc_stderr < math.inf
    assert torch.allclose(out.bits_per_row, out.vlb_bpd_per_row * 60)
    as_dict = out.to_dict()
    json.dumps(as_dict)
    assert "vlb_bpd_per_row" not in as_dict and len(out.to_dict(per_row=True)["vlb_bpd_per_row"]) == 7


def test_mc_stderr_needs_two_draws_and_stderr_two_rows(tiny_sdt_factory):
    model = tiny_sdt_factory(seed=0, scale=0.1)
    bits = torch.randint(0, 2, (1, 30), generator=torch.Generator().manual_seed(3))
    out = compute_vlb(model, bits, batch_size=1, generator=torch.Generator().manual_seed(4), show_progress=False)
    assert math.isnan(out.mc_stderr) and math.isnan(out.vlb_bpd_stderr)


def test_more_draws_shrink_the_monte_carlo_error():
    bits = torch.randint(0, 2, (16, 4 * 15), generator=torch.Generator().manual_seed(5))
    model = _matched_filter_model()
    errors = [
        compute_vlb(model, bits, batch_size=16, num_mc_samples=k, generator=torch.Generator().manual_seed(6),
                    show_progress=False).mc_stderr
        for k in (2, 32)
    ]
    assert errors[1] < 0.5 * errors[0]  # ~1/sqrt(K): a factor of 4 expected


def test_seed_determinism_and_dtype_independence(tiny_sdt_factory):
    model = tiny_sdt_factory(seed=1, scale=0.1)
    bits = torch.randint(0, 2, (5, 30), generator=torch.Generator().manual_seed(7))
    runs = [
        compute_vlb(model, b, batch_size=2, num_mc_samples=2, generator=torch.Generator().manual_seed(8),
                    show_progress=False)
        for b in (bits, bits.bool(), bits.float(), bits.to(torch.int32))
    ]
    for run in runs[1:]:
        assert torch.equal(run.vlb_bpd_per_row, runs[0].vlb_bpd_per_row)
    other = compute_vlb(model, bits, batch_size=2, num_mc_samples=2, generator=torch.Generator().manual_seed(9),
                        show_progress=False)
    assert not torch.equal(other.vlb_bpd_per_row, runs[0].vlb_bpd_per_row)


def test_global_generator_is_used_without_a_generator(tiny_sdt_factory):
    model = tiny_sdt_factory(seed=1, scale=0.1)
    bits = torch.randint(0, 2, (3, 30), generator=torch.Generator().manual_seed(7))
    torch.manual_seed(11)
    implicit = compute_vlb(model, bits, batch_size=3, show_progress=False)
    explicit = compute_vlb(model, bits, batch_size=3, generator=torch.Generator().manual_seed(11), show_progress=False)
    assert implicit.vlb_bpd == explicit.vlb_bpd


def test_bf16_autocast_is_close_and_model_mode_is_restored(tiny_sdt_factory):
    model = tiny_sdt_factory(seed=1, scale=0.1).train()
    bits = torch.randint(0, 2, (4, 60), generator=torch.Generator().manual_seed(7))
    full = compute_vlb(model, bits, batch_size=4, num_mc_samples=2, generator=torch.Generator().manual_seed(1),
                       show_progress=False)
    assert model.training  # eval inside, restored after
    half = compute_vlb(model, bits, batch_size=4, num_mc_samples=2, generator=torch.Generator().manual_seed(1),
                       autocast_dtype=torch.bfloat16, show_progress=False)
    assert half.vlb_bpd == pytest.approx(full.vlb_bpd, rel=0.05)
    assert half.vlb_bpd != full.vlb_bpd  # autocast really ran


def test_progress_bar_can_be_shown_and_hidden(tiny_sdt_factory, capsys):
    model = tiny_sdt_factory(seed=1, scale=0.1)
    bits = torch.randint(0, 2, (2, 30), generator=torch.Generator().manual_seed(7))
    compute_vlb(model, bits, batch_size=1, generator=torch.Generator().manual_seed(1), show_progress=True)
    assert "VLB" in capsys.readouterr().err
    compute_vlb(model, bits, batch_size=1, generator=torch.Generator().manual_seed(1), show_progress=False)
    assert "VLB" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "bits, kwargs, error, match",
    [
        (torch.zeros(30), {}, ValueError, r"\[N, S\].*unsqueeze"),
        (torch.zeros(2, 29), {}, ValueError, "multiple of the model's bits_per_token=15"),
        (torch.zeros(0, 30), {}, ValueError, "empty"),
        (torch.full((2, 30), 0.5), {}, ValueError, "only 0 and 1, found 0.5"),
        (torch.full((2, 30), 2, dtype=torch.long), {}, ValueError, "only 0 and 1, found 2"),
        (torch.full((2, 30), math.nan), {}, ValueError, "NaN"),
        (torch.zeros(2, 30, dtype=torch.complex64), {}, TypeError, "complex64"),
        ([[0, 1]], {}, TypeError, "torch.Tensor"),
        (torch.zeros(2, 30), {"sigma_min": 0.0}, ValueError, "sigma_min"),
        (torch.zeros(2, 30), {"sigma_min": 1.0, "sigma_max": 1.0}, ValueError, "larger than sigma_min"),
        (torch.zeros(2, 30), {"num_mc_samples": 0}, ValueError, r"K, the log-sigma draws"),
        (torch.zeros(2, 30), {"sigma_sampling": "uniform"}, ValueError, "Unknown sigma_sampling"),
        (torch.zeros(2, 30), {"batch_size": 0}, ValueError, "batch_size"),
        (torch.zeros(2, 30), {"autocast_dtype": torch.int8}, ValueError, "autocast_dtype"),
    ],
)
def test_bad_input_is_named(tiny_sdt_factory, bits, kwargs, error, match):
    model = tiny_sdt_factory(seed=1, scale=0.1)
    with pytest.raises(error, match=match):
        compute_vlb(model, bits, **{"batch_size": 2, "show_progress": False, **kwargs})


def test_perplexity_bound_of_a_hopeless_model_is_infinite_not_an_error():
    from bitstream_diffusion.evaluation.vlb import _power_of_two

    assert _power_of_two(10.0) == 1024.0 and _power_of_two(5000.0) == math.inf
