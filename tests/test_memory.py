"""book.memory: the formulas against ZeRO's worked example and against what autograd saves."""

import pytest
import torch

from book import measure, memory
from book.model import GPT, GPTConfig

CONFIGS = [  # odd widths, one head, no bias, untied head, a short sequence, both CPU kernels
    (GPTConfig(n_layer=2, d_model=16, n_head=2, n_ctx=32, vocab_size=13), 3, 32),
    (GPTConfig(n_layer=1, d_model=12, n_head=1, n_ctx=16, vocab_size=7, d_ff=20), 2, 9),
    (GPTConfig(n_layer=3, d_model=10, n_head=5, n_ctx=24, vocab_size=81, bias=False), 1, 24),
    (GPTConfig(n_layer=2, d_model=16, n_head=4, n_ctx=32, vocab_size=11, tie_embeddings=False,
               attention="naive"), 2, 17),
    (GPTConfig(n_layer=1, d_model=8, n_head=2, n_ctx=16, vocab_size=5, attention="naive"), 4, 16),
]


@pytest.mark.parametrize("cfg,batch_size,seq_len", CONFIGS)
def test_activation_formula_equals_saved_tensors_to_the_byte(cfg, batch_size, seq_len):
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (batch_size, seq_len))
    y = torch.randint(0, cfg.vocab_size, (batch_size, seq_len))
    measured = memory.measure_saved_bytes(model, (x, y))
    assert sum(memory.activation_bytes(cfg, batch_size, seq_len).values()) == measured


def test_mixed_adam_is_16_bytes_per_parameter_and_fp32_adam_16_too():
    assert sum(memory.training_bytes(1, optimizer="adam", precision="mixed").values()) == 16
    assert sum(memory.training_bytes(1, optimizer="adam", precision="fp32").values()) == 16
    assert sum(memory.training_bytes(1, optimizer="sgd", precision="fp32").values()) == 8
    assert memory.training_bytes(10, optimizer="momentum", precision="mixed")["optimizer_state"] == 40


def test_training_bytes_match_the_tensors_adam_holds():
    model = torch.nn.Linear(7, 5)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 7)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in model.parameters())
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                if torch.is_tensor(t) and t.ndim > 0)
    assert state == memory.training_bytes(n, optimizer="adam", precision="fp32")["optimizer_state"]


def test_zero_reproduces_figure_1():
    gb = [memory.zero_bytes_per_device(7_500_000_000, 64, stage) / 1e9 for stage in range(4)]
    assert [round(x, 1) for x in gb] == [120.0, 31.4, 16.6, 1.9]


def test_megatron_formula():
    assert memory.megatron_activation_bytes(2048, 1, 12288, 96) == 2048 * 12288 * (34 + 5 * 96 * 2048 / 12288)


@pytest.mark.parametrize("call,name", [
    (lambda: memory.training_bytes(0), "n_params"),
    (lambda: memory.training_bytes(True), "n_params"),
    (lambda: memory.training_bytes(10, optimizer="lion"), "optimizer"),
    (lambda: memory.training_bytes(10, precision="fp8"), "precision"),
    (lambda: memory.zero_bytes_per_device(10, 0, 1), "n_devices"),
    (lambda: memory.zero_bytes_per_device(10, 2, 4), "stage"),
    (lambda: memory.activation_bytes(GPTConfig(1, 8, 2, 16, 5), 0, 4), "batch_size"),
    (lambda: memory.activation_bytes(GPTConfig(1, 8, 2, 16, 5), 1, 17), "seq_len"),
    (lambda: memory.activation_bytes(GPTConfig(1, 8, 2, 16, 5, dropout=0.1), 1, 4), "dropout"),
    (lambda: memory.devices_needed(1e9, 0), "device_bytes"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError), match=name):
        call()


def test_cpu_peak_of_a_training_step_is_the_sum_of_its_parts_within_a_few_percent():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, n_ctx=64, vocab_size=81)
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randint(0, 81, (8, 64))
    y = torch.randint(0, 81, (8, 64))

    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer's state exists from here on: the step adds gradients and activations
    _, peak = measure.peak_tensor_bytes(step, "cpu")
    n = sum(p.numel() for p in model.parameters())
    new = memory.training_bytes(n, optimizer="adam", precision="fp32")["gradients"]
    new += sum(memory.activation_bytes(cfg, 8, 64).values())
    assert new <= peak <= 1.05 * new
