"""book.parallel's byte counts and launcher (the methods have their own test files)."""

import math

import pytest
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st

from book import parallel

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")


@pytest.mark.parametrize("n, factor", [(1, 0.0), (2, 1.0), (4, 1.5), (8, 1.75)])
def test_ring_allreduce_sends_two_n_minus_one_over_n(n, factor):
    assert parallel.allreduce_bytes(1000, n) == pytest.approx(1000 * factor)
    assert parallel.reduce_scatter_bytes(1000, n) == pytest.approx(500 * factor)
    assert parallel.allgather_bytes(1000, n) == parallel.reduce_scatter_bytes(1000, n)


@given(st.integers(1, 1024), st.floats(0, 1e12))
def test_allreduce_is_a_reduce_scatter_then_an_all_gather(n, size):
    total = parallel.reduce_scatter_bytes(size, n) + parallel.allgather_bytes(size, n)
    assert math.isclose(parallel.allreduce_bytes(size, n), total, rel_tol=1e-12, abs_tol=1e-9)
    assert parallel.allreduce_bytes(size, n) <= 2 * size


def test_pipeline_bubble_matches_gpipe():
    assert parallel.pipeline_bubble(1, 8) == 0
    assert parallel.pipeline_bubble(4, 1) == pytest.approx(3 / 4)
    assert parallel.pipeline_bubble(4, 12) == pytest.approx(3 / 15)
    # more micro-batches always shrink the bubble
    assert all(parallel.pipeline_bubble(4, m + 1) < parallel.pipeline_bubble(4, m) for m in range(1, 50))


@pytest.mark.parametrize("call, name", [
    (lambda: parallel.allreduce_bytes(100, 0), "n_ranks"),
    (lambda: parallel.allreduce_bytes(-1, 2), "n_bytes"),
    (lambda: parallel.pipeline_bubble(0, 4), "n_stages"),
    (lambda: parallel.pipeline_bubble(2, 0), "n_microbatches"),
    (lambda: parallel.launch("book.parallel.expert", 0), "n_procs"),
    (lambda: parallel.launch("book.parallel.expert", 2, timeout=0), "timeout"),
    (lambda: parallel.launch("book.parallel.expert", 2, cpu="yes"), "cpu"),
    (lambda: parallel.launch("book.no_such_module", 2), "script_or_fn"),
    (lambda: parallel.launch("missing_script.py", 2), "script_or_fn"),
    (lambda: parallel.launch(lambda: 0, 2), "script_or_fn"),
    (lambda: parallel.launch("book.parallel.expert", 2, args="x"), "args"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def ranks_and_sum(scale: str) -> int:
    """Launched by the test below: every rank contributes its rank; rank 0 reports the sum."""
    import torch

    rank, world, device = parallel.init()
    value = torch.tensor([float(rank) * float(scale)], device=device)
    dist.all_reduce(value)
    parallel.report({"world": world, "sum": value.item()})
    dist.destroy_process_group()
    return 0


@needs_gloo
def test_launch_runs_a_function_and_returns_rank_zeros_report():
    run = parallel.launch(ranks_and_sum, 2, args=(3,), cpu=True, timeout=120)
    assert run.returncode == 0 and run.backend == "gloo"
    assert run.result == {"world": 2, "sum": 3.0}


def failing_rank() -> int:
    raise SystemExit(3)


@needs_gloo
def test_a_failed_launch_raises_with_its_output():
    with pytest.raises(RuntimeError, match="failed"):
        parallel.launch(failing_rank, 2, cpu=True, timeout=120)
    assert parallel.launch(failing_rank, 2, cpu=True, timeout=120, check=False).returncode != 0
