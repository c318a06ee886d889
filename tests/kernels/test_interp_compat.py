"""``kernels/_interp_compat.py``: the interpreter's fp32 -> bf16 cast rounds as a GPU does (nearest even,
NaN kept, overflow to inf, subnormals kept), so a kernel run on the CPU stores the GPU's bf16 bits."""
import pytest
import torch
import triton
import triton.language as tl

import qknorm.kernels  # noqa: F401 - applies the interpreter fixes
from qknorm.backend import interpreter_on

pytestmark = pytest.mark.skipif(not interpreter_on(), reason="interpreter fixes only")


@triton.jit
def _to_bf16(X, Y, N: tl.constexpr):
    o = tl.arange(0, N)
    tl.store(Y + o, tl.load(X + o).to(tl.bfloat16))


def test_fp32_to_bf16_rounds_to_nearest_even_like_the_gpu():
    g = torch.Generator().manual_seed(0)
    n = 1 << 14
    x = torch.randn(n, generator=g) * 10.0 ** torch.randint(-40, 39, (n,), generator=g)
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.4e38, -3.4e38, 3.3961e38, 1e-40, -1e-45,
                            0.0, -0.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -8 + 2 ** -20, -(1.0 + 2 ** -8)])
    x[:special.numel()] = special
    y = torch.empty(n, dtype=torch.bfloat16)
    _to_bf16[(1,)](x, y, n)
    ref = x.to(torch.bfloat16)  # PyTorch's cast: round to nearest even, as cvt.rn.bf16.f32
    same = (y.view(torch.int16) == ref.view(torch.int16)) | (y.isnan() & ref.isnan())
    assert bool(same.all()), x[~same][:8].tolist()
    # the ties and the carry into the exponent, spelled out
    assert y[10].item() == 1.0 and y[11].item() == 1.015625 and y[12].item() == 1.0078125
    assert y[3].item() == float("inf") and y[0].isnan()  # 3.4e38: past the last bf16 value's half ulp
