import json

import pytest
import torch

from book import expert_usage, measure, moe
from book.data import TokenDataset
from book.model import GPT, GPTConfig, count_params
from book.sweep import Run, load_model
from book.train import TrainConfig

VOCAB = 11


def toy_data() -> TokenDataset:
    g = torch.Generator().manual_seed(0)
    return TokenDataset(train=torch.randint(0, VOCAB, (2000,), generator=g),
                        val=torch.randint(0, VOCAB, (300,), generator=g), vocab_size=VOCAB, name="toy-moe")


def tiny_run(name="tiny-moe", **moe) -> Run:
    model = GPTConfig(n_layer=2, d_model=16, n_head=2, n_ctx=8, vocab_size=VOCAB, **moe)
    return Run(name, model, TrainConfig(steps=6, batch_size=4, lr=1e-2, eval_every=3, eval_batches=1))


@pytest.mark.parametrize("call", [lambda: expert_usage.UsageTracker(0),
                                  lambda: moe.training_bytes(0), lambda: moe.serving_bytes(-1.0),
                                  lambda: moe.serving_bytes(10, 0), lambda: expert_usage.run_tracked([], toy_data(), "x"),
                                  lambda: expert_usage.run_tracked([tiny_run()], toy_data(), "bad name"),
                                  lambda: expert_usage.usage_array([]),
                                  lambda: measure.step_throughput([]), lambda: measure.step_throughput(["dense"]),
                                  lambda: measure.step_throughput([tiny_run()], min_run_time=0),
                                  lambda: measure.step_throughput([tiny_run()], rounds=0)])
def test_bad_input_raises(call):
    with pytest.raises((TypeError, ValueError)):
        call()


def test_usage_tracker_records_training_forwards_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=16, n_head=2, n_ctx=8, vocab_size=VOCAB, n_experts=4, expert_k=2))
    idx = torch.randint(0, VOCAB, (3, 8))
    with expert_usage.UsageTracker(2) as tracker:
        model(idx)
        model(idx)
        model.eval()
        model(idx)  # evaluation: not recorded
    model.train()
    model(idx)  # after the block: not recorded
    share = torch.tensor(tracker.share)
    assert share.shape == (2, 2, 4)
    torch.testing.assert_close(share.sum(-1), torch.ones(2, 2), atol=1e-4, rtol=0)
    assert len(tracker.dropped) == len(tracker.entropy) == 2


def test_run_tracked_caches_results_usage_and_weights(tmp_path):
    data = toy_data()
    runs = [tiny_run(n_experts=4, expert_k=2), tiny_run("tiny-dense")]
    first = expert_usage.run_tracked(runs, data, "ch4-test", results_dir=tmp_path, progress=False)
    usage = expert_usage.usage_array(first[0])
    assert usage.shape == (6, 2, 4)  # steps, MoE layers, experts
    assert expert_usage.max_share(first[0]).shape == (6,)
    assert first[1]["usage"]["share"] == []
    with pytest.raises(ValueError):
        expert_usage.usage_array(first[1])
    # a second call reads the stored files, and load_model finds the weights
    files = sorted(p.name for p in (tmp_path / "ch4-test").iterdir())
    again = expert_usage.run_tracked(runs, data, "ch4-test", results_dir=tmp_path, progress=False)
    assert again == [json.loads(json.dumps(r)) for r in first]
    assert sorted(p.name for p in (tmp_path / "ch4-test").iterdir()) == files
    model = load_model(again[0], dev=torch.device("cpu"), results_dir=tmp_path)
    assert sum(p.numel() for p in model.parameters()) == count_params(runs[0].model)


def test_step_throughput_times_every_run():
    runs = [tiny_run(n_experts=4, expert_k=2), tiny_run("tiny-dense")]
    speed = measure.step_throughput(runs, dev=torch.device("cpu"), min_run_time=0.02, rounds=1)
    assert list(speed) == ["tiny-moe", "tiny-dense"]
    assert all(0 < v < float("inf") for v in speed.values())
