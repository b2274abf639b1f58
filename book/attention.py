"""Attention, exact and approximate, behind one interface; and what it costs.

Every function takes ``q, k, v`` shaped (batch, heads, n, d_head) and returns
(batch, heads, n, d_v) in q's dtype (``v`` may be wider or narrower than q and k):

| function                   | what it computes                                   | time, memory / head   |
|----------------------------|----------------------------------------------------|-----------------------|
| `naive_attention`          | softmax(Q K^T / sqrt(d)) V, the n x n scores held  | n^2 d, n^2            |
| `flash_attention`          | the same, tiled with an online softmax (exact)     | n^2 d, n d            |
| `sliding_window_attention` | each query sees keys within `window` positions     | n w d, n w            |
| `linformer_attention`      | softmax(Q (E K)^T / sqrt(d)) (F V), E, F rank x n  | n r d, n r            |
| `linear_attention`         | phi(Q) (phi(K)^T V), normalised; no softmax        | n d^2, d^2 (+ chunk^2)|
| `lsh_attention`            | softmax over keys that hash near the query         | n c d, n c (c: chunk) |

FlashAttention is Dao et al. (2022), its online softmax Milakov & Gimelshein (2018);
Linformer Wang et al. (2020); linear attention Katharopoulos et al. (2020); LSH
attention the Reformer of Kitaev et al. (2020). ``causal=True`` lets query i see only
keys j <= i. Half-precision inputs are computed in float32 (float64 stays float64)
and cast back. The loops over blocks are plain Python: these are references to read
and test against, not fast kernels.

The cost helpers at the end (`attention_flops`, `score_bytes`, `naive_vs_flash_hbm_bytes`)
give the FLOPs, the memory of the materialised scores, and the IO model of Dao et al. (2022).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from book import checks

NEG_INF = float("-inf")


# --------------------------------------------------------------------------- checking arguments


def _check_qkv(q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, n, d_head), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k and v must share (batch, heads, n): got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[3] != q.shape[3]:
        raise ValueError(f"d_head of q ({q.shape[3]}) and k ({k.shape[3]}) must match")
    if q.shape[2] == 0 or q.shape[3] == 0 or v.shape[3] == 0:
        raise ValueError(f"n and d_head must be at least 1, got q {tuple(q.shape)}, v {tuple(v.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _scale(scale, d_head: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d_head)
    return checks.positive_float("scale", scale)  # None means 1/sqrt(d_head)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    # Sums of exponentials lose too much in 16 bits; float64 stays float64 for tight tests.
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _upcast(*tensors):
    dtype = _compute_dtype(tensors[0])
    return tuple(t.to(dtype) for t in tensors)


def _above_diagonal(rows: range, cols: range, device) -> torch.Tensor:
    """True where key position > query position: what a causal mask removes."""
    return (torch.arange(cols.start, cols.stop, device=device)[None, :]
            > torch.arange(rows.start, rows.stop, device=device)[:, None])


# --------------------------------------------------------------------------- exact attention


def naive_attention(q, k, v, causal=False, scale=None):
    """softmax(Q K^T * scale) V with the n x n scores materialised: the reference for all others.

    ``scale`` defaults to 1/sqrt(d_head). Causal masking sets scores above the diagonal to -inf.
    """
    _check_qkv(q, k, v)
    scale = _scale(scale, q.shape[-1])
    out_dtype = q.dtype
    q, k, v = _upcast(q, k, v)
    n = q.shape[2]
    scores = (q @ k.transpose(-2, -1)) * scale  # (batch, heads, n, n): the memory FlashAttention avoids
    if causal:
        scores = scores.masked_fill(_above_diagonal(range(n), range(n), q.device), NEG_INF)
    return (scores.softmax(dim=-1) @ v).to(out_dtype)


def _flash_forward(q, k, v, causal, block_q, block_k, scale):
    """O and the log-sum-exp of each row of scores, one (block_q x block_k) tile of scores at a time.

    The outer loop is over query tiles (as in FlashAttention-2), so each tile's running
    statistics stay local; the full n x n matrix never exists.
    """
    n = q.shape[2]
    out_tiles, lse_tiles = [], []
    for q0 in range(0, n, block_q):
        rows = range(q0, min(q0 + block_q, n))
        q_tile = q[:, :, rows.start:rows.stop]
        # Running max m, running sum l = sum_j exp(s_j - m), and acc = sum_j exp(s_j - m) v_j.
        row_max = q.new_full(q_tile.shape[:3], NEG_INF)
        row_sum = q.new_zeros(q_tile.shape[:3])
        acc = q.new_zeros(*q_tile.shape[:3], v.shape[-1])
        # Causal: key tiles starting after this tile's last query are fully masked, so skip them.
        k_end = rows.stop if causal else n
        for k0 in range(0, k_end, block_k):
            cols = range(k0, min(k0 + block_k, n))
            scores = (q_tile @ k[:, :, cols.start:cols.stop].transpose(-2, -1)) * scale
            if causal and cols.stop - 1 > rows.start:  # only tiles crossing the diagonal need a mask
                scores = scores.masked_fill(_above_diagonal(rows, cols, q.device), NEG_INF)
            # Each row has seen key 0 or an earlier tile, so new_max is finite: no inf - inf below.
            new_max = torch.maximum(row_max, scores.amax(dim=-1))
            p = torch.exp(scores - new_max[..., None])
            # What was summed relative to the old max is rescaled to the new one: e^(m_old - m_new).
            correction = torch.exp(row_max - new_max)
            row_sum = row_sum * correction + p.sum(dim=-1)
            acc = acc * correction[..., None] + p @ v[:, :, cols.start:cols.stop]
            row_max = new_max
        out_tiles.append(acc / row_sum[..., None])
        lse_tiles.append(row_max + torch.log(row_sum))
    return torch.cat(out_tiles, dim=2), torch.cat(lse_tiles, dim=2)


def _flash_backward(q, k, v, out, lse, d_out, d_lse, causal, block_q, block_k, scale):
    """dQ, dK, dV, recomputing each tile of P = exp(S - lse) instead of reading a stored n x n P."""
    n = q.shape[2]
    # dS = P * (dP - rowsum(dO * O)): rowsum(dO * O) = sum_j P_ij dP_ij, one number per query.
    # The lse output adds dlse_i * P_ij to dS_ij (d lse_i / d S_ij = P_ij), so it folds in here.
    delta = (d_out * out).sum(dim=-1) - d_lse
    dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    # Outer loop over key tiles: dK and dV of a tile are finished before moving on.
    for k0 in range(0, n, block_k):
        cols = range(k0, min(k0 + block_k, n))
        k_tile, v_tile = k[:, :, cols.start:cols.stop], v[:, :, cols.start:cols.stop]
        dk_tile, dv_tile = torch.zeros_like(k_tile), torch.zeros_like(v_tile)
        # Causal: query tiles ending before this key tile starts are fully masked, so skip them.
        q_start = (k0 // block_q) * block_q if causal else 0
        for q0 in range(q_start, n, block_q):
            rows = range(q0, min(q0 + block_q, n))
            q_tile, d_out_tile = q[:, :, rows.start:rows.stop], d_out[:, :, rows.start:rows.stop]
            scores = (q_tile @ k_tile.transpose(-2, -1)) * scale
            if causal and cols.stop - 1 > rows.start:
                scores = scores.masked_fill(_above_diagonal(rows, cols, q.device), NEG_INF)
            p = torch.exp(scores - lse[:, :, rows.start:rows.stop, None])  # exactly the forward's P
            dv_tile += p.transpose(-2, -1) @ d_out_tile
            dp = d_out_tile @ v_tile.transpose(-2, -1)
            ds = p * (dp - delta[:, :, rows.start:rows.stop, None])
            dq[:, :, rows.start:rows.stop] += (ds @ k_tile) * scale
            dk_tile += (ds.transpose(-2, -1) @ q_tile) * scale
        dk[:, :, cols.start:cols.stop] = dk_tile
        dv[:, :, cols.start:cols.stop] = dv_tile
    return dq, dk, dv


class FlashAttentionFunction(torch.autograd.Function):
    """FlashAttention as an autograd function: outputs (O, lse); backward by recomputation.

    It saves q, k, v, O and the log-sum-exp (n numbers a row of heads), never P (n^2),
    and the backward pass rebuilds P tile by tile from q, k and lse.
    ``apply(q, k, v, causal, block_q, block_k, scale)`` takes checked arguments; use `flash_attention`.
    """

    @staticmethod
    def forward(ctx, q, k, v, causal, block_q, block_k, scale):
        out, lse = _flash_forward(q, k, v, causal, block_q, block_k, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (causal, block_q, block_k, scale)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, d_out, d_lse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _flash_backward(q, k, v, out, lse, d_out, d_lse, *ctx.options)
        return dq, dk, dv, None, None, None, None


def flash_attention(q, k, v, causal=False, block_q=64, block_k=64, scale=None, return_lse=False):
    """Exact attention computed in (block_q x block_k) tiles with an online softmax (Dao et al., 2022).

    For each tile of queries we walk over the tiles of keys keeping, per query, the running
    max m of the scores, the running sum l of exp(score - m) and an accumulator of
    exp(score - m) v; when a new tile raises the max, l and the accumulator are multiplied by
    exp(m_old - m_new). At the end O = acc / l and the log-sum-exp is m + log l. Any n works
    (the last tiles are short); with ``causal`` the tiles entirely above the diagonal are skipped
    and only those crossing it are masked. Differentiable through `FlashAttentionFunction`.

    Returns O (batch, heads, n, d_v) and, with ``return_lse``, the log-sum-exp of each row of
    scaled scores (batch, heads, n) in the compute dtype (float32 or float64).
    """
    _check_qkv(q, k, v)
    block_q, block_k = checks.positive_int("block_q", block_q), checks.positive_int("block_k", block_k)
    scale = _scale(scale, q.shape[-1])
    out_dtype = q.dtype
    out, lse = FlashAttentionFunction.apply(*_upcast(q, k, v), bool(causal), block_q, block_k, scale)
    out = out.to(out_dtype)
    return (out, lse) if return_lse else out


# --------------------------------------------------------------------------- sparse: a sliding window


def sliding_window_attention(q, k, v, window, causal=False, scale=None):
    """Softmax attention restricted to a band of keys around each query.

    Causal: query i sees the ``window`` most recent keys, itself included: i - window < j <= i.
    Non-causal: query i sees |i - j| < window, i.e. up to 2 window - 1 keys centred on i.
    A window of n or more is exact attention. Queries are processed in blocks, and each block
    scores only the band of keys it can reach, so memory is O(n * window), not O(n^2).
    """
    _check_qkv(q, k, v)
    window = checks.positive_int("window", window)
    scale = _scale(scale, q.shape[-1])
    out_dtype = q.dtype
    q, k, v = _upcast(q, k, v)
    n = q.shape[2]
    block = min(n, max(window, 32))  # rows per step; at least 32 so that small windows are not a row-by-row loop
    out_blocks = []
    for q0 in range(0, n, block):
        rows = range(q0, min(q0 + block, n))
        # The keys any row of this block can reach: from window-1 before the first row
        # to window-1 after the last (or to the last row itself, when causal).
        cols = range(max(0, rows.start - window + 1), rows.stop if causal else min(n, rows.stop + window - 1))
        scores = (q[:, :, rows.start:rows.stop] @ k[:, :, cols.start:cols.stop].transpose(-2, -1)) * scale
        offset = (torch.arange(rows.start, rows.stop, device=q.device)[:, None]
                  - torch.arange(cols.start, cols.stop, device=q.device)[None, :])  # i - j
        outside = (offset >= window) | (offset < 0 if causal else offset <= -window)
        scores = scores.masked_fill(outside, NEG_INF)  # j = i is always inside, so no row is empty
        out_blocks.append(scores.softmax(dim=-1) @ v[:, :, cols.start:cols.stop])
    return torch.cat(out_blocks, dim=2).to(out_dtype)


# --------------------------------------------------------------------------- low rank: Linformer


def _check_projection(name: str, proj, n: int) -> torch.Tensor:
    if not isinstance(proj, torch.Tensor) or proj.ndim != 2 or proj.shape[1] != n:
        shape = tuple(proj.shape) if isinstance(proj, torch.Tensor) else type(proj).__name__
        raise ValueError(f"{name} must be a (rank, n={n}) tensor, got {shape}")
    if not 1 <= proj.shape[0] <= n:
        raise ValueError(f"{name} has rank {proj.shape[0]}; the rank must be in [1, n={n}]")
    return proj


def linformer_projections(n: int, rank: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random Linformer projections E, F (rank x n), entries N(0, 1/rank), reproducible from ``seed``.

    With entries of variance 1/rank, (E K)^T (E K) ~ K^T K on average: a Johnson-Lindenstrauss sketch.
    """
    n, rank = checks.positive_int("n", n), checks.positive_int("rank", rank)
    if rank > n:
        raise ValueError(f"rank must be at most n={n} (a projection cannot add positions), got {rank}")
    generator = torch.Generator().manual_seed(seed)
    proj_k = torch.randn(rank, n, generator=generator) / math.sqrt(rank)
    proj_v = torch.randn(rank, n, generator=generator) / math.sqrt(rank)
    return proj_k, proj_v


