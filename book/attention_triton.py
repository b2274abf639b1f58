"""The FlashAttention forward pass as a Triton GPU kernel: `book.attention.flash_attention`, for real.

One program instance computes one tile of ``BLOCK_Q`` queries for one (batch, head): it keeps
the tile's running max, running sum and output accumulator in registers and streams the key
and value tiles through on-chip memory, the loop of Dao et al. (2022) in the query-outer
order of FlashAttention-2. Scores, sums and the accumulator are float32; q, k, v are fp16 or bf16.

Forward only (no autograd): for timing and inference. `flash_attention_best` picks this kernel
when it can (CUDA, Triton, 16-bit inputs, no gradient needed) and `book.attention.flash_attention`
otherwise. With ``TRITON_INTERPRET=1`` in the environment from the start (Triton reads it when it
is imported, and torch may import it early) the kernel runs on the CPU in Triton's interpreter,
which is how the tests check it without a GPU. The interpreter cannot do bf16 ``tl.dot``
(triton-lang/triton#11584), so there only fp16 is checked.
"""

from __future__ import annotations

import math
import os

import torch

from book import attention as _attention
from book import checks

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton ships with CUDA builds of torch; the CPU course runs without it
    triton = None

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16)
SUPPORTED_D_HEAD = (16, 32, 64, 128)  # tl.dot wants power-of-two tiles of at least 16


# Triton reads TRITON_INTERPRET when kernels are defined: what it was at import decides, not what it is now.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def triton_available(device: torch.device | str = "cuda") -> bool:
    """Whether the kernel can run on ``device``: Triton imported, and CUDA (or the CPU interpreter)."""
    if triton is None:
        return False
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.is_available()) or (device.type == "cpu" and INTERPRETED)


if triton is not None:

    @triton.jit
    def _flash_forward_kernel(Q, K, V, O, LSE, n, scale,
                              CAUSAL: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr,
                              D_HEAD: tl.constexpr):
        # Tensors are contiguous (batch * heads, n, D_HEAD): program (i, bh) owns query tile i of head bh.
        q_start = tl.program_id(0) * BLOCK_Q
        head = tl.program_id(1).to(tl.int64) * n * D_HEAD  # offset of this head's matrices
        rows = q_start + tl.arange(0, BLOCK_Q)
        dims = tl.arange(0, D_HEAD)
        q = tl.load(Q + head + rows[:, None] * D_HEAD + dims[None, :], mask=rows[:, None] < n, other=0.0)

        row_max = tl.full([BLOCK_Q], float("-inf"), tl.float32)
        row_sum = tl.zeros([BLOCK_Q], tl.float32)
        acc = tl.zeros([BLOCK_Q, D_HEAD], tl.float32)
        # Causal: key tiles starting after this tile's last query are fully masked, so stop before them.
        if CAUSAL:
            k_end = tl.minimum(n, q_start + BLOCK_Q)
        else:
            k_end = n
        for k_start in range(0, k_end, BLOCK_K):
            cols = k_start + tl.arange(0, BLOCK_K)
            in_range = cols[:, None] < n
            k = tl.load(K + head + cols[:, None] * D_HEAD + dims[None, :], mask=in_range, other=0.0)
            v = tl.load(V + head + cols[:, None] * D_HEAD + dims[None, :], mask=in_range, other=0.0)
            scores = tl.dot(q, tl.trans(k)) * scale  # float32 accumulation of 16-bit products
            allowed = cols[None, :] < n
            if CAUSAL:
                allowed = allowed & (cols[None, :] <= rows[:, None])
            scores = tl.where(allowed, scores, float("-inf"))
            # The online softmax: key 0 is always allowed, so new_max is finite from the first tile.
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            p = tl.exp(scores - new_max[:, None])
            correction = tl.exp(row_max - new_max)
            row_sum = row_sum * correction + tl.sum(p, 1)
            acc = acc * correction[:, None] + tl.dot(p.to(v.dtype), v)
            row_max = new_max

        out = acc / row_sum[:, None]
        tl.store(O + head + rows[:, None] * D_HEAD + dims[None, :], out.to(O.dtype.element_ty),
                 mask=rows[:, None] < n)
        tl.store(LSE + tl.program_id(1).to(tl.int64) * n + rows, row_max + tl.log(row_sum), mask=rows < n)


