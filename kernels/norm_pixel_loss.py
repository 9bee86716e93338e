"""Normalized-pixel reconstruction loss (VideoMAE / AMD target), fused, read only at masked tokens.

Reference math (MCG-NJU/VideoMAE and MCG-NJU/AMD ``engine_for_pretraining*.py``)::

    unnorm = video * std + mean                                  # [0, 1]
    sq = rearrange(unnorm, 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c')
    norm = (sq - sq.mean(-2, keepdim=True)) / (sq.var(-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    target = rearrange(norm, 'b n p c -> b n (p c)')[bool_masked].reshape(B, -1, L)
    loss = MSELoss()(pred, target)                               # mean over all elements

(``normalize_target=False``: target = ``unnorm`` patchified to ``(p0 p1 p2 c)``.)
``tubelet`` and ``patch`` are parameters (the reference hard-codes tubelet 2).
uint8 clips (raw 0..255 pixels) are accepted: un-normalizing is then ``x / 255``; ``mean``/``std`` unused.

The kernel: one program per masked token (b, m). It reads the token's ``t·p·p`` × 3 pixels once from
the clip (any strides; no full-size float copy of the clip or of the patchified target), builds the
per-patch normalized target in registers (fp32), reads ``pred`` at that token and writes an fp32
partial of the squared error plus — when ``pred`` requires grad — ``d loss / d pred`` (Liger style:
gradient computed in forward, so the clip is read exactly once; backward only scales it by
``grad_output``, which is a tensor, so no host sync).

Bytes moved per fwd+bwd (:func:`bytes_moved` / :func:`reference_bytes_moved`; B=32, 16×224×224 fp32 clip,
N=1568 tokens, M=1408 masked, L=1536 values per token, pred bf16; the same for ViT-S and ViT-B students,
whose decoders both output L=1536):
  ours: clip at the masked tokens (B·M·L·4) + pred read + grad write (fwd), grad read + write (bwd)
        → 830.8 MB, ≈ 0.25 ms ideal on an H100 (3.35 TB/s)
  reference (full = B·N·L·4 = 308 MB): un-normalize r+w (2 full), patchify copy (2), mean (1), var (1),
        subtract (2), divide (2) = 10 full; boolean index reads+writes 0.9 full; MSE fwd reads pred +
        labels, writes and re-reads the elementwise loss; bwd reads pred + labels, writes grad
        → 5.16 GB, ≈ 6.2× more, plus the nonzero host sync of the boolean index.
  Run ``python -m amd_fast.kernels.norm_pixel_loss`` for the table.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from amd_fast.normalization import IMAGENET_MEAN, IMAGENET_STD


@triton.jit
def _norm_pixel_kernel(v_ptr, idx_ptr, pred_ptr, grad_ptr, partial_ptr, ms_ptr,
                       M, HW, W_, svb, svc, svt, svh, svw, sib, sim, spb, spm, spl, inv_numel,
                       TUB: tl.constexpr, PATCH: tl.constexpr, P: tl.constexpr, BLOCK_P: tl.constexpr,
                       UINT8: tl.constexpr, NORMALIZE: tl.constexpr, WRITE_GRAD: tl.constexpr):
    row = tl.program_id(0)  # b * M + m
    b = (row // M).to(tl.int64)
    m = row % M
    n = tl.load(idx_ptr + b * sib + m * sim).to(tl.int64)
    ti = n // HW
    hi = (n % HW) // W_
    wi = n % W_
    pi = tl.arange(0, BLOCK_P)[:, None]
    ci = tl.arange(0, 4)[None, :]
    valid = (pi < P) & (ci < 3)
    p0 = pi // (PATCH * PATCH)
    p1 = (pi // PATCH) % PATCH
    p2 = pi % PATCH
    addr = (b * svb + ci * svc + (ti * TUB + p0) * svt + (hi * PATCH + p1) * svh + (wi * PATCH + p2) * svw)
    x = tl.load(v_ptr + addr, mask=valid, other=0).to(tl.float32)
    if UINT8:
        x = x / 255.0
    else:
        mean = tl.load(ms_ptr + ci, mask=ci < 3, other=0.0)
        std = tl.load(ms_ptr + 4 + ci, mask=ci < 3, other=1.0)
        x = x * std + mean
    if NORMALIZE:
        mu = tl.sum(tl.where(valid, x, 0.0), axis=0) / P  # per channel
        xc = tl.where(valid, x - mu[None, :], 0.0)
        var = tl.sum(xc * xc, axis=0) / (P - 1)  # unbiased, as the reference
        target = xc / (tl.sqrt(var)[None, :] + 1e-6)
    else:
        target = x
    l_off = pi * 3 + ci  # flatten (p c)
    pred = tl.load(pred_ptr + b * spb + m * spm + l_off * spl, mask=valid, other=0.0).to(tl.float32)
    d = tl.where(valid, pred - target, 0.0)
    tl.store(partial_ptr + row, tl.sum(tl.sum(d * d, axis=1), axis=0) * inv_numel)
    if WRITE_GRAD:
        tl.store(grad_ptr + row.to(tl.int64) * (P * 3) + l_off, (2.0 * inv_numel * d).to(grad_ptr.dtype.element_ty),
                 mask=valid)


def check_inputs(video, mask_idx, pred, tubelet, patch):
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"norm_pixel_loss: video must be (B, 3, T, H, W), got {tuple(video.shape)}")
    B, _, T, H, W = video.shape
    if T % tubelet or H % patch or W % patch:
        raise ValueError(f"norm_pixel_loss: clip {T}x{H}x{W} is not divisible by tubelet {tubelet} / patch {patch}; "
                         "set data.num_frames / data.input_size to multiples")
    if mask_idx.dim() != 2 or mask_idx.shape[0] != B:
        raise ValueError(f"norm_pixel_loss: mask_idx must be (B, M) ids with B={B}, got {tuple(mask_idx.shape)}")
    L = tubelet * patch * patch * 3
    if pred.shape != (B, mask_idx.shape[1], L):
        raise ValueError(f"norm_pixel_loss: pred {tuple(pred.shape)} must be (B, M, tubelet*patch*patch*3) = "
                         f"({B}, {mask_idx.shape[1]}, {L}); check the decoder head width")
    return (T // tubelet, H // patch, W // patch)


def _check_normalizable(tubelet, patch, normalize_target):
    if normalize_target and tubelet * patch * patch < 2:
        raise ValueError("norm_pixel_loss: a per-patch normalized target needs >= 2 pixels per patch (unbiased "
                         "std); use a larger patch or normalize_target=False")


_MEAN_STD_CACHE: dict = {}


def _mean_std(mean: tuple, std: tuple, device: torch.device) -> torch.Tensor:
    """(8,) fp32 [mean, 0, std, 1] on the device, built once per (mean, std, device): no per-step copy."""
    key = (mean, std, str(device))
    if key not in _MEAN_STD_CACHE:
        table = torch.tensor(list(mean) + [0.0] + list(std) + [1.0], dtype=torch.float32)
        if device.type == "cuda":  # pinned + non_blocking: no host sync even the first time
            table = table.pin_memory().to(device, non_blocking=True)
        _MEAN_STD_CACHE[key] = table
    return _MEAN_STD_CACHE[key]


class NormPixelLossFunction(torch.autograd.Function):
    """Forward computes loss and (if needed) d loss/d pred; saves only that gradient."""

    @staticmethod
    def forward(ctx, video, mask_idx, pred, tubelet, patch, mean, std, normalize_target):
        grid = check_inputs(video, mask_idx, pred, tubelet, patch)
        _check_normalizable(tubelet, patch, normalize_target)
        B, M, L = pred.shape
        P = tubelet * patch * patch
        write_grad = bool(ctx.needs_input_grad[2])
        grad = torch.empty(B, M, L, device=pred.device, dtype=pred.dtype) if write_grad else pred
        partial = torch.zeros(max(B * M, 1), device=pred.device, dtype=torch.float32)
        ms = _mean_std(tuple(mean), tuple(std), video.device)
        if B * M > 0:
            _norm_pixel_kernel[(B * M,)](
                video, mask_idx, pred, grad, partial, ms, M, grid[1] * grid[2], grid[2],
                *video.stride(), mask_idx.stride(0), mask_idx.stride(1),
                pred.stride(0), pred.stride(1), pred.stride(2), 1.0 / (B * M * L),
                TUB=tubelet, PATCH=patch, P=P, BLOCK_P=triton.next_power_of_2(P),
                UINT8=video.dtype == torch.uint8, NORMALIZE=bool(normalize_target), WRITE_GRAD=write_grad)
        ctx.save_for_backward(grad if write_grad else None)
        loss = partial.sum()
        if B * M == 0:
            loss = loss + float("nan")  # MSELoss of empty tensors is nan
        return loss

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        g = None if grad is None else grad * grad_out.to(grad.dtype)
        return None, None, g, None, None, None, None, None


def norm_pixel_loss_triton(video, mask_idx, pred, *, tubelet=2, patch=16, mean=IMAGENET_MEAN,
                           std=IMAGENET_STD, normalize_target=True):
    return NormPixelLossFunction.apply(video, mask_idx, pred, tubelet, patch, tuple(mean), tuple(std),
                                       normalize_target)


def masked_patches(video, mask_idx, tubelet, patch, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """(B, M, t·p·p, 3) fp32 un-normalized pixels of the masked tokens, gathered through a view (only the
    masked patches are copied, in the clip's dtype, then upcast)."""
    B, C, T, H, W = video.shape
    tg, hg, wg = T // tubelet, H // patch, W // patch
    v = video.view(B, C, tg, tubelet, hg, patch, wg, patch).permute(0, 2, 4, 6, 3, 5, 7, 1)
    n = mask_idx.long()
    bi = torch.arange(B, device=video.device)[:, None]
    pat = v[bi, n // (hg * wg), (n // wg) % hg, n % wg]  # (B, M, t, p, p, C): index gather, no bool mask
    pat = pat.reshape(B, n.shape[1], tubelet * patch * patch, C).float()
    if video.dtype == torch.uint8:
        return pat / 255.0
    ms = _mean_std(tuple(mean), tuple(std), video.device)  # cached: no per-step host-to-device copy
    return pat * ms[4:7] + ms[:3]


def norm_pixel_loss_eager(video, mask_idx, pred, *, tubelet=2, patch=16, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, normalize_target=True):
    """Plain PyTorch, same math, computed only at the masked tokens; loss in fp32."""
    check_inputs(video, mask_idx, pred, tubelet, patch)
    _check_normalizable(tubelet, patch, normalize_target)
    with torch.no_grad():
        x = masked_patches(video.detach(), mask_idx, tubelet, patch, mean, std)
        if normalize_target:
            x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
        target = x.flatten(2)
    return torch.nn.functional.mse_loss(pred.to(torch.promote_types(pred.dtype, torch.float32)), target)


def bytes_moved(batch: int, masked: int, patch_values: int, video_dtype=torch.float32, dtype=torch.bfloat16,
                ) -> int:
    """Fused: read the masked patches of the clip once, read pred, write grad (fwd); read+write grad (bwd)."""
    ev = torch.empty((), dtype=video_dtype).element_size()
    e = torch.empty((), dtype=dtype).element_size()
    elems = batch * masked * patch_values
    return elems * ev + elems * e * 4 + batch * masked * 8


def reference_bytes_moved(batch: int, masked: int, patch_values: int, tokens: int = 1568,
                          video_dtype=torch.float32, dtype=torch.bfloat16) -> int:
    """AMD style: the fp32 target chain on the whole clip (10 full passes: un-normalize r+w, patchify
    copy r+w, mean r, var r, subtract r+w, divide r+w), boolean index (r+w of the masked part, + mask),
    ``nn.MSELoss`` fwd (read pred + labels, write + re-read the fp32 elementwise loss) and bwd (read pred
    + labels, write grad)."""
    ev = torch.empty((), dtype=video_dtype).element_size()
    e = torch.empty((), dtype=dtype).element_size()
    full = batch * tokens * patch_values * 4
    masked_el = batch * masked * patch_values
    target_chain = batch * tokens * patch_values * ev + 9 * full
    bool_index = batch * tokens + 2 * masked_el * 4
    mse = masked_el * (e + 4 + 4 + 4) + masked_el * (e + 4 + e)
    return target_chain + bool_index + mse


if __name__ == "__main__":  # pragma: no cover
    for name in ("ViT-S", "ViT-B"):  # same clip and decoder output width for both students
        ours = bytes_moved(32, 1408, 1536)
        ref = reference_bytes_moved(32, 1408, 1536)
        print(f"{name}: ours {ours/1e6:.1f} MB, reference {ref/1e6:.1f} MB, ratio {ref/ours:.2f}")
