"""Our fine-tuning model against an independent re-implementation of the AMD reference's fine-tuning ViT.

The reference is MCG-NJU/AMD ``models/modeling_finetune.py`` (``VisionTransformer``, the VideoMAE fine-tuning
ViT, built by ``vit_*_patch16_224`` with ``qkv_bias=True``, LayerNorm eps 1e-6, mean pooling) and the
``--finetune`` loading steps of ``run_class_finetuning.py`` / ``utils.load_state_dict``. ``RefViT`` below is
written from that source in plain torch: no timm and none of amd_fast's model code, so a shared mistake cannot
hide. Dropout / drop path are left out of it: every comparison runs in eval mode, where the reference's are
identities.

What the tests prove:

1. ``VideoClassifier`` computes the reference's function: with the same (random, non-trivial) weights, mapped
   to the reference's names and loaded with ``strict=True``, logits and parameter gradients agree.
2. ``export_encoder`` writes a file the reference's fine-tuning loader takes: only the reference's expected
   keys are missing / unused, the loaded encoder gives our student's token features, and our own
   ``load_pretrained`` / ``build_classifier`` of that file gives the reference's logits.
"""
import copy
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from amd_fast.models import build_student, export_encoder
from amd_fast.models.classifier import ClassifierConfig, VideoClassifier, build_classifier
from amd_fast.models.pretrained import load_pretrained
from tests.model_fixtures import tiny_model_config

EPS = 1e-6  # the reference's norm_layer=partial(nn.LayerNorm, eps=1e-6) for every LayerNorm


# ---- the reference fine-tuning ViT, re-implemented -----------------------------------------------------------------

def reference_sincos_table(n_position: int, dim: int) -> torch.Tensor:
    """VideoMAE's get_sinusoid_encoding_table: angle[pos, j] = pos / 10000^(2*(j//2)/dim), sin on even columns,
    cos on odd ones; float64 numpy, then float32, shape (1, N, D)."""
    pos = np.arange(n_position, dtype=np.float64)[:, None]
    j = np.arange(dim)[None, :]
    table = pos / np.power(10000, 2 * (j // 2) / dim)
    table[:, 0::2] = np.sin(table[:, 0::2])
    table[:, 1::2] = np.cos(table[:, 1::2])
    return torch.tensor(table, dtype=torch.float32).unsqueeze(0)


class RefAttention(nn.Module):
    """Bias-free fused qkv plus separate q / v biases (the k bias is structurally zero)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # explicit math, not SDPA (ours uses timm's fused SDPA)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class RefMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefBlock(nn.Module):
    """Pre-norm residual block, no LayerScale (the reference's init_values=0)."""

    def __init__(self, dim, heads, mlp_ratio):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=EPS)
        self.attn = RefAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=EPS)
        self.mlp = RefMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefPatchEmbed(nn.Module):
    def __init__(self, dim, patch, tubelet):
        super().__init__()
        self.proj = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, C, T', H', W') -> (B, T'H'W', C), t-major order


