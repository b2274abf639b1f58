"""Tensor parallelism: Megatron's column- and row-parallel layers (Shoeybi et al., 2019), picotron style.

Each of ``world_size`` ranks holds a slice of every weight matrix and sees the whole batch:

    ColumnParallelLinear   a slice of the OUTPUT features (rows of W): y_r = x W_r^T + b_r
                           its input goes through Megatron's "f": identity forward, all-reduce of the
                           input's gradient backward (each rank's slice gave only part of it)
    RowParallelLinear      a slice of the INPUT features (columns of W): y = sum_r x_r W_r^T, then + b
                           its output goes through "g": all-reduce forward, identity backward

A column-parallel layer then a row-parallel one need no communication between them: the MLP's
GELU, and attention's heads, act on each rank's slice alone. So a block costs two all-reduces
forward (after attention, after the MLP) and two backward, each of the (batch, time, d_model)
activations: 4 b s h bytes in fp32. ``all_reduce_log()`` records every one that ``f`` and ``g`` run.

The layers are built from a full ``book.model`` module (``TensorParallelBlock(block)``), so the
check can compare them with it; a real run would initialise only the local slices. Check it:

    torchrun --nproc_per_node=2 -m book.parallel.tensor

or ``book.parallel.launch("book.parallel.tensor", 2)``; rank 0 reports what matched and the log.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from book import checks, parallel
from book.model import MLP, Block, CausalSelfAttention, GPTConfig, causal_attention

_LOG: list[tuple[str, int]] = []  # ("forward" | "backward", bytes) for every all-reduce f and g run


def all_reduce_log() -> list[tuple[str, int]]:
    """The all-reduces run by ``f`` and ``g`` in this process since ``reset_log()``: (pass, bytes) each."""
    return list(_LOG)


def reset_log() -> None:
    """Forget the all-reduces recorded so far."""
    _LOG.clear()


def _all_reduce(t: torch.Tensor, group, direction: str) -> torch.Tensor:
    _LOG.append((direction, t.numel() * t.element_size()))
    t = t.contiguous()
    dist.all_reduce(t, group=group)
    return t


class _CopyToParallel(torch.autograd.Function):
    """Megatron's f: the input is already on every rank; its gradient is the sum of every rank's part."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _all_reduce(grad.clone(), ctx.group, "backward"), None


