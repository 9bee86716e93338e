"""Tiny model configs shared by the model / objective / checkpoint tests (CPU, a few ms a step)."""
import pytest
import torch

from amd_fast.models import ModelConfig


def tiny_model_config(**overrides) -> ModelConfig:
    """32x32 clips of 4 frames, 8x8 patches: grid (2, 4, 4) = 32 tokens; with 0.9 / 0.75 masking per frame
    2 student-visible, 2 teacher-only, 14 student-masked positions. Teacher align layer 3 < depth 4: early exit."""
    kw = dict(student="vit_tiny_cpu", teacher="vit_mini_cpu", input_size=32, patch_size=8, num_frames=4,
              tubelet_size=2, decoder_depth=2, student_align_layers=[2, 4], teacher_align_layers=[2, 3],
              generator_depth=2)
    kw.update(overrides)
    return ModelConfig(**kw)


def tiny_video(batch=2, seed=0, cfg=None) -> torch.Tensor:
    cfg = cfg or tiny_model_config()
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)


@pytest.fixture
def eager_ops(monkeypatch):
    """Pin the ops to their eager implementations (the Triton ones are KERNELS' tests' business)."""
    monkeypatch.setenv("AMD_FAST_OPS", "eager")
