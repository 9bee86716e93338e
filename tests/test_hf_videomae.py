"""Hugging Face interop: transformers VideoMAE folders read as teachers / initialisations, our models exported to
them. Every folder is made here with transformers' own save_pretrained (no network); equality is fp32 on CPU."""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from amd_fast.errors import InputError, run_cli  # noqa: E402
from amd_fast.export import to_transformers  # noqa: E402
from amd_fast.export.__main__ import main as export_main  # noqa: E402
from amd_fast.masking import Masks  # noqa: E402
from amd_fast.models import AMDStudent, ModelConfig, build_teacher, get_arch, load_pretrained  # noqa: E402
from amd_fast.models.classifier import ClassifierConfig, VideoClassifier, build_classifier  # noqa: E402
from amd_fast.models.pretrained import (CheckpointImportError, export_encoder,  # noqa: E402
                                        export_encoder_safetensors)
from amd_fast.models.vit import ViTEncoder  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# (arch, clip side, frames, patch): tiny random nets and ViT-S at a small input size
SHAPES = [("vit_tiny_cpu", 32, 4, 8), ("vit_small", 32, 4, 16)]


def _jitter(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Move every weight off its init (unit norms, zero biases), so a wrongly mapped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model


def _hf_config(arch: str, side: int, frames: int, patch: int, **kw):
    a = get_arch(arch)
    return transformers.VideoMAEConfig(image_size=side, patch_size=patch, num_frames=frames, tubelet_size=2,
                                       hidden_size=a.dim, num_hidden_layers=a.depth, num_attention_heads=a.heads,
                                       intermediate_size=int(a.dim * a.mlp_ratio), **kw)


def _hf_folder(path: Path, cls, config, seed: int = 0):
    torch.manual_seed(seed)
    model = _jitter(cls(config).eval(), seed)
    model.save_pretrained(str(path))
    return model


def _clip(side: int, frames: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, frames, side, side, generator=torch.Generator().manual_seed(seed))


def _hf_input(clip: torch.Tensor) -> torch.Tensor:
    return clip.permute(0, 2, 1, 3, 4)  # transformers: (B, T, C, H, W); ours: (B, C, T, H, W)


def _features(encoder: ViTEncoder, clip: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.forward_tokens(encoder.patch_embed(clip) + encoder.pos_embed)[0]


def _encoder(arch, side, frames, patch, final_norm=True) -> ViTEncoder:
    return ViTEncoder(get_arch(arch), input_size=side, patch_size=patch, num_frames=frames, tubelet_size=2,
                      final_norm=final_norm).eval()


# ---- the kernels/ collision ------------------------------------------------------------------------------------

def test_transformers_imports_from_the_repository_root():
    code = ("import kernels, amd_fast.kernels.masked_gather as m\n"
            "from transformers import VideoMAEModel\n"
            "print(kernels.__file__); print(m.__file__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    hf_kernels, ours = r.stdout.split()
    assert not Path(hf_kernels).resolve().is_relative_to(REPO / "kernels")  # Hugging Face's package, not our folder
    assert Path(ours).resolve() == REPO / "kernels" / "masked_gather.py"


def test_editable_install_imports_amd_fast_kernels(tmp_path):
    """A fresh `pip install -e` (setuptools' editable finder) of a checkout whose kernels/ has no __init__.py."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("amd_fast", "kernels", "setup.py"):
        (subprocess.run(["cp", "-r", str(REPO / name), str(src)], check=True))
    assert not (src / "kernels" / "__init__.py").exists()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    base = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "setuptools").is_dir())
    (site / "base.pth").write_text(base + "\n")  # this interpreter's packages (setuptools, torch, triton)
    py = str(venv / "bin" / "python")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "-e", str(src), "--no-deps", "--no-build-isolation"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run([py, "-c", "import amd_fast.kernels.align_loss as m; print(m.__file__)"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert Path(r.stdout.strip()) == src / "kernels" / "align_loss.py"


# ---- transformers -> ours --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,side,frames,patch", SHAPES)
def test_transformers_encoder_gives_our_encoder_the_same_features(tmp_path, arch, side, frames, patch):
    hf = _hf_folder(tmp_path / "hf", transformers.VideoMAEModel,
                    _hf_config(arch, side, frames, patch, use_mean_pooling=False))
    ours = _encoder(arch, side, frames, patch)
    report = load_pretrained(ours, tmp_path / "hf")
    assert not report.missing and not report.unexpected and not report.skipped
    clip = _clip(side, frames)
    with torch.no_grad():
        theirs = hf(pixel_values=_hf_input(clip)).last_hidden_state
    torch.testing.assert_close(_features(ours, clip), theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("teacher,side,frames,patch", [("vit_mini_cpu", 32, 4, 8), ("vit_small", 32, 4, 16)])
def test_transformers_pretraining_folder_as_the_amd_teacher(tmp_path, teacher, side, frames, patch):
    """A VideoMAEForPreTraining folder (decoder included) as model.teacher_checkpoint: the teacher's targets are
    transformers' hidden states at the same tokens; the decoder is reported, not loaded."""
    hf = _hf_folder(tmp_path / "hf", transformers.VideoMAEForPreTraining,
                    _hf_config(teacher, side, frames, patch, use_mean_pooling=False))
    depth = get_arch(teacher).depth
    cfg = ModelConfig(student="vit_tiny_cpu", teacher=teacher, input_size=side, patch_size=patch, num_frames=frames,
                      tubelet_size=2, student_align_layers=[2, 4], teacher_align_layers=[2, depth - 1],
                      teacher_checkpoint=str(tmp_path / "hf"))
    model = build_teacher(cfg, "eager")
    n = cfg.num_tokens
    vis, diff = torch.tensor([[0, 3, 5, 6]] * 2), torch.tensor([[1, 7]] * 2)
    out = model(_clip(side, frames), Masks(vis, diff, None))
    keep = torch.zeros(2, n, dtype=torch.bool)
    keep[:, [0, 1, 3, 5, 6, 7]] = True  # transformers keeps the visible tokens in ascending order
    with torch.no_grad():
        states = hf.videomae(pixel_values=_hf_input(_clip(side, frames)), bool_masked_pos=~keep,
                             output_hidden_states=True).hidden_states
    # Same math, other token order ([vis; diff] here, ascending there), so other summation orders: raw block
    # outputs (no final norm) reach ~20 at ViT-S depth, so the bound is fp32 rounding relative to that scale.
    for layer, direct, generated in zip(cfg.teacher_align_layers, out.direct, out.generated):
        ref = states[layer]  # hidden_states[0] is the embedding output
        atol = 2e-6 * float(ref.abs().max())
        torch.testing.assert_close(direct, ref[:, [0, 2, 3, 4]], atol=atol, rtol=0)
        torch.testing.assert_close(generated, ref[:, [1, 5]], atol=atol, rtol=0)


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_transformers_classifier_gives_our_classifier_the_same_logits(tmp_path, weights):
    hf = _hf_folder(tmp_path / "hf", transformers.VideoMAEForVideoClassification,
                    _hf_config("vit_tiny_cpu", 32, 4, 8, use_mean_pooling=True, num_labels=5))
    if weights == "bin":  # the older layout: read by our weights-only loader
        torch.save(hf.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
        (tmp_path / "hf" / "model.safetensors").unlink()
    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=5, pretrained=str(tmp_path / "hf"), input_size=32,
                           patch_size=8, num_frames=4, drop_path=0.0)
    ours = build_classifier(cfg).eval()
    clip = _clip(32, 4)
    with torch.no_grad():
        torch.testing.assert_close(ours(clip), hf(pixel_values=_hf_input(clip)).logits, atol=1e-5, rtol=0)


def test_an_architecture_mismatch_names_both_values(tmp_path, capsys):
    _hf_folder(tmp_path / "hf", transformers.VideoMAEModel, _hf_config("vit_mini_cpu", 32, 4, 8))
    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=5, pretrained=str(tmp_path / "hf"), input_size=32,
                           patch_size=8, num_frames=4)
    capsys.readouterr()  # (save_pretrained's progress bar)
    assert run_cli(lambda: build_classifier(cfg), "amd_fast.finetune") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "hidden_size=128" in err and "model.arch=vit_tiny_cpu (width 96)" in err
    cfg = dataclasses.replace(cfg, pretrained=None, input_size=64)
    _hf_folder(tmp_path / "hf2", transformers.VideoMAEModel, _hf_config("vit_tiny_cpu", 32, 4, 8))
    with pytest.raises(CheckpointImportError, match=r"image_size=32 .*data.input_size=64"):
        load_pretrained(VideoClassifier(cfg), tmp_path / "hf2")


# ---- ours -> transformers --------------------------------------------------------------------------------------

def _fake_run(tmp_path: Path, name: str, state_key: str, model, model_cfg, **extra) -> Path:
    """A run folder as training leaves it: <run>/checkpoints/step-*.pt with the run's config, <run>/config.yaml."""
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    config = {"model": dataclasses.asdict(model_cfg), "log": {"dir": str(run)},
              "data": {"shards": "shards/k400", "split": "train", "num_frames": model_cfg.num_frames,
                       "input_size": model_cfg.input_size}, "eval": {"split": "val"}, **extra}
    (run / "config.yaml").write_text(json.dumps(config))
    path = run / "checkpoints" / "step-000000007.pt"
    torch.save({"format": "amd_fast.train/1", "step": 7, "epoch": 1, "optimizer": {}, state_key: model.state_dict(),
                "config": config}, path)
    return path


def test_exported_student_loads_in_transformers_with_our_features(tmp_path):
    """`python -m amd_fast.export --format hf` of a pretraining checkpoint, loaded by transformers."""
    cfg = ModelConfig(student="vit_small", teacher="vit_mini_cpu", input_size=32, patch_size=16, num_frames=4,
                      tubelet_size=2, student_align_layers=[2, 4], teacher_align_layers=[2, 4])
    torch.manual_seed(0)
    student = _jitter(AMDStudent(cfg), 3).eval()
    ckpt = _fake_run(tmp_path, "amd", "student", student, cfg)
    assert export_main(["--format", "hf", "--out", str(tmp_path / "hf"), str(ckpt)]) == 0
    hf = transformers.VideoMAEModel.from_pretrained(str(tmp_path / "hf")).eval()
    clip = _clip(32, 4)
    with torch.no_grad():
        theirs = hf(pixel_values=_hf_input(clip)).last_hidden_state
    torch.testing.assert_close(theirs, _features(student.encoder, clip), atol=1e-5, rtol=0)
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["VideoMAEModel"] and config["use_mean_pooling"] is False
    assert config["layer_norm_eps"] == 1e-6
    assert "vit_mini_cpu" in (tmp_path / "hf" / "README.md").read_text()


def test_exported_classifier_has_our_logits_labels_and_top1(tmp_path):
    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=3, input_size=32, patch_size=8, num_frames=4,
                           drop_path=0.0)
    torch.manual_seed(0)
    model = _jitter(VideoClassifier(cfg), 4).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)  # logits of order 1, so 1e-5 means something
    ckpt = _fake_run(tmp_path, "ft", "model", model, cfg)
    (ckpt.parent.parent / "eval").mkdir()
    (ckpt.parent.parent / "eval" / "test.json").write_text(json.dumps(
        {"top1": 0.8125, "top5": 1.0, "top1_single_view": 0.75, "videos": 16, "views": 6,
         "classes": ["jump", "run", "swim"], "settings": {"split": "val", "segments": 2, "crops": 3}}))
    assert export_main(["--out", str(tmp_path / "hf"), str(ckpt)]) == 0
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(str(tmp_path / "hf")).eval()
    clip = _clip(32, 4)
    with torch.no_grad():
        theirs, ours = hf(pixel_values=_hf_input(clip)), model(clip)
        torch.testing.assert_close(hf.videomae(pixel_values=_hf_input(clip)).last_hidden_state,
                                   _features(model.encoder, clip), atol=1e-5, rtol=0)  # the encoder: exact
        # transformers fixes fc_norm's eps at 1e-5 (ours: 1e-6, the reference's); with that one eps ours is theirs
        model.fc_norm.eps = 1e-5
        torch.testing.assert_close(theirs.logits, model(clip), atol=1e-5, rtol=0)
    # and as trained (eps 1e-6): logits of order 1 differ in the 5th digit, never in their ranking
    torch.testing.assert_close(theirs.logits, ours, atol=2e-4, rtol=0)
    assert torch.equal(theirs.logits.argmax(-1), ours.argmax(-1))
    assert hf.config.id2label == {0: "jump", 1: "run", 2: "swim"}
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "81.25%" in card and "video-classification" in card and "fixed eps 1e-5" in card