def linformer_attention(q, k, v, rank=None, proj_k=None, proj_v=None, causal=False, scale=None, seed=0):
    """Linformer (Wang et al., 2020): softmax(Q (E K)^T * scale) (F V), with E, F of shape (rank, n).

    E and F compress the n keys and values into ``rank`` mixtures, so the scores are n x rank.
    Pass ``proj_k`` (E) and ``proj_v`` (F), or ``proj_k`` alone to use it for both (the paper's
    key-value sharing), or only ``rank`` to draw them from ``seed`` (`linformer_projections`).
    With rank = n and E = F = identity this is exact attention. Use `LinformerProjection`
    for learnable E and F.
    """
    _check_qkv(q, k, v)
    if causal:
        raise ValueError("causal=True is not supported by Linformer: each projected key E K mixes all n "
                         "positions, future ones included, so no mask on the n x rank scores can hide the "
                         "future (the paper uses it in bidirectional encoders)")
    n = q.shape[2]
    if rank is not None:
        rank = checks.positive_int("rank", rank)
        if rank > n:
            raise ValueError(f"rank must be at most n={n} (a projection cannot add positions), got {rank}")
    if proj_k is None:
        if proj_v is not None:
            raise ValueError("proj_v was given without proj_k: pass proj_k (and proj_v, or neither to share E)")
        if rank is None:
            raise ValueError("give rank (to draw random projections from seed) or proj_k and proj_v")
        proj_k, proj_v = linformer_projections(n, rank, seed)
    else:
        proj_k = _check_projection("proj_k", proj_k, n)
        proj_v = proj_k if proj_v is None else _check_projection("proj_v", proj_v, n)
        if proj_v.shape != proj_k.shape:
            raise ValueError(f"proj_k {tuple(proj_k.shape)} and proj_v {tuple(proj_v.shape)} must have one shape")
        if rank is not None and proj_k.shape[0] != rank:
            raise ValueError(f"rank={rank} does not match the projections' rank {proj_k.shape[0]}")
    scale = _scale(scale, q.shape[-1])
    out_dtype = q.dtype
    q, k, v = _upcast(q, k, v)
    proj_k, proj_v = proj_k.to(q.device, q.dtype), proj_v.to(q.device, q.dtype)
    k_low, v_low = proj_k @ k, proj_v @ v  # (batch, heads, rank, d): rank "summary" keys and values
    scores = (q @ k_low.transpose(-2, -1)) * scale  # (batch, heads, n, rank): linear in n
    return (scores.softmax(dim=-1) @ v_low).to(out_dtype)


