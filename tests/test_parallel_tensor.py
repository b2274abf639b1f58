"""book.parallel.tensor: Megatron's column- and row-parallel block against the full one, on 2 processes."""

import pytest
import torch.distributed as dist
from torch import nn

from book.model import Block, GPTConfig
from book.parallel import launch, tensor

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")


@needs_gloo
def test_tensor_parallel_mlp_attention_and_block_match_one_process():
    # CPU and gloo even on a GPU machine: the check must not depend on having two GPUs
    run = launch(tensor.main, 2, args=(2, 8, 32, 4), cpu=True, timeout=120, check=False)
    assert run.returncode == 0 and "PASS" in run.stdout, (
        f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-3000:]}")
    result = run.result
    for module in ("mlp", "attention", "block"):
        assert result["verdicts"][module] == {"output": True, "input gradient": True,
                                              "weight gradients": True}, (module, result["verdicts"])
    # Megatron's count: per block, one all-reduce forward and one backward for each of attention and the MLP,
    # each of the (batch, time, d_model) activations in fp32
    activation_bytes = 4 * 2 * 8 * 32
    assert [tuple(entry) for entry in result["log"]] == [("forward", activation_bytes)] * 2 + [
        ("backward", activation_bytes)] * 2


@pytest.mark.parametrize("n, world", [(12, 1), (12, 2), (12, 3), (64, 4)])
def test_shards_cover_the_features_once(n, world):
    covered = [i for rank in range(world) for i in range(n)[tensor.shard(n, rank, world)]]
    assert covered == list(range(n))


def test_layers_refuse_to_run_without_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already set up in this process")
    with pytest.raises(RuntimeError, match="process group"):
        tensor.ColumnParallelLinear(nn.Linear(4, 4))


@pytest.mark.parametrize("call, name", [
    (lambda: tensor.shard(10, 0, 4), "n=10"),
    (lambda: tensor.shard(0, 0, 1), "n"),
    (lambda: tensor.shard(8, 2, 2), "rank"),
    (lambda: tensor.shard(8, -1, 2), "rank"),
    (lambda: tensor.shard(8, 0, 0), "world"),
    (lambda: tensor.ColumnParallelLinear("not a layer"), "linear"),
    (lambda: tensor.ColumnParallelLinear(nn.Linear(4, 4), n_parts=0), "n_parts"),
    (lambda: tensor.RowParallelLinear(nn.Conv1d(4, 4, 1)), "linear"),
    (lambda: tensor.TensorParallelMLP(nn.Linear(4, 4)), "mlp"),
    (lambda: tensor.TensorParallelAttention(nn.Linear(4, 4)), "attn"),
    (lambda: tensor.TensorParallelBlock("block"), "block"),
    (lambda: tensor.TensorParallelBlock(Block(GPTConfig(n_layer=1, d_model=8, n_head=2, n_ctx=4, vocab_size=3,
                                                        n_experts=2))), "block.mlp"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
