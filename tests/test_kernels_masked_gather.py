"""masked_gather: Triton (interpreted on CPU) and eager vs an independent bool-mask reference."""
import pytest
import torch

from amd_fast.kernels import masked_gather as mg
from tests.devices import triton_on_cuda


@pytest.fixture(autouse=True)
def _compiled_on_cuda(monkeypatch):
    triton_on_cuda(monkeypatch, mg, ["masked_gather_triton"])


def _reference(x, idx, pos):
    """Written from the formula: (x + pos)[keep].reshape(B, -1, C) with keep built from the ids."""
    B, N, C = x.shape
    keep = torch.zeros(B, N, dtype=torch.bool)
    for b in range(B):
        keep[b, idx[b]] = True
    y = x + pos.reshape(1, N, C) if pos is not None else x
    return y[keep].reshape(B, -1, C)


def _ids(B, N, K, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(N, generator=g)[:K].sort().values for _ in range(B)])


CASES = [(2, 7, 3, 5, True), (1, 5, 1, 3, False), (3, 6, 6, 33, True), (2, 9, 4, 130, True)]


@pytest.mark.parametrize("impl", ["triton", "eager"])
@pytest.mark.parametrize("B,N,K,C,with_pos", CASES)
def test_forward_backward_fp32(impl, B, N, K, C, with_pos):
    torch.manual_seed(0)
    fn = mg.masked_gather_triton if impl == "triton" else mg.masked_gather_eager
    x = torch.randn(B, N, C, requires_grad=True)
    pos = torch.randn(N, C, requires_grad=True) if with_pos else None
    idx = _ids(B, N, K, 1)
    out = fn(x, idx, pos)
    ref = _reference(x, idx, pos)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    g = torch.randn_like(ref)
    leaves = (x, pos) if with_pos else (x,)
    got = torch.autograd.grad(out, leaves, g)
    want = torch.autograd.grad(ref, leaves, g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_bf16_and_noncontiguous(impl):
    torch.manual_seed(0)
    fn = mg.masked_gather_triton if impl == "triton" else mg.masked_gather_eager
    base = torch.randn(2, 10, 48).to(torch.bfloat16)
    x = base.transpose(0, 1).contiguous().transpose(0, 1)[:, :, :20]  # non-contiguous (B stride, C slice)
    assert not x.is_contiguous()
    pos = torch.randn(1, 10, 20).to(torch.bfloat16)
    idx = _ids(2, 10, 4, 2).to(torch.int32)
    out = fn(x, idx, pos)
    ref = _reference(x.float(), idx.long(), pos.float())
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_pos_without_grad_and_x_without_grad(impl):
    fn = mg.masked_gather_triton if impl == "triton" else mg.masked_gather_eager
    x = torch.randn(2, 6, 5)
    pos = torch.randn(6, 5, requires_grad=True)
    idx = _ids(2, 6, 3, 3)
    (gp,) = torch.autograd.grad(fn(x, idx, pos).sum(), pos)
    counts = torch.zeros(6)
    for b in range(2):
        counts[idx[b]] += 1
    torch.testing.assert_close(gp, counts[:, None].expand(6, 5))


def test_gradcheck_eager_float64():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    idx = _ids(2, 5, 2, 4)
    assert torch.autograd.gradcheck(lambda a, p: mg.masked_gather_eager(a, idx, p), (x, pos))


def test_gradcheck_triton_float64():
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    idx = _ids(2, 5, 2, 5)
    assert torch.autograd.gradcheck(lambda a: mg.masked_gather_triton(a, idx, None), (x,))


def test_bad_inputs_name_the_problem():
    with pytest.raises(ValueError, match="pos"):
        mg.masked_gather_eager(torch.randn(2, 5, 3), _ids(2, 5, 2, 0), torch.randn(4, 3))
    with pytest.raises(TypeError, match="int32/int64"):
        mg.masked_gather_eager(torch.randn(2, 5, 3), torch.zeros(2, 5, dtype=torch.bool), None)


def test_bytes_model_favours_fused():
    for d in (384, 768):
        assert mg.bytes_moved(32, 1568, 160, d) < mg.reference_bytes_moved(32, 1568, 160, d)


@pytest.mark.gpu
def test_compiled_matches_eager_cuda():
    x = torch.randn(4, 1568, 384, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    pos = torch.randn(1568, 384, device="cuda", dtype=torch.bfloat16)
    idx = torch.stack([torch.randperm(1568, device="cuda")[:160].sort().values for _ in range(4)])
    a = mg.masked_gather_triton(x, idx, pos)
    b = mg.masked_gather_eager(x, idx, pos)
    torch.testing.assert_close(a, b)
    g = torch.randn_like(a)
    torch.testing.assert_close(torch.autograd.grad(a, x, g)[0], torch.autograd.grad(b, x, g)[0])


def test_pos_is_cast_to_x_dtype_like_the_reference():
    x = torch.randn(2, 6, 10).to(torch.bfloat16)
    pos = torch.randn(6, 10)  # fp32 table, bf16 activations (autocast)
    idx = _ids(2, 6, 3, 7)
    a = mg.masked_gather_triton(x, idx, pos)
    b = mg.masked_gather_eager(x, idx, pos)
    assert a.dtype == b.dtype == torch.bfloat16
    ref = _reference(x, idx, pos.to(torch.bfloat16))  # AMD: x + pos_embed.type_as(x)
    torch.testing.assert_close(b, ref, rtol=0, atol=0)
    # The Triton interpreter rounds fp32 -> bf16 by truncation (compiled Triton rounds to nearest): ~2 ulp slack.
    torch.testing.assert_close(a.float(), ref.float(), rtol=2e-2, atol=2e-2)