class LinformerProjection(nn.Module):
    """Learnable Linformer projections for sequences of length ``n``: E (``proj_k``) and F (``proj_v``).

    ``module(q, k, v)`` is ``linformer_attention(q, k, v, proj_k=E, proj_v=F)``. Initialised like
    `linformer_projections` (entries N(0, 1/rank)) from torch's global generator, as nn.Linear is.
    """

    def __init__(self, n: int, rank: int):
        super().__init__()
        n, rank = checks.positive_int("n", n), checks.positive_int("rank", rank)
        if rank > n:
            raise ValueError(f"rank must be at most n={n} (a projection cannot add positions), got {rank}")
        self.n, self.rank = n, rank
        self.proj_k = nn.Parameter(torch.randn(rank, n) / math.sqrt(rank))  # E
        self.proj_v = nn.Parameter(torch.randn(rank, n) / math.sqrt(rank))  # F

    def forward(self, q, k, v, scale=None):
        return linformer_attention(q, k, v, proj_k=self.proj_k, proj_v=self.proj_v, scale=scale)

    def extra_repr(self) -> str:
        return f"n={self.n}, rank={self.rank}"


# --------------------------------------------------------------------------- kernel: linear attention


def elu_plus_one(x: torch.Tensor) -> torch.Tensor:
    """The feature map of Katharopoulos et al. (2020): elu(x) + 1, positive, so the normaliser is too."""
    return F.elu(x) + 1


