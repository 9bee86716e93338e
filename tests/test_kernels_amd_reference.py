"""bench/amd_reference.py (AMD-style eager, for the bench) computes the same numbers as our ops."""
import torch

from amd_fast import ops
from bench import amd_reference as ref


def _bool(idx, n):
    return torch.zeros(idx.shape[0], n, dtype=torch.bool).scatter_(1, idx, True)


def test_reference_style_matches_ops():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, generator=g)
    pos = torch.randn(1, 8, 5, generator=g)
    vis = torch.tensor([[0, 3, 7], [1, 2, 6]])
    torch.testing.assert_close(ref.masked_gather(x, ~_bool(vis, 8), pos), ops.masked_gather(x, vis, pos, impl="eager"))

    s = [torch.randn(2, 3, 5, generator=g), torch.randn(2, 4, 5, generator=g)]
    t = [torch.randn(2, 3, 5, generator=g), torch.randn(2, 4, 5, generator=g)]
    for kind in ("l2", "l1", "smooth_l1"):
        torch.testing.assert_close(ref.align_loss(s, t, kind), ops.align_loss(s, t, kind, impl="eager"))

    video = torch.randn(2, 3, 4, 4, 6, generator=g)
    mask_idx = torch.tensor([[0, 3, 5], [1, 2, 4]])
    pred = torch.randn(2, 3, 2 * 2 * 2 * 3, generator=g)
    for norm in (True, False):
        kw = dict(tubelet=2, patch=2, normalize_target=norm)
        torch.testing.assert_close(ref.norm_pixel_loss(video, _bool(mask_idx, 12), pred, **kw),
                                   ops.norm_pixel_loss(video, mask_idx, pred, impl="eager", **kw))
