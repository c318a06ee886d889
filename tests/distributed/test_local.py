"""qknorm.distributed.local: this rank's argument checks, addressing and kernels, on a one-rank group.

Argument errors come before any collective (with or without a process group). The rest
runs on a one-rank gloo group on both backends (``impl``: the PyTorch path and the Triton
kernels in the interpreter): layouts the multi-rank tests do not use, and issue 11's
adversarial inputs (weight strides past int32, written tensors that overlap themselves,
weights aliasing an output, sums of squares past fp32's range, eps below fp32's range,
loose arguments). The right value is the fp64 PyTorch reference on fresh random data.
"""
import numpy as np
import pytest
import torch

import qknorm
from helpers import TOL, assert_matches, randn, ref_norm
from qknorm import launch
from qknorm.distributed import local, qk_rms_norm_tp, rms_norm_tp
from qknorm.layout import ROW_LIMIT


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, w: rms_norm_tp(x.int(), None), TypeError, "x must be bfloat16"),
    (lambda x, w: rms_norm_tp(x, w[:31]), ValueError, r"weight must have shape \(32,\).*local width"),
    (lambda x, w: rms_norm_tp(x, w.int()), TypeError, "weight must be a floating"),
    (lambda x, w: rms_norm_tp(x, w, full_width=16), ValueError, "full_width must be None or an int >= "),
    (lambda x, w: rms_norm_tp(x, w, out=x[:, :16]), ValueError, "out must have the shape"),
    (lambda x, w: rms_norm_tp(x, w, eps=-1.0), ValueError, "eps must be"),
    (lambda x, w: rms_norm_tp(x[:, :0], None), ValueError, "local shard width"),
    (lambda x, w: qk_rms_norm_tp(x, x.half(), w, w), TypeError, "same dtype"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, None), ValueError, "both be tensors or both be None"),
    (lambda x, w: qk_rms_norm_tp(x, x[:, :16], w, w), ValueError, r"k_weight must have shape \(16,\)"),
    (lambda x, w: qk_rms_norm_tp(x, x, None, None, q_out=x, k_out=x), ValueError, "overlap"),
    (lambda x, w: qk_rms_norm_tp(x, x, None, None, k_full_width=8), ValueError, "k_full_width must"),
    # loose arguments: the same rules and messages as the rest of the library
    (lambda x, w: rms_norm_tp(x, w, config="fast"), TypeError, "^config must be a qknorm.KernelConfig"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, w, config=4), TypeError, "^config must be a qknorm.KernelConfig"),
    (lambda x, w: rms_norm_tp(x, w, eps="1e-6"), TypeError, "^eps must be a real number"),
    (lambda x, w: rms_norm_tp(x, w, eps=True), TypeError, "^eps must be a real number"),
    (lambda x, w: rms_norm_tp(x, w, eps=None), TypeError, "^eps must be a real number"),
    (lambda x, w: rms_norm_tp(x, w, eps=float("nan")), ValueError, "^eps must be a finite number >= 0"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, w, weight_offset="1"), TypeError, "^weight_offset must be a real"),
    (lambda x, w: rms_norm_tp(x, w, full_width=64.5), TypeError, "^full_width must be None or an int"),
    (lambda x, w: qk_rms_norm_tp(x, x, w, w, q_full_width=True), TypeError, "^q_full_width must be None or an int"),
])
def test_local_errors_before_any_collective(call, exc, match):
    """Argument errors come first, with or without a process group (none here)."""
    x, w = torch.randn(3, 32), torch.randn(32)
    before = x.clone()
    with pytest.raises(exc, match=match):
        call(x, w)
    assert torch.equal(x, before)


