"""book.parallel.data: DDP, ZeRO-1 and FSDP2 on 2 gloo processes against one process; the byte counts."""

import math

import pytest
import torch
import torch.distributed as dist

from book import memory, parallel
from book.model import GPT, GPTConfig
from book.parallel import data

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")
# vocab_size 13: the embedding's 13 rows do not split evenly over 2 ranks, so the shard rule is tested
CFG = GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=8, vocab_size=13)


@pytest.fixture(scope="module")
def result():
    # CPU and gloo even on a GPU machine: one launch for every test below
    run = data.spec(CFG, batch_per_rank=2, steps=3, lr=1e-3, sizes=(1024, 65536), repeats=2)
    launched = parallel.launch(data.main, 2, args=(run,), cpu=True, timeout=150)
    return launched.result


@needs_gloo
def test_ddp_matches_one_process_on_the_whole_batch(result):
    ddp = result["ddp"]
    assert result["world"] == 2 and result["backend"] == "gloo"
    assert ddp["first_grad_rel_diff"] < 1e-5, ddp
    assert ddp["max_param_diff"] < 1e-4, ddp  # Adam's g / sqrt(v) magnifies rounding of tiny gradients
    assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(ddp["losses"], ddp["reference_losses"]))


@needs_gloo
def test_the_hook_counts_the_gradient_bytes(result):
    n = result["n_params"]
    assert n == sum(p.numel() for p in GPT(CFG).parameters())
    assert result["ddp"]["hook_bytes_per_step"] == 4 * n
    assert result["ddp"]["buckets_per_step"] >= 1


@needs_gloo
def test_sharding_gives_the_same_model_and_the_counted_bytes(result):
    n, world = result["n_params"], result["world"]
    for name in ("zero1", "fsdp2"):
        assert result[name]["max_param_diff"] < 1e-4, (name, result[name]["max_param_diff"])
        assert all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(result[name]["losses"],
                                                                     result["ddp"]["losses"])), name
    for name, stage in (("ddp", 0), ("zero1", 1), ("fsdp2", 3)):
        per_rank = [sum(result[name][part][r] for part in ("parameters", "gradients", "optimizer_state"))
                    for r in range(world)]
        formula = memory.zero_bytes_per_device(n, world, stage, optimizer="adam", precision="fp32")
        assert sum(per_rank) / world == formula, (name, per_rank, formula)
    assert result["ddp"]["optimizer_state"] == [8 * n] * world
    assert sum(result["zero1"]["optimizer_state"]) == 8 * n
    shards = [data.fsdp_shard_numel(shape, world) for shape in result["fsdp2"]["shapes"]]
    expected = [4 * sum(s[r] for s in shards) for r in range(world)]
    assert result["fsdp2"]["parameters"] == expected == result["fsdp2"]["gradients"]
    assert result["fsdp2"]["optimizer_state"] == [2 * e for e in expected]
    assert expected[0] != expected[1]  # 13 rows: 7 on rank 0, 6 on rank 1


@needs_gloo
def test_timings_are_positive(result):
    timing = result["timing"]
    assert len(timing["seconds"]) == 2 and all(t > 0 for t in timing["seconds"])
    assert all(timing[k] > 0 for k in ("local_step", "backward", "ddp_step", "grad_allreduce"))


@pytest.mark.parametrize("shape, n, expected", [((13, 4), 2, [28, 24]), ((8,), 4, [2, 2, 2, 2]),
                                                ((5, 3), 4, [6, 6, 3, 0]), ((2, 2), 3, [2, 2, 0]),
                                                ((7,), 1, [7])])
def test_fsdp_shard_rule_is_torch_chunk(shape, n, expected):
    assert data.fsdp_shard_numel(shape, n) == expected
    chunks = torch.zeros(shape).chunk(n, dim=0)
    assert [c.numel() for c in chunks] + [0] * (n - len(chunks)) == expected


def test_fit_recovers_latency_and_bandwidth():
    sizes = [2**k for k in range(10, 27, 2)]
    alpha, bandwidth = data.fit_latency_bandwidth(sizes, [5e-5 + s / 2e9 for s in sizes])
    assert math.isclose(alpha, 5e-5, rel_tol=1e-6) and math.isclose(bandwidth, 2e9, rel_tol=1e-6)


def test_counter_starts_at_zero_and_loopback_is_an_int_or_none():
    counter = data.AllReduceCounter()
    assert (counter.bytes, counter.buckets) == (0, 0)
    assert data.loopback_tx_bytes() is None or data.loopback_tx_bytes() >= 0


@pytest.mark.parametrize("call, name", [
    (lambda: data.spec("cfg"), "config"),
    (lambda: data.spec(GPTConfig(n_layer=1, d_model=8, n_head=2, n_ctx=4, vocab_size=5, dropout=0.1)),
     "dropout"),
    (lambda: data.spec(GPTConfig(n_layer=1, d_model=8, n_head=2, n_ctx=4, vocab_size=5, n_experts=2)),
     "n_experts"),
    (lambda: data.spec(CFG, batch_per_rank=0), "batch_per_rank"),
    (lambda: data.spec(CFG, steps=1.5), "steps"),
    (lambda: data.spec(CFG, lr=-1.0), "lr"),
    (lambda: data.spec(CFG, repeats=0), "repeats"),
    (lambda: data.spec(CFG, sizes="1024"), "sizes"),
    (lambda: data.spec(CFG, sizes=(1022,)), "sizes"),
    (lambda: data.spec(CFG, sizes=()), "sizes"),
    (lambda: data.fsdp_shard_numel((4, 4), 0), "n_ranks"),
    (lambda: data.fsdp_shard_numel((), 2), "shape"),
    (lambda: data.fsdp_shard_numel((4, -1), 2), "shape"),
    (lambda: data.fit_latency_bandwidth([1, 2], [1.0]), "n_bytes and seconds"),
    (lambda: data.fit_latency_bandwidth([1, 1], [1.0, 1.0]), "two different sizes"),
    (lambda: data.fit_latency_bandwidth([1, 2], [1.0, -1.0]), "seconds"),
    (lambda: data.fit_latency_bandwidth([1, 2], [2.0, 1.0]), "both terms positive"),
    (lambda: parallel.launch(data.main, 0), "n_procs"),
    (lambda: parallel.launch(data.main, 2, args="x"), "args"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs two GPUs")
def test_ddp_on_gpus_with_nccl():
    run = data.spec(CFG, batch_per_rank=2, steps=2, sizes=(1024,), repeats=2)
    result = parallel.launch(data.main, None, args=(run,), timeout=300).result
    assert result["backend"] == "nccl"
    assert result["ddp"]["hook_bytes_per_step"] == 4 * result["n_params"]
    assert result["ddp"]["max_param_diff"] < 1e-4 and result["fsdp2"]["max_param_diff"] < 1e-4
