"""Triton kernels: one module per op (kernel, eager reference, autograd Function). Installed as ``amd_fast.kernels``."""