def _power_of_two_block(name: str, value) -> int:
    if checks.positive_int(name, value) < 16 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two of at least 16 (a Triton tile), got {value!r}")
    return value


def flash_attention_triton(q, k, v, causal=False, scale=None, block_q=64, block_k=64, return_lse=False):
    """FlashAttention forward with the Triton kernel; arguments and result as `book.attention.flash_attention`.

    q, k, v: (batch, heads, n, d_head), one shape, fp16 or bf16, d_head in 16, 32, 64, 128.
    Any n. Returns O in q's dtype and, with ``return_lse``, the float32 log-sum-exp (batch, heads, n).
    """
    if triton is None:
        raise RuntimeError("Triton is not installed: use book.attention.flash_attention")
    _attention._check_qkv(q, k, v)
    if v.shape != q.shape:
        raise ValueError(f"v must have q's shape {tuple(q.shape)} for the Triton kernel, got {tuple(v.shape)}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"q, k, v must be float16 or bfloat16 for the Triton kernel, got {q.dtype}")
    if q.shape[-1] not in SUPPORTED_D_HEAD:
        raise ValueError(f"d_head must be one of {SUPPORTED_D_HEAD} for the Triton kernel, got {q.shape[-1]}")
    if not triton_available(q.device):
        raise ValueError(f"q is on {q.device}: the kernel needs CUDA, or the CPU with TRITON_INTERPRET=1")
    block_q, block_k = _power_of_two_block("block_q", block_q), _power_of_two_block("block_k", block_k)
    scale = _attention._scale(scale, q.shape[-1])
    batch, heads, n, d_head = q.shape
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, n, dtype=torch.float32, device=q.device)
    grid = (math.ceil(n / block_q), batch * heads)
    _flash_forward_kernel[grid](q, k, v, out, lse, n, scale,
                                CAUSAL=bool(causal), BLOCK_Q=block_q, BLOCK_K=block_k, D_HEAD=d_head)
    return (out, lse) if return_lse else out


def flash_attention_best(q, k, v, causal=False, scale=None):
    """The Triton kernel where it applies (CUDA, fp16/bf16, d_head 16-128, no gradient), else the PyTorch tiles."""
    _attention._check_qkv(q, k, v)
    kernel_fits = (q.device.type == "cuda" and triton_available(q.device) and q.dtype in SUPPORTED_DTYPES
                   and q.shape[-1] in SUPPORTED_D_HEAD and k.shape == q.shape and v.shape == q.shape)
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if kernel_fits and not needs_grad:
        return flash_attention_triton(q, k, v, causal=causal, scale=scale)
    return _attention.flash_attention(q, k, v, causal=causal, scale=scale)


# --------------------------------------------------------------------------- checking it without a GPU


def check_against_reference(shapes=((1, 2, 37, 16), (1, 1, 50, 64), (1, 1, 33, 128)), causal=(False, True),
                            block_q=16, block_k=16, device="cpu") -> list[dict]:
    """Run the kernel in fp16 on random inputs; each row: shape, causal, largest |error| against the fp32 reference.

    On the CPU this needs ``TRITON_INTERPRET=1`` set before Triton was imported (run ``python -m
    book.attention_triton`` with it in the environment, as lesson 5.3 does).
    """
    rows = []
    generator = torch.Generator().manual_seed(0)
    for shape in shapes:
        q, k, v = (torch.randn(shape, generator=generator).to(device, torch.float16) for _ in range(3))
        for is_causal in causal:
            out = flash_attention_triton(q, k, v, causal=is_causal, block_q=block_q, block_k=block_k)
            reference = _attention.naive_attention(q.float(), k.float(), v.float(), causal=is_causal)
            rows.append({"shape": list(shape), "causal": is_causal,
                         "max_abs_error": (out.float() - reference).abs().max().item()})
    return rows


if __name__ == "__main__":
    import json

    if not triton_available("cpu") and not triton_available("cuda"):
        raise SystemExit("the kernel cannot run here: install Triton, and set TRITON_INTERPRET=1 without a GPU")
    print(json.dumps(check_against_reference(device="cuda" if triton_available("cuda") else "cpu")))
