"""Shared test helpers: fp64 reference comparison, poisoned outputs, packed QKV views."""
import torch

from qknorm.reference import fused_add_rms_norm_ref, rms_norm_ref

TOL = {torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float32: 1e-5}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error in fp64; NaN anywhere (an unwritten poisoned element) gives NaN."""
    out = out.detach().to("cpu", torch.float64)
    ref = ref.detach().to("cpu", torch.float64)
    num = (out - ref).norm().item()
    den = ref.norm().item()
    return num / den if den > 0 else num


def assert_matches(out, ref, dtype, what="output"):
    err = rel_err(out, ref)
    assert err < TOL[dtype], f"{what}: relative L2 error {err:.3e} >= {TOL[dtype]:.0e} ({dtype})"


def ref_norm(x, w=None, eps=1e-6, offset=0.0):
    return rms_norm_ref(x.cpu(), None if w is None else w.cpu(), eps, offset, torch.float64)


def ref_add_norm(x, r, w=None, eps=1e-6, offset=0.0):
    return fused_add_rms_norm_ref(x.cpu(), r.cpu(), None if w is None else w.cpu(), eps, offset, torch.float64)


def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def packed_qkv(t, hq, hkv, d, dtype, device, gen=None):
    """A packed ``[T, (Hq + 2 Hkv) * D]`` buffer and its strided Q, K, V views."""
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=gen, dtype=torch.float32).to(dtype).to(device)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d: (hq + hkv) * d].view(t, hkv, d)
    v = qkv[:, (hq + hkv) * d:].view(t, hkv, d)
    return qkv, q, k, v


def randn(shape, dtype, device, scale=1.0):
    return (torch.randn(shape, dtype=torch.float32) * scale).to(dtype).to(device)


def rope64_rows(x, cos, sin, rotary_dim, is_neox):
    """fp64 RoPE of ``x`` ``[T, H, D]`` (fp64) with per-token ``cos``/``sin`` ``[T, R/2]``, by
    complex multiplication (NeoX: pairs ``(j, j + R/2)``; GPT-J: ``(2j, 2j + 1)``)."""
    half = rotary_dim // 2
    rot = torch.complex(cos.double(), sin.double()).to(x.device)[:, None, :]  # cos/sin may live on the GPU
    out = x.clone()
    if is_neox:
        z = torch.complex(x[..., :half], x[..., half:rotary_dim]) * rot
        out[..., :half], out[..., half:rotary_dim] = z.real, z.imag
    else:
        z = torch.complex(x[..., 0:rotary_dim:2], x[..., 1:rotary_dim:2]) * rot
        out[..., 0:rotary_dim:2], out[..., 1:rotary_dim:2] = z.real, z.imag
    return out
