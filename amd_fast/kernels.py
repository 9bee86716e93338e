"""Triton kernels, one module per op (kernel, eager reference, autograd Function): ``import amd_fast.kernels.<op>``.

Their source lives in the checkout's top-level ``kernels/`` folder (the layout is fixed by the product card).
That folder has no ``__init__.py`` on purpose: with one, it was a regular package ``kernels`` that shadowed
Hugging Face's ``kernels`` package (which ``transformers`` 5 imports) whenever Python ran from the checkout root.
Without one, it is at most a namespace portion, which an installed ``kernels`` always wins over.

This module is what makes ``amd_fast.kernels`` a package wherever amd_fast comes from (Python treats a module
with ``__path__`` as a package): the wheel installs the kernel modules next to it, in ``amd_fast/kernels/``
(``package_dir`` in setup.py); the checkout and the editable install find them in ``<checkout>/kernels``.
(setuptools' editable finder cannot resolve a nested package without ``__init__.py`` on its own.)
"""
import os

_here = os.path.dirname(os.path.abspath(__file__))
__path__ = [d for d in (os.path.join(_here, "kernels"),  # wheel / regular install
                        os.path.join(os.path.dirname(_here), "kernels"))  # checkout / editable install
            if os.path.isfile(os.path.join(d, "masked_gather.py"))][:1]
if not __path__:
    raise ImportError(f"amd_fast.kernels: no kernel modules next to {_here} (a broken install); reinstall amd_fast "
                      "(pip install -e <checkout>, or the wheel)")
