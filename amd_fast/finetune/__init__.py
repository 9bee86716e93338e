"""Fine-tuning and evaluation of pretrained video ViTs: ``torchrun -m amd_fast.finetune``.

The same shards, loaders, configuration system, checkpoints and telemetry as pretraining; its own parts are
the classifier (``models.classifier``), the on-device augmentation (``augment``), the multi-view evaluation
(``evaluate``), the config sections (``config``) and the task's hooks in the shared loop (``trainer``).
"""
