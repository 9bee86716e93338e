"""Model FLOPs per clip, counted from the model shapes and the masks, and model FLOPs utilisation (MFU).

Counted as torchtitan / the PaLM paper count them: 2 FLOPs per multiply-add of every matmul, attention
included; elementwise work, norms and softmax left out; backward = 2x forward for what trains, nothing for
the frozen teacher (forward only). Per transformer block and token with width ``d`` over ``n`` tokens:
``24 d^2`` (qkv, projection, 4x MLP) ``+ 4 n d`` (scores and the weighted sum). For AMD per clip:

- teacher (forward): patch embedding over all N tokens, then its blocks up to the last aligned one over the
  ``|vis| + |diff|`` teacher-visible tokens;
- student (forward + backward): patch embedding over all N tokens (a conv: its weight gradient, no input
  gradient), encoder over ``|vis|``, one projection head per aligned layer (``|vis|`` tokens, student ->
  teacher width), one generator per aligned layer (teacher width, ``|vis| + |diff|`` tokens), the decoder
  (``|vis| + |mask|`` = N tokens) and its pixel head over ``|mask|`` tokens.

MFU = counted FLOPs per second / the device's dense bf16 peak (H100 SXM 989 TFLOP/s, ...). A run whose
device has no known peak (CPU) reports achieved TFLOP/s only.
"""
from __future__ import annotations

from typing import Optional

from amd_fast.masking import MaskConfig, mask_counts
from amd_fast.models.archs import get_arch
from amd_fast.models.config import ModelConfig

# Dense (no sparsity) bf16 tensor-core peaks, public spec sheets, FLOP/s.
PEAK_BF16 = {"H100 SXM": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12,
             "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "B200": 2250e12}


def _blocks(tokens: int, width: int, depth: int) -> float:
    return depth * tokens * (24 * width * width + 4 * tokens * width)


def clip_flops(model: ModelConfig, mask: MaskConfig) -> dict:
    """Forward+backward FLOPs of one clip, by part (``total`` is the sum); see the module doc."""
    stu = get_arch(model.student)
    n = model.num_tokens
    n_vis, n_diff, n_mask = mask_counts(mask, model.grid)
    patch_in = 3 * model.tubelet_size * model.patch_size ** 2
    dec_dim = model.decoder_dim or stu.decoder_dim
    fwd_train = {
        "student_patch_embed": 2 * n * patch_in * stu.dim,
        "student_encoder": _blocks(n_vis, stu.dim, stu.depth),
        "decoder": 2 * n_vis * stu.dim * dec_dim + _blocks(n, dec_dim, model.decoder_depth)
        + 2 * n_mask * dec_dim * patch_in,
    }
    out = {}
    if model.teacher is not None:
        tea = get_arch(model.teacher)
        pairs = len(model.student_align_layers)
        fwd_train["projection_heads"] = pairs * 2 * n_vis * stu.dim * tea.dim
        fwd_train["generators"] = pairs * _blocks(n_vis + n_diff, tea.dim, model.generator_depth)
        out["teacher"] = 2 * n * patch_in * tea.dim + _blocks(n_vis + n_diff, tea.dim, max(model.teacher_align_layers))
    for name, f in fwd_train.items():
        # backward = 2x forward, but the patch embedding has no input gradient (the clip): 1x for its weight
        out[name] = f * (2 if name == "student_patch_embed" else 3)
    out["total"] = sum(out.values())
    return out


def classifier_flops(model) -> float:
    """Forward+backward FLOPs of one clip through the fine-tuning ViT (a ``ClassifierConfig``): every token
    through every block, the patch embedding (weight gradient only) and the head."""
    arch = get_arch(model.arch)
    t, h, w = model.grid
    n = t * h * w
    patch_in = 3 * model.tubelet_size * model.patch_size ** 2
    return 2 * (2 * n * patch_in * arch.dim) + 3 * (_blocks(n, arch.dim, arch.depth)
                                                       + 2 * model.head_inputs(arch.dim) * model.num_classes)


def peak_flops(device_name: Optional[str]) -> Optional[float]:
    """Dense bf16 peak of a CUDA device by its name, or None when unknown (CPU, other GPUs)."""
    if not device_name:
        return None
    for key in sorted(PEAK_BF16, key=len, reverse=True):  # most specific name first
        if key in device_name:
            return PEAK_BF16[key]
    return None
