"""book.parallel.pipeline: a GPipe step on 2 processes against one process, and the schedule's slots."""

import pytest
import torch
import torch.distributed as dist
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from book.parallel import launch, pipeline, pipeline_bubble

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with the gloo backend")


@needs_gloo
def test_gpipe_step_matches_one_process_and_has_a_bubble():
    run = launch(pipeline.main, 2, args=(4, 32, 2, 16, 2, "1,4", 1), cpu=True, timeout=120, check=False)
    assert run.returncode == 0 and "PASS" in run.stdout, (
        f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-3000:]}")
    result = run.result
    assert result["passed"] and result["stages"] == [[0, 1], [2, 3]]
    assert set(result["timings"]) == {"1", "4"}
    for t in result["timings"].values():
        assert all(0 <= idle < 1 for idle in t["idle"])
        assert all(0 < u < w for u, w in zip(t["busy"], t["wall"]))


@given(st.integers(1, 8), st.integers(1, 16))
def test_schedule_counts_the_gpipe_bubble(p, m):
    table = pipeline.gpipe_schedule(p, m)
    assert len(table) == p and all(len(row) == 2 * (m + p - 1) for row in table)
    for row in table:  # every stage runs each micro-batch forward once and backward once
        jobs = [f"F{i}" for i in range(m)] + [f"B{i}" for i in range(m)]
        assert sorted(slot for slot in row if slot) == sorted(jobs)
        idle = row.count("") / len(row)
        assert idle == pytest.approx(pipeline_bubble(p, m))
    when = {(s, work): t for s, row in enumerate(table) for t, work in enumerate(row) if work}
    for i in range(m):  # a micro-batch moves down the stages forward, and back up them backward
        for s in range(1, p):
            assert when[s - 1, f"F{i}"] < when[s, f"F{i}"]
            assert when[s, f"B{i}"] < when[s - 1, f"B{i}"]
        assert when[p - 1, f"F{i}"] < when[p - 1, f"B{i}"]


def test_split_layers_is_contiguous_and_equal():
    assert pipeline.split_layers(8, 4) == [range(2), range(2, 4), range(4, 6), range(6, 8)]
    assert pipeline.split_layers(3, 1) == [range(3)]


@pytest.mark.parametrize("call, name", [
    (lambda: pipeline.split_layers(6, 4), "n_layer=6"),
    (lambda: pipeline.split_layers(0, 1), "n_layer"),
    (lambda: pipeline.split_layers(4, 0), "n_stages"),
    (lambda: pipeline.gpipe_schedule(0, 4), "n_stages"),
    (lambda: pipeline.gpipe_schedule(2, 1.5), "n_microbatches"),
    (lambda: pipeline.gpipe_step("stage", 2, (1, 2)), "stage"),
    (lambda: pipeline.gpipe_step(nn.Linear(2, 2), 0, (1, 2)), "n_microbatches"),
    (lambda: pipeline.gpipe_step(nn.Linear(2, 2), True, (1, 2), torch.zeros(2, 2)), "n_microbatches"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()
