"""The Triton kernel against the PyTorch reference: on a GPU if there is one, else in Triton's CPU interpreter."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from book.attention import naive_attention

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

from book import attention_triton  # noqa: E402
from book.attention_triton import flash_attention_best, flash_attention_triton, triton_available  # noqa: E402

if attention_triton.triton is None:
    pytest.skip("triton is installed but cannot be imported", allow_module_level=True)

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
# Triton chooses its CPU interpreter from TRITON_INTERPRET when it is first imported, and torch may
# import it early (torch.utils.flop_counter does). So without a GPU the kernel tests run here only in
# a process started with TRITON_INTERPRET=1; otherwise `test_kernel_in_the_triton_interpreter` starts one.
RUN_HERE = triton_available(DEVICE)
runs_here = pytest.mark.skipif(not RUN_HERE, reason="kernel tests run in a child process with TRITON_INTERPRET=1")


# Never from a child: if the interpreter is not usable there, its kernel tests skip and the parent fails,
# instead of each child starting another.
@pytest.mark.skipif(RUN_HERE or os.environ.get("TRITON_INTERPRET") == "1",
                    reason="the kernel tests run in this process")
def test_kernel_in_the_triton_interpreter():
    root = Path(__file__).resolve().parent.parent
    child = subprocess.run([sys.executable, "-m", "pytest", __file__, "-q", "-x"], cwd=root, capture_output=True,
                           text=True, timeout=600, env={**os.environ, "TRITON_INTERPRET": "1"})
    assert child.returncode == 0, child.stdout[-4000:] + child.stderr[-2000:]
    assert " passed" in child.stdout


@pytest.fixture(autouse=True)
def exact_float32_matmuls():
    # book.device.setup (called by other tests in the same process) lets CUDA float32 matmuls use TF32, about
    # 1e-3 relative error: too coarse for the float32 references here.
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(precision)


def qkv(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=generator).to(DEVICE, dtype) for _ in range(3))


@runs_here
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape, blocks", [((1, 2, 37, 16), (16, 16)), ((2, 1, 97, 32), (32, 16)),
                                           ((1, 1, 50, 64), (16, 32)), ((1, 1, 33, 128), (16, 16))])
def test_triton_kernel_matches_reference(shape, blocks, causal, dtype):
    if DEVICE == "cpu" and dtype == torch.bfloat16:
        # The interpreter keeps bf16 as uint16 and tl.dot multiplies the bit patterns (triton-lang/triton#11584).
        pytest.skip("Triton's CPU interpreter does not support bf16 tl.dot")
    q, k, v = qkv(shape, dtype)
    out, lse = flash_attention_triton(q, k, v, causal=causal, block_q=blocks[0], block_k=blocks[1],
                                      return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    q32, k32, v32 = (t.float() for t in (q, k, v))
    expected = naive_attention(q32, k32, v32, causal=causal)
    tolerance = 1e-2 if dtype == torch.float16 else 3e-2  # inputs are exact; P is rounded to 16 bits for P V
    torch.testing.assert_close(out.float(), expected, atol=tolerance, rtol=0)
    scores = (q32 @ k32.transpose(-2, -1)) / shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(torch.ones(shape[2], shape[2], dtype=torch.bool, device=DEVICE).triu(1),
                                    float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, dim=-1), atol=1e-3, rtol=1e-3)


@runs_here
def test_triton_rejects_what_it_cannot_run():
    q, k, v = qkv((1, 1, 8, 16), torch.float16)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        flash_attention_triton(q.float(), k.float(), v.float())
    with pytest.raises(ValueError, match="d_head"):
        flash_attention_triton(q[..., :8], k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="block_q"):
        flash_attention_triton(q, k, v, block_q=24)


@runs_here
def test_best_falls_back_to_pytorch_when_a_gradient_is_needed():
    q, k, v = (t.float().requires_grad_() for t in qkv((1, 2, 20, 16), torch.float16))
    out = flash_attention_best(q, k, v, causal=True)
    assert out.grad_fn is not None
    torch.testing.assert_close(out, naive_attention(q, k, v, causal=True))
