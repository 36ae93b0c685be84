"""The NaN stop: a NaN or an inf is caught where it first appears in the training step (the model input, the
self-conditioning estimate, the loss), the weights before a checkpoint, and every stop says the step, the last good
checkpoint and how to resume with a lower learning rate."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bitstream_diffusion.training import NonFiniteMonitor, TrainingDivergedError, TrainingSigmaSampler, TrainingState
from bitstream_diffusion.training.divergence import check_finite_weights
from bitstream_diffusion.training.objective import noisy_batch

ONE_PROCESS = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
STATE = TrainingState(global_step=41, epoch=2, batches_in_epoch=7, micro_batches=90)


def _diverged(model) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))


def _batch(model, monitor, *, prob: float = 1.0):
    ids = torch.randint(0, 2**8, (2, 4), generator=torch.Generator().manual_seed(0))
    return noisy_batch(model, ids, bits_per_token=8, sigma_sampler=TrainingSigmaSampler(), step=0, tables=None,
                       generator=torch.Generator().manual_seed(1), self_conditioning_prob=prob, monitor=monitor)


def test_a_diverged_model_stops_at_the_self_conditioning_estimate_not_with_the_models_input_error(tiny_sdt_factory):
    model = tiny_sdt_factory(bits_per_token=8, max_position_embeddings=4)
    _diverged(model)
    with pytest.raises(ValueError, match="self_cond"):  # without a monitor the model rejects its NaN input
        _batch(model, None)
    monitor = NonFiniteMonitor()
    x0, sigma, logits = _batch(model, monitor)  # the estimate is screened: the step goes on to the check
    assert monitor.first()[0] == "self-conditioning estimate" and "loss" in monitor.found
    with pytest.raises(TrainingDivergedError) as error:
        monitor.check(ONE_PROCESS, STATE, "out/checkpoint-40")
    message = str(error.value)
    assert message.startswith("Training stopped: the self-conditioning estimate is nan at optimizer step 42")
    assert "The last good checkpoint is out/checkpoint-40" in message
    assert "--resume_from_checkpoint latest and a lower --learning_rate" in message


def test_without_self_conditioning_the_loss_is_what_goes_wrong(tiny_sdt_factory):
    model = tiny_sdt_factory(bits_per_token=8, max_position_embeddings=4)
    _diverged(model)
    monitor = NonFiniteMonitor()
    _batch(model, monitor, prob=0.0)
    assert monitor.first() == ("loss", pytest.approx(float("nan"), nan_ok=True))
    with pytest.raises(TrainingDivergedError, match="the loss is nan at optimizer step 42"):
        monitor.check(ONE_PROCESS, STATE, None)


def test_a_healthy_step_passes_and_the_earliest_quantity_wins():
    monitor = NonFiniteMonitor()
    finite = torch.ones(3)
    assert monitor.screen("model input", finite) is finite
    monitor.check(ONE_PROCESS, STATE, None)  # nothing found: no error
    monitor.observe("loss", torch.tensor([1.0, float("inf")]))
    screened = monitor.screen("model input", torch.tensor([float("nan"), 2.0]), fill=1.0)
    assert torch.equal(screened, torch.tensor([1.0, 2.0]))
    assert monitor.first()[0] == "model input"
    with pytest.raises(TrainingDivergedError, match="the model input is nan"):
        monitor.check(ONE_PROCESS, STATE, None)
    with pytest.raises(ValueError, match="unknown step quantity"):
        monitor.observe("gradients", finite)


def test_weights_are_checked_before_a_checkpoint():
    good = [torch.ones(2, 2), torch.zeros(3)]
    check_finite_weights(good, ONE_PROCESS, STATE, None)
    with pytest.raises(TrainingDivergedError) as error:
        check_finite_weights([*good, torch.tensor([float("inf")])], ONE_PROCESS, STATE, "out/checkpoint-40")
    message = str(error.value)
    assert "the weights are inf at optimizer step 41" in message and "no checkpoint was written" in message
    assert "out/checkpoint-40" in message
