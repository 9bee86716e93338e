"""Config: YAML + dotted overrides, type coercion, and start-up validation messages."""
from pathlib import Path

import pytest

from amd_fast.config import Config, ConfigError, build_config, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_yaml_then_overrides_with_type_coercion(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  batch_size: 3\noptim:\n  lr: 1e-3\n")  # YAML 1.1 reads 1e-3 as a string
    cfg = load_config(path, ["data.batch_size=5", "optim.betas=[0.8, 0.99]", "model.teacher=null",
                             "train.max_steps=7", "optim.clip_grad=null", "data.flip=true", "optim.min_lr=0"])
    assert cfg.data.batch_size == 5
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == [0.8, 0.99]
    assert cfg.model.teacher is None and cfg.optim.clip_grad is None
    assert cfg.train.max_steps == 7 and cfg.data.flip is True
    assert isinstance(cfg.optim.min_lr, float)  # int 0 widened to float


def test_unknown_key_lists_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as e:
        build_config({}, ["data.batch_sise=4"])
    msg = str(e.value)
    assert "data.batch_sise" in msg and "did you mean data.batch_size" in msg
    assert "num_sample" in msg and "sampling_rate" in msg  # lists the section's valid keys
    with pytest.raises(ConfigError, match="valid keys: data, model, loss, mask, optim, train, checkpoint, log"):
        build_config({"trian": {"epochs": 3}})
    with pytest.raises(ConfigError, match="did you mean optim.weight_decay"):
        build_config({"optim": {"weight_decai": 0.1}})


def test_wrong_type_names_key_got_and_expected():
    with pytest.raises(ConfigError, match=r"train\.epochs: got 1\.5 \(float\), expected int"):
        build_config({}, ["train.epochs=1.5"])
    with pytest.raises(ConfigError, match=r"optim\.lr: got 'fast' \(str\), expected float"):
        build_config({}, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match=r"data\.flip: got 'maybe' \(str\), expected bool"):
        build_config({}, ["data.flip=maybe"])
    with pytest.raises(ConfigError, match="section.key"):
        build_config({}, ["batch_size=4"])


def test_section_validation_and_cross_checks():
    with pytest.raises(ConfigError, match="model.num_frames=16 contradicts data.num_frames=8: set it once"):
        build_config({}, ["data.num_frames=8", "model.num_frames=16"])
    with pytest.raises(ConfigError, match="train.amp"):
        build_config({}, ["train.amp=fp16"])
    with pytest.raises(ConfigError, match="unknown ViT arch"):
        build_config({}, ["model.student=vit_gigantic"])


@pytest.mark.parametrize("override, message", [
    ("optim.clip_grad=0", r"optim.clip_grad=0.0 must be > 0, or null"),
    ("optim.betas=[0.9]", r"optim.betas=\[0.9\] must be two numbers"),
    ("optim.lr=-1", r"lr=-1.0.*must be positive"),
    ("train.max_steps=0", r"train.max_steps=0 must be >= 1 or null"),
    ("train.device=tpu", r"train.device='tpu' is not one of auto, cpu, cuda"),
    ("train.ops_impl=cuda", r"train.ops_impl='cuda' is not one of auto, triton, eager"),
    ("checkpoint.keep_last=0", r"checkpoint.keep_last=0 must be >= 1"),
    ("checkpoint.every_n_steps=0", r"checkpoint.every_n_steps=0 must be >= 1"),
    ("train.epochs=[1]", r"train.epochs: got \[1\] \(list\), expected int"),
    ("log.tensorboard=1", r"log.tensorboard: got 1 \(int\), expected bool"),
    ("data=4", r"must be section.key"),
])
def test_each_bad_value_names_the_key_and_the_fix(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, [override])


def test_bad_yaml_files_are_config_errors(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist; see configs/"):
        load_config(missing)
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- data\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    bad.write_text("data: 4\n")
    with pytest.raises(ConfigError, match="section 'data' must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load_and_roundtrip(name, tmp_path):
    from amd_fast.finetune.config import load_finetune_config

    load = load_finetune_config if name.startswith("finetune-") else load_config  # the two commands' schemas
    cfg = load(CONFIGS / name)
    again = tmp_path / "again.yaml"
    again.write_text(cfg.to_yaml())
    assert load(again) == cfg


def test_amd_configs_match_the_reference_scripts():
    s = load_config(CONFIGS / "amd-vits-ssv2.yaml")
    k = load_config(CONFIGS / "amd-vitb-k400.yaml")
    assert (s.model.student, k.model.student, s.model.teacher) == ("vit_small", "vit_base", "vit_large")
    assert s.model.student_align_layers == [6, 12] and s.model.teacher_align_layers == [12, 24]
    assert (s.data.batch_size, s.data.num_sample, s.data.sampling_rate, s.data.flip) == (16, 4, 2, False)
    assert k.data.sampling_rate == 4 and s.optim.lr == 1.2e-3 and s.optim.scale_lr
    assert (s.optim.warmup_epochs, s.optim.clip_grad, s.train.epochs) == (10, 0.02, 200)
    assert (s.mask.student_ratio, s.mask.teacher_ratio) == (0.9, 0.75)
    assert load_config(CONFIGS / "videomae-teacher-vitb-k400.yaml").model.teacher is None


def test_cli_print_config_and_bad_key_exit_code(capsys):
    from amd_fast.train import main

    assert main(["--config", str(CONFIGS / "tiny-cpu.yaml"), "--print-config", "data.batch_size=2"]) == 0
    assert "batch_size: 2" in capsys.readouterr().out
    assert main(["--config", str(CONFIGS / "tiny-cpu.yaml"), "optim.lrr=1"]) == 2
    assert "did you mean optim.lr" in capsys.readouterr().err


def test_defaults_are_a_valid_config():
    assert isinstance(build_config(), Config)


def test_each_fact_is_set_once_and_derived_keys_follow():
    cfg = build_config({"data": {"num_frames": 8, "input_size": 64}, "train": {"seed": 7, "device": "cpu"}})
    assert (cfg.model.num_frames, cfg.model.input_size) == (8, 64)  # the model follows the clip contract
    assert (cfg.data.seed, cfg.data.device) == (7, "cpu")  # the loader follows the run's seed and device
    # writing a derived key is allowed when it agrees, an error naming both keys when it contradicts
    assert build_config({}, ["data.input_size=64", "model.input_size=64"]).model.input_size == 64
    with pytest.raises(ConfigError, match=r"data.seed=3 contradicts train.seed=0"):
        build_config({}, ["data.seed=3"])
    with pytest.raises(ConfigError, match=r"data.device='cuda' contradicts train.device='cpu'"):
        build_config({}, ["train.device=cpu", "data.device=cuda"])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", ".nan"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match=r"optim.lr=.*must be a finite number"):
        build_config({}, [f"optim.lr={value}"])


@pytest.mark.parametrize("student, teacher, bad", [("[4,2]", "[2,3]", "student"), ("[2,4]", "[3,3]", "teacher"),
                                                   ("[6,6]", "[12,24]", "student")])
def test_align_layer_lists_must_be_strictly_increasing(student, teacher, bad):
    with pytest.raises(ConfigError, match=rf"model.{bad}_align_layers=.* must be strictly increasing"):
        build_config({}, [f"model.student_align_layers={student}", f"model.teacher_align_layers={teacher}"])
