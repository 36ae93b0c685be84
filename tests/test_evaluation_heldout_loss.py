"""Held-out training loss: it ranks a trained model above untrained ones, is the trainer's loss, and is reproducible."""

from __future__ import annotations

import math

import pytest
import torch

from bitstream_diffusion import SDTConfig, SDTModel
from bitstream_diffusion.codecs import ids_to_bits, pack_lm1b_lines
from bitstream_diffusion.evaluation import HeldoutLossOutput, compute_heldout_loss
from bitstream_diffusion.evaluation.heldout_loss import _row_draws, _row_seed
from bitstream_diffusion.training import bitstream_loss
from bitstream_diffusion.training.sigma_sampling import sample_lognormal_sigma

GRID = [0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 20.0]
TOKENS = 16
CONFIG = dict(bits_per_token=15, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              content_dim=8, head_hidden_size=16, max_position_embeddings=TOKENS)


@pytest.fixture(scope="module")
def lm1b_bits(bert_tokenizer, wiki_summaries):
    """Real LM1B-format rows (bert-base-uncased, [SEP]-joined, 16 tokens): 384 to train on, 32 held out."""
    rows = pack_lm1b_lines(wiki_summaries[:150], bert_tokenizer, seq_len=TOKENS).rows
    assert rows.shape[0] >= 416
    bits = ids_to_bits(rows, 15)
    return bits[:384], bits[384:416]


def _train(model: SDTModel, bits: torch.Tensor, steps: int = 60, batch: int = 16) -> SDTModel:
    """The CoBit objective (log-normal sigma, EDM weight, no self-conditioning) for a few Adam steps."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        index = torch.randint(0, bits.shape[0], (batch,), generator=generator)
        x0 = bits[index].float()
        sigma = sample_lognormal_sigma(batch, generator=generator)
        noisy = x0 + sigma[:, None] * torch.randn(x0.shape, generator=generator)
        loss, _ = bitstream_loss(model(noisy, sigma, self_cond=torch.zeros_like(noisy)).logits, x0, sigma)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def random_model() -> SDTModel:
    """Every weight random (the zero-initialised adaLN layers too), so the network matters."""
    model = SDTModel(SDTConfig(**CONFIG)).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


@pytest.fixture(scope="module")
def models(lm1b_bits, random_model):
    torch.manual_seed(0)
    initial = SDTModel(SDTConfig(**CONFIG)).eval()  # the official init: the matched filter alone
    trained = SDTModel(SDTConfig(**CONFIG))
    trained.load_state_dict(initial.state_dict())
    _train(trained, lm1b_bits[0])
    return {"initial": initial, "trained": trained, "random": random_model}


def _loss(model, bits, seed=0, **kwargs) -> HeldoutLossOutput:
    kwargs = {"batch_size": 16, "show_progress": False, **kwargs}
    return compute_heldout_loss(model, bits, generator=torch.Generator().manual_seed(seed), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["grid", "draws"])
def test_trained_model_has_lower_heldout_loss(models, lm1b_bits, mode):
    """Training on other rows of the same text lowers the loss on held-out rows, beyond the paired noise."""
    heldout = lm1b_bits[1]
    kwargs = {"sigmas": GRID} if mode == "grid" else {"num_draws": 4}
    results = {name: _loss(model, heldout, **kwargs) for name, model in models.items()}
    for baseline in ("initial", "random"):
        paired = results[baseline].per_row_loss - results["trained"].per_row_loss  # same noise for both
        assert paired.mean() > 4 * paired.std() / math.sqrt(paired.numel()), (baseline, paired.mean())
    assert results["trained"].loss < 0.95 * results["initial"].loss


def test_grid_levels_and_weights(random_model, lm1b_bits):
    out = _loss(random_model, lm1b_bits[1], sigmas=GRID, sigma_weights=[1, 1, 1, 2, 1, 1, 1])
    assert out.sigmas.tolist() == pytest.approx(GRID)
    assert out.per_example_loss.shape == (32, len(GRID)) and out.loss_per_sigma.shape == (len(GRID),)
    assert float(out.sigma_weights.sum()) == pytest.approx(1.0) and out.sigma_weights[3] == pytest.approx(0.25)
    assert out.loss == pytest.approx(float((out.loss_per_sigma * out.sigma_weights).sum()), rel=1e-12)
    assert out.loss_stderr == pytest.approx(float(out.per_row_loss.std() / math.sqrt(32)), rel=1e-9)
    assert torch.equal(out.per_example_sigma, torch.tensor(GRID).expand(32, -1))
    assert (out.loss_stderr_per_sigma > 0).all()
    # the EDM weight: lambda(sigma) * mse, level by level
    sigma2 = torch.tensor(GRID, dtype=torch.float64) ** 2
    weight = (sigma2 + 0.25) / (sigma2 * 0.25)
    assert torch.allclose(out.loss_per_sigma, weight * out.mse_per_sigma, rtol=1e-6)
    assert set(out.to_dict()) >= {"loss", "loss_stderr", "mse", "loss_per_sigma", "sigmas"}


def test_draws_follow_the_training_lognormal(random_model, lm1b_bits):
    out = _loss(random_model, lm1b_bits[1][:16], num_draws=64, self_conditioning_prob=0.0, batch_size=16)
    log_sigma = out.per_example_sigma.double().log()
    assert out.per_example_sigma.shape == (16, 64) and out.loss_per_sigma is None
    assert ((out.per_example_sigma >= 0.002) & (out.per_example_sigma <= 80)).all()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.2)  # 1024 draws: standard error 0.04
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.15)
    assert len(set(out.per_example_sigma.flatten().tolist())) == 1024  # every row and draw its own level


def _manual_rows(model, bits, seed, sigma):
    """Each row's noise and coin from its own stream, as compute_heldout_loss draws them."""
    base = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(seed)))
    draws = [_row_draws(_row_seed(base, i), 1, bits.shape[1], torch.tensor([sigma]), {}) for i in range(len(bits))]
    noise = torch.stack([d[1][0] for d in draws])
    coin = torch.stack([d[2][0] for d in draws])
    return bits.float(), bits.float() + sigma * noise, torch.full((len(bits),), sigma), coin


