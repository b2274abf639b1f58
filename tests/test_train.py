import math

import pytest

from book import data
from book.model import GPTConfig
from book.train import TrainConfig, lr_at, train


def test_schedule_warms_up_then_decays_to_floor():
    cfg = TrainConfig(steps=100, batch_size=4, lr=1e-2, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(a >= b - 1e-15 for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(1e-3, rel=0.01)
    longer = TrainConfig(steps=100, batch_size=4, lr=1e-2, warmup_steps=10, schedule_steps=1000)
    assert lr_at(99, longer) > 0.9e-2  # a cycle set for a longer run has barely decayed


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(batch_size=-1), "batch_size"), (dict(lr=0), "lr"),
    (dict(batch_size=6, grad_accum=4), "divisible"), (dict(min_lr_ratio=2), "min_lr_ratio"),
    (dict(schedule_steps=5), "schedule_steps"), (dict(grad_clip=0), "grad_clip"),
])
def test_bad_train_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**(dict(steps=10, batch_size=8) | kwargs))


def test_loss_falls_towards_the_known_entropy(book_cache):
    source = data.MarkovSource(vocab_size=16, order=1, n_successors=3, seed=0)
    ds = source.dataset(50_000, 10_000)
    cfg = GPTConfig(n_layer=1, d_model=32, n_head=2, n_ctx=16, vocab_size=16)
    result = train(cfg, TrainConfig(steps=150, batch_size=16, lr=1e-2, eval_batches=16), ds, progress=False)
    first, last = result.curve[0]["val_loss"], result.final_val_loss
    assert first > last
    # no model beats the entropy rate; this one gets within 0.1 nats of it
    assert source.entropy_rate - 0.03 < last < source.entropy_rate + 0.1, (last, source.entropy_rate)
    assert result.tokens == 150 * 16 * 16 and result.flops > 0 and 0 < result.mfu < 1


def test_gradient_accumulation_matches_one_big_batch(book_cache):
    ds = data.MarkovSource(vocab_size=8, seed=1).dataset(5_000, 1_000)
    cfg = GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=8, vocab_size=8)
    one = train(cfg, TrainConfig(steps=5, batch_size=8, grad_clip=None), ds, progress=False)
    accum = train(cfg, TrainConfig(steps=5, batch_size=8, grad_accum=4, grad_clip=None), ds, progress=False)
    assert math.isclose(one.final_val_loss, accum.final_val_loss, rel_tol=1e-4)


def test_resume_from_checkpoint_continues_exactly(book_cache, tmp_path):
    ds = data.MarkovSource(vocab_size=8, seed=2).dataset(5_000, 1_000)
    cfg = GPTConfig(n_layer=1, d_model=16, n_head=2, n_ctx=8, vocab_size=8)
    tcfg = TrainConfig(steps=20, batch_size=4, log_every=1)
    reference = train(cfg, tcfg, ds, progress=False)

    ckpt = tmp_path / "run.ckpt"

    def crash_at_step_12(step, loss):
        if step == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tcfg, ds, progress=False, checkpoint_path=ckpt, checkpoint_every=5, callback=crash_at_step_12)
    assert ckpt.exists()
    resumed = train(cfg, tcfg, ds, progress=False, checkpoint_path=ckpt, checkpoint_every=5)
    strip = lambda curve: [{k: v for k, v in p.items()} for p in curve]  # noqa: E731
    assert strip(resumed.curve) == strip(reference.curve)


def test_data_too_short_for_context_raises():
    ds = data.dataset_from_text("abcdefgh" * 3)
    cfg = GPTConfig(n_layer=1, d_model=8, n_head=1, n_ctx=16, vocab_size=ds.vocab_size)
    with pytest.raises(ValueError, match="too short"):
        train(cfg, TrainConfig(steps=1, batch_size=1), ds, progress=False)
