"""norm_pixel_loss: Triton (interpreted on CPU) and eager vs the AMD/VideoMAE reference chain written here:
un-normalize -> patchify (reshape/permute) -> per-patch normalize (unbiased std + 1e-6) -> bool-mask MSE."""
import pytest
import torch

from amd_fast.kernels import norm_pixel_loss as npl
from tests.devices import triton_on_cuda


@pytest.fixture(autouse=True)
def _compiled_on_cuda(monkeypatch):
    triton_on_cuda(monkeypatch, npl, ["norm_pixel_loss_triton"])

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _reference(video, mask_idx, pred, tubelet, patch, normalize=True, uint8=False):
    B, C, T, H, W = video.shape
    if uint8:
        unnorm = video.double() / 255.0
    else:
        unnorm = video.double() * torch.tensor(STD, dtype=torch.float64)[None, :, None, None, None] \
            + torch.tensor(MEAN, dtype=torch.float64)[None, :, None, None, None]
    x = unnorm.reshape(B, C, T // tubelet, tubelet, H // patch, patch, W // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, tubelet * patch * patch, C)  # b (t h w) (p0 p1 p2) c
    if normalize:
        x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt() + 1e-6)
    x = x.reshape(B, x.shape[1], -1)  # (p c)
    bool_mask = torch.zeros(B, x.shape[1], dtype=torch.bool)
    bool_mask.scatter_(1, mask_idx.long(), True)
    labels = x[bool_mask].reshape(B, -1, x.shape[-1])
    return ((pred.double() - labels) ** 2).mean()


def _case(B, T, H, W, tubelet, patch, M, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(B, 3, T, H, W, generator=g)
    n = (T // tubelet) * (H // patch) * (W // patch)
    idx = torch.stack([torch.randperm(n, generator=g)[:M].sort().values for _ in range(B)])
    pred = torch.randn(B, M, tubelet * patch * patch * 3, generator=g).to(dtype).requires_grad_(True)
    return video, idx, pred


CASES = [  # (B, T, H, W, tubelet, patch, M)
    (2, 4, 6, 9, 2, 3, 4),    # odd patch, non-square grid
    (1, 2, 4, 4, 2, 2, 1),    # B = 1, M = 1
    (2, 2, 4, 6, 1, 2, 6),    # tubelet 1, M = N (nothing visible)
]


@pytest.mark.parametrize("impl", ["triton", "eager"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_fp32_forward_backward(impl, normalize, case):
    B, T, H, W, t, p, M = case
    video, idx, pred = _case(*case)
    fn = npl.norm_pixel_loss_triton if impl == "triton" else npl.norm_pixel_loss_eager
    loss = fn(video, idx, pred, tubelet=t, patch=p, normalize_target=normalize)
    ref = _reference(video, idx, pred, t, p, normalize)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    (got,) = torch.autograd.grad(loss * 2.5, pred)
    (want,) = torch.autograd.grad(ref * 2.5, pred)
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_bf16_pred_loose(impl):
    video, idx, pred = _case(2, 2, 8, 8, 2, 4, 3, seed=3, dtype=torch.bfloat16)
    fn = npl.norm_pixel_loss_triton if impl == "triton" else npl.norm_pixel_loss_eager
    loss = fn(video, idx, pred, tubelet=2, patch=4)
    assert loss.dtype == torch.float32
    ref = _reference(video, idx, pred, 2, 4)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    (got,) = torch.autograd.grad(loss, pred)
    (want,) = torch.autograd.grad(ref, pred)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want.double(), rtol=2e-2, atol=1e-5)


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_uint8_and_noncontiguous_clip(impl):
    g = torch.Generator().manual_seed(5)
    raw = torch.randint(0, 256, (2, 4, 4, 6, 3), generator=g, dtype=torch.uint8)  # (B, T, H, W, C) decoder layout
    video = raw.permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W) view, not contiguous
    assert not video.is_contiguous()
    idx = torch.tensor([[0, 2, 5], [1, 3, 4]])
    pred = torch.randn(2, 3, 2 * 2 * 2 * 3, generator=g, requires_grad=True)
    fn = npl.norm_pixel_loss_triton if impl == "triton" else npl.norm_pixel_loss_eager
    loss = fn(video, idx, pred, tubelet=2, patch=2)
    ref = _reference(video, idx, pred, 2, 2, uint8=True)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)


def test_gradcheck_eager_float64():
    video, idx, pred = _case(1, 2, 4, 4, 2, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: npl.norm_pixel_loss_eager(video, idx, p, tubelet=2, patch=2), (pred,))


def test_no_grad_pred_skips_gradient():
    video, idx, pred = _case(1, 2, 4, 4, 2, 2, 2)
    loss = npl.norm_pixel_loss_triton(video, idx, pred.detach(), tubelet=2, patch=2)
    assert not loss.requires_grad


def test_bad_inputs_name_the_problem():
    video, idx, pred = _case(1, 2, 4, 4, 2, 2, 2)
    with pytest.raises(ValueError, match="decoder head width"):
        npl.norm_pixel_loss_eager(video, idx, pred[..., :-1], tubelet=2, patch=2)
    with pytest.raises(ValueError, match="divisible"):
        npl.norm_pixel_loss_eager(video, idx, pred, tubelet=2, patch=3)


def test_bytes_model_favours_fused():
    assert npl.bytes_moved(32, 1408, 1536) * 3 < npl.reference_bytes_moved(32, 1408, 1536)


@pytest.mark.gpu
def test_compiled_matches_eager_and_peak_memory_cuda():
    B, M = 8, 1408
    video = torch.randn(B, 3, 16, 224, 224, device="cuda")
    idx = torch.stack([torch.randperm(1568, device="cuda")[:M].sort().values for _ in range(B)])
    pred = torch.randn(B, M, 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    a = npl.norm_pixel_loss_triton(video, idx, pred)
    (ga,) = torch.autograd.grad(a, pred)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < video.numel() * 4 * 0.5  # never a full-size float copy of the clip
    b = npl.norm_pixel_loss_eager(video, idx, pred)
    (gb,) = torch.autograd.grad(b, pred)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ga.float(), gb.float(), rtol=2e-2, atol=1e-7)
