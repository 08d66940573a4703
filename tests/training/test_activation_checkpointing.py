"""Activation checkpointing applied from outside: same names, same state dict, same numbers, less saved memory."""

from __future__ import annotations

import copy

import pytest
import torch
from support.denoiser import randomize, tiny_inputs

from animatex_train.models.config import tiny_denoiser_config
from animatex_train.models.official import to_official_state_dict
from animatex_train.models.unet import AnimateXDenoiser
from animatex_train.training.activation_checkpointing import (
    apply_activation_checkpointing,
    is_checkpointed,
    outermost_blocks,
    remove_activation_checkpointing,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: with another torch process on the 2 cores, 2 threads run these ~40x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0) -> AnimateXDenoiser:
    torch.manual_seed(seed)
    model = AnimateXDenoiser(tiny_denoiser_config())
    randomize(model, seed)
    return model.train()  # dropout on: the recompute must draw the same masks


def _loss_and_grads(model: AnimateXDenoiser, seed: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    latents, t, cond = tiny_inputs(model.config)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(latents, t, cond, dropout_generator=torch.Generator().manual_seed(seed)).square().mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _saved_bytes(model: AnimateXDenoiser) -> int:
    """Bytes of distinct activation storages autograd keeps for backward after one forward (parameters excluded)."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = storage.nbytes()
        return tensor

    latents, t, cond = tiny_inputs(model.config)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(latents, t, cond)
    del out
    return sum(seen.values())


def test_names_state_dict_and_official_layout_unchanged():
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    official = set(to_official_state_dict(model))
    count = apply_activation_checkpointing(model)
    assert count == len(outermost_blocks(model)) > 0
    assert [n for n, _ in model.named_parameters()] == names  # EMA shadow names and optimizer prefixes keep working
    state = model.state_dict()
    assert list(state) == list(keys) and all(torch.equal(state[k], keys[k]) for k in keys)
    assert set(to_official_state_dict(model)) == official
    model.load_state_dict(keys)  # and loads back
    assert apply_activation_checkpointing(model) == 0  # idempotent


def test_only_outermost_blocks_are_wrapped():
    model = _model()
    blocks = model.checkpoint_blocks()
    outer = outermost_blocks(model)
    apply_activation_checkpointing(model)
    for block in blocks:
        nested = any(block is not o and any(m is block for m in o.modules()) for o in outer)
        assert is_checkpointed(block) == (not nested)


def test_loss_and_gradients_equal_without_checkpointing():
    reference = _model()
    expected_loss, expected_grads = _loss_and_grads(reference)
    model = _model()
    apply_activation_checkpointing(model)
    loss, grads = _loss_and_grads(model)
    # The same kernels run on the same inputs (and dropout masks: the RNG state is restored for the recompute).
    assert torch.equal(loss, expected_loss)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=0, atol=0, msg=name)


def test_saves_less_for_backward_and_can_be_removed():
    model = _model()
    plain = _saved_bytes(model)
    apply_activation_checkpointing(model)
    checkpointed = _saved_bytes(model)
    assert checkpointed < 0.5 * plain, (checkpointed, plain)
    assert remove_activation_checkpointing(model) == len(outermost_blocks(model))
    assert not any(is_checkpointed(b) for b in model.checkpoint_blocks())
    assert _saved_bytes(model) == plain


def test_inference_skips_the_wrapper_and_deepcopy_rebinds():
    model = _model().eval()
    apply_activation_checkpointing(model)
    latents, t, cond = tiny_inputs(model.config)
    with torch.no_grad():
        expected = model(latents, t, cond)
    clone = copy.deepcopy(model)
    block = outermost_blocks(clone)[0]
    assert is_checkpointed(block) and block.forward.__self__ is block  # bound to the copy, not the original
    with torch.no_grad():
        clone_out = clone(latents, t, cond)
        for p in outermost_blocks(model)[0].parameters():
            p.add_(1.0)  # changing the original must not change the copy
        assert torch.equal(clone(latents, t, cond), clone_out)
    assert torch.equal(clone_out, expected)
