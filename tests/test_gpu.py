"""What only a GPU shows (all marked ``gpu``: skipped without CUDA, run by ``bench/gpu_check.sh``):
a whole AMD step with compiled Triton vs eager ops under bf16 autocast, fused AdamW, torch.compile,
a one-process NCCL DDP step, DALI 'mixed' (NVDEC) batches vs DALI's CPU decode of the same shard, the
kernels on the non-contiguous inputs the model really passes them, and their peak memory."""
import os
import socket

import pytest
import torch

from amd_fast.masking import MaskConfig, generate_masks
from amd_fast.models import AMDObjective, LossConfig, build_student, build_teacher
from tests.model_fixtures import tiny_model_config, tiny_video

pytestmark = pytest.mark.gpu


def _step(objective, student, video, seed=0):
    student.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, terms = objective(video, generator=torch.Generator("cuda").manual_seed(seed))
    loss.backward()
    return terms, {n: p.grad.float().clone() for n, p in student.named_parameters() if p.grad is not None}


def test_amd_step_with_triton_matches_eager_under_bf16_autocast():
    torch.manual_seed(0)
    cfg = tiny_model_config()
    student, teacher = build_student(cfg).cuda(), build_teacher(cfg).cuda()
    video = tiny_video(batch=4, cfg=cfg).cuda().contiguous(memory_format=torch.channels_last_3d)
    out = {}
    for impl in ("eager", "triton"):
        student.ops_impl = teacher.ops_impl = impl
        out[impl] = _step(AMDObjective(student, teacher, MaskConfig(), LossConfig(), ops_impl=impl), student, video)
    (te, ge), (tt, gt) = out["eager"], out["triton"]
    for k in te:
        torch.testing.assert_close(tt[k], te[k], rtol=2e-2, atol=2e-3)
    assert ge.keys() == gt.keys()
    for n in ge:
        torch.testing.assert_close(gt[n], ge[n], rtol=5e-2, atol=5e-3, msg=n)


def test_fused_adamw_matches_the_unfused_step():
    from amd_fast.config import OptimConfig
    from amd_fast.trainer.optim import build_optimizer

    torch.manual_seed(0)
    a = build_student(tiny_model_config()).cuda()
    b = build_student(tiny_model_config()).cuda()
    b.load_state_dict(a.state_dict())
    fused = build_optimizer(a, OptimConfig(), 1e-3, torch.device("cuda"))
    assert fused.defaults.get("fused")
    plain = torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]} for g in
                               build_optimizer(b, OptimConfig(), 1e-3, torch.device("cpu")).param_groups],
                              lr=1e-3, betas=(0.9, 0.95))
    for model, opt in ((a, fused), (b, plain)):
        for p in model.parameters():
            p.grad = torch.ones_like(p) * 0.01
        opt.step()
    for (n, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=n)


def test_compiled_training_runs_a_few_steps(synthetic_shards, tmp_path):
    from amd_fast.config import load_config
    from amd_fast.trainer.loop import run
    from tests.test_train import TINY, read_metrics, tiny_overrides

    cfg = load_config(TINY, tiny_overrides(synthetic_shards, tmp_path / "run", 3, "train.device=cuda",
                                           "train.compile=true", "train.amp=bf16", "train.ops_impl=auto"))
    result = run(cfg)
    assert result.step == 3 and not result.interrupted
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] for r in rows)  # finite


