"""amd_fast.ops: one dispatch point (explicit impl > automatic; the config's choice, overridable by AMD_FAST_OPS)."""
import logging

import pytest
import torch

from amd_fast import ops
from tests.devices import HAS_CUDA, KERNEL_DEVICE


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("AMD_FAST_OPS", raising=False)
    ops._logged.clear()


def test_precedence_and_automatic_choice(monkeypatch):
    cpu = torch.device("cpu")
    assert ops.resolve_impl("x", cpu) == "eager"
    assert ops.resolve_impl("x", torch.device("cuda")) == "triton"
    assert ops.resolve_impl("x", cpu, impl="triton") == "triton"  # interpreter is on under the test suite
    assert ops.configured_impl("auto") is None and ops.configured_impl("triton") == "triton"
    monkeypatch.setenv("AMD_FAST_OPS", "eager")
    assert ops.configured_impl("triton") == "eager"  # env beats config
    assert ops.resolve_impl("x", cpu, impl="triton") == "triton"  # an explicit impl in code beats env


def test_no_process_wide_switch():
    """The ops choice travels with the objects that use it: two models in one process can differ."""
    from amd_fast.models import build_student
    from tests.model_fixtures import tiny_model_config

    a, b = build_student(tiny_model_config(), "triton"), build_student(tiny_model_config(), "eager")
    assert (a.ops_impl, b.ops_impl) == ("triton", "eager")
    assert not hasattr(ops, "set_default_impl")


def test_unknown_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="unknown ops impl"):
        ops.configured_impl("cuda")
    with pytest.raises(ValueError, match="unknown ops impl"):
        ops.resolve_impl("x", torch.device("cpu"), impl="fast")
    monkeypatch.setenv("AMD_FAST_OPS", "tritonn")
    with pytest.raises(ValueError, match="AMD_FAST_OPS"):
        ops.configured_impl("auto")


def test_triton_on_cpu_without_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setattr(ops, "triton_interpreted", lambda: False)  # as if TRITON_INTERPRET was unset at import
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ops.masked_gather(torch.randn(1, 3, 2), torch.tensor([[0]]), impl="triton")


def test_interpreter_detected_under_tests():
    assert ops.triton_interpreted() == (not HAS_CUDA)  # conftest: interpreted on CPU, compiled on a GPU


def test_choice_logged_once(caplog):
    x, idx = torch.randn(1, 4, 3), torch.tensor([[1, 2]])
    with caplog.at_level(logging.INFO, logger="amd_fast.ops"):
        ops.masked_gather(x, idx)
        ops.masked_gather(x, idx)
    msgs = [r.message for r in caplog.records if "masked_gather" in r.message]
    assert len(msgs) == 1 and "eager" in msgs[0]


def test_public_ops_agree_across_impls():
    g = torch.Generator().manual_seed(0)
    dev = KERNEL_DEVICE  # Triton: compiled on CUDA, interpreted on CPU
    x = torch.randn(2, 8, 5, generator=g).to(dev)
    pos = torch.randn(1, 8, 5, generator=g).to(dev)
    idx = torch.tensor([[0, 3, 7], [1, 2, 6]], device=dev)
    torch.testing.assert_close(ops.masked_gather(x, idx, pos, impl="triton"), ops.masked_gather(x, idx, pos, impl="eager"))

    s = [torch.randn(2, 3, 5, generator=g).to(dev), torch.randn(2, 4, 6, generator=g).to(dev)]
    t = [torch.randn(2, 3, 5, generator=g).to(dev), torch.randn(2, 4, 6, generator=g).to(dev)]
    for kind in ("l2", "l1", "smooth_l1"):
        torch.testing.assert_close(ops.align_loss(s, t, kind, impl="triton"), ops.align_loss(s, t, kind, impl="eager"))

    video = torch.randn(2, 3, 2, 4, 4, generator=g).to(dev)
    mask_idx = torch.tensor([[0, 3], [1, 2]], device=dev)
    pred = torch.randn(2, 2, 2 * 2 * 2 * 3, generator=g).to(dev)
    for norm in (True, False):
        kw = dict(tubelet=2, patch=2, normalize_target=norm)
        torch.testing.assert_close(ops.norm_pixel_loss(video, mask_idx, pred, impl="triton", **kw),
                                   ops.norm_pixel_loss(video, mask_idx, pred, impl="eager", **kw))


def test_hot_path_code_has_no_host_sync():
    """No .item()/nonzero/masked_select in the functions the ops call (CUDA sync-debug mode checks the
    real thing in the gpu test below; on CPU we read the code)."""
    import inspect

    from amd_fast.kernels import align_loss, masked_gather, norm_pixel_loss

    fns = [masked_gather.masked_gather_eager, masked_gather.masked_gather_triton, masked_gather.MaskedGatherFunction,
           align_loss.align_loss_eager, align_loss.align_loss_triton, align_loss.AlignLossFunction,
           norm_pixel_loss.norm_pixel_loss_eager, norm_pixel_loss.masked_patches,
           norm_pixel_loss.NormPixelLossFunction]
    for fn in fns:
        src = inspect.getsource(fn)
        for bad in (".item(", "nonzero", "masked_select", ".tolist("):
            assert bad not in src, (fn.__name__, bad)


@pytest.mark.gpu
def test_cuda_ops_do_not_sync():
    torch.cuda.set_sync_debug_mode("error")
    try:
        x = torch.randn(2, 16, 8, device="cuda", requires_grad=True)
        idx = torch.tensor([[0, 5], [3, 9]], device="cuda")
        s = [torch.randn(2, 3, 8, device="cuda", requires_grad=True)]
        t = [torch.randn(2, 3, 8, device="cuda")]
        video = torch.randn(2, 3, 2, 4, 4, device="cuda")
        pred = torch.randn(2, 2, 24, device="cuda", requires_grad=True)
        with pytest.raises(RuntimeError, match="synchroniz"):  # the detector is armed: a host read trips it
            x.sum().item()
        for impl in ("eager", "triton"):
            x.grad = pred.grad = s[0].grad = None
            ops.masked_gather(x, idx, impl=impl).sum().backward()
            ops.align_loss(s, t, impl=impl).backward()
            ops.norm_pixel_loss(video, idx[:, :2] % 4, pred, tubelet=2, patch=2, impl=impl).backward()
            # no sync error above, and every op actually ran its backward
            assert x.grad is not None and s[0].grad is not None and pred.grad is not None, impl
    finally:
        torch.cuda.set_sync_debug_mode(0)
