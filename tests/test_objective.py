"""AMDObjective against an independent re-computation done the reference's way (MCG-NJU/AMD).

The reference selects tokens with boolean masks (``x[~mask].reshape(B, -1, C)``), builds the
pixel target by patchify + per-patch normalization over the whole clip, and averages
``nn.MSELoss`` over the alignment pairs. The code below re-does all of that with the model's
weights but none of its index plumbing, ops or slicing.
"""
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from amd_fast import ops
from amd_fast.masking import MaskConfig, generate_masks
from amd_fast.models import AMDObjective, LossConfig, build_student, build_teacher
from tests.model_fixtures import eager_ops, tiny_model_config, tiny_video  # noqa: F401 (fixture)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1, 1)
REF_ALIGN = {"l2": nn.MSELoss(), "l1": nn.L1Loss(), "smooth_l1": nn.SmoothL1Loss()}


def ref_table(n, d):  # VideoMAE's numpy sin-cos table
    a = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    a[:, 0::2], a[:, 1::2] = np.sin(a[:, 0::2]), np.cos(a[:, 1::2])
    return torch.tensor(a, dtype=torch.float32).unsqueeze(0)


def ref_loss(student, teacher, video, mask_s, mask_d, cfg, loss_cfg):
    """The reference's engine + PretrainAMD + VisionTransformer.forward_features_teacher, boolean masks."""
    B, t, p = video.shape[0], cfg.tubelet_size, cfg.patch_size
    # target: b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2) c, normalize per patch, flatten (p c)
    un = video * STD + MEAN
    _, C, T, H, W = un.shape
    sq = un.reshape(B, C, T // t, t, H // p, p, W // p, p).permute(0, 2, 4, 6, 3, 5, 7, 1)
    sq = sq.reshape(B, (T // t) * (H // p) * (W // p), t * p * p, C)
    if loss_cfg.normalize_target:
        sq = (sq - sq.mean(dim=-2, keepdim=True)) / (sq.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    patches = sq.reshape(B, sq.shape[1], -1)
    labels = patches[mask_s].reshape(B, -1, patches.shape[-1])

    n_tok = patches.shape[1]
    # teacher (no grad), every block, boolean selection of [student-visible; diff]
    te = teacher.encoder
    x = te.patch_embed.proj(video).flatten(2).transpose(1, 2) + ref_table(n_tok, te.dim)
    x = torch.cat([x[~mask_s].reshape(B, -1, te.dim), x[mask_d].reshape(B, -1, te.dim)], dim=1)
    n_vis, n_diff = int((~mask_s[0]).sum()), int(mask_d[0].sum())
    t_dir, t_gen = [], []
    with torch.no_grad():
        for i, blk in enumerate(te.blocks):
            x = blk(x)
            if i + 1 in cfg.teacher_align_layers:
                t_dir.append(x[:, :n_vis])
                t_gen.append(x[:, -n_diff:])

    # student encoder
    se = student.encoder
    x = se.patch_embed.proj(video).flatten(2).transpose(1, 2) + ref_table(n_tok, se.dim)
    x = x[~mask_s].reshape(B, -1, se.dim)
    feats = []
    for i, blk in enumerate(se.blocks):
        x = blk(x)
        if i + 1 in cfg.student_align_layers:
            feats.append(x)
    x = se.norm(x)
    s_dir = [h(f) for h, f in zip(student.projection_heads, feats)]  # shared heads: direct and generation
    dt = te.dim
    pos_g = ref_table(n_tok, dt).expand(B, -1, -1)
    s_gen = []
    for gen, f in zip(student.generators, s_dir):
        g = torch.cat([f + pos_g[~mask_s].reshape(B, -1, dt), gen.mask_token + pos_g[mask_d].reshape(B, -1, dt)], 1)
        for blk in gen.blocks:
            g = blk(g)
        s_gen.append(g[:, -n_diff:])
    y = student.encoder_to_decoder(x)
    dd = y.shape[-1]
    pos = ref_table(n_tok, dd).expand(B, -1, -1)
    y = torch.cat([y + pos[~mask_s].reshape(B, -1, dd), student.mask_token + pos[mask_s].reshape(B, -1, dd)], 1)
    for blk in student.decoder_blocks:
        y = blk(y)
    pred = student.decoder_head(student.decoder_norm(y[:, -labels.shape[1]:]))

    crit = REF_ALIGN[loss_cfg.align_kind]
    loss_pix = nn.MSELoss()(pred, labels)
    loss_dir = sum(crit(a, b) for a, b in zip(s_dir, t_dir)) / len(s_dir)
    loss_gen = sum(crit(a, b) for a, b in zip(s_gen, t_gen)) / len(s_gen)
    return loss_cfg.rec * loss_pix + loss_cfg.dir * loss_dir + loss_cfg.gen * loss_gen, (loss_pix, loss_dir, loss_gen)


def _bool_masks(masks, n):
    mask_s = torch.ones(masks.vis_idx.shape[0], n, dtype=torch.bool).scatter_(1, masks.vis_idx, False)
    mask_d = torch.zeros_like(mask_s).scatter_(1, masks.diff_idx, True)
    return mask_s, mask_d


@pytest.mark.parametrize("align_kind,normalize_target", [("l2", True), ("smooth_l1", False)])
def test_loss_and_grads_match_reference_recomputation(eager_ops, align_kind, normalize_target):
    torch.manual_seed(0)
    cfg = tiny_model_config()
    loss_cfg = LossConfig(rec=1.0, dir=0.5, gen=2.0, align_kind=align_kind, normalize_target=normalize_target)
    student, teacher = build_student(cfg), build_teacher(cfg)
    with torch.no_grad():  # random, non-zero mask tokens and teacher weights so every path matters
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    mask_cfg = MaskConfig()
    video = tiny_video(batch=3, cfg=cfg) * 0.5
    objective = AMDObjective(student, teacher, mask_cfg, loss_cfg)
    loss, terms = objective(video, generator=torch.Generator().manual_seed(5))
    loss.backward()
    ours = {n: p.grad.clone() for n, p in student.named_parameters()}
    student.zero_grad()

    masks = generate_masks(mask_cfg, 3, cfg.grid, generator=torch.Generator().manual_seed(5))
    mask_s, mask_d = _bool_masks(masks, cfg.num_tokens)
    ref, (pix, dir_, gen) = ref_loss(student, teacher, video, mask_s, mask_d, cfg, loss_cfg)
    ref.backward()

    for name, value in (("loss_pix", pix), ("loss_dir", dir_), ("loss_gen", gen), ("loss", ref)):
        assert torch.allclose(terms[name], value.detach(), rtol=1e-5, atol=1e-6), name
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    for n, p in student.named_parameters():
        assert torch.allclose(ours[n], p.grad, rtol=1e-4, atol=1e-6), n
    assert all(t.grad is None for t in teacher.parameters())


def test_terms_are_detached_scalars(eager_ops):
    cfg = tiny_model_config()
    wrapped = torch.nn.Module()  # like DDP: the student (and its .cfg) sits under .module
    wrapped.module = build_student(cfg)
    wrapped.forward = wrapped.module.forward
    objective = AMDObjective(wrapped, build_teacher(cfg), MaskConfig(), LossConfig())
    assert objective.model_cfg is cfg
    loss, terms = objective(tiny_video(cfg=cfg))
    assert set(terms) == {"loss", "loss_pix", "loss_dir", "loss_gen"}
    assert loss.dim() == 0 and loss.requires_grad
    assert all(v.dim() == 0 and not v.requires_grad for v in terms.values())


def test_videomae_without_teacher_learns_one_batch(eager_ops):
    torch.manual_seed(0)
    cfg = tiny_model_config(teacher=None)
    student = build_student(cfg)
    objective = AMDObjective(student, None, MaskConfig(), LossConfig())
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3)
    video = tiny_video(batch=4, cfg=cfg)
    losses = []
    for _ in range(10):
        loss, terms = objective(video, generator=torch.Generator().manual_seed(1))
        assert set(terms) == {"loss", "loss_pix"}
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_teacher_and_config_must_agree():
    cfg = tiny_model_config()
    with pytest.raises(ValueError, match="teacher and model.teacher disagree"):
        AMDObjective(build_student(cfg), None, MaskConfig(), LossConfig())
    with pytest.raises(ValueError, match="no teacher-only tokens"):
        AMDObjective(build_student(cfg), build_teacher(cfg), MaskConfig(student_ratio=0.75), LossConfig())


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                    reason="Triton needs CUDA or the interpreter")
def test_triton_ops_match_eager_end_to_end(monkeypatch):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cfg = tiny_model_config()
    student, teacher = build_student(cfg).to(device), build_teacher(cfg).to(device)
    video = tiny_video(cfg=cfg).to(device)
    results, calls = {}, []
    for mod, name in ((ops._gather, "masked_gather_triton"), (ops._align, "align_loss_triton"),
                      (ops._pixel, "norm_pixel_loss_triton")):  # count the kernel calls: the triton pass must use them
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    for impl in ("eager", "triton"):
        student.ops_impl = teacher.ops_impl = impl  # the choice travels with the models and the objective
        objective = AMDObjective(student, teacher, MaskConfig(), LossConfig(), ops_impl=impl)
        student.zero_grad()
        loss, terms = objective(video, generator=torch.Generator(device).manual_seed(0))
        loss.backward()
        results[impl] = terms, [p.grad.clone() for p in student.parameters()]
    for k in results["eager"][0]:
        assert torch.allclose(results["eager"][0][k], results["triton"][0][k], rtol=1e-5, atol=1e-6), k
    for a, b in zip(results["eager"][1], results["triton"][1]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # student gather + teacher gather, the pixel loss and the two alignment losses: all Triton on that pass
    assert sorted(set(calls)) == ["align_loss_triton", "masked_gather_triton", "norm_pixel_loss_triton"]
    assert calls.count("masked_gather_triton") == 2 and calls.count("align_loss_triton") == 2


@pytest.mark.gpu
def test_bf16_autocast_step_on_cuda_close_to_fp32():
    torch.manual_seed(0)
    cfg = tiny_model_config()
    student, teacher = build_student(cfg).cuda(), build_teacher(cfg).cuda()
    objective = AMDObjective(student, teacher, MaskConfig(), LossConfig())
    video = tiny_video(cfg=cfg).cuda()
    ref, _ = objective(video, generator=torch.Generator("cuda").manual_seed(0))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, terms = objective(video, generator=torch.Generator("cuda").manual_seed(0))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.allclose(loss, ref, rtol=5e-2)
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