def linear_attention(q, k, v, causal=False, feature_map=None, eps=1e-6, chunk_size=64):
    """Linear attention (Katharopoulos et al., 2020): softmax(q.k) is replaced by phi(q).phi(k).

        out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

    Without a softmax the sums over j factor out of the query: d x d_v state instead of n x n
    scores. ``feature_map`` (default `elu_plus_one`) maps (..., d) to non-negative (..., d_f).

    Causal: the sums run over j <= i, prefix sums of phi(k_j) v_j^T. A plain cumsum would hold
    n of these d_f x d_v matrices; instead we go chunk by chunk (``chunk_size`` positions), carrying
    the running sums from earlier chunks and using the explicit masked phi(Q) phi(K)^T inside the
    chunk: memory O(chunk_size^2 + d_f d_v) per head, the same numbers as the cumsum.
    """
    _check_qkv(q, k, v)
    chunk_size = checks.positive_int("chunk_size", chunk_size)
    if feature_map is None:
        feature_map = elu_plus_one
    if not callable(feature_map):
        raise ValueError(f"feature_map must be callable or None (meaning elu + 1), got {feature_map!r}")
    checks.nonnegative_float("eps", eps)
    out_dtype = q.dtype
    q, k, v = _upcast(q, k, v)
    phi_q, phi_k = feature_map(q), feature_map(k)
    if phi_q.shape[:3] != q.shape[:3] or phi_k.shape != phi_q.shape:
        raise ValueError(f"feature_map must keep (batch, heads, n) and map q and k to one width; "
                         f"got {tuple(phi_q.shape)} and {tuple(phi_k.shape)} from {tuple(q.shape)}")
    if not causal:
        kv = phi_k.transpose(-2, -1) @ v  # (batch, heads, d_f, d_v) = sum_j phi(k_j) v_j^T
        k_sum = phi_k.sum(dim=2)  # (batch, heads, d_f)
        normaliser = (phi_q * k_sum[:, :, None]).sum(dim=-1)
        return ((phi_q @ kv) / (normaliser + eps)[..., None]).to(out_dtype)
    n = q.shape[2]
    kv = q.new_zeros(*q.shape[:2], phi_k.shape[-1], v.shape[-1])  # sums over all earlier chunks
    k_sum = q.new_zeros(*q.shape[:2], phi_k.shape[-1])
    out_chunks = []
    for c0 in range(0, n, chunk_size):
        c1 = min(c0 + chunk_size, n)
        phi_q_c, phi_k_c, v_c = phi_q[:, :, c0:c1], phi_k[:, :, c0:c1], v[:, :, c0:c1]
        within = (phi_q_c @ phi_k_c.transpose(-2, -1)).tril()  # phi(q_i).phi(k_j), j <= i inside the chunk
        numerator = phi_q_c @ kv + within @ v_c
        normaliser = (phi_q_c * k_sum[:, :, None]).sum(dim=-1) + within.sum(dim=-1)
        out_chunks.append(numerator / (normaliser + eps)[..., None])
        kv = kv + phi_k_c.transpose(-2, -1) @ v_c
        k_sum = k_sum + phi_k_c.sum(dim=2)
    return torch.cat(out_chunks, dim=2).to(out_dtype)


