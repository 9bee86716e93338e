"""amd_fast: Asymmetric Masked Distillation (CVPR 2024) pretraining, built for speed.

Kept import-light on purpose: ``python -m amd_fast.bootstrap`` must run with a bare
python3 before torch is installed.
"""
__version__ = "0.1.0"
