"""Triton interpreter (3.9, CPU) oddity met while trying a leaner low-range branch: a scalar fp32 product
that underflows (eps_tiny * 1e-30 with eps_tiny = 1e-20), once added into a tile, makes that tile's bf16 store
wrong (every element 2**-133); fp32 stores, eps_tiny = 0 or 1e-5, and an unused product are right. The GPU is
not concerned (numpy only). Run: python interp_bf16_underflow.py (prints k4 1e-20 ... 9.1835e-41)."""
import os; os.environ["TRITON_INTERPRET"]="1"
import torch, triton, triton.language as tl
C = tl.constexpr(2.0 ** -58)
@triton.jit
def k3(X, Y, eps_tiny, N: tl.constexpr):
    x = tl.load(X + tl.arange(0, N)).to(tl.float32)
    a = eps_tiny * C
    tl.store(Y + tl.arange(0, N), (x + a * 0.0).to(Y.dtype.element_ty))
@triton.jit
def k4(X, Y, eps_tiny, N: tl.constexpr):
    x = tl.load(X + tl.arange(0, N)).to(tl.float32)
    a = eps_tiny * 1e-30
    tl.store(Y + tl.arange(0, N), (x + a * 0.0).to(Y.dtype.element_ty))
@triton.jit
def k5(X, Y, eps_tiny, N: tl.constexpr):
    x = tl.load(X + tl.arange(0, N)).to(tl.float32)
    a = eps_tiny * 1e-30
    tl.store(Y + tl.arange(0, N), x.to(Y.dtype.element_ty))
for kk, e in ((k4, 0.0), (k4, 1e-20), (k5, 1e-20)):
  for dt in (torch.bfloat16,):
    x = torch.ones(4, dtype=dt); y = torch.empty_like(x)
    kk[(1,)](x, y, e, N=4)
    print(kk.__name__, e, dt, y)