def _padded_ref(x, w, full, eps=1e-6, offset=0.0):
    """Reference of a shard that is the first ``D_local`` columns of a row padded with zeros
    to ``full`` (what the other ranks of an uneven split would add if their shards were zero)."""
    d = x.shape[-1]
    pad = torch.zeros(*x.shape[:-1], full - d, dtype=x.dtype)
    wp = None if w is None else torch.cat([w.cpu().float(), torch.zeros(full - d)])
    return ref_norm(torch.cat([x.cpu(), pad], -1), wp, eps, offset)[..., :d]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_one_rank_layouts(one_rank, impl, dtype):
    """The kernels (interpreter) and the torch path on layouts the spawned tests do not use."""
    # 4-D view whose leading dims do not merge (> 3): the contiguous-copy fallback
    x = randn((2, 3, 4, 5, 24), dtype, impl).permute(3, 1, 0, 2, 4)
    w = randn((24,), torch.float32, impl)
    assert_matches(rms_norm_tp(x, w), ref_norm(x, w), dtype)
    # full width larger than the shard: the divisor is the full width
    assert_matches(rms_norm_tp(x, w, full_width=40), _padded_ref(x, w, 40), dtype)
    # Q and K with different leading shapes and widths, allocated outputs, no weights
    q, k = randn((3, 2, 48), dtype, impl), randn((5, 24), dtype, impl)[::2]
    qo, ko = qk_rms_norm_tp(q, k, None, None, q_full_width=64)
    assert qo.is_contiguous() and ko.is_contiguous()
    assert_matches(qo, _padded_ref(q, None, 64), dtype, "q")
    assert_matches(ko, ref_norm(k), dtype, "k")
    # a 1-D shard (one row)
    v = randn((40,), dtype, impl)
    assert_matches(rms_norm_tp(v, None), ref_norm(v), dtype)


def test_one_rank_wide_row_chunks(one_rank, impl):
    """A shard wider than the dispatcher's register block: the sum loops over chunks."""
    x = randn((2, 16400), torch.bfloat16, impl)
    w = randn((16400,), torch.bfloat16, impl)
    assert_matches(rms_norm_tp(x, w, weight_offset=1.0), ref_norm(x, w, offset=1.0), torch.bfloat16)


def test_one_rank_matches_core_op(one_rank, impl):
    """On one rank the TP op is the plain norm: same values as ``qknorm.rms_norm``."""
    x = randn((7, 96), torch.float32, impl)
    w = randn((96,), torch.float32, impl)
    y = rms_norm_tp(x, w, 1e-5)
    assert (y - qknorm.rms_norm(x, w, 1e-5)).abs().max().item() <= 4 * TOL[torch.float32]


# --------------------------------------------------------------------------- int32 offsets

def _far_strided_weight(d: int, stride: int, dtype, device="cpu"):
    """A ``[d]`` weight whose last element sits ``stride * (d - 1) >= 2**31`` elements
    after the first (on a CPU a lazily allocated storage: only ``d`` pages are touched)."""
    try:
        w = torch.empty(stride * (d - 1) + 1, dtype=dtype, device=device).as_strided((d,), (stride,))
    except RuntimeError as e:  # no address space for the storage on this machine
        pytest.skip(f"cannot reserve a {stride * d * 2 / 2**30:.1f} GiB storage: {e}")
    w.copy_(torch.randn(d).to(dtype))
    return w


def test_weight_stride_past_int32(one_rank, impl):
    """``c * weight_stride`` past 2**31 (a crash or garbage in int32): right values."""
    d = 129
    w = _far_strided_weight(d, 2**24 + 1, torch.bfloat16, impl)  # 128 * (2**24 + 1) > 2**31
    assert abs(w.stride(0)) * (d - 1) >= 2**31
    x = randn((3, d), torch.float32, impl)
    assert_matches(rms_norm_tp(x, w), ref_norm(x, w), torch.float32)
    k = randn((2, 2, 64), torch.float32, impl)
    kw = _far_strided_weight(64, 2**25 + 1, torch.bfloat16, impl)[:64]  # 63 * (2**25 + 1) < 2**31: as is
    qo, ko = qk_rms_norm_tp(x, k, w, kw)
    assert_matches(qo, ref_norm(x, w), torch.float32, "q")
    assert_matches(ko, ref_norm(k, kw), torch.float32, "k")


def test_rows_past_int32_take_one_fallback():
    """A view with more rows than the kernels' int32 row index: no contiguous-copy retry
    (which would hit the same limit); the PyTorch path (int64 everywhere) runs instead."""
    x = torch.zeros(1, dtype=torch.float16).expand(ROW_LIMIT + 1, 1)
    assert local.kernel_view(x) is None
    y = torch.zeros(4, 3, 8)[..., :4]
    v = local.kernel_view(y)
    assert v is not None and v[0] is y


