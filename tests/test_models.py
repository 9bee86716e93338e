"""Student / teacher modules: shapes, frozen early-exit teacher, trainable mask tokens, checkpointing."""
import numpy as np
import pytest
import torch

from amd_fast.masking import MaskConfig, generate_masks
from amd_fast.models import ARCHS, build_student, build_teacher
from amd_fast.models.teacher import AMDTeacher
from amd_fast.models.vit import get_sinusoid_encoding_table
from tests.model_fixtures import eager_ops, tiny_model_config, tiny_video  # noqa: F401 (fixture)


def _masks(cfg, batch=2, seed=0):
    return generate_masks(MaskConfig(), batch, cfg.grid, generator=torch.Generator().manual_seed(seed))


def test_sinusoid_table_matches_videomae_numpy():
    n, d = 10, 12
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / d) for j in range(d)] for p in range(n)])
    angles[:, 0::2], angles[:, 1::2] = np.sin(angles[:, 0::2]), np.cos(angles[:, 1::2])
    assert torch.allclose(get_sinusoid_encoding_table(n, d), torch.tensor(angles, dtype=torch.float32))


def test_arch_table_and_reference_decoder_widths():
    assert (ARCHS["vit_small"].dim, ARCHS["vit_small"].depth, ARCHS["vit_small"].heads) == (384, 12, 6)
    assert (ARCHS["vit_base"].dim, ARCHS["vit_base"].heads, ARCHS["vit_large"].depth) == (768, 12, 24)
    assert (ARCHS["vit_small"].decoder_dim, ARCHS["vit_base"].decoder_dim) == (192, 384)


def test_student_output_shapes(eager_ops):
    cfg = tiny_model_config()
    student = build_student(cfg)
    masks = _masks(cfg)
    out = student(tiny_video(cfg=cfg), masks)
    assert out.pixel_pred.shape == (2, 28, 2 * 8 * 8 * 3)  # 14 masked positions x 2 time slots
    assert [f.shape for f in out.direct] == [(2, 4, 128)] * 2
    assert [f.shape for f in out.generated] == [(2, 4, 128)] * 2
    video = tiny_video(cfg=cfg)
    pooled, tokens = student.encoder_features(video), student.encoder_features(video, pool="tokens")
    assert pooled.shape == (2, 96)
    assert tokens.shape == (2, cfg.num_tokens * 96)
    # The mean pooling is the mean of the per-token features, token order = the token-id convention.
    assert torch.allclose(tokens.view(2, cfg.num_tokens, 96).mean(1), pooled, atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        student.encoder_features(video, pool="max")


def test_generator_mask_tokens_are_trained_parameters(eager_ops):
    # The reference keeps these in a Python list (never trained, never saved); ours must be real parameters.
    cfg = tiny_model_config()
    student = build_student(cfg)
    names = dict(student.named_parameters())
    assert "generators.0.mask_token" in names and "generators.1.mask_token" in names
    assert "generators.0.mask_token" in student.state_dict()
    out = student(tiny_video(cfg=cfg), _masks(cfg))
    sum(g.square().sum() for g in out.generated).backward()
    assert names["generators.1.mask_token"].grad.abs().sum() > 0


def test_videomae_student_has_no_alignment_parts(eager_ops):
    cfg = tiny_model_config(teacher=None)
    student = build_student(cfg)
    assert not any(k.startswith(("generators", "projection_heads")) for k in student.state_dict())
    out = student(tiny_video(cfg=cfg), _masks(cfg))
    assert out.direct == [] and out.generated == []
    assert build_teacher(cfg) is None


def test_teacher_is_frozen_and_exits_early(eager_ops):
    cfg = tiny_model_config()
    teacher = build_teacher(cfg)
    assert len(teacher.encoder.blocks) == 3 and teacher.encoder.norm is None
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training
    # Same layers from a full-depth teacher holding the same weights, run without early exit.
    full = AMDTeacher(tiny_model_config(student_align_layers=[1, 2, 4], teacher_align_layers=[2, 3, 4]))
    missing, unexpected = full.encoder.load_state_dict(teacher.encoder.state_dict(), strict=False)
    assert all(k.startswith("blocks.3.") for k in missing) and not unexpected
    masks, video = _masks(cfg), tiny_video(cfg=cfg)
    early, whole = teacher(video, masks), full(video, masks)
    assert len(early.direct) == len(early.generated) == 2
    for a, b in zip(early.direct + early.generated, whole.direct[:2] + whole.generated[:2]):
        assert a.shape == (2, 4, 128) and torch.equal(a, b)
    assert not early.direct[0].requires_grad


def test_activation_checkpointing_gives_same_outputs_and_grads(eager_ops):
    torch.manual_seed(0)
    a = build_student(tiny_model_config())
    b = build_student(tiny_model_config(use_checkpoint=True))
    b.load_state_dict(a.state_dict())
    masks, video = _masks(a.cfg), tiny_video()
    outs = []
    for m in (a, b):
        o = m(video, masks)
        (o.pixel_pred.square().mean() + sum(f.square().mean() for f in o.direct + o.generated)).backward()
        outs.append(o)
    assert torch.allclose(outs[0].pixel_pred, outs[1].pixel_pred, atol=1e-6)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-6, rtol=1e-4), n


def test_wrong_clip_size_and_bad_layers_are_named():
    student = build_student(tiny_model_config())
    with pytest.raises(ValueError, match="model.num_frames"):
        student.encoder_features(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match="teacher_align_layers has \\[5\\]"):
        tiny_model_config(teacher_align_layers=[2, 5])
    with pytest.raises(ValueError, match="equal length"):
        tiny_model_config(teacher_align_layers=[2])


def test_key_bias_stays_exactly_zero_under_adamw(eager_ops):
    """VideoMAE has no key bias: the k third of timm's fused qkv bias must not move, even though rounding gives
    it ~1e-8 gradients that AdamW would normalise into real updates."""
    from amd_fast.models import AMDObjective, LossConfig

    torch.manual_seed(0)
    cfg = tiny_model_config()
    student, teacher = build_student(cfg), build_teacher(cfg)
    objective = AMDObjective(student, teacher, MaskConfig(), LossConfig())
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, weight_decay=0.0)
    for step in range(5):
        loss, _ = objective(tiny_video(seed=step), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    biases = [(n, p) for n, p in student.named_parameters() if n.endswith("attn.qkv.bias")]
    assert biases
    for name, b in biases:
        d = b.numel() // 3
        assert torch.count_nonzero(b[d:2 * d]) == 0, name
        assert torch.count_nonzero(b[:d]) > 0, name  # q and v biases do train


def test_channels_last_clips_give_token_major_embeddings_without_a_copy():
    """The loaders deliver channels-last-3d clips; the Conv3d patch embedding then writes (B, N, C) token-major,
    so the masked gather reads whole token rows and PatchEmbed's .contiguous() copies nothing."""
    student = build_student(tiny_model_config())
    seen = {}
    student.encoder.patch_embed.proj.register_forward_hook(lambda m, i, o: seen.update(ptr=o.data_ptr()))
    video = tiny_video().contiguous(memory_format=torch.channels_last_3d)
    tokens = student.encoder.patch_embed(video)
    assert tokens.is_contiguous() and tokens.data_ptr() == seen["ptr"]
    assert torch.allclose(tokens, student.encoder.patch_embed(video.contiguous()), atol=1e-6)
