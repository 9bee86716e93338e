"""Encoder import/export: VideoMAE / AMD checkpoint layouts, clear failures, round trip."""
import argparse

import pytest
import torch

from amd_fast.models import CheckpointImportError, build_student, build_teacher, export_encoder, load_pretrained
from amd_fast.models.pretrained import encoder_state_videomae
from amd_fast.models.vit import get_sinusoid_encoding_table
from tests.model_fixtures import tiny_model_config


def _videomae_pretrain_state(cfg, init_values=0.0):
    """What a VideoMAE / AMD pretraining run saves: encoder.* in VideoMAE names (q_bias/v_bias), plus decoder parts."""
    torch.manual_seed(3)
    src = build_student(tiny_model_config(student=cfg.teacher or cfg.student, teacher=None, init_values=init_values))
    with torch.no_grad():
        for blk in src.encoder.blocks:  # VideoMAE's k bias is structurally zero; give q/v biases real values
            blk.attn.qkv.bias.copy_(torch.randn_like(blk.attn.qkv.bias))
            blk.attn.qkv.bias[blk.attn.qkv.bias.numel() // 3: 2 * blk.attn.qkv.bias.numel() // 3] = 0
    state = {f"encoder.{k}": v for k, v in encoder_state_videomae(src).items()}
    state["encoder.pos_embed"] = get_sinusoid_encoding_table(cfg.num_tokens, src.encoder.dim)[None]  # fixed table
    state["mask_token"] = torch.zeros(1, 1, 64)
    state["decoder.head.weight"] = torch.zeros(384, 64)
    return src, state


class _Wrapper(torch.nn.Module):  # stands in for DDP / FSDP: the model sits under .module
    def __init__(self, module):
        super().__init__()
        self.module = module


def test_export_then_import_round_trip(tmp_path):
    cfg = tiny_model_config(init_values=0.1)
    a, b = build_student(cfg), build_student(cfg)
    path = export_encoder(_Wrapper(a), tmp_path / "enc.pth")
    saved = torch.load(path)["model"]
    assert "blocks.0.attn.q_bias" in saved and "blocks.0.attn.qkv.bias" not in saved
    assert "blocks.0.gamma_1" in saved and "patch_embed.proj.weight" in saved and "norm.weight" in saved
    assert not any(k.startswith(("encoder.", "decoder", "generators", "projection_heads")) for k in saved)
    report = load_pretrained(_Wrapper(b), path)
    assert report.missing == [] and report.unexpected == []
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(v, b.encoder.state_dict()[k]), k
    video = torch.randn(1, 3, 4, 32, 32)
    assert torch.allclose(a.encoder_features(video), b.encoder_features(video))


def test_videomae_module_key_and_encoder_prefix_load_into_early_exit_teacher(tmp_path):
    cfg = tiny_model_config()
    src, state = _videomae_pretrain_state(cfg)
    ckpt = {"module": {f"module.{k}": v for k, v in state.items()}, "args": argparse.Namespace(lr=1.5e-4)}
    torch.save(ckpt, tmp_path / "videomae.pth")  # args pickled as in VideoMAE: needs the weights_only fallback
    teacher = build_teacher(tiny_model_config(teacher_checkpoint=str(tmp_path / "videomae.pth")))
    assert torch.equal(teacher.encoder.blocks[2].attn.qkv.bias, src.encoder.blocks[2].attn.qkv.bias)
    assert torch.equal(teacher.encoder.patch_embed.proj.weight, src.encoder.patch_embed.proj.weight)
    report = load_pretrained(teacher, ckpt)
    assert report.missing == []
    assert report.unexpected == ["decoder.head.weight", "mask_token"]
    assert "pos_embed" in report.skipped and "norm.weight" in report.skipped  # teacher uses raw block outputs
    assert any(k.startswith("blocks.3.") for k in report.skipped)  # past the early exit at block 3
    assert not any(k.startswith("blocks.3.") for k in report.loaded)


def test_finetune_format_without_prefix_loads_into_student():
    cfg = tiny_model_config(teacher=None)
    src = build_student(cfg)
    state = encoder_state_videomae(src)
    state.pop("norm.weight"), state.pop("norm.bias")  # mean-pooling fine-tune checkpoints: fc_norm, no norm
    state.update({"fc_norm.weight": torch.ones(96), "fc_norm.bias": torch.zeros(96), "head.weight": torch.zeros(5, 96)})
    student = build_student(cfg)
    report = load_pretrained(student, {"state_dict": state})
    assert report.missing == ["norm.bias", "norm.weight"]
    assert {"fc_norm.weight", "head.weight"} <= set(report.skipped)
    assert torch.equal(student.encoder.blocks[1].mlp.fc2.weight, src.encoder.blocks[1].mlp.fc2.weight)


def test_missing_encoder_weights_raise_naming_them():
    cfg = tiny_model_config()
    _, state = _videomae_pretrain_state(cfg)
    del state["encoder.blocks.1.mlp.fc1.weight"], state["encoder.patch_embed.proj.weight"]
    with pytest.raises(ValueError, match=r"lacks 2 encoder weights.*blocks\.1\.mlp\.fc1\.weight"):
        load_pretrained(build_teacher(cfg), {"model": state})
    report = load_pretrained(build_teacher(cfg), {"model": state}, strict_encoder=False)
    assert report.missing == ["blocks.1.mlp.fc1.weight", "patch_embed.proj.weight"]


def test_wrong_arch_and_layer_scale_mismatch_raise():
    cfg = tiny_model_config()
    _, state = _videomae_pretrain_state(cfg)  # a 128-wide encoder
    with pytest.raises(ValueError, match="different architecture"):
        load_pretrained(build_student(cfg), state)  # 96-wide student
    _, ls_state = _videomae_pretrain_state(cfg, init_values=0.1)
    with pytest.raises(ValueError, match="init_values > 0"):
        load_pretrained(build_teacher(cfg), ls_state)
    with pytest.raises(ValueError, match="no tensors"):
        load_pretrained(build_teacher(cfg), {"epoch": 3})
    with pytest.raises(CheckpointImportError, match="teacher_checkpoint"):
        load_pretrained(build_teacher(cfg), "/nonexistent/ckpt.pth")


def test_trainer_checkpoint_of_a_videomae_run_loads_as_teacher():
    """A step-*.pt of our own `model.teacher=null` run (weights under 'student', our names) fills the teacher."""
    cfg = tiny_model_config()
    torch.manual_seed(5)
    pretrained = build_student(tiny_model_config(student=cfg.teacher, teacher=None))
    trainer_ckpt = {"format": 1, "step": 10, "student": pretrained.state_dict(), "optimizer": {}}
    teacher = build_teacher(cfg)
    report = load_pretrained(teacher, trainer_ckpt)
    assert not report.missing and report.loaded
    assert any(k.startswith("decoder") for k in report.unexpected)
    source = pretrained.encoder.state_dict()
    for name, p in teacher.encoder.named_parameters():
        assert torch.equal(p, source[name]), name
