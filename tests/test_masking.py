"""Masks: counts as the reference, sorted, disjoint, nested, tube-consistent, reproducible."""
import pytest
import torch

from amd_fast.masking import MaskConfig, generate_masks, mask_counts

GRID = (8, 14, 14)


def _as_bool(idx, n):
    out = torch.zeros(idx.shape[0], n, dtype=torch.bool)
    out.scatter_(1, idx, True)
    return out


@pytest.mark.parametrize("kind", ["t_consist", "random"])
def test_masks_sorted_disjoint_nested_and_cover(kind):
    cfg = MaskConfig(type=kind)
    n = GRID[0] * GRID[1] * GRID[2]
    vis, diff, masked = generate_masks(cfg, 5, GRID, generator=torch.Generator().manual_seed(0))
    for ids in (vis, diff, masked):
        assert ids.dtype == torch.int64
        assert (ids[:, 1:] > ids[:, :-1]).all(), "ids must be strictly ascending"
    v, d, m = _as_bool(vis, n), _as_bool(diff, n), _as_bool(masked, n)
    assert not (v & m).any() and (v | m).all(), "mask_idx must be the complement of vis_idx"
    assert not (v & d).any() and (d & ~m).sum() == 0, "diff tokens are student-masked"
    assert vis.shape[1] + masked.shape[1] == n


def test_counts_match_reference_rule():
    # reference: per frame int(0.9*196)=176 masked for the student, int(0.75*196)=147 for the teacher
    assert mask_counts(MaskConfig(), GRID) == (20 * 8, 29 * 8, 176 * 8)
    vis, diff, masked = generate_masks(MaskConfig(), 2, GRID)
    assert (vis.shape[1], diff.shape[1], masked.shape[1]) == (160, 232, 1408)
    n = 1568  # random: the same rule over all tokens
    assert mask_counts(MaskConfig(type="random"), GRID) == (n - int(0.9 * n), int(0.9 * n) - int(0.75 * n), int(0.9 * n))


def test_t_consist_repeats_one_spatial_pattern_over_time():
    hw = GRID[1] * GRID[2]
    for ids in generate_masks(MaskConfig(), 3, GRID, generator=torch.Generator().manual_seed(1)):
        per_t = ids.view(ids.shape[0], GRID[0], -1)
        pos = per_t - torch.arange(GRID[0]).view(1, -1, 1) * hw
        assert (pos == pos[:, :1]).all()
        assert ((pos >= 0) & (pos < hw)).all()


def test_samples_differ_and_generator_reproduces():
    a = generate_masks(MaskConfig(), 4, GRID, generator=torch.Generator().manual_seed(7))
    b = generate_masks(MaskConfig(), 4, GRID, generator=torch.Generator().manual_seed(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.vis_idx[0], a.vis_idx[1])


def test_equal_ratios_give_empty_diff_and_bad_ratios_raise():
    vis, diff, masked = generate_masks(MaskConfig(student_ratio=0.75, teacher_ratio=0.75), 2, (2, 4, 4))
    assert diff.shape == (2, 0) and vis.shape == (2, 8)
    with pytest.raises(ValueError, match="teacher_ratio <= student_ratio"):
        MaskConfig(student_ratio=0.5, teacher_ratio=0.75)
    with pytest.raises(ValueError, match="t_consist"):
        MaskConfig(type="tube")