# --------------------------------------------------------------------------- overlap

@pytest.mark.parametrize("call,match", [
    (lambda x, base: rms_norm_tp(x, None, out=base.expand(4, 8)), r"^out overlaps itself"),
    (lambda x, base: rms_norm_tp(base.expand(4, 8), None, out=base.expand(4, 8)), r"^out overlaps itself"),
    (lambda x, base: qk_rms_norm_tp(x.view(4, 1, 8), x[:2], None, None, q_out=base.expand(4, 1, 8)),
     r"^q_out overlaps itself"),
    (lambda x, base: qk_rms_norm_tp(x, x[:2].clone(), None, None, k_out=base.expand(2, 8)),
     r"^k_out overlaps itself"),
    (lambda x, base: qk_rms_norm_tp(x, x[:2].clone(), None, None,
                                    k_out=base.new_zeros(16).as_strided((2, 8), (3, 1))), r"^k_out overlaps itself"),
])
def test_written_tensor_overlapping_itself(one_rank, impl, call, match):
    x = randn((4, 8), torch.float32, impl)
    base = torch.zeros(8, device=impl)
    before = x.clone()
    with pytest.raises(ValueError, match=match):
        call(x, base)
    assert torch.equal(base, torch.zeros(8, device=impl)) and torch.equal(x, before), "written before the error"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_aliasing_an_output(one_rank, impl, dtype):
    """``rms_norm_tp(x, x[0], out=x)``: the weight is read with its values on entry."""
    x = randn((64, 32), dtype, impl)  # more rows than one kernel block: later blocks would see a written row 0
    ref = ref_norm(x, x[0])
    assert_matches(rms_norm_tp(x, x[0], out=x), ref, dtype)
    qkv = randn((16, 3, 48), dtype, impl)
    q, k = qkv[..., :32], qkv[..., 32:]
    rq, rk = ref_norm(q, k[0, 0].repeat(2)), ref_norm(k, q[3, 1, :16])
    qo, ko = qk_rms_norm_tp(q, k, k[0, 0].repeat(2), q[3, 1, :16], q_out=q, k_out=k)
    assert_matches(qo, rq, dtype, "q")
    assert_matches(ko, rk, dtype, "k")
    out = torch.empty_like(x)
    w = out[5]  # a weight inside a separate output
    w.copy_(randn((32,), dtype, impl))
    ref = ref_norm(x, w)
    assert_matches(rms_norm_tp(x, w, out=out), ref, dtype)


# --------------------------------------------------------------------------- fp32 range

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scale,eps", [(1e20, 1e-6), (1e-25, 0.0), (1e-20, 1e-45)])
def test_sum_of_squares_past_fp32(one_rank, impl, dtype, scale, eps):
    x = randn((3, 64), dtype, impl, scale)
    w = randn((64,), torch.float32, impl)
    y = rms_norm_tp(x, w, eps)
    assert torch.isfinite(y).all() and y.abs().max() > 0.1
    assert_matches(y, ref_norm(x, w, eps), dtype)
    k = randn((2, 2, 32), dtype, impl, 1.0 / scale)
    qo, ko = qk_rms_norm_tp(x, k, None, None, eps)
    assert_matches(qo, ref_norm(x, None, eps), dtype, "q")
    assert_matches(ko, ref_norm(k, None, eps), dtype, "k")


@pytest.mark.parametrize("eps", [1e-50, 1e-40, 1e-300, 5e-324])
def test_eps_below_fp32_range(one_rank, impl, eps):
    """Every positive eps acts as positive: zero rows give 0, not NaN."""
    x = randn((3, 32), torch.float32, impl)
    x[1] = 0.0
    y = rms_norm_tp(x, None, eps)
    assert torch.equal(y[1], torch.zeros_like(y[1])), y[1]
    assert_matches(y, ref_norm(x, None, eps), torch.float32)
    qo, ko = qk_rms_norm_tp(torch.zeros(2, 16, device=impl), x, None, None, eps)
    assert torch.equal(qo, torch.zeros_like(qo))
    assert_matches(ko, ref_norm(x, None, eps), torch.float32)


# --------------------------------------------------------------------------- loose arguments

