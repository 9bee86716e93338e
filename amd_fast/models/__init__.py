"""AMD / VideoMAE models: student, frozen teacher, objective, checkpoint import/export."""
from __future__ import annotations

import logging

from amd_fast import ops

from amd_fast.models.archs import ARCHS, ViTArch, get_arch
from amd_fast.models.pretrained import CheckpointImportError, LoadReport, export_encoder, load_pretrained
from amd_fast.models.config import LossConfig, ModelConfig
from amd_fast.models.objective import AMDObjective
from amd_fast.models.student import AMDStudent, StudentOutput
from amd_fast.models.teacher import AMDTeacher, TeacherOutput

log = logging.getLogger(__name__)

__all__ = [
    "ARCHS", "ViTArch", "get_arch", "ModelConfig", "LossConfig", "AMDStudent", "StudentOutput", "AMDTeacher",
    "TeacherOutput", "AMDObjective", "CheckpointImportError", "LoadReport", "load_pretrained", "export_encoder",
    "build_student", "build_teacher",
]


def build_student(cfg: ModelConfig, ops_impl: str | None = "auto") -> AMDStudent:
    """A freshly initialised student (plain VideoMAE when ``cfg.teacher`` is None).

    ``ops_impl``: the config's ``train.ops_impl`` ('auto' | 'triton' | 'eager'), resolved once by
    :func:`amd_fast.ops.configured_impl` (which lets ``AMD_FAST_OPS`` override it)."""
    return AMDStudent(cfg, ops.configured_impl(ops_impl))


def build_teacher(cfg: ModelConfig, ops_impl: str | None = "auto") -> AMDTeacher | None:
    """The frozen teacher, loaded from ``cfg.teacher_checkpoint``; None when ``cfg.teacher`` is None.

    Without a checkpoint the teacher keeps its random init: fine for tests and the CPU demo,
    meaningless for real distillation, so it is logged as a warning. ``ops_impl`` as in build_student.
    """
    if cfg.teacher is None:
        if cfg.teacher_checkpoint:
            log.warning("model.teacher_checkpoint=%s is not used: model.teacher=null trains plain VideoMAE without a "
                        "teacher (name the teacher arch in model.teacher to distil from it)", cfg.teacher_checkpoint)
        return None
    teacher = AMDTeacher(cfg, ops.configured_impl(ops_impl))
    if cfg.teacher_checkpoint:
        load_pretrained(teacher, cfg.teacher_checkpoint)
    else:
        log.warning("model.teacher_checkpoint is not set: the %s teacher is randomly initialised "
                    "(fine for tests / the CPU demo, not for real distillation)", cfg.teacher)
    return teacher
