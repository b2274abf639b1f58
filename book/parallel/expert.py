"""Expert parallelism: one MoE layer whose experts are spread over processes (GShard, Lepikhin et al., 2020).

Each of ``world_size`` ranks keeps a copy of the router and ``n_experts / world_size`` of
the experts: rank r holds experts r * n_local ... (r + 1) * n_local - 1. A forward pass
on a rank's own tokens:

    route     every token picks its k experts (the router is replicated, so each rank routes its own)
    sort      the token-slots by expert, so the rows bound for rank 0 come first, then rank 1's, ...
    exchange  counts first (all_to_all_single: how many rows each expert will receive from each rank),
              then the rows themselves, with those counts as split sizes
    compute   each local expert runs once on all the rows it received, from every rank
    return    the results travel back by the same exchange, split sizes swapped
    combine   gate-weighted index_add_ into each token's output, as in ``book.moe.MoE``

The exchange is differentiable: the gradient of an all-to-all is the all-to-all run backwards.

Check it against the single-process layer, on CPU (gloo) or one GPU per process (NCCL):

    torchrun --nproc_per_node=2 -m book.parallel.expert

or from Python with ``book.parallel.launch("book.parallel.expert", 2)``, which does the same in a subprocess.
"""

from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from book import parallel
from book.moe import Experts, MoE, load_balancing_loss, top_k_gating


def _all_to_all(rows: torch.Tensor, out_splits: list[int], in_splits: list[int], group) -> torch.Tensor:
    """Send blocks of ``in_splits`` rows to ranks 0, 1, ...; receive ``out_splits`` rows from each."""
    out = rows.new_empty((sum(out_splits), *rows.shape[1:]))
    dist.all_to_all_single(out, rows.contiguous(), out_splits, in_splits, group=group)
    return out


class _Exchange(torch.autograd.Function):
    """``_all_to_all`` for autograd: each row's gradient goes back to the rank the row came from."""

    @staticmethod
    def forward(ctx, rows, out_splits, in_splits, group):
        ctx.out_splits, ctx.in_splits, ctx.group = out_splits, in_splits, group
        return _all_to_all(rows, out_splits, in_splits, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_to_all(grad, ctx.in_splits, ctx.out_splits, ctx.group), None, None, None


class ExpertParallelMoE(nn.Module):
    """This rank's share of ``moe``: its router (replicated) and experts (a contiguous slice), for token choice.

    Built from a full ``MoE`` so the lesson can check it against one; a real run would
    initialise only the local experts. Needs an initialised process group, n_experts
    divisible by the world size, and no capacity factor or router noise (dropping
    would depend on how the batch is split over ranks). ``aux_loss`` is Switch's
    load-balancing loss over this rank's tokens, as each device computes it in Switch.
    """

    def __init__(self, moe: MoE, group=None):
        super().__init__()
        world, rank = dist.get_world_size(group), dist.get_rank(group)
        if moe.routing != "token_choice" or moe.capacity_factor is not None or moe.noise_router is not None:
            raise ValueError("moe must use token_choice routing, capacity_factor=None and router_noise=False")
        if moe.n_experts % world:
            raise ValueError(f"n_experts={moe.n_experts} must be divisible by the world size {world}")
        self.group, self.world = group, world
        self.d_model, self.n_experts, self.k = moe.d_model, moe.n_experts, moe.k
        self.renormalize = moe.renormalize
        self.n_local = moe.n_experts // world
        self.router = copy.deepcopy(moe.router)
        full = moe.experts
        self.experts = Experts(self.n_local, moe.d_model, full.w_up.shape[-1], bias=full.b_up is not None)
        mine = slice(rank * self.n_local, (rank + 1) * self.n_local)
        with torch.no_grad():
            for local, shared in zip(self.experts.parameters(), full.parameters()):
                local.copy_(shared[mine])
        self.experts.to(full.w_up.device)
        self.aux_loss = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"input must have shape (..., d_model={self.d_model}), got {tuple(x.shape)}")
        tokens = x.reshape(-1, self.d_model)
        logits = F.linear(tokens.float(), self.router.weight.float())
        weights, expert_indices = top_k_gating(logits, self.k, self.renormalize)
        self.aux_loss = load_balancing_loss(F.softmax(logits, -1), expert_indices, self.n_experts)

        # sort this rank's token-slots by expert: rows bound for each rank are then contiguous, in rank order
        slot_expert = expert_indices.reshape(-1)
        slot_token = torch.arange(tokens.shape[0], device=x.device).repeat_interleave(self.k)
        order = torch.argsort(slot_expert, stable=True)
        slot_expert, slot_token, slot_weight = slot_expert[order], slot_token[order], weights.reshape(-1)[order]

        # 1. counts: send_counts[r, e] rows go to rank r's local expert e; recv_counts[r, e] come from rank r
        send_counts = torch.bincount(slot_expert, minlength=self.n_experts)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=self.group)
        send_counts = send_counts.view(self.world, self.n_local)
        recv_counts = recv_counts.view(self.world, self.n_local)
        send_splits, recv_splits = send_counts.sum(1).tolist(), recv_counts.sum(1).tolist()

        # 2. the rows; they arrive grouped by source rank, then by expert
        rows = _Exchange.apply(tokens[slot_token], recv_splits, send_splits, self.group)

        # 3. regroup by local expert, so each runs once on one contiguous batch; then restore arrival order
        row_expert = torch.arange(self.n_local, device=x.device).repeat(self.world)
        row_expert = row_expert.repeat_interleave(recv_counts.reshape(-1))
        by_expert = torch.argsort(row_expert, stable=True)
        batches = rows[by_expert].split(recv_counts.sum(0).tolist())
        y = torch.cat([self.experts(batch, e) for e, batch in enumerate(batches)])
        y = y[torch.argsort(by_expert)]

        # 4. send the results home, then combine each token's k slots with its gate weights
        y = _Exchange.apply(y, send_splits, recv_splits, self.group)
        out = y.new_zeros(tokens.shape).index_add_(0, slot_token, y * slot_weight[:, None].to(y.dtype))
        return out.reshape(x.shape)


