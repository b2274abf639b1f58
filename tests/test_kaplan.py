"""Tests for book.kaplan: formulas, published tables, counting, sweeps' definitions, fits, frontier."""


import numpy as np
import pytest
import torch

from book import kaplan
from book.data import TokenDataset
from book.model import GPTConfig, count_params


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


def test_early_stopped():
    result = {"curve": [{"step": 0, "tokens": 0, "val_loss": 1.0}, {"step": 10, "tokens": 80, "val_loss": 0.7},
                        {"step": 20, "tokens": 160, "val_loss": 0.8}]}
    assert kaplan.early_stopped(result)["step"] == 10
    with pytest.raises(ValueError, match="no validation loss"):
        kaplan.early_stopped({"curve": [{"step": 0, "tokens": 0, "val_loss": 1.0}]})


def test_gpt3_175b_is_the_family_row():
    assert kaplan.GPT3_175B is kaplan.GPT3_FAMILY[-1]
    assert kaplan.GPT3_175B.config() == GPTConfig(n_layer=96, d_model=12288, n_head=96, n_ctx=2048, vocab_size=50257)


@pytest.mark.parametrize("call, match", [
    (lambda: kaplan.loss_of_d(1e6, D_c=-1), "D_c"),
    (lambda: kaplan.loss_of_n(1e6, alpha_N=float("nan")), "alpha_N"),
    (lambda: kaplan.loss_of_n(True), "N"),
    (lambda: kaplan.loss_nd(1e6, 1e9, 1e10, 1e9, 0.1, 0.0), "alpha_D"),
    (lambda: kaplan.overfit_data_bound(1e6, exponent=-1), "exponent"),
    (lambda: kaplan.overfit_data_bound_from(1e6, tolerance=0, **kaplan.TABLE2), "tolerance"),
    (lambda: kaplan.kaplan_n(True, 8), "n_layer"),
    (lambda: kaplan.kaplan_n(2, 8, d_ff=0), "d_ff"),
    (lambda: kaplan.counted_flops_per_token("cfg"), "cfg"),
    (lambda: kaplan.fit_kaplan_nd([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [1, 1, 1, 1, 1], n_bootstrap=1.5), "n_bootstrap"),
])
def test_bad_input_raises(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()