def test_numpy_scalars_and_config(one_rank, impl):
    x, w = randn((3, 64), torch.float32, impl), randn((64,), torch.float32, impl)
    ref = ref_norm(x, w, 1e-6, 1.0)
    y = rms_norm_tp(x, w, np.float32(1e-6), weight_offset=np.float64(1.0), full_width=np.int64(64))
    assert_matches(y, ref, torch.float32)
    cfg = qknorm.KernelConfig(rows=2, block_d=16, num_warps=1)
    assert_matches(rms_norm_tp(x, w, 1e-6, weight_offset=1.0, config=cfg), ref, torch.float32)
    qo, _ = qk_rms_norm_tp(x, x[:, :32], w, w[:32], np.float64(1e-6), weight_offset=1, config=cfg)
    assert_matches(qo, ref, torch.float32)


_AOT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.kernels.tp_norm import tp_scale_kernel, tp_sumsq_kernel

for kernel, ptrs in ((tp_sumsq_kernel, {"XA": "*bf16", "SA": "*fp64", "XB": "*bf16", "SB": "*fp64"}),
                     (tp_scale_kernel, {"XA": "*bf16", "YA": "*bf16", "WA": "*fp32", "SA": "*fp64",
                                        "XB": "*bf16", "YB": "*bf16", "WB": "*fp32", "SB": "*fp64"})):
    names = list(kernel.arg_names)
    consts = {n: v for n, v in {"HAS_WEIGHT": True, "ROWS": 4, "BLOCK_D": 128}.items() if n in names}
    sig = {n: ptrs.get(n, "constexpr" if n in consts else "fp64" if n == "eps" else "fp32" if n == "w_offset"
                       else "i32") for n in names}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()})
    assert "cubin" in triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm
print("compiled")
"""


def test_tp_kernels_compile_for_sm90_without_a_gpu():
    """The fp64 sums, the fp64 ``eps`` argument and the fp64 scale lower for Hopper (what
    the interpreter cannot check)."""
    import os
    import subprocess
    import sys
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no ahead-of-time compile API in this Triton: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _AOT], env=env, capture_output=True, text=True, timeout=1800)  # hang guard only
    if r.returncode and "ptxas" in r.stderr.lower() and "not found" in r.stderr.lower():
        pytest.skip("no ptxas to assemble cubins")
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


# --------------------------------------------------------------------------- launches

def test_one_plan_per_call(one_rank, impl, monkeypatch):
    """Both kernels share one addressing plan: a layout the kernels cannot address (more
    than 3 unmergeable leading dims) is copied contiguous once per call, not once per kernel."""
    x = randn((2, 3, 4, 5, 24), torch.float32, impl).permute(3, 1, 0, 2, 4)
    plans, copies = [], []
    real_plan, real_contiguous = local.kernel_plan, torch.Tensor.contiguous
    monkeypatch.setattr(local, "kernel_plan", lambda *a, **k: plans.append(1) or real_plan(*a, **k))
    monkeypatch.setattr(torch.Tensor, "contiguous",
                        lambda t, *a, **k: copies.append(t.shape) or real_contiguous(t, *a, **k))
    assert_matches(rms_norm_tp(x, None), ref_norm(x), torch.float32)
    assert len(plans) == 1
    assert len(copies) == (1 if qknorm.get_backend() == "triton" else 0), copies


def test_launch_specialisations(one_rank):
    """Launches go through ``qknorm.launch`` with one entry list per specialisation: row
    counts with a different Triton int specialisation (``% 16``) get their own entries;
    a repeated shape reuses them."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # Triton on CPU tensors: the interpreter only
    with qknorm.use_backend("triton"):
        for n in (16, 17, 16):
            q, k = torch.randn(n, 48, device=dev), torch.randn(n, 3, 16, device=dev)
            qo, ko = qk_rms_norm_tp(q, k, None, None)
            assert_matches(qo, ref_norm(q), torch.float32, "q")
            assert_matches(ko, ref_norm(k), torch.float32, "k")
    specs = {(name, spec) for name, spec, *_ in launch.entry_states()}
    for kernel in ("tp_sumsq_kernel", "tp_scale_kernel"):
        mine = [s for name, s in specs if name == kernel]
        assert len(mine) >= 2, (kernel, mine)
