"""The training loop and its parts: process group, optimizer + schedules, checkpoints, telemetry.

Entry point: :func:`amd_fast.trainer.loop.run` (``python -m amd_fast.train`` / ``torchrun -m amd_fast.train``).
"""