class RefViT(nn.Module):
    """The reference VisionTransformer with use_mean_pooling=True: ``norm`` is Identity, ``fc_norm`` a LayerNorm
    over the token mean. ``pos_embed`` is a plain attribute as in the reference: not a parameter, not a buffer,
    so it is in neither the state dict nor a checkpoint."""

    def __init__(self, *, img_size, patch, frames, tubelet, dim, depth, heads, num_classes, mlp_ratio=4.0):
        super().__init__()
        self.patch_embed = RefPatchEmbed(dim, patch, tubelet)
        self.pos_embed = reference_sincos_table((frames // tubelet) * (img_size // patch) ** 2, dim)
        self.blocks = nn.ModuleList(RefBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.Identity()
        self.fc_norm = nn.LayerNorm(dim, eps=EPS)
        self.head = nn.Linear(dim, num_classes)

    def forward_tokens(self, video):
        """Every token's features after the blocks and ``norm`` (Identity), before pooling: (B, N, D)."""
        x = self.patch_embed(video)
        x = x + self.pos_embed.type_as(x)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, video):
        return self.head(self.fc_norm(self.forward_tokens(video).mean(1)))


def reference_for(cfg: ClassifierConfig, dim, depth, heads) -> RefViT:
    return RefViT(img_size=cfg.input_size, patch=cfg.patch_size, frames=cfg.num_frames, tubelet=cfg.tubelet_size,
                  dim=dim, depth=depth, heads=heads, num_classes=cfg.num_classes).eval()


# ---- helpers ----------------------------------------------------------------------------------------------------

def randomize_(module: nn.Module, seed: int) -> None:
    """Non-trivial weights everywhere (default inits have zero biases and unit LayerNorms, which would hide a
    misplaced bias or norm). The k third of every fused qkv bias is zeroed: the reference has no k bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            is_norm_weight = p.dim() == 1 and name.endswith("weight")  # LayerNorm scales (linear weights are 2-D+)
            p.copy_(1.0 + 0.2 * noise if is_norm_weight else 0.1 * noise)
            if name.endswith("attn.qkv.bias"):
                d = p.numel() // 3
                p[d:2 * d] = 0


def ours_to_reference_names(state) -> "OrderedDict[str, torch.Tensor]":
    """Our classifier's state dict -> the reference's names: drop the ``encoder.`` prefix; timm's fused qkv bias
    (3D) -> ``q_bias`` (first third) and ``v_bias`` (last third); its k third must be zero."""
    out = OrderedDict()
    for k, v in state.items():
        k = k[len("encoder."):] if k.startswith("encoder.") else k
        if k.endswith("attn.qkv.bias"):
            q, kb, vb = v.chunk(3)
            assert torch.count_nonzero(kb) == 0, f"{k}: k bias is not zero; the reference cannot express it"
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = q, vb
        else:
            out[k] = v
    return out


def reference_finetune_load(model: RefViT, path):
    """The ``--finetune`` steps of the reference's run_class_finetuning.py, re-implemented.

    Returns (missing, unexpected). Shape mismatches raise here; the reference's utils.load_state_dict would only
    print them and keep the random init, which is never what we want from an export."""
    # The reference calls torch.load(path, map_location='cpu'); torch >= 2.6 makes that weights_only=True, so the
    # export must load under it (it does: plain tensors only).
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    ckpt_model = next((checkpoint[k] for k in ("model", "module") if k in checkpoint), checkpoint)  # model_key
    own = model.state_dict()
    for k in ("head.weight", "head.bias"):  # a head for another class count is dropped
        if k in ckpt_model and ckpt_model[k].shape != own[k].shape:
            del ckpt_model[k]
    new = OrderedDict()
    for k, v in ckpt_model.items():
        if k.startswith("backbone."):
            new[k[len("backbone."):]] = v
        elif k.startswith("encoder."):
            new[k[len("encoder."):]] = v
        else:
            new[k] = v
    # The reference interpolates a checkpoint 'pos_embed' only when there is one. Our export has none (our table
    # is a non-persistent buffer), so that branch never runs and the reference uses its own fixed sin-cos table;
    # assert it, rather than carry untested interpolation code.
    assert "pos_embed" not in new
    result = model.load_state_dict(new, strict=False)
    return sorted(result.missing_keys), sorted(result.unexpected_keys)


# ---- 1. the fine-tuning model against the reference's, on shared weights -------------------------------------------

def test_classifier_matches_reference_finetune_vit_forward_and_backward():
    """Same weights, same clip: logits (eval) and parameter gradients of VideoClassifier equal the reference's."""
    # T'=4 != H'=W'=6, so a token-order or position-table layout mix-up changes the result. drop_path and
    # head dropout are on in the config to check that eval mode turns them off (the reference runs without them).
    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=5, input_size=48, patch_size=8, num_frames=8,
                           tubelet_size=2, drop_path=0.1, head_drop_rate=0.5)
    torch.manual_seed(0)
    ours = VideoClassifier(cfg).eval()
    randomize_(ours, seed=1)
    arch = ours.encoder.arch
    ref = reference_for(cfg, arch.dim, arch.depth, arch.heads)
    ref.load_state_dict(ours_to_reference_names(ours.state_dict()), strict=True)  # every name maps, none left over

    # The fixed position tables agree (a direct check, so a failure below points somewhere useful).
    torch.testing.assert_close(ours.encoder.pos_embed, ref.pos_embed[0], atol=1e-6, rtol=0)

    g = torch.Generator().manual_seed(2)
    video = torch.randn(2, 3, cfg.num_frames, cfg.input_size, cfg.input_size, generator=g)
    logits, ref_logits = ours(video), ref(video)
    assert logits.shape == (2, 5)
    assert logits.std() > 0.1  # non-trivial logits, so agreement means something
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    # float32 rounding (~1e-6 here) would hide a small but real difference such as LayerNorm eps 1e-5 vs 1e-6;
    # in float64 the two must agree to ~1e-12, so anything above rounding is a real difference.
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(ours).double()(video.double()),
                                   copy.deepcopy(ref).double()(video.double()), atol=1e-10, rtol=1e-10)

    # Backward through the same loss on both; compare gradients at both ends and in the attention.
    target = torch.tensor([1, 3])
    F.cross_entropy(logits, target).backward()
    F.cross_entropy(ref_logits, target).backward()
    ours_p, ref_p = dict(ours.named_parameters()), dict(ref.named_parameters())
    for name in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.bias", "fc_norm.weight",
                 "head.weight"):
        ours_name = name if name.startswith(("fc_norm", "head")) else "encoder." + name
        torch.testing.assert_close(ours_p[ours_name].grad, ref_p[name].grad, atol=1e-5, rtol=1e-4, msg=name)
    qkv_bias_grad = ours_p["encoder.blocks.0.attn.qkv.bias"].grad
    q_grad, k_grad, v_grad = qkv_bias_grad.chunk(3)
    torch.testing.assert_close(q_grad, ref_p["blocks.0.attn.q_bias"].grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(v_grad, ref_p["blocks.0.attn.v_bias"].grad, atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(k_grad) == 0  # the k bias stays exactly zero under training


# ---- 2. our exported encoder in the reference's fine-tuning loader --------------------------------------------------

def test_exported_encoder_loads_in_reference_finetune_loader(tmp_path):
    """export_encoder's file, loaded by the reference's --finetune steps, gives a reference ViT whose tokens are
    our student encoder's; our load_pretrained of the same file gives the reference's logits."""
    mcfg = tiny_model_config()
    torch.manual_seed(0)
    student = build_student(mcfg).eval()
    randomize_(student.encoder, seed=3)
    path = export_encoder(student, tmp_path / "encoder.pth")

    fcfg = ClassifierConfig(arch=mcfg.student, num_classes=7, input_size=mcfg.input_size,
                            patch_size=mcfg.patch_size, num_frames=mcfg.num_frames,
                            tubelet_size=mcfg.tubelet_size, drop_path=0.0)
    arch = student.encoder.arch
    ref = reference_for(fcfg, arch.dim, arch.depth, arch.heads)
    missing, unexpected = reference_finetune_load(ref, path)
    # What the reference reports for its own AMD / VideoMAE pretraining checkpoints too: the classifier parts start
    # fresh, and the encoder's final norm has no place in a mean-pooling model (norm is Identity there).
    assert missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert unexpected == ["norm.bias", "norm.weight"]

    video = torch.randn(2, 3, mcfg.num_frames, mcfg.input_size, mcfg.input_size,
                        generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref_tokens = ref.forward_tokens(video)  # (B, N, D), no final norm
        # Our student's encoder with every token visible; capture the last block's output, which is before our
        # final norm, i.e. what the reference fine-tuning model pools (its norm is Identity).
        x = student.encoder.patch_embed(video) + student.encoder.pos_embed
        _, (pre_norm,) = student.encoder.forward_tokens(x, capture=(arch.depth,))
        torch.testing.assert_close(ref_tokens, pre_norm, atol=1e-5, rtol=1e-5)
        # And the public probe features (after our final norm) are the reference tokens under the exported norm:
        # the whole export, final norm included, is consistent.
        saved = torch.load(path, weights_only=True)["model"]
        normed = F.layer_norm(ref_tokens, (arch.dim,), saved["norm.weight"], saved["norm.bias"], EPS)
        torch.testing.assert_close(student.encoder_features(video, pool="tokens"), normed.flatten(1),
                                   atol=1e-5, rtol=1e-5)

    # Our own loader on the same file: build_classifier(pretrained=...) fills the encoder; the final norm is
    # skipped (our classifier has none, as the reference), nothing is missing or unexpected.
    ours = build_classifier(ClassifierConfig(**{**fcfg.__dict__, "pretrained": str(path)})).eval()
    report = load_pretrained(VideoClassifier(fcfg), path)
    assert report.missing == [] and report.unexpected == []
    assert {"norm.weight", "norm.bias"} <= set(report.skipped)
    # Same fresh classifier parts on both sides (non-trivial, so the head cannot mask an encoder difference).
    randomize_(ours.fc_norm, seed=5)
    randomize_(ours.head, seed=6)
    with torch.no_grad():
        ref.fc_norm.load_state_dict(ours.fc_norm.state_dict())
        ref.head.load_state_dict(ours.head.state_dict())
        logits = ours(video)
        assert logits.std() > 0.05
        torch.testing.assert_close(logits, ref(video), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("key", ["model", "module"])
def test_reference_loader_finds_weights_under_either_model_key(tmp_path, key):
    """The reference takes checkpoint['model'] or ['module']; our load_pretrained must read the same files the
    same way (e.g. a file re-saved under 'module' with 'encoder.' prefixes, as a pretraining run writes)."""
    mcfg = tiny_model_config()
    torch.manual_seed(0)
    student = build_student(mcfg)
    randomize_(student.encoder, seed=7)
    exported = torch.load(export_encoder(student, tmp_path / "e.pth"), weights_only=True)["model"]
    path = tmp_path / "wrapped.pth"
    torch.save({key: {f"encoder.{k}": v for k, v in exported.items()}}, path)

    fcfg = ClassifierConfig(arch=mcfg.student, num_classes=3, input_size=mcfg.input_size, patch_size=mcfg.patch_size,
                            num_frames=mcfg.num_frames, tubelet_size=mcfg.tubelet_size, drop_path=0.0)
    arch = student.encoder.arch
    ref = reference_for(fcfg, arch.dim, arch.depth, arch.heads)
    _, unexpected = reference_finetune_load(ref, path)
    assert unexpected == ["norm.bias", "norm.weight"]
    ours = build_classifier(ClassifierConfig(**{**fcfg.__dict__, "pretrained": str(path)})).eval()
    with torch.no_grad():
        ref.fc_norm.load_state_dict(ours.fc_norm.state_dict())
        video = torch.randn(1, 3, mcfg.num_frames, mcfg.input_size, mcfg.input_size)
        torch.testing.assert_close(ours.forward_features(video), ref.fc_norm(ref.forward_tokens(video).mean(1)),
                                   atol=1e-5, rtol=1e-5)
