"""Masked-token gather, optionally fused with the positional-embedding add.

``out[b, k, :] = x[b, idx[b, k], :] (+ pos[idx[b, k], :])`` for token ids ``idx`` (B, K), unique within a row (sorted by convention; the teacher passes ``[vis; diff]``).
The output has x's dtype; pos is cast to it first (the reference's ``pos_embed.type_as(x)``).
Used for the student-visible tokens, the teacher's ``[vis; diff]`` input and the decoder /
generator position embeddings. The AMD reference does ``(x + pos)[~mask].reshape(B, -1, C)``:
a full-size add, a boolean index (host sync for the output size) and a copy.

Backward: ``grad_x`` is a scatter of ``grad_out`` rows into zeros (ids are unique per row, so
plain stores, no atomics); ``grad_pos`` (only if ``pos`` requires grad) is the same scatter summed
over the batch (fp32 atomics, then cast).

Bytes moved (fwd+bwd; :func:`bytes_moved` / :func:`reference_bytes_moved`; e = element size,
rows = B·K·C·e, full = B·N·C·e):
  ours:       fwd read K rows of x + K rows of pos, write K rows (3 rows); bwd zero-fill grad_x (full),
              read K grad rows, write them into grad_x (2 rows)                 → full + 5 rows
  reference:  fwd read x, write x+pos (2 full, + the N·C pos table), read the bool mask, nonzero
              (host sync), read+write K rows; bwd zero grad (full), read+write K rows → 3 full + 4 rows
  Student input at B=32, N=1568, K=160, bf16 (the dense grad_x zero-fill is common to both and dominates):
    ViT-S (C=384): ours 58.3 MB, reference 132.6 MB → 2.3× fewer bytes (ideal 17 µs on an H100 at 3.35 TB/s)
    ViT-B (C=768): ours 116.5 MB, reference 265.2 MB → 2.3×
  Input layout: x must be token-major (each token's C values contiguous) for the reads above. Tokens as a
  Conv3d over a channels-first clip leaves them (strides (N*C, 1, N)) cost a memory sector per value:
  :func:`strided_bytes_moved` (ViT-S, B=32: the forward reads the whole 38.5 MB tensor for 3.9 MB of kept
  rows). The loaders deliver channels-last clips, for which the patch embedding's output is token-major.
  Run ``python -m amd_fast.kernels.masked_gather`` for the table.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gather_fwd_kernel(x_ptr, idx_ptr, pos_ptr, out_ptr, K, C,
                       sxb, sxn, sxc, sib, sik, spn, spc,
                       HAS_POS: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)  # b * K + k
    cblk = tl.program_id(1)
    b = row // K
    k = row % K
    n = tl.load(idx_ptr + b * sib + k * sik).to(tl.int64)
    cols = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    m = cols < C
    v = tl.load(x_ptr + b.to(tl.int64) * sxb + n * sxn + cols * sxc, mask=m, other=0.0)
    if HAS_POS:
        p = tl.load(pos_ptr + n * spn + cols * spc, mask=m, other=0.0)
        # pos.type_as(x) first, as the reference does; then one fp32 add and one rounding
        v = v.to(tl.float32) + p.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row.to(tl.int64) * C + cols, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gather_bwd_kernel(g_ptr, idx_ptr, gx_ptr, gpos_ptr, N, K, C, sib, sik,
                       X_GRAD: tl.constexpr, POS_GRAD: tl.constexpr, BLOCK_C: tl.constexpr):
    row = tl.program_id(0)
    cblk = tl.program_id(1)
    b = row // K
    k = row % K
    n = tl.load(idx_ptr + b * sib + k * sik).to(tl.int64)
    cols = cblk * BLOCK_C + tl.arange(0, BLOCK_C)
    m = cols < C
    g = tl.load(g_ptr + row.to(tl.int64) * C + cols, mask=m, other=0.0)
    if X_GRAD:  # ids are unique within a row: plain store, deterministic
        tl.store(gx_ptr + (b.to(tl.int64) * N + n) * C + cols, g, mask=m)
    if POS_GRAD:  # summed over the batch: fp32 atomics
        tl.atomic_add(gpos_ptr + n * C + cols, g.to(tl.float32), mask=m)


def _block_c(c: int) -> int:
    return min(triton.next_power_of_2(c), 1024)


def _pos_2d(pos: torch.Tensor | None, n: int, c: int) -> torch.Tensor | None:
    if pos is None:
        return None
    if pos.dim() == 3:
        if pos.shape[0] != 1:
            raise ValueError(f"masked_gather: pos must be (N, C) or (1, N, C), got {tuple(pos.shape)}; "
                             "a per-sample pos is an ordinary add after the gather")
        pos = pos[0]
    if tuple(pos.shape) != (n, c):
        raise ValueError(f"masked_gather: pos {tuple(pos.shape)} does not match x tokens/channels ({n}, {c})")
    return pos


def check_inputs(x: torch.Tensor, idx: torch.Tensor, pos: torch.Tensor | None):
    if x.dim() != 3:
        raise ValueError(f"masked_gather: x must be (B, N, C), got shape {tuple(x.shape)}")
    if idx.dim() != 2 or idx.shape[0] != x.shape[0]:
        raise ValueError(f"masked_gather: idx must be (B, K) with B={x.shape[0]}, got {tuple(idx.shape)}")
    if idx.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"masked_gather: idx must be int32/int64 token ids, got {idx.dtype}; "
                        "turn a bool mask into ids with amd_fast.masking (sorted ids)")
    return _pos_2d(pos, x.shape[1], x.shape[2])


class MaskedGatherFunction(torch.autograd.Function):
    """Triton gather (+pos) forward, scatter backward. Saves only ``idx`` (no copies of x or pos)."""

    @staticmethod
    def forward(ctx, x, idx, pos):
        B, N, C = x.shape
        K = idx.shape[1]
        out = torch.empty(B, K, C, device=x.device, dtype=x.dtype)  # pos is cast to x's dtype (AMD: type_as)
        if B * K > 0 and C > 0:
            BLOCK_C = _block_c(C)
            grid = (B * K, triton.cdiv(C, BLOCK_C))
            p = pos if pos is not None else x  # dummy pointer when HAS_POS=False
            _gather_fwd_kernel[grid](
                x, idx, p, out, K, C, x.stride(0), x.stride(1), x.stride(2), idx.stride(0), idx.stride(1),
                p.stride(0) if pos is not None else 0, p.stride(1) if pos is not None else 0,
                HAS_POS=pos is not None, BLOCK_C=BLOCK_C)
        ctx.save_for_backward(idx)
        ctx.shape = (B, N, C)
        ctx.x_dtype = x.dtype
        ctx.pos_dtype = pos.dtype if pos is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        B, N, C = ctx.shape
        K = idx.shape[1]
        need_x, _, need_pos = ctx.needs_input_grad
        if not (need_x or need_pos):
            return None, None, None
        g = grad_out.contiguous()  # autograd usually hands a contiguous grad; copy only if not
        gx = torch.zeros(B, N, C, device=g.device, dtype=ctx.x_dtype) if need_x else None
        gpos = torch.zeros(N, C, device=g.device, dtype=torch.float32) if need_pos else None
        if B * K > 0 and C > 0:
            BLOCK_C = _block_c(C)
            grid = (B * K, triton.cdiv(C, BLOCK_C))
            _gather_bwd_kernel[grid](
                g, idx, gx if need_x else g, gpos if need_pos else g, N, K, C, idx.stride(0), idx.stride(1),
                X_GRAD=bool(need_x), POS_GRAD=bool(need_pos), BLOCK_C=BLOCK_C)
        if gpos is not None:
            gpos = gpos.to(ctx.pos_dtype)
        return gx, None, gpos


def masked_gather_triton(x, idx, pos=None):
    pos = check_inputs(x, idx, pos)
    return MaskedGatherFunction.apply(x, idx, pos)


def masked_gather_eager(x, idx, pos=None):
    """Plain PyTorch, same math: index gather (no boolean mask, no host sync); autograd gives the scatter."""
    pos = check_inputs(x, idx, pos)
    C = x.shape[2]
    out = x.gather(1, idx.long().unsqueeze(-1).expand(-1, -1, C))
    if pos is not None:
        out = out + pos[idx.long()].to(x.dtype)  # (B, K, C): only the K rows of pos are read; AMD's type_as(x)
    return out


def bytes_moved(batch: int, tokens: int, kept: int, dim: int, dtype=torch.bfloat16, pos: bool = True,
                pos_grad: bool = False) -> int:
    """HBM bytes of the fused fwd+bwd: gather K rows (+pos rows), write K rows; bwd zero-fills grad_x
    and writes the K gradient rows it reads."""
    e = torch.empty((), dtype=dtype).element_size()
    rows = batch * kept * dim * e
    fwd = rows * (2 + (1 if pos else 0)) + batch * kept * 8
    bwd = batch * tokens * dim * e + 2 * rows + batch * kept * 8
    if pos_grad:
        bwd += tokens * dim * 4 * 2
    return fwd + bwd


def strided_bytes_moved(batch: int, tokens: int, kept: int, dim: int, dtype=torch.bfloat16, sector: int = 32) -> int:
    """The same fwd+bwd when x comes as a Conv3d over a channels-first clip leaves it: (B, N, C) with strides
    (N*C, 1, N), each token's C values N elements apart. Memory moves in ``sector``-byte sectors: for each
    (b, c) the K kept ids touch ``min(K, N*e/sector)`` distinct sectors of that channel's row of N values
    (sorted ids ~N/K apart), so the forward pulls ``B*C*min(K, N*e/sector)*sector`` bytes for ``B*K*C*e``
    useful ones (at the AMD shapes all sectors: the whole tensor). The loaders' channels-last clips avoid it
    (the tokens come token-major; models/vit.py)."""
    e = torch.empty((), dtype=dtype).element_size()
    rows = batch * kept * dim * e
    sectors = min(kept, -(-tokens * e // sector))
    fwd = batch * dim * sectors * sector + rows * 2 + batch * kept * 8
    return fwd + bytes_moved(batch, tokens, kept, dim, dtype) - (rows * 3 + batch * kept * 8)


def reference_bytes_moved(batch: int, tokens: int, kept: int, dim: int, dtype=torch.bfloat16,
                          pos: bool = True) -> int:
    """AMD style ``x = x + pos; x[~mask].reshape(B, -1, C)``: the add reads x (+ the N·C table) and writes
    the sum; the boolean index reads the mask, then K rows, writes K rows; bwd: zero a full grad, scatter
    K rows (the add passes its gradient through without a copy)."""
    e = torch.empty((), dtype=dtype).element_size()
    full = batch * tokens * dim * e
    rows = batch * kept * dim * e
    fwd = ((2 * full + tokens * dim * e) if pos else 0) + batch * tokens + 2 * rows
    bwd = full + 2 * rows + batch * tokens
    return fwd + bwd


if __name__ == "__main__":  # pragma: no cover - prints the model table
    for name, d in (("ViT-S", 384), ("ViT-B", 768)):
        ours = bytes_moved(32, 1568, 160, d)
        ref = reference_bytes_moved(32, 1568, 160, d)
        print(f"{name}: ours {ours/1e6:.1f} MB, reference {ref/1e6:.1f} MB, ratio {ref/ours:.2f}, "
              f"ideal H100 time {ours/3.35e12*1e6:.1f} us")