def test_a_classifier_fine_tuned_with_transformers_eps_exports_its_logits_exactly(tmp_path, caplog):
    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=3, input_size=32, patch_size=8, num_frames=4,
                           drop_path=0.0, fc_norm_eps=1e-5)
    torch.manual_seed(1)
    model = _jitter(VideoClassifier(cfg), 4).eval()
    with torch.no_grad():
        model.head.weight.normal_(0, 0.5)
    ckpt = _fake_run(tmp_path, "ft", "model", model, cfg)
    with caplog.at_level("WARNING"):
        assert export_main(["--out", str(tmp_path / "hf"), str(ckpt)]) == 0
    assert not [r for r in caplog.records if "fc_norm eps" in r.getMessage()]
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(str(tmp_path / "hf")).eval()
    clip = _clip(32, 4)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=_hf_input(clip)).logits, model(clip), atol=1e-5, rtol=0)
    assert "fixed eps" not in (tmp_path / "hf" / "README.md").read_text()
    with pytest.raises(ValueError, match="fc_norm_eps"):
        ClassifierConfig(arch="vit_tiny_cpu", num_classes=3, fc_norm_eps=0)


@pytest.mark.parametrize("arch,side,frames,patch", SHAPES)
def test_round_trip_transformers_ours_transformers_is_bit_exact(tmp_path, arch, side, frames, patch):
    hf = _hf_folder(tmp_path / "a", transformers.VideoMAEModel, _hf_config(arch, side, frames, patch,
                                                                           use_mean_pooling=False))
    ours = _encoder(arch, side, frames, patch)
    load_pretrained(ours, tmp_path / "a")
    to_transformers(ours, tmp_path / "b")
    back = transformers.VideoMAEModel.from_pretrained(str(tmp_path / "b")).state_dict()
    original = hf.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["layer_norm_eps"] == 1e-12  # the folder's, kept