def test_loss_is_the_trainers_bitstream_loss(random_model, lm1b_bits):
    """The same noisy rows through the training loss function give the same number."""
    model, bits = random_model, lm1b_bits[1][:6]
    out = _loss(model, bits, seed=5, sigmas=[0.7], self_conditioning_prob=0.0)
    x0, noisy, sigma, _ = _manual_rows(model, bits, 5, 0.7)
    with torch.no_grad():
        logits = model(noisy, sigma, self_cond=None).logits  # prob 0: the "no estimate" input, as in training
    expected, mse = bitstream_loss(logits, x0, sigma)
    assert out.loss == pytest.approx(float(expected), rel=1e-6)
    assert out.mse == pytest.approx(float(mse.mean()), rel=1e-6)
    ce = _loss(model, bits, seed=5, sigmas=[0.7], self_conditioning_prob=0.0, loss_type="binary_ce")
    assert ce.loss == pytest.approx(float(bitstream_loss(logits, x0, sigma, loss_type="binary_ce")[0]), rel=1e-6)


def test_self_conditioning_follows_the_training_recipe(random_model, lm1b_bits):
    """Rows whose coin is below the probability get the model's first-pass estimate, the others "all zeros"."""
    model, bits = random_model, lm1b_bits[1][:8]
    out = _loss(model, bits, seed=6, sigmas=[0.7], self_conditioning_prob=0.5)
    x0, noisy, sigma, coin = _manual_rows(model, bits, 6, 0.7)
    selected = coin < 0.5
    assert 0 < int(selected.sum()) < 8  # both kinds of rows occur with this seed
    with torch.no_grad():
        estimate = torch.sigmoid(model(noisy, sigma, self_cond=None).logits)
        self_cond = torch.where(selected[:, None], estimate, torch.zeros_like(estimate))
        logits = model(noisy, sigma, self_cond=self_cond).logits
    expected = 4 * (0.49 + 0.25) / 0.49 * ((torch.sigmoid(logits) - x0) ** 2).mean(dim=1)  # EDM weight at 0.7
    torch.testing.assert_close(out.per_row_loss, expected.double(), rtol=1e-5, atol=0)
    never = _loss(model, bits, seed=6, sigmas=[0.7], self_conditioning_prob=0.0)
    assert not torch.allclose(never.per_row_loss, out.per_row_loss)


def test_deterministic_under_a_seed_and_independent_of_batch_size(random_model, lm1b_bits):
    model, bits = random_model, lm1b_bits[1][:10]
    reference = _loss(model, bits, seed=3, num_draws=2, batch_size=10)
    again = _loss(model, bits, seed=3, num_draws=2, batch_size=10)
    assert torch.equal(again.per_example_loss, reference.per_example_loss)
    for batch_size in (1, 3):
        other = _loss(model, bits, seed=3, num_draws=2, batch_size=batch_size)
        assert torch.equal(other.per_example_sigma, reference.per_example_sigma)
        torch.testing.assert_close(other.per_example_loss, reference.per_example_loss, rtol=1e-5, atol=1e-7)
    # the first rows do not depend on how many rows follow
    prefix = _loss(model, bits[:4], seed=3, num_draws=2, batch_size=10)
    torch.testing.assert_close(prefix.per_example_loss, reference.per_example_loss[:4], rtol=1e-5, atol=1e-7)
    assert _loss(model, bits, seed=4, num_draws=2).loss != reference.loss


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigmas": []}, "non-empty"),
        ({"sigmas": [0.5, -1.0]}, "> 0"),
        ({"sigmas": [0.5, 1.0], "sigma_weights": [1.0]}, "one weight per level"),
        ({"sigmas": [0.5, 1.0], "sigma_weights": [0.0, 0.0]}, "not all 0"),
        ({"num_draws": 0}, "num_draws"),
        ({"sigma_min": 1.0, "sigma_max": 0.5}, "sigma_min < sigma_max"),
        ({"self_conditioning_prob": 1.5}, "self_conditioning_prob"),
        ({"loss_type": "mse"}, "loss_type"),
        ({"weighting": "karras"}, "weighting"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_settings_are_named(random_model, kwargs, match):
    bits = torch.zeros(2, 30)
    with pytest.raises(ValueError, match=match):
        _loss(random_model, bits, **kwargs)


def test_bad_bits_are_named(random_model):
    with pytest.raises(ValueError, match="only 0 and 1"):
        _loss(random_model, torch.full((2, 30), 0.3))
