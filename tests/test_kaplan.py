"""Tests for book.kaplan: formulas, published tables, counting, sweeps' definitions, fits, frontier."""

import math

import numpy as np
import pytest
import torch

from book import kaplan
from book.data import TokenDataset
from book.model import GPTConfig, count_params, flops_per_token


def test_published_constants_and_derived_rules():
    assert kaplan.PF_DAY == 8.64e19
    # Table 2's constants give equation (4.4): D >~ 5e3 N^0.74 at a 0.02 overfitting tolerance
    coefficient = kaplan.overfit_data_bound_from(1.0, **kaplan.TABLE2)
    assert 5e3 <= coefficient <= 6e3
    assert abs(kaplan.TABLE2["alpha_N"] / kaplan.TABLE2["alpha_D"] - 0.74) < 0.005
    assert kaplan.overfit_data_bound(1e9) == pytest.approx(5e3 * 1e9**0.74)
    assert kaplan.loss_of_n(kaplan.N_C) == pytest.approx(1.0)
    assert kaplan.loss_of_d(kaplan.D_C / 10) == pytest.approx(10**0.095)


def test_loss_nd_limits():
    p = dict(N_c=1e10, D_c=1e9, alpha_N=0.1, alpha_D=0.12)
    assert kaplan.loss_nd(1e6, np.inf, **p) == pytest.approx((1e10 / 1e6) ** 0.1)
    assert kaplan.loss_nd(1e30, 1e5, **p) == pytest.approx((1e9 / 1e5) ** 0.12, rel=1e-6)
    with pytest.raises(ValueError, match="D must be positive"):
        kaplan.loss_nd(1e6, 0.0, **p)
    with pytest.raises(ValueError, match="N must be positive"):
        kaplan.loss_of_n(-1)


def test_kaplan_n_and_gpt3_table():
    assert kaplan.kaplan_n(96, 12288) == 12 * 96 * 12288**2
    with pytest.raises(ValueError, match="d_model"):
        kaplan.kaplan_n(2, 0)
    for m in kaplan.GPT3_FAMILY:
        exact = count_params(m.config())
        tol = 0.009 if m.name == "GPT-3 13B" else 0.004  # 13B's d_model = 5140 is a typo for 5120
        assert abs(exact / m.params_d1 - 1) < tol, m.name
        assert abs(6 * m.params_d1 * kaplan.GPT3_TOKENS / kaplan.PF_DAY / m.compute_pf_days - 1) < 0.005
    notes = " ".join(kaplan.table_inconsistencies())
    assert "5,140" in notes and "XL" in notes and "Small" not in notes


def test_counted_flops_match_formula():
    cfg = GPTConfig(n_layer=2, d_model=16, n_head=2, n_ctx=8, vocab_size=11)
    for training in (False, True):
        counted = kaplan.counted_flops_per_token(cfg, training=training, batch_size=2)
        assert counted == kaplan.counter_formula_per_token(cfg, training=training)
        assert kaplan.counted_flops_per_token(cfg, training=training, device="meta") == counted
    with pytest.raises(ValueError, match="batch_size"):
        kaplan.counted_flops_per_token(cfg, batch_size=0)
    with pytest.raises(ValueError, match="device"):
        kaplan.counted_flops_per_token(cfg, device="tpu")


def test_sweep_definitions(monkeypatch):
    monkeypatch.setenv("BOOK_PROFILE", "cpu")
    name, runs = kaplan.model_size_sweep(65)
    assert name == "lesson01-first-scaling-law" and len(runs) >= 6
    n = [count_params(r.model, embedding=False) for r in runs]
    assert math.log10(max(n) / min(n)) >= 1.5
    sizes = kaplan.data_sweep(65)
    assert [s for s, _ in sizes] == kaplan.data_sizes() and sizes[-1][0] is None
    names = [r.name for _, runs in sizes for r in runs]
    assert len(set(names)) == len(names)
    shape = kaplan.shape_sweep(65)
    n = [count_params(r.model, embedding=False) for r in shape]
    assert max(n) / min(n) < 1.25  # about the same N
    monkeypatch.setenv("BOOK_PROFILE", "gpu")
    name, runs = kaplan.model_size_sweep(65)
    n = [count_params(r.model, embedding=False) for r in runs]
    assert name == kaplan.MODEL_SIZE_SWEEP_GPU and math.log10(max(n) / min(n)) >= 2.5 and len(runs) >= 6
    assert len({r.train for r in runs}) == 1
    # GPU profile: no sweep sees the whole text (4,499,025 training characters) more than once
    plans = [runs, kaplan.data_sweep(65)[-1][1], kaplan.shape_sweep(65)]
    for r in (r for plan in plans for r in plan):
        assert r.train.steps * r.train.batch_size * r.model.n_ctx < 4_499_025, r.name
    with pytest.raises(ValueError, match="vocab_size"):
        kaplan.data_sweep(0)