def test_finetune_augmentation_on_cuda_matches_cpu_draws():
    """RandAugment and mixup draw on the CPU generator and apply on the device: the same seed gives the same
    clips on CUDA as on CPU; random erasing draws its noise on the device (no clip-sized host copy)."""
    from amd_fast.finetune import augment

    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (4, 3, 4, 32, 32), dtype=torch.uint8, generator=g)
    ra = augment.RandAugment(augment.RandAugmentSpec.parse("rand-m7-n2-mstd0.5-inc1"))
    cpu = ra(video, torch.Generator().manual_seed(3))
    gpu = ra(video.cuda(), torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda" and (gpu.cpu().int() - cpu.int()).abs().max() <= 1  # rounding of interp.
    x = torch.randn(4, 3, 4, 32, 32, device="cuda")
    erased = augment.random_erase(x, 1.0, torch.Generator().manual_seed(1))
    again = augment.random_erase(x, 1.0, torch.Generator().manual_seed(1))
    assert erased.device.type == "cuda" and torch.equal(erased, again) and not torch.equal(erased, x)


def test_finetune_runs_on_cuda_with_bf16(synthetic_shards, tmp_path):
    from amd_fast.finetune.config import load_finetune_config
    from amd_fast.finetune.trainer import run
    from tests.test_finetune import TINY as FT_TINY, _overrides

    cfg = load_finetune_config(FT_TINY, _overrides(synthetic_shards, tmp_path / "ft", 3, "train.device=cuda",
                                                   "train.amp=bf16"))
    result = run(cfg)
    assert result.step == 3 and result.eval is not None and result.eval.videos > 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_ddp_step():
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
    try:
        torch.manual_seed(0)
        cfg = tiny_model_config()
        student = build_student(cfg, "triton").cuda()
        ddp = torch.nn.parallel.DistributedDataParallel(student, device_ids=[0], broadcast_buffers=False)
        objective = AMDObjective(ddp, build_teacher(cfg, "triton").cuda(), MaskConfig(), LossConfig(), cfg,
                                 ops_impl="triton")
        terms, grads = _step(objective, student, tiny_video(batch=2, cfg=cfg).cuda())
        assert torch.isfinite(terms["loss"]) and grads and all(torch.isfinite(g).all() for g in grads.values())
    finally:
        dist.destroy_process_group()


def test_dali_mixed_train_batches_match_cpu_decode_of_the_same_shard(synthetic_shards):
    from amd_fast.data import DataConfig, build_loader

    kw = dict(shards=synthetic_shards, backend="dali", batch_size=4, num_frames=8, sampling_rate=2, input_size=64,
              num_sample=2, dali_threads=2, seed=3)
    gpu = list(build_loader(DataConfig(device="cuda", **kw)))
    cpu = list(build_loader(DataConfig(device="cpu", **kw)))
    assert len(gpu) == len(cpu) > 0
    for a, b in zip(gpu, cpu):
        assert a["video"].is_cuda and a["video"].is_contiguous(memory_format=torch.channels_last_3d)
        assert torch.equal(a["label"].cpu(), b["label"])  # the same samples, the same crops
        assert (a["video"].cpu() - b["video"]).abs().mean() < 0.05  # NVDEC vs libavcodec colour rounding


def test_kernels_on_the_inputs_the_model_passes():
    """Strided / sliced / channels-last inputs as the student, teacher and objective produce them."""
    from amd_fast.kernels import align_loss as al
    from amd_fast.kernels import masked_gather as mg
    from amd_fast.kernels import norm_pixel_loss as npl

    torch.manual_seed(0)
    B, N, C = 4, 1568, 384
    masks = generate_masks(MaskConfig(), B, (8, 14, 14), device="cuda")
    pos = torch.randn(N, C, device="cuda")
    for x in (torch.randn(B, C, N, device="cuda", dtype=torch.bfloat16).transpose(1, 2),  # channels-first conv
              torch.randn(B, N, C, device="cuda", dtype=torch.bfloat16)):
        for idx in (masks.vis_idx, torch.cat([masks.vis_idx, masks.diff_idx], 1)):  # student / teacher ids
            torch.testing.assert_close(mg.masked_gather_triton(x, idx, pos), mg.masked_gather_eager(x, idx, pos))
    feats = torch.randn(B, 392, 1024, device="cuda", dtype=torch.bfloat16)  # a teacher block's output
    s = [torch.randn(B, 160, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)]
    t = [feats[:, :160]]  # a non-contiguous slice, as TeacherOutput hands it over
    torch.testing.assert_close(al.align_loss_triton(s, t, "l2"), al.align_loss_eager(s, t, "l2"), rtol=1e-3, atol=1e-4)
    video = torch.randn(B, 3, 16, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    pred = torch.randn(B, masks.mask_idx.shape[1], 1536, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(npl.norm_pixel_loss_triton(video, masks.mask_idx, pred),
                               npl.norm_pixel_loss_eager(video, masks.mask_idx, pred), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("op", ["masked_gather", "align_loss", "norm_pixel_loss"])
def test_each_triton_op_needs_no_more_memory_than_eager(op):
    from amd_fast import ops

    torch.manual_seed(0)
    B = 8
    masks = generate_masks(MaskConfig(), B, (8, 14, 14), device="cuda")
    if op == "masked_gather":
        x = torch.randn(B, 1568, 384, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        pos = torch.randn(1568, 384, device="cuda")
        fn = lambda impl: ops.masked_gather(x, masks.vis_idx, pos, impl=impl).float().square().mean()  # noqa: E731
    elif op == "align_loss":
        s = [torch.randn(B, 232, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2)]
        t = [torch.randn(B, 232, 1024, device="cuda", dtype=torch.bfloat16) for _ in range(2)]
        fn = lambda impl: ops.align_loss(s, t, impl=impl)  # noqa: E731
    else:
        video = torch.randn(B, 3, 16, 224, 224, device="cuda")
        pred = torch.randn(B, masks.mask_idx.shape[1], 1536, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        fn = lambda impl: ops.norm_pixel_loss(video, masks.mask_idx, pred, impl=impl)  # noqa: E731
    peaks = {}
    for impl in ("eager", "triton"):
        fn(impl).backward()  # warm up (allocator, compile)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn(impl).backward()
        torch.cuda.synchronize()
        peaks[impl] = torch.cuda.max_memory_allocated() - base
    assert peaks["triton"] <= peaks["eager"], peaks
