"""Test set-up: without a GPU the Triton kernels run in the interpreter.

TRITON_INTERPRET must be set before triton is imported, so it is set here, at
collection start. ``impl`` runs each kernel test on every (device, backend) pair the
machine has: CPU + PyTorch path and CPU + Triton interpreter here; CUDA + Triton on a GPU.
"""
import importlib.util
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `from helpers import ...` in every folder

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import qknorm  # noqa: E402

IMPLS = [("cuda", "triton"), ("cpu", "torch")] if HAS_CUDA else [("cpu", "torch"), ("cpu", "triton")]


def pytest_configure(config):
    """Without CUDA the suite runs the kernels in Triton's interpreter: a CPU-only torch brings no Triton, and
    the ``test`` extra does not require it (it would replace a ROCm/XPU torch's Triton), so say what to install
    instead of failing hundreds of tests on the import."""
    if not HAS_CUDA and importlib.util.find_spec("triton") is None:
        raise pytest.UsageError('no CUDA and no triton: the CPU tests run the kernels in the Triton interpreter; '
                                'install it with pip install -e ".[test,triton]" (the triton extra)')


@pytest.fixture(params=IMPLS, ids=[f"{d}-{b}" for d, b in IMPLS])
def impl(request):
    """(device, backend) for a kernel test; the backend is active during the test."""
    device, backend = request.param
    with qknorm.use_backend(backend):
        yield device


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