# --------------------------------------------------------------------------- hashing: Reformer's LSH attention


def _check_buckets(n_buckets, n_rounds) -> None:
    checks.positive_int("n_buckets", n_buckets)
    checks.positive_int("n_rounds", n_rounds)
    if n_buckets > 1 and n_buckets % 2:
        raise ValueError(f"n_buckets must be 1 or even (buckets come in pairs: argmax over [xR, -xR]), "
                         f"got {n_buckets}")


def lsh_buckets(x, n_buckets, n_rounds=1, seed=0):
    """Angular LSH (Kitaev et al., 2020): bucket(x) = argmax([x R, -x R]) for a random R (d x n_buckets/2).

    Returns (n_rounds, *x.shape[:-1]) bucket ids in [0, n_buckets): one R per round, drawn
    from ``seed`` and shared by every batch element and head. Vectors pointing in similar
    directions tend to share a bucket. The norm of x does not matter (a positive factor does
    not move the argmax), so hashing x or x / |x| gives the same buckets.
    """
    _check_buckets(n_buckets, n_rounds)
    if n_buckets == 1:
        return torch.zeros(n_rounds, *x.shape[:-1], dtype=torch.long, device=x.device)
    generator = torch.Generator().manual_seed(seed)
    rotations = torch.randn(n_rounds, x.shape[-1], n_buckets // 2, generator=generator)
    x = x.to(_compute_dtype(x))
    projected = torch.einsum("...d,rdb->r...b", x, rotations.to(x.device, x.dtype))
    return torch.cat([projected, -projected], dim=-1).argmax(dim=-1)


def _with_previous_chunk(x: torch.Tensor, fill) -> torch.Tensor:
    """(batch, heads, chunks, w, ...) -> (batch, heads, chunks, 2w, ...): each chunk after its predecessor.

    Chunk 0 has no predecessor (we do not wrap around); it gets a chunk of ``fill``."""
    previous = torch.cat([torch.full_like(x[:, :, :1], fill), x[:, :, :-1]], dim=2)
    return torch.cat([previous, x], dim=3)


def lsh_attention(q, k, v, n_buckets=8, n_rounds=1, chunk_size=None, causal=False, seed=0, scale=None,
                  shared_qk=False):
    """Reformer-style LSH attention (Kitaev et al., 2020): each query attends only to keys that hash near it.

    Per round of hashing:
    1. Queries and keys are hashed with the same random rotation (`lsh_buckets`).
    2. The n queries and n keys are sorted together by (bucket, position), a query before the
       key of its own position, and the sorted list is cut into chunks of 2 * ``chunk_size``
       items (``chunk_size`` queries and keys on average; default ceil(n / n_buckets), the mean
       bucket size).
    3. Each query attends to the keys in its chunk and in the chunk before (no wrap-around),
       with causal masking on the original positions; then the sort is undone.
    Rounds are combined with weights exp(lse_r - logsumexp_r lse_r). As in the paper's
    Appendix A, a pair that meets in N rounds has its score lowered by log N in each, so the
    result is exactly softmax attention over the union of the rounds' key sets.

    The approximation, honestly: a query sees a key only if both land in neighbouring chunks in
    some round. Buckets of different sizes, and chunk boundaries, cut some same-bucket pairs and
    add some cross-bucket ones. Hashing groups by direction, not by dot product, so large-norm keys
    in another bucket are missed. A query that sees no key in any round (possible with separate
    q and k, e.g. causal with its bucket's keys all in the future) gets a zero output.
    With ``n_buckets=1`` and ``chunk_size >= n`` every query sees every key: exact attention.

    ``shared_qk=True`` is the Reformer's shared-QK attention: pass the same tensor as q and k;
    the keys are the unit-length queries (so a query and its own key always share a bucket), and
    a query attends to its own position only when nothing else is allowed (score lowered by 1e5).
    """
    _check_qkv(q, k, v)
    _check_buckets(n_buckets, n_rounds)
    if chunk_size is not None:
        checks.positive_int("chunk_size", chunk_size)
    if shared_qk and k is not q:
        raise ValueError("shared_qk=True takes the keys from the queries: pass the same tensor as q and k")
    scale = _scale(scale, q.shape[-1])
    out_dtype = q.dtype
    q, k, v = _upcast(q, k, v)
    if shared_qk:
        k = F.normalize(q, dim=-1)
    batch, heads, n, d = q.shape
    chunk = chunk_size or math.ceil(n / n_buckets)
    width = 2 * chunk  # items (queries and keys) per chunk of the sorted list
    n_chunks = math.ceil(n / chunk)
    pad = n_chunks * width - 2 * n

    # One list of 2n items per (batch, head): the n queries, then the n keys.
    items = torch.cat([q, k], dim=2)
    position = torch.arange(n, device=q.device).repeat(2)
    is_key = torch.arange(2 * n, device=q.device) >= n
    buckets = lsh_buckets(items, n_buckets, n_rounds, seed)  # (rounds, batch, heads, 2n)
    # Sort by bucket, then position, then query before key: one integer per item, no ties.
    order = ((buckets * n + position) * 2 + is_key).argsort(dim=-1)  # sorted slot -> item
    slot = order.argsort(dim=-1)  # item -> sorted slot
    chunk_of = slot // width
    # Pair (query i, key j) meets in a round when key j sits in query i's chunk or the one before.
    query_chunk, key_chunk = chunk_of[..., :n], chunk_of[..., n:]  # (rounds, batch, heads, n)

    def chunked(x, fill):  # (batch, heads, 2n, ...) in sorted order -> (batch, heads, chunks, width, ...)
        x = torch.cat([x, torch.full_like(x[:, :, :1], fill).expand(-1, -1, pad, *x.shape[3:])], dim=2)
        return x.reshape(batch, heads, n_chunks, width, *x.shape[3:])

    outs, lses = [], []
    for r in range(n_rounds):
        sorted_pos = position[order[r]]  # (batch, heads, 2n)
        sorted_is_key = is_key[order[r]]
        rows = chunked(items.gather(2, order[r][..., None].expand(-1, -1, -1, d)), 0)
        row_pos = chunked(sorted_pos, 0)
        row_is_query = chunked(~sorted_is_key, False)  # padding is neither query nor key
        cols = _with_previous_chunk(rows, 0)
        col_pos = _with_previous_chunk(row_pos, 0)
        col_is_key = _with_previous_chunk(chunked(sorted_is_key, False), False)
        sorted_values = v.gather(2, sorted_pos[..., None].expand(-1, -1, -1, v.shape[-1]))  # used at key items
        col_values = _with_previous_chunk(chunked(sorted_values, 0), 0)

        scores = (rows @ cols.transpose(-2, -1)) * scale  # (batch, heads, chunks, width, 2 width)
        allowed = row_is_query[..., :, None] & col_is_key[..., None, :]
        if causal:
            allowed &= col_pos[..., None, :] <= row_pos[..., :, None]
        if n_rounds > 1:  # lower each pair by log(number of rounds it meets in), so none counts twice
            meets = torch.zeros_like(scores)
            for r2 in range(n_rounds):
                row_chunk = query_chunk[r2].gather(2, row_pos.flatten(2)).view_as(row_pos)
                col_chunk = key_chunk[r2].gather(2, col_pos.flatten(2)).view_as(col_pos)
                gap = row_chunk[..., :, None] - col_chunk[..., None, :]
                meets += ((gap == 0) | (gap == 1)).to(scores.dtype)
            scores = scores - torch.log(meets.clamp(min=1))
        if shared_qk:  # a query may attend to itself only when it has nothing else
            scores = scores - 1e5 * (col_pos[..., None, :] == row_pos[..., :, None]).to(scores.dtype)
        scores = scores.masked_fill(~allowed, NEG_INF)

        lse = torch.logsumexp(scores, dim=-1)  # -inf for rows with no allowed key (and non-query rows)
        p = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0)[..., None])  # such rows: all 0
        out_sorted = (p @ col_values).flatten(2, 3)[:, :, :2 * n]
        lse_sorted = lse.flatten(2)[:, :, :2 * n]
        # Undo the sort and keep the query items (the first n).
        outs.append(out_sorted.gather(2, slot[r][..., None].expand(-1, -1, -1, v.shape[-1]))[:, :, :n])
        lses.append(lse_sorted.gather(2, slot[r])[:, :, :n])

    outs, lses = torch.stack(outs), torch.stack(lses)  # (rounds, batch, heads, n, ...)
    total = torch.logsumexp(lses, dim=0)
    weights = torch.exp(lses - torch.where(torch.isfinite(total), total, 0))  # each round's share of the mass
    return (weights[..., None] * outs).sum(dim=0).to(out_dtype)