# --------------------------------------------------------------------------- the check


def main() -> int:
    """Same MoE and batch on every rank (one seed); each rank runs its share; compare with one process."""
    rank, world, device = parallel.init()
    backend = dist.get_backend()

    torch.manual_seed(0)
    moe = MoE(d_model=16, d_ff=32, n_experts=2 * world, k=2).to(device)
    with torch.no_grad():  # larger than the 0.02 init, so routing and biases matter
        for p in moe.parameters():
            p.normal_(std=0.5)
    x = torch.randn(2 * world, 8, 16, device=device)  # (batch, time, d_model): each rank gets 2 sequences

    expert_parallel = ExpertParallelMoE(moe)
    mine = x.chunk(world)[rank].clone().requires_grad_()
    y_mine = expert_parallel(mine)
    y_mine.square().sum().backward()
    gathered = [torch.empty_like(y_mine) for _ in range(world)]
    dist.all_gather(gathered, y_mine.detach())
    # the router is replicated: as in data parallelism, its gradient is the sum over ranks
    dist.all_reduce(expert_parallel.router.weight.grad)

    everything = x.clone().requires_grad_()
    y = moe(everything)
    y.square().sum().backward()

    def close(a, b):
        return torch.allclose(a, b, rtol=1e-4, atol=1e-5)

    mine_slice = slice(rank * expert_parallel.n_local, (rank + 1) * expert_parallel.n_local)
    checks = {
        "output": close(torch.cat(gathered), y.detach()),
        "input gradient": close(mine.grad, everything.grad.chunk(world)[rank]),
        "router gradient": close(expert_parallel.router.weight.grad, moe.router.weight.grad),
        "expert gradients": all(close(local.grad, shared.grad[mine_slice]) for local, shared in
                                zip(expert_parallel.experts.parameters(), moe.experts.parameters())),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print(f"rank {rank}: mismatch in {', '.join(failed)}", flush=True)
    n_failed = torch.tensor([len(failed)], device=device)
    dist.all_reduce(n_failed)  # every rank agrees on the verdict and exits with the same code
    if rank == 0:
        verdict = "PASS" if n_failed.item() == 0 else "FAIL"
        what = "output and gradients match" if verdict == "PASS" else "differs from"
        print(f"{verdict}: expert-parallel MoE, world size {world} ({backend}), {moe.n_experts} experts, "
              f"k={moe.k}: {what} the single-process MoE", flush=True)
    dist.destroy_process_group()
    return 0 if n_failed.item() == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
