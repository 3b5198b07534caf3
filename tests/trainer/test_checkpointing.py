"""Activation checkpointing (``activation_checkpointing: true``): the policy's gradients are the same, the
forward with grad keeps fewer bytes for the backward, and passes without grad do not change."""

from __future__ import annotations

import copy

import torch

from tests.tiny_models import tiny_pair
from cgpo.trainer.distributed import checkpoint_activations
from cgpo.trainer.logprobs import eval_mode, sequence_logprobs
from cgpo.trainer.step import _backward_through_policy

PROMPTS = [[1, 40, 41, 42], [1, 43], [1, 44, 45]] * 2
RESPONSES = [[50, 51, 52], [53], [54, 55], [56, 57, 58, 59], [60], [61, 62]]
GRAD = torch.tensor([0.5, -1.0, 0.25, 2.0, 0.0, -0.75])


def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.set_num_threads(1)
    plain, _ = tiny_pair()
    return plain, checkpoint_activations(copy.deepcopy(plain))


def saved_bytes(model: torch.nn.Module) -> int:
    """Bytes autograd keeps for the backward of one forward with grad over the batch."""
    kept = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), eval_mode(model):
        sequence_logprobs(model, PROMPTS, RESPONSES, micro_batch_size=len(PROMPTS))
    return kept


def test_the_gradient_is_the_same_with_and_without_checkpointing():
    plain, checkpointed = pair()
    for model in (plain, checkpointed):
        with eval_mode(model):
            _backward_through_policy(model, (PROMPTS, RESPONSES), GRAD, (0.7, 2))
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        assert a.grad is not None, name
        assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_checkpointing_keeps_fewer_bytes_and_leaves_passes_without_grad_alone():
    plain, checkpointed = pair()
    assert saved_bytes(checkpointed) < 0.6 * saved_bytes(plain)
    with torch.no_grad():
        a = sequence_logprobs(plain, PROMPTS, RESPONSES).logprobs
        b = sequence_logprobs(checkpointed, PROMPTS, RESPONSES).logprobs
    assert torch.equal(a, b)
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in checkpointed.named_parameters()]


def test_a_deep_copy_of_a_checkpointed_model_runs_its_own_weights():
    _, checkpointed = pair()
    twin = copy.deepcopy(checkpointed)
    with torch.no_grad():
        for layer in twin.model.layers:
            for p in layer.parameters():
                p.zero_()
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            a = sequence_logprobs(checkpointed, PROMPTS, RESPONSES).logprobs
            b = sequence_logprobs(twin, PROMPTS, RESPONSES).logprobs
        assert not torch.allclose(a, b)


def test_the_training_run_wraps_every_layer_of_the_policy_only(world):
    from tests.worlds import write_config
    from cgpo.trainer.config import load_config
    from cgpo.trainer.distributed import decoder_layers
    from cgpo.trainer.setup import training_run

    config = load_config(write_config(world, "recomputed", steps=1), ["activation_checkpointing=true"])
    with training_run(config, resume=False, log=lambda _: None) as run:
        assert all(layer.forward.__name__ == "recomputed" for layer in decoder_layers(run.models.policy))
        assert not any(layer.forward.__name__ == "recomputed" for layer in decoder_layers(run.models.reference))
