"""The Triton kernel: one program per (image, tile of query rows), every head in turn, for CUDA tensors.

Per head the program makes two passes over the keys in chunks: the first finds each row's maximum m
and normaliser z = Σ exp(s − m) (online, as flash attention does); the second recomputes the scores,
takes the exact p = exp(s − m) / z and makes from each chunk, while it is in registers, everything the
request names: P·V, the entropy log z − Σ p·(s − m), weighted row sums Σ p·W[row], masses, the
head-fused rows (mean / max / min, accumulated over the heads in the output), the CLS row and the
full maps. Products are full float32 (``input_precision="ieee"``, no TF32), so the maps agree with the
torch-op kernel to float32 rounding. Under ``TRITON_INTERPRET=1`` the same kernel runs on CPU tensors
(the tests use that; it is slow and meant for tiny shapes).
"""

from __future__ import annotations

import os

import torch

from .base import LayerRequest, LayerResult

_BLOCK_M = 32
_BLOCK_N = 64


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable(device: torch.device) -> str | None:
    """Why this kernel cannot compute on ``device``; None when it can."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "the Triton attention kernel needs the triton package"
    if device.type == "cuda" or (device.type == "cpu" and _interpreted()):
        return None
    return f"the Triton attention kernel runs on CUDA tensors (or CPU ones under TRITON_INTERPRET=1), not {device.type}"


_KERNEL = None


def _kernel():
    """The jitted kernel, defined on first use so that importing vitprobe never imports triton."""
    global _KERNEL
    if _KERNEL is not None:
        return _KERNEL
    import triton
    import triton.language as tl

    @triton.jit
    def attend_kernel(
        q, k, v, bias, out, cls_out, full_out, ent_out, mean_out, max_out, min_out, weights, dots_out,
        starts, masses_out,
        B, T, H, D, DV, n_tiles, scale, cls_index, n_dots, n_masses,
        sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sbb, sbh, sbt,
        HAS_V: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_CLS: tl.constexpr, HAS_FULL: tl.constexpr,
        HAS_ENT: tl.constexpr, HAS_MEAN: tl.constexpr, HAS_MAX: tl.constexpr, HAS_MIN: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // n_tiles
        rows = (pid % n_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < T
        dims = tl.arange(0, BLOCK_D)
        dims_v = tl.arange(0, BLOCK_DV)
        inv_heads = 1.0 / H
        for h in range(0, H):
            q_tile = tl.load(q + b * sqb + h * sqh + rows[:, None] * sqt + dims[None, :],
                             mask=row_ok[:, None] & (dims[None, :] < D), other=0.0)
            m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
            z = tl.zeros((BLOCK_M,), tl.float32)
            for n0 in range(0, T, BLOCK_N):  # pass 1: row maximum and normaliser
                cols = n0 + tl.arange(0, BLOCK_N)
                col_ok = cols < T
                k_tile = tl.load(k + b * skb + h * skh + cols[None, :] * skt + dims[:, None],
                                 mask=col_ok[None, :] & (dims[:, None] < D), other=0.0)
                s = tl.dot(q_tile, k_tile, input_precision="ieee") * scale
                if HAS_BIAS:
                    s += tl.load(bias + b * sbb + h * sbh + rows[:, None] * sbt + cols[None, :],
                                 mask=row_ok[:, None] & col_ok[None, :], other=0.0)
                s = tl.where(col_ok[None, :], s, float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=1))
                z = z * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
                m = m_new
            inv_z = 1.0 / z
            acc = tl.zeros((BLOCK_M, BLOCK_DV), tl.float32)
            expected = tl.zeros((BLOCK_M,), tl.float32)
            bh_rows = (b * H + h) * T + rows
            for n0 in range(0, T, BLOCK_N):  # pass 2: exact probabilities and everything made from them
                cols = n0 + tl.arange(0, BLOCK_N)
                col_ok = cols < T
                ok = row_ok[:, None] & col_ok[None, :]
                k_tile = tl.load(k + b * skb + h * skh + cols[None, :] * skt + dims[:, None],
                                 mask=col_ok[None, :] & (dims[:, None] < D), other=0.0)
                s = tl.dot(q_tile, k_tile, input_precision="ieee") * scale
                if HAS_BIAS:
                    s += tl.load(bias + b * sbb + h * sbh + rows[:, None] * sbt + cols[None, :], mask=ok, other=0.0)
                shifted = s - m[:, None]
                p = tl.where(col_ok[None, :], tl.exp(shifted) * inv_z[:, None], 0.0)
                expected += tl.sum(tl.where(col_ok[None, :], p * shifted, 0.0), axis=1)
                if HAS_V:
                    v_tile = tl.load(v + b * svb + h * svh + cols[:, None] * svt + dims_v[None, :],
                                     mask=col_ok[:, None] & (dims_v[None, :] < DV), other=0.0)
                    acc += tl.dot(p, v_tile, input_precision="ieee")
                cell = rows[:, None] * T + cols[None, :]
                if HAS_FULL:
                    tl.store(full_out + (b * H + h) * T * T + cell, p, mask=ok)
                if HAS_CLS:
                    tl.store(cls_out + (b * H + h) * T + rows[:, None] * 0 + cols[None, :], p,
                             mask=ok & (rows[:, None] == cls_index))
                fused_cell = b * T * T + cell
                if HAS_MEAN:
                    if h == 0:
                        tl.store(mean_out + fused_cell, p * inv_heads, mask=ok)
                    else:
                        prev = tl.load(mean_out + fused_cell, mask=ok, other=0.0)
                        tl.store(mean_out + fused_cell, prev + p * inv_heads, mask=ok)
                if HAS_MAX:
                    if h == 0:
                        tl.store(max_out + fused_cell, p, mask=ok)
                    else:
                        prev = tl.load(max_out + fused_cell, mask=ok, other=0.0)
                        tl.store(max_out + fused_cell, tl.maximum(prev, p), mask=ok)
                if HAS_MIN:
                    if h == 0:
                        tl.store(min_out + fused_cell, p, mask=ok)
                    else:
                        prev = tl.load(min_out + fused_cell, mask=ok, other=0.0)
                        tl.store(min_out + fused_cell, tl.minimum(prev, p), mask=ok)
                for w in range(0, n_dots):  # weighted row sums, added up chunk by chunk in the output
                    weight = tl.load(weights + w * T * T + cell, mask=ok, other=0.0)
                    slot = dots_out + w * (B * H * T) + bh_rows
                    prev = tl.load(slot, mask=row_ok, other=0.0)
                    tl.store(slot, prev + tl.sum(p * weight, axis=1), mask=row_ok)
                for j in range(0, n_masses):
                    start = tl.load(starts + j)
                    slot = masses_out + j * (B * H * T) + bh_rows
                    prev = tl.load(slot, mask=row_ok, other=0.0)
                    tl.store(slot, prev + tl.sum(tl.where(cols[None, :] >= start, p, 0.0), axis=1), mask=row_ok)
            if HAS_ENT:
                tl.store(ent_out + bh_rows, tl.log(z) - expected, mask=row_ok)
            if HAS_V:
                tl.store(out + (bh_rows[:, None]) * DV + dims_v[None, :], acc,
                         mask=row_ok[:, None] & (dims_v[None, :] < DV))

    _KERNEL = attend_kernel
    return _KERNEL


def _pow2(n: int, least: int = 16) -> int:
    return max(least, 1 << (n - 1).bit_length())


def attend(
    q: torch.Tensor, k: torch.Tensor, scale: float, request: LayerRequest, values: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> LayerResult:
    """``torch_ops.attend``'s contract, computed by the Triton kernel (CUDA tensors, or CPU ones interpreted)."""
    if request.block_reducers:
        raise ValueError("RowReducers are fed blocks by the torch-op kernel only")
    batch, heads, t, d = q.shape
    device = q.device
    q, k = q.float().contiguous(), k.float().contiguous()
    result = LayerResult("triton")
    dummy = torch.empty(1, device=device)
    result.cls = torch.empty(batch, heads, t, device=device) if request.cls_index is not None else None
    result.full = torch.empty(batch, heads, t, t, device=device) if request.full else None
    result.entropy = torch.empty(batch, heads, t, device=device) if request.entropy else None
    names = list(request.dots)
    weights = torch.stack([request.dots[n].float() for n in names]).contiguous() if names else dummy
    dots = torch.zeros(len(names), batch, heads, t, device=device)
    starts_list = sorted(request.masses)
    starts = torch.tensor(starts_list or [0], dtype=torch.int32, device=device)
    masses = torch.zeros(len(starts_list), batch, heads, t, device=device)
    v = values.float().contiguous() if values is not None else None
    dv = v.shape[-1] if v is not None else 16
    result.output = torch.empty(batch, heads, t, dv, device=device) if v is not None else None
    if bias is not None:
        bias = bias.float().expand(batch, heads, t, t)
        bias = bias if bias.stride(-1) == 1 else bias.contiguous()
    fused = {how: out if out.is_contiguous() else torch.empty(out.shape, device=device)
             for how, out in request.fuse.items()}
    n_tiles = -(-t // _BLOCK_M)
    bias_strides = bias.stride()[:3] if bias is not None else (0, 0, 0)
    v_strides = v.stride()[:3] if v is not None else (0, 0, 0)
    _kernel()[(batch * n_tiles,)](
        q, k, v if v is not None else dummy, bias if bias is not None else dummy,
        result.output if v is not None else dummy, result.cls if result.cls is not None else dummy,
        result.full if result.full is not None else dummy, result.entropy if result.entropy is not None else dummy,
        fused.get("mean", dummy), fused.get("max", dummy), fused.get("min", dummy), weights, dots, starts, masses,
        batch, t, heads, d, dv, n_tiles, float(scale), -1 if request.cls_index is None else request.cls_index,
        len(names), len(starts_list),
        *q.stride()[:3], *k.stride()[:3], *v_strides, *bias_strides,
        HAS_V=v is not None, HAS_BIAS=bias is not None, HAS_CLS=result.cls is not None,
        HAS_FULL=result.full is not None, HAS_ENT=result.entropy is not None, HAS_MEAN="mean" in fused,
        HAS_MAX="max" in fused, HAS_MIN="min" in fused,
        BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N, BLOCK_D=_pow2(d), BLOCK_DV=_pow2(dv),
    )
    result.dots = {name: dots[i] for i, name in enumerate(names)}
    result.masses = {start: masses[i] for i, start in enumerate(starts_list)}
    for how, out in request.fuse.items():
        if fused[how] is not out:
            out.copy_(fused[how])
    return result
