"""book.recompute: checkpointed GPTs give the same gradients and save only the blocks' inputs."""

import copy

import pytest
import torch

from book import memory, recompute
from book.model import GPT, GPTConfig

CFG = GPTConfig(n_layer=4, d_model=16, n_head=2, n_ctx=8, vocab_size=11)


def _batch():
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randint(0, 11, (3, 8), generator=gen) for _ in range(2))


def _grads(model, batch):
    model.zero_grad(set_to_none=True)
    model(*batch)[1].backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("wrap", [lambda m: recompute.checkpoint_every(m, 1), lambda m: recompute.checkpoint_every(m, 2),
                                  lambda m: recompute.checkpoint_segments(m, 2),
                                  lambda m: recompute.checkpoint_segments(m, 3)])
def test_gradients_are_bit_identical(wrap):
    torch.manual_seed(0)
    base, batch = GPT(CFG), _batch()
    assert torch.equal(_grads(wrap(copy.deepcopy(base)), batch), _grads(base, batch))


def test_saved_bytes_are_the_block_inputs_and_eval_runs_plainly():
    torch.manual_seed(0)
    batch = _batch()
    parts = memory.activation_bytes(CFG, 3, 8)
    model = recompute.checkpoint_segments(GPT(CFG), 2)
    expected = parts["embedding"] + parts["head"] + 2 * 4 * 3 * 8 * CFG.d_model  # two segments, one input each
    assert memory.measure_saved_bytes(model, batch) == expected
    model.eval()
    with torch.no_grad():
        assert model(*batch)[1].isfinite()


def test_bad_input():
    with pytest.raises(ValueError, match="k"):
        recompute.checkpoint_every(GPT(CFG), 0)
    with pytest.raises(ValueError, match="already checkpointed"):
        recompute.checkpoint_every(recompute.checkpoint_every(GPT(CFG), 1), 1)
    with pytest.raises(TypeError, match="model"):
        recompute.checkpoint_segments(torch.nn.Linear(2, 2), 1)
