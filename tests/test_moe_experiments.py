import json

import pytest
import torch

from book import moe_experiments as mx
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


def test_balance_runs_differ_only_in_the_loss_coefficients():
    runs = mx.balance_runs(65)
    assert [r.name for r in runs] == ["no-balancing", "switch-loss", "switch-and-z-loss"]
    assert [(r.model.aux_loss_coef, r.model.z_loss_coef) for r in runs] == [(0.0, 0.0), (0.01, 0.0), (0.01, 0.001)]
    base = {k: v for k, v in runs[0].model.to_dict().items() if k not in ("aux_loss_coef", "z_loss_coef")}
    for run in runs:
        assert {k: v for k, v in run.model.to_dict().items() if k not in ("aux_loss_coef", "z_loss_coef")} == base
        assert run.train == runs[0].train and run.model.n_moe_layers == run.model.n_layer


def test_scaling_runs_match_active_parameters():
    runs = mx.scaling_runs(65)
    dense = count_params(runs[0].model, embedding=False)
    assert runs[0].model.n_experts == 0 and len({r.train for r in runs}) == 1
    for run in runs[1:]:
        m = run.model
        active = count_params(m, embedding=False, active=True)
        routers_and_biases = m.n_layer * (m.d_model * m.n_experts + (m.expert_k - 1) * m.d_model)
        assert active - dense == routers_and_biases
        assert m.d_ff * m.expert_k == runs[0].model.d_ff
        assert count_params(m, embedding=False) > 2 * dense


@pytest.mark.parametrize("call", [lambda: mx.balance_runs(0), lambda: mx.scaling_runs(-3),
                                  lambda: mx.scaling_runs(2.5), lambda: mx.UsageTracker(0),
                                  lambda: mx.training_bytes(0), lambda: mx.serving_bytes(-1.0),
                                  lambda: mx.serving_bytes(10, 0), lambda: mx.run_tracked([], toy_data(), "x"),
                                  lambda: mx.run_tracked([tiny_run()], toy_data(), "bad name"),
                                  lambda: mx.step_throughput([]), lambda: mx.step_throughput(["dense"]),
                                  lambda: mx.step_throughput([tiny_run()], min_run_time=0),
                                  lambda: mx.step_throughput([tiny_run()], rounds=0)])
def test_bad_input_raises_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_usage_tracker_records_training_forwards_only():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=16, n_head=2, n_ctx=8, vocab_size=VOCAB, n_experts=4, expert_k=2))
    idx = torch.randint(0, VOCAB, (3, 8))
    with mx.UsageTracker(2) as tracker:
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
    first = mx.run_tracked(runs, data, "ch4-test", results_dir=tmp_path, progress=False)
    usage = mx.usage_array(first[0])
    assert usage.shape == (6, 2, 4)  # steps, MoE layers, experts
    assert mx.max_share(first[0]).shape == (6,)
    assert first[1]["usage"]["share"] == []
    with pytest.raises(ValueError):
        mx.usage_array(first[1])
    # a second call reads the stored files, and load_model finds the weights
    files = sorted(p.name for p in (tmp_path / "ch4-test").iterdir())
    again = mx.run_tracked(runs, data, "ch4-test", results_dir=tmp_path, progress=False)
    assert again == [json.loads(json.dumps(r)) for r in first]
    assert sorted(p.name for p in (tmp_path / "ch4-test").iterdir()) == files
    model = load_model(again[0], dev=torch.device("cpu"), results_dir=tmp_path)
    assert sum(p.numel() for p in model.parameters()) == count_params(runs[0].model)


def test_step_throughput_times_every_run():
    runs = [tiny_run(n_experts=4, expert_k=2), tiny_run("tiny-dense")]
    speed = mx.step_throughput(runs, dev=torch.device("cpu"), min_run_time=0.02, rounds=1)
    assert list(speed) == ["tiny-moe", "tiny-dense"]
    assert all(0 < v < float("inf") for v in speed.values())


def test_memory_accounting():
    parts = mx.training_bytes(1000)
    assert sum(parts.values()) == 16_000 and parts["weights (bf16)"] == 2000
    assert mx.serving_bytes(1000) == 2000 and mx.serving_bytes(1000, 1) == 1000
    # Switch-C's 1,571B parameters in bf16: 3.1 TB, not the seed's 20 GB
    assert 3.1e12 < mx.serving_bytes(1571e9) < 3.2e12
