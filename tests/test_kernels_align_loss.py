"""align_loss: Triton (one launch, interpreted on CPU) and eager vs an independent per-layer formula."""
import pytest
import torch

from amd_fast.kernels import align_loss as al
from tests.devices import triton_on_cuda


@pytest.fixture(autouse=True)
def _compiled_on_cuda(monkeypatch):
    triton_on_cuda(monkeypatch, al, ["align_loss_triton"])


def _elementwise(d, kind):
    if kind == "l2":
        return d * d
    if kind == "l1":
        return d.abs()
    return torch.where(d.abs() < 1, 0.5 * d * d, d.abs() - 0.5)


def _reference(students, teachers, kind):
    """mean over layers of mean over elements of f(s - t), fp64, teacher detached."""
    per = [_elementwise(s.double() - t.detach().double(), kind).mean() for s, t in zip(students, teachers)]
    return sum(per) / len(per)


def _pairs(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(*sh, generator=g).to(dtype).requires_grad_(True) for sh in shapes]
    t = [(torch.randn(*sh, generator=g) * 1.5).to(dtype).requires_grad_(True) for sh in shapes]
    return s, t


SHAPES = [[(2, 3, 5)], [(2, 3, 5), (1, 1, 7), (3, 4, 33)], [(1, 2, 130), (2, 5, 6)]]


@pytest.mark.parametrize("impl", ["triton", "eager"])
@pytest.mark.parametrize("kind", ["l2", "l1", "smooth_l1"])
@pytest.mark.parametrize("shapes", SHAPES)
def test_fp32_forward_backward(impl, kind, shapes):
    fn = al.align_loss_triton if impl == "triton" else al.align_loss_eager
    s, t = _pairs(shapes)
    loss = fn(s, t, kind)
    ref = _reference(s, t, kind)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-5, atol=1e-6)
    got = torch.autograd.grad(loss * 3.0, s)
    want = torch.autograd.grad(ref * 3.0, s)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_teacher_gets_no_grad(impl):
    fn = al.align_loss_triton if impl == "triton" else al.align_loss_eager
    s, t = _pairs([(2, 3, 5)])
    fn(s, t, "l2").backward()
    assert s[0].grad is not None and t[0].grad is None


@pytest.mark.parametrize("impl", ["triton", "eager"])
def test_bf16_accumulates_in_fp32(impl):
    fn = al.align_loss_triton if impl == "triton" else al.align_loss_eager
    s, t = _pairs([(2, 16, 96), (1, 3, 40)], dtype=torch.bfloat16)
    loss = fn(s, t, "smooth_l1")
    assert loss.dtype == torch.float32
    ref = _reference(s, t, "smooth_l1")
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=1e-5)  # exact inputs, fp32 sum
    got = torch.autograd.grad(loss, s)
    want = torch.autograd.grad(ref, s)
    for a, b in zip(got, want):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-2, atol=1e-5)


def test_teacher_slices_are_not_copied_and_work():
    """Teacher targets are slices of one (B, K_vis + K_diff, D) output: strided views, one launch."""
    g = torch.Generator().manual_seed(1)
    full = torch.randn(2, 7, 6, generator=g)
    teachers = [full[:, :3], full[:, 3:]]
    s, _ = _pairs([(2, 3, 6), (2, 4, 6)], seed=2)
    loss = al.align_loss_triton(s, teachers, "l1")
    torch.testing.assert_close(loss.double(), _reference(s, teachers, "l1").detach(), rtol=1e-5, atol=1e-6)


def test_gradcheck_eager_float64():
    s, t = _pairs([(1, 2, 3), (2, 1, 4)], dtype=torch.float64)
    t = [x.detach() for x in t]
    assert torch.autograd.gradcheck(lambda a, b: al.align_loss_eager([a, b], t, "smooth_l1"), tuple(s))


def test_triton_float64_grad_matches_eager():
    """The kernel accumulates the loss in fp32 by design (too coarse for finite differences), so its
    analytic float64 gradient is checked against the gradchecked eager path instead."""
    s, t = _pairs([(1, 2, 3), (2, 1, 4)], dtype=torch.float64)
    got = torch.autograd.grad(al.align_loss_triton(s, t, "smooth_l1"), s)
    want = torch.autograd.grad(al.align_loss_eager(s, t, "smooth_l1"), s)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_bad_inputs_name_the_problem():
    s, t = _pairs([(2, 3, 5)])
    with pytest.raises(ValueError, match="kind"):
        al.align_loss_eager(s, t, "huber")
    with pytest.raises(ValueError, match="project the student"):
        al.align_loss_eager(s, [torch.randn(2, 3, 4)], "l2")


def test_bytes_model_favours_fused():
    assert al.bytes_moved(32, 160, 1024, 2) < al.reference_bytes_moved(32, 160, 1024, 2)


@pytest.mark.gpu
def test_compiled_matches_eager_cuda():
    s = [torch.randn(32, k, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True) for k in (160, 232)]
    t = [torch.randn_like(x) for x in s]
    a = al.align_loss_triton(s, t, "l2")
    b = al.align_loss_eager(s, t, "l2")
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    ga, gb = torch.autograd.grad(a, s), torch.autograd.grad(b, s)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=2e-2, atol=1e-6)


def test_one_launch_per_direction_for_all_pairs(monkeypatch):
    launches = []
    real = al._align_kernel

    class Counting:
        def __getitem__(self, grid):
            launches.append(grid)
            return real[grid]

    monkeypatch.setattr(al, "_align_kernel", Counting())
    s, t = _pairs([(2, 3, 5), (1, 4, 7), (2, 2, 9)])
    al.align_loss_triton(s, t, "l2").backward()
    assert launches == [(2 * 3 + 4 + 2 * 2,)] * 2  # one forward, one backward, one program per (b, k) row