class _ReduceFromParallel(torch.autograd.Function):
    """Megatron's g: sum the ranks' partial outputs; the sum's gradient reaches each part unchanged."""

    @staticmethod
    def forward(ctx, x, group):
        return _all_reduce(x.clone(), group, "forward")

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def shard(n: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s contiguous slice of ``n`` features split evenly over ``world`` ranks."""
    n, world = checks.positive_int("n", n), checks.positive_int("world", world)
    rank = checks.nonnegative_int("rank", rank)
    if rank >= world:
        raise ValueError(f"rank must be < world={world}, got {rank}")
    if n % world:
        raise ValueError(f"n={n} features must be divisible by world={world}")
    size = n // world
    return slice(rank * size, (rank + 1) * size)


def _rank_and_world(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("tensor-parallel layers need a process group: call book.parallel.init() first")
    return dist.get_rank(group), dist.get_world_size(group)


class ColumnParallelLinear(nn.Module):
    """This rank's slice of ``linear``'s output features, with its bias slice; input through f.

    ``n_parts`` > 1 when the outputs are that many equal blocks side by side, each split on its own:
    attention's qkv is [q | k | v], and rank r takes its heads' columns of q, of k and of v.
    """

    def __init__(self, linear: nn.Linear, group=None, n_parts: int = 1):
        super().__init__()
        checks.instance("linear", linear, nn.Linear)
        n_parts = checks.positive_int("n_parts", n_parts)
        rank, world = _rank_and_world(group)
        if linear.out_features % n_parts:
            raise ValueError(f"out_features={linear.out_features} must be divisible by n_parts={n_parts}")
        part = linear.out_features // n_parts
        mine = shard(part, rank, world)
        rows = torch.cat([torch.arange(p * part, (p + 1) * part)[mine] for p in range(n_parts)])
        rows = rows.to(linear.weight.device)
        self.group = group
        self.weight = nn.Parameter(linear.weight.detach()[rows].clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach()[rows].clone())
        self.rows = rows  # which of the full layer's outputs this rank computes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(_CopyToParallel.apply(x, self.group), self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """This rank's slice of ``linear``'s input features; partial outputs summed by g, then the bias, once."""

    def __init__(self, linear: nn.Linear, group=None):
        super().__init__()
        checks.instance("linear", linear, nn.Linear)
        rank, world = _rank_and_world(group)
        self.group = group
        self.columns = shard(linear.in_features, rank, world)
        self.weight = nn.Parameter(linear.weight.detach()[:, self.columns].clone())
        # the bias is added after the sum: added on every rank before it, it would count world times
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _ReduceFromParallel.apply(F.linear(x, self.weight), self.group)
        return y if self.bias is None else y + self.bias


class TensorParallelMLP(nn.Module):
    """``mlp`` split over ranks: up column-parallel, GELU on each rank's slice, down row-parallel."""

    def __init__(self, mlp: MLP, group=None):
        super().__init__()
        checks.instance("mlp", mlp, MLP)
        self.up = ColumnParallelLinear(mlp.up, group)
        self.down = RowParallelLinear(mlp.down, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class TensorParallelAttention(nn.Module):
    """``attn`` split by heads: each rank computes n_head / world heads, and the output projection's sum."""

    def __init__(self, attn: CausalSelfAttention, group=None):
        super().__init__()
        checks.instance("attn", attn, CausalSelfAttention)
        _, world = _rank_and_world(group)
        if attn.n_head % world:
            raise ValueError(f"n_head={attn.n_head} must be divisible by the world size {world}")
        self.config, self.layer = attn.config, attn.layer
        self.n_head, self.d_head = attn.n_head // world, attn.config.d_head
        self.qkv = ColumnParallelLinear(attn.qkv, group, n_parts=3)  # this rank's heads of q, k and v
        self.proj = RowParallelLinear(attn.proj, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        local = self.n_head * self.d_head
        q, k, v = self.qkv(x).split(local, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.d_head).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v, self.config, seed=self.layer)  # no dropout: the check is exact
        return self.proj(y.transpose(1, 2).reshape(B, T, local))


class TensorParallelBlock(nn.Module):
    """``block`` with its attention and MLP split over ranks; its LayerNorms replicated on every rank."""

    def __init__(self, block: Block, group=None):
        super().__init__()
        checks.instance("block", block, Block)
        checks.instance("block.mlp", block.mlp, MLP, "a dense MLP (an MoE would use book.parallel.expert)")
        self.ln_attn, self.ln_mlp = copy.deepcopy(block.ln_attn), copy.deepcopy(block.ln_mlp)
        self.attn = TensorParallelAttention(block.attn, group)
        self.mlp = TensorParallelMLP(block.mlp, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


# --------------------------------------------------------------------------- the check


def _full_grad(sharded: nn.Module, full: nn.Module, name: str) -> torch.Tensor:
    """The slice of the full module's gradient that the sharded parameter ``name`` should have."""
    owner_name, _, leaf = name.rpartition(".")
    owner = sharded.get_submodule(owner_name) if owner_name else sharded
    grad = full.get_parameter(name).grad
    if isinstance(owner, ColumnParallelLinear):
        return grad[owner.rows]
    if isinstance(owner, RowParallelLinear) and leaf == "weight":
        return grad[:, owner.columns]
    return grad  # replicated: a LayerNorm, or a row-parallel bias


def _compare(sharded: nn.Module, full: nn.Module, x: torch.Tensor) -> dict[str, bool]:
    """Run both on the same input, loss sum(y^2); do outputs, input and parameter gradients agree?"""
    def close(a, b):  # to float32 rounding, relative to the largest entry: the sums run in other orders
        return bool((a - b).abs().max() <= 1e-5 * b.abs().max() + 1e-6)

    x_sharded, x_full = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_sharded, y_full = sharded(x_sharded), full(x_full)
    y_sharded.square().sum().backward()
    y_full.square().sum().backward()
    return {"output": close(y_sharded, y_full), "input gradient": close(x_sharded.grad, x_full.grad),
            "weight gradients": all(close(p.grad, _full_grad(sharded, full, name))
                                    for name, p in sharded.named_parameters())}


def main(batch: str = "2", seq: str = "16", d_model: str = "64", n_head: str = "4") -> int:
    """In every rank: shard one GPT block, its MLP and its attention; compare with the full ones; report.

    The report: each module's verdicts, the block's all-reduce log (pass and bytes, forward and
    backward) and the sizes. Same weights and input on every rank (one seed), as tensor
    parallelism needs: every rank of the group sees the whole batch.
    """
    b, s, h, a = (checks.positive_int(name, int(v)) for name, v in
                  (("batch", batch), ("seq", seq), ("d_model", d_model), ("n_head", n_head)))
    _, world, device = parallel.init()
    cfg = GPTConfig(n_layer=1, d_model=h, n_head=a, n_ctx=s, vocab_size=2)
    torch.manual_seed(0)
    block = Block(cfg).to(device)
    with torch.no_grad():  # larger than the 0.02 init, so every weight and bias matters
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    x = torch.randn(b, s, h, device=device)

    verdicts = {"mlp": _compare(TensorParallelMLP(block.mlp), block.mlp, x),
                "attention": _compare(TensorParallelAttention(block.attn), block.attn, x)}
    block.zero_grad(set_to_none=True)
    sharded = TensorParallelBlock(block)
    reset_log()
    verdicts["block"] = _compare(sharded, block, x)
    log = all_reduce_log()

    n_failed = torch.tensor([sum(not ok for v in verdicts.values() for ok in v.values())], device=device)
    dist.all_reduce(n_failed)  # every rank agrees on the verdict
    passed = n_failed.item() == 0
    parallel.report({"world": world, "backend": dist.get_backend(), "batch": b, "seq": s, "d_model": h,
                     "n_head": a, "verdicts": verdicts, "log": log, "passed": passed})
    return parallel.finish(passed, f"tensor-parallel MLP, attention and block over {world} ranks "
                                   f"({dist.get_backend()}) against the full ones")


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