# --------------------------------------------------------------------------- costs


def attention_flops(n, d_head, n_heads, batch=1, causal=False) -> int:
    """FLOPs of the two attention matmuls, Q K^T and P V, counting a multiply-add as 2 FLOPs.

    Each (query, key) pair costs 2 d_head FLOPs in Q K^T and 2 d_head in P V. Non-causal:
    all n^2 pairs, 4 n^2 d_head per head. Causal: only the n (n + 1) / 2 pairs on or below
    the diagonal, 2 n (n + 1) d_head per head (a kernel that skips masked tiles gets close to this;
    a dense masked matmul still does 4 n^2 d_head). Softmax, scaling and masking are left out.
    Multiplied by n_heads and batch.
    """
    for name, value in (("n", n), ("d_head", d_head), ("n_heads", n_heads), ("batch", batch)):
        checks.positive_int(name, value)
    pairs_times_two = n * (n + 1) if causal else 2 * n * n  # 2 x number of (query, key) pairs
    return 2 * pairs_times_two * d_head * n_heads * batch


def score_bytes(n, n_heads, batch=1, bytes_per_element=4) -> int:
    """Bytes of the materialised n x n score (or probability) matrices: batch * n_heads * n^2 elements."""
    for name, value in (("n", n), ("n_heads", n_heads), ("batch", batch), ("bytes_per_element", bytes_per_element)):
        checks.positive_int(name, value)
    return batch * n_heads * n * n * bytes_per_element


