"""Where the Triton kernels run under test: compiled on CUDA when there is a GPU, interpreted on CPU otherwise.

The kernel tests build their inputs on the CPU (seeded generators, independent references). On a CUDA
machine :func:`triton_on_cuda` wraps a kernel module's Triton entry points so that they receive CUDA copies
of those inputs and hand back CPU results (autograd flows through the copies), so the same test bodies check
the compiled kernels there and the interpreted ones here.
"""
import torch

HAS_CUDA = torch.cuda.is_available()
KERNEL_DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")


def _map(x, fn):
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, fn) for v in x)
    return x


def triton_on_cuda(monkeypatch, module, names):
    """On CUDA machines: patch ``module.<name>`` to run on CUDA copies of its tensor arguments."""
    if not HAS_CUDA:
        return
    for name in names:
        fn = getattr(module, name)

        def wrapped(*args, _fn=fn, **kwargs):
            out = _fn(*_map(args, lambda t: t.cuda()), **_map(kwargs, lambda t: t.cuda()))
            return _map(out, lambda t: t.cpu())

        monkeypatch.setattr(module, name, wrapped)