def test_encoder_safetensors_loads_like_encoder_pth_and_exports_without_flags(tmp_path):
    cfg = ModelConfig(student="vit_tiny_cpu", teacher=None, input_size=32, patch_size=8, num_frames=4, tubelet_size=2)
    student = _jitter(AMDStudent(cfg), 5)
    export_encoder(student, tmp_path / "encoder.pth")
    assert export_encoder_safetensors(student, tmp_path / "encoder.safetensors") is not None
    a, b = _encoder("vit_tiny_cpu", 32, 4, 8), _encoder("vit_tiny_cpu", 32, 4, 8)
    load_pretrained(a, tmp_path / "encoder.pth")
    load_pretrained(b, tmp_path / "encoder.safetensors")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # the clip shape comes from the file's metadata (no config.yaml beside it)
    assert export_main(["--out", str(tmp_path / "hf"), str(tmp_path / "encoder.safetensors")]) == 0
    hf = transformers.VideoMAEModel.from_pretrained(str(tmp_path / "hf")).eval()
    clip = _clip(32, 4)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=_hf_input(clip)).last_hidden_state, _features(a, clip),
                                   atol=1e-5, rtol=0)


def test_without_transformers_the_export_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['transformers'] = None\n"
            "from amd_fast.export.__main__ import main; sys.exit(main(['--out', sys.argv[1], sys.argv[2]]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf"), str(tmp_path / "missing.pt")],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith("pip install amd_fast[hf]")


def test_a_tokens_pooling_classifier_is_refused_with_the_way_out(tmp_path):
    cfg = ClassifierConfig(arch="vit_tiny_cpu", num_classes=3, input_size=32, patch_size=8, num_frames=4, pool="tokens")
    with pytest.raises(InputError, match="--encoder-only"):
        to_transformers(VideoClassifier(cfg), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
