"""book.checklist: every check passes on a clean case and fails on the bug planted for it."""

import math

import pytest
import torch
import torch.nn.functional as F

from book import checklist, inference
from book.kaplan import GPT3_175B
from book.model import GPT, CausalSelfAttention, GPTConfig

CFG = GPTConfig(n_layer=2, d_model=16, n_head=2, n_ctx=12, vocab_size=11)


class _FullAttention(CausalSelfAttention):
    """The planted bug: no mask at all, every position sees the whole sequence."""

    def forward(self, x, *unused, **unused_kw):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))


def _gpt(leaky: bool = False) -> GPT:
    torch.manual_seed(0)
    model = GPT(CFG)
    if leaky:
        for layer, block in enumerate(model.blocks):
            attn = _FullAttention(CFG, layer)
            attn.load_state_dict(block.attn.state_dict())
            block.attn = attn
    return model


def test_loss_smooth_passes_a_falling_curve_and_fails_spikes_and_divergence():
    clean = [4.0 * 0.97**i for i in range(40)]
    assert checklist.loss_is_smooth(clean).passed
    spiky = clean[:10] + [clean[9] * 1.5] + clean[10:]
    result = checklist.loss_is_smooth(spiky)
    assert not result.passed and math.isclose(result.value, 0.5) and result.details["spike_at"] == 10
    assert not checklist.loss_is_smooth(clean[:5] + [math.nan]).passed
    assert not checklist.loss_is_smooth([4.0, 4.0, 4.0, 4.0]).passed  # flat: no drop
    assert checklist.loss_is_smooth(torch.tensor(clean)).passed


def test_mask_is_causal_catches_full_attention():
    clean = checklist.mask_is_causal(_gpt())
    assert clean.passed and clean.value == 0
    leaky = checklist.mask_is_causal(_gpt(leaky=True))
    assert not leaky.passed and leaky.value > 1e-3
    model = _gpt()
    model.train()
    checklist.mask_is_causal(model, seq_len=5)
    assert model.training  # the mode is restored


def test_gradients_finite_and_planted_inf():
    model = _gpt()
    x = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0))
    model(x, x)[1].backward()
    assert checklist.gradients_are_finite(model).passed
    model.blocks[0].mlp.up.weight.grad[0, 0] = math.inf
    result = checklist.gradients_are_finite(model)
    assert not result.passed and result.value == 1 and "blocks.0.mlp.up.weight" in result.message
    with pytest.raises(ValueError, match="backward"):
        checklist.gradients_are_finite(_gpt())


def test_loader_keeps_up():
    assert checklist.loader_keeps_up(0.001, 0.1).passed
    slow = checklist.loader_keeps_up(0.2, 0.1)
    assert not slow.passed and math.isclose(slow.value, 2.0)
    assert math.isclose(slow.details["idle_fraction"], 2 / 3)


def test_validation_overlap_of_held_out_and_shuffled_splits():
    gen = torch.Generator().manual_seed(0)
    text = torch.randint(0, 50, (20_000,), generator=gen)
    assert checklist.validation_is_reliable(text[:18_000], text[18_000:]).passed
    windows = text[torch.arange(0, 20_000 - 65, 8)[:, None] + torch.arange(65)]
    windows = windows[torch.randperm(len(windows), generator=gen)]
    leaky = checklist.validation_is_reliable(windows[:2000].reshape(-1), windows[2000:].reshape(-1))
    assert not leaky.passed and leaky.value > 0.4
    assert checklist.ngram_overlap(text, text[100:200], n=8) == 1.0
    suspicious = checklist.validation_is_reliable(text[:18_000], text[18_000:], train_loss=2.0, val_loss=1.5)
    assert not suspicious.passed


def test_memory_breakdown_names_the_dominant_part():
    small = checklist.memory_breakdown(CFG, 4, 32e9)
    assert small.passed and small.details["dominant"] == "activations"
    gpt3 = GPT3_175B.config()
    train = checklist.memory_breakdown(gpt3, 1, 32e9)
    assert not train.passed and train.details["dominant"] == "optimizer_state"
    assert train.details["devices"] > 87  # 2.8 TB of model state alone on 32 GB devices
    serve = checklist.memory_breakdown(gpt3, 64, 80e9, mode="inference")
    assert serve.details["dominant"] == "kv_cache"
    assert serve.details["kv_cache"] == inference.kv_cache_bytes(gpt3.n_layer, gpt3.n_head, gpt3.d_head, 2048, batch_size=64) == 2 * 96 * 64 * 2048 * 12288 * 2


def test_data_balance_verdicts():
    assert checklist.data_balance(1e6, 2e7).details["verdict"] == "balanced"
    assert checklist.data_balance(175e9, 300e9).details["verdict"] == "undertrained"
    assert checklist.data_balance(6.7e9, 1e12).details["verdict"] == "capacity-limited"
    assert not checklist.data_balance(175e9, 300e9).passed


@pytest.mark.parametrize("call, exc, name", [
    (lambda: checklist.loss_is_smooth([1.0, 2.0]), ValueError, "losses"),
    (lambda: checklist.loss_is_smooth("abc"), TypeError, "losses"),
    (lambda: checklist.loss_is_smooth([1.0, "a", 2.0]), TypeError, "losses"),
    (lambda: checklist.loss_is_smooth([3.0, 2.0, 1.0], max_spike=-1), ValueError, "max_spike"),
    (lambda: checklist.mask_is_causal("model"), TypeError, "model"),
    (lambda: checklist.mask_is_causal(torch.nn.Linear(2, 2)), TypeError, "model"),
    (lambda: checklist.mask_is_causal(_gpt(), seq_len=99), ValueError, "seq_len"),
    (lambda: checklist.mask_is_causal(_gpt(), rtol=0), ValueError, "rtol"),
    (lambda: checklist.gradients_are_finite(None), TypeError, "model"),
    (lambda: checklist.loader_keeps_up(-1.0, 1.0), ValueError, "loader_seconds"),
    (lambda: checklist.loader_keeps_up(1.0, 0), ValueError, "step_seconds"),
    (lambda: checklist.loader_keeps_up(1.0, True), TypeError, "step_seconds"),
    (lambda: checklist.validation_is_reliable([1, 2], torch.arange(40)), TypeError, "train"),
    (lambda: checklist.validation_is_reliable(torch.arange(40), torch.rand(40)), TypeError, "val"),
    (lambda: checklist.validation_is_reliable(torch.arange(40), torch.arange(10)), ValueError, "n=32"),
    (lambda: checklist.validation_is_reliable(torch.arange(40), torch.arange(40), train_loss=1.0),
     ValueError, "val_loss"),
    (lambda: checklist.memory_breakdown(CFG, 0, 1e9), ValueError, "batch_size"),
    (lambda: checklist.memory_breakdown(CFG, 1, 1e9, mode="serving"), ValueError, "mode"),
    (lambda: checklist.memory_breakdown({}, 1, 1e9), TypeError, "config"),
    (lambda: checklist.memory_breakdown(CFG, 1, -5.0), ValueError, "device_bytes"),
    (lambda: checklist.data_balance(0, 1e9), ValueError, "n_params"),
    (lambda: checklist.data_balance(1e9, 1e9, tolerance=0.5), ValueError, "tolerance"),
])
def test_bad_input_names_the_argument(call, exc, name):
    with pytest.raises(exc, match=name):
        call()
