"""A short end-to-end check: run each op on a few cases, compare with fp64, print the error."""
from __future__ import annotations

import torch

from .backend import get_backend
from .functional import fused_add_rms_norm, qk_rms_norm, rms_norm
from .reference import fused_add_rms_norm_ref, rms_norm_ref

TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float32: 1e-5}


def _err(out, ref) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


def run(device: str | None = None) -> bool:
    """Print one line per case (backend, max relative L2 error); True when all pass."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    backend = get_backend()
    runs = "Triton kernels" if (backend == "triton" or (backend == "auto" and device == "cuda")) else "PyTorch path"
    print(f"qknorm self-check on {device} (backend={backend}: {runs})")
    ok = True
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        f64 = torch.float64
        qkv = torch.randn(33, 48 * 128, generator=g).to(dtype).to(device)
        q, k = qkv[:, :4096].view(33, 32, 128), qkv[:, 4096:5120].view(33, 8, 128)
        qw, kw = torch.randn(128, generator=g).to(device), torch.randn(128, generator=g).to(device)
        rq, rk = rms_norm_ref(q, qw, compute_dtype=f64), rms_norm_ref(k, kw, compute_dtype=f64)
        qk_rms_norm(q, k, qw, kw, q_out=q, k_out=k)
        x = torch.randn(17, 5000, generator=g).to(dtype).to(device)
        r = torch.randn(17, 5000, generator=g).to(dtype).to(device)
        w = torch.randn(5000, generator=g).to(device)
        rx = rms_norm_ref(x, w, weight_offset=1.0, compute_dtype=f64)
        ry, rs = fused_add_rms_norm_ref(x, r, w, compute_dtype=f64)
        y = rms_norm(x, w, weight_offset=1.0)
        fused_add_rms_norm(x, r, w)
        cases = [("qk_rms_norm packed [33,32+8,128] in place", max(_err(q, rq), _err(k, rk))),
                 ("rms_norm [17,5000] gemma offset", _err(y, rx)),
                 ("fused_add_rms_norm [17,5000]", max(_err(x, ry), _err(r, rs)))]
        for name, e in cases:
            good = e < TOL[dtype]
            ok &= good
            print(f"  {str(dtype).replace('torch.', ''):9s} {name:44s} max rel L2 err {e:.2e} "
                  f"{'ok' if good else 'FAIL'}")
    return ok