def naive_vs_flash_hbm_bytes(n, d_head, sram_bytes, bytes_per_element=2) -> dict[str, int]:
    """HBM traffic of one head's attention forward pass, in the IO model of Dao et al. (2022), Theorem 2.

    With N = n, d = d_head and M = sram_bytes / bytes_per_element the on-chip memory in elements:

    - naive (the paper's Algorithm 0): read Q, K (2Nd), write S (N^2); read S, write P (2N^2);
      read P and V, write O (N^2 + 2Nd). Total 4Nd + 4N^2 elements: Theta(Nd + N^2).
    - flash (Algorithm 1): blocks of B_c = ceil(M / 4d) keys, so T_c = ceil(N / B_c) outer steps.
      K and V are read once (2Nd); each outer step reads Q and O and writes O (3Nd) and reads
      and writes the row statistics l and m (4N). Total 2Nd + T_c (3Nd + 4N) elements:
      Theta(N^2 d^2 / M), since T_c ~ 4Nd / M.

    Returns {"naive": bytes, "flash": bytes, "block_k": B_c}. Flash moves fewer bytes when
    M is much larger than d (on GPUs d = 64-128, and M is the shared memory of a streaming
    multiprocessor: 192 KB on the A100, up to 228 KB on the H100; see ``hardware.SRAM_PER_SM``).
    """
    for name, value in (("n", n), ("d_head", d_head), ("sram_bytes", sram_bytes), ("bytes_per_element", bytes_per_element)):
        checks.positive_int(name, value)
    sram_elements = sram_bytes // bytes_per_element
    if sram_elements < 1:
        raise ValueError(f"sram_bytes={sram_bytes} holds no element of {bytes_per_element} bytes")
    naive = 4 * n * d_head + 4 * n * n
    block_k = math.ceil(sram_elements / (4 * d_head))
    outer_steps = math.ceil(n / block_k)
    flash = 2 * n * d_head + outer_steps * (3 * n * d_head + 4 * n)
    return {"naive": naive * bytes_per_element, "flash": flash * bytes_per_element, "block_k": block_k}
