"""bitstream_loss against golden/loss (the official binary_score_interpolation_loss), and its input checks."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion.training import bitstream_loss, loss_weight


@pytest.fixture(scope="module")
def loss_golden(golden_dir):
    return torch.load(golden_dir / "loss" / "loss_cases.pt", map_location="cpu", weights_only=True)


def _parse_case(key: str) -> dict:
    loss_type, *parts = key.split("|")
    settings = dict(part.split("=") for part in parts)
    return {
        "loss_type": loss_type,
        "weighting": settings["weighting"],
        "sigma_data": float(settings["sigma_data"]),
        "masked": settings["mask"] == "yes",
        "logits_3d": settings["logits"] == "3d",
    }


def test_golden_cases_cover_every_variant(loss_golden):
    cases = [_parse_case(key) for key in loss_golden["cases"]]
    assert {c["loss_type"] for c in cases} == {"binary_sm", "binary_ce"}
    assert any(c["sigma_data"] == 0.43 for c in cases)
    assert any(c["masked"] for c in cases) and any(c["logits_3d"] for c in cases)
    assert any(c["weighting"] == "none" for c in cases)


def test_loss_matches_golden(loss_golden):
    inputs = loss_golden["inputs"]
    for key, expected in loss_golden["cases"].items():
        case = _parse_case(key)
        logits = inputs["logits"].unsqueeze(-1) if case["logits_3d"] else inputs["logits"]
        loss, mse = bitstream_loss(
            logits,
            inputs["x0"],
            inputs["sigma"],
            sigma_data=case["sigma_data"],
            loss_type=case["loss_type"],
            weighting=case["weighting"],
            mask=inputs["mask"] if case["masked"] else None,
        )
        weight = loss_weight(inputs["sigma"], sigma_data=case["sigma_data"], weighting=case["weighting"])
        assert loss.shape == () and loss.dtype == torch.float32
        assert mse.shape == (inputs["logits"].shape[0],)
        torch.testing.assert_close(loss, expected["loss"], rtol=1e-6, atol=0, msg=key)
        torch.testing.assert_close(mse, expected["entropy_metric"], rtol=1e-6, atol=0, msg=key)
        torch.testing.assert_close(weight, expected["weight_per_example"], rtol=1e-6, atol=0, msg=key)


def test_loss_is_float32_and_differentiable_from_bf16():
    torch.manual_seed(0)
    logits = torch.randn(3, 8, dtype=torch.bfloat16, requires_grad=True)
    x0 = torch.randint(0, 2, (3, 8), dtype=torch.uint8)
    loss, mse = bitstream_loss(logits, x0, torch.tensor([0.1, 1.0, 10.0]))
    assert loss.dtype == torch.float32 and mse.dtype == torch.float32
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


def test_loss_at_initialisation_is_about_one_for_large_sigma():
    # A zero network at sigma = 80 gives p ~ 0.5 (matched filter ~ 0): lambda * 0.25 ~ 1 (REFERENCE_TRAINING §4.2).
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 2, (4, 256), generator=gen).float()
    sigma = torch.full((4,), 80.0)
    logits = ((x0 + sigma[:, None] * torch.randn(4, 256, generator=gen)) - 0.5) / sigma[:, None] ** 2
    loss, mse = bitstream_loss(logits, x0, sigma)
    assert abs(loss.item() - 1.0) < 2e-3
    assert torch.allclose(mse, torch.full((4,), 0.25), atol=2e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_type": "mse"}, "loss_type"),
        ({"weighting": "karras"}, "weighting"),
        ({"sigma": torch.tensor([1.0, 0.0])}, "sigma must be finite and > 0"),
        ({"sigma": torch.tensor([1.0, float("nan")])}, "sigma must be finite and > 0"),
        ({"sigma": torch.tensor([1.0])}, "one noise level per example"),
        ({"x0": torch.zeros(2, 5)}, "does not match logits"),
        ({"logits": torch.zeros(2, 6, 2)}, r"\[B, S, 1\]"),
        ({"logits": torch.tensor([[0.0, float("nan")] * 3] * 2)}, "NaN"),
        ({"mask": torch.ones(2, 5)}, "mask"),
    ],
)
def test_loss_rejects_bad_inputs(kwargs, match):
    args = {"logits": torch.zeros(2, 6), "x0": torch.zeros(2, 6), "sigma": torch.tensor([1.0, 2.0])}
    options = {}
    for name, value in kwargs.items():
        (args if name in args else options)[name] = value
    with pytest.raises(ValueError, match=match):
        bitstream_loss(args["logits"], args["x0"], args["sigma"], **options)