def test_truncated_dataset():
    data = TokenDataset(train=torch.arange(1000) % 7, val=torch.arange(100) % 7, vocab_size=7, name="toy")
    cut = kaplan.truncated(data, 160, n_blocks=4)
    assert cut.train.numel() == 160 and cut.name == "toy-train160x4" and cut.val is data.val
    assert cut.train[:40].tolist() == data.train[:40].tolist() and cut.train[-40:].tolist() == data.train[-40:].tolist()
    assert kaplan.truncated(data, None) is data
    with pytest.raises(ValueError, match="n_tokens"):
        kaplan.truncated(data, 2000)
    with pytest.raises(ValueError, match="n_blocks"):
        kaplan.truncated(data, 100, n_blocks=3)


def test_fit_kaplan_nd_recovers_constants():
    true = dict(N_c=3e8, D_c=2e6, alpha_N=0.12, alpha_D=0.2)
    N = np.repeat([1e3, 1e4, 1e5], 4)
    D = np.tile([1e4, 1e5, 1e6, np.inf], 3)
    L = kaplan.loss_nd(N, D, **true)
    f = kaplan.fit_kaplan_nd(N, D, L, n_bootstrap=5)
    for k, v in true.items():
        assert getattr(f, k) == pytest.approx(v, rel=1e-3), k
    assert f.rms_log_residual < 1e-6 and f.predict(1e4, 1e5) == pytest.approx(kaplan.loss_nd(1e4, 1e5, **true))
    with pytest.raises(ValueError, match="at least 5 points"):
        kaplan.fit_kaplan_nd(N[:3], D[:3], L[:3])


def test_envelope_and_optimal_sizes():
    # L = 2 + 5 (N/1e3)^-0.3 + 5 (S/1e3)^-0.5 at S = C / 6N steps: bigger models are worse early, better late
    sizes = np.array([1e3, 3e3, 1e4, 3e4, 1e5])
    curves = []
    for n in sizes:
        steps = np.geomspace(10, 1e6, 40)
        curves.append((6 * n * steps, 2 + 5 * (n / 1e3) ** -0.3 + 5 * (steps / 1e3) ** -0.5))
    budgets = np.geomspace(1e8, 1e12, 9)
    loss, best = kaplan.lower_envelope(curves, budgets)
    assert np.all(np.diff(loss[:-1]) < 0) and np.all(np.diff(best) >= 0)
    # past every curve's end the frontier keeps its last value: a run can stop early, never go further
    assert loss[-1] == loss[-2] and best[-1] == best[-2]
    early, first = kaplan.lower_envelope(curves, np.array([1.0, 1e8]))
    assert np.isnan(early[0]) and first[0] == -1 and first[1] >= 0
    with pytest.raises(ValueError, match="increasing"):
        kaplan.lower_envelope(curves, budgets[::-1])
    n_opt = kaplan.optimal_sizes(curves, sizes, budgets)
    ok = ~np.isnan(n_opt)
    assert ok.sum() >= 3 and np.all(np.diff(n_opt[ok]) > 0)
    p, k, (lo, hi) = kaplan.fit_exponent(budgets[ok], n_opt[ok])
    assert 0 < p < 1 and lo <= p <= hi
    with pytest.raises(ValueError, match="same length"):
        kaplan.optimal_sizes(curves, sizes[:2], budgets)


def test_early_stopped_and_compute_curve():
    result = {"model_config": GPTConfig(n_layer=1, d_model=8, n_head=1, n_ctx=8, vocab_size=5).to_dict(),
              "curve": [{"step": 0, "tokens": 0, "val_loss": 1.0}, {"step": 10, "tokens": 80, "val_loss": 0.7},
                        {"step": 20, "tokens": 160, "val_loss": 0.8}]}
    assert kaplan.early_stopped(result)["step"] == 10
    C, L = kaplan.compute_curve(result)
    assert L.tolist() == [0.7, 0.8] and C[1] == 2 * C[0]
    result["curve"][1]["train_loss"] = 0.75
    C, L = kaplan.compute_curve(result, "train_loss")
    assert L.tolist() == [0.75] and len(C) == 1
    with pytest.raises(ValueError, match="loss must be"):
        kaplan.compute_curve(result, "test_loss")
