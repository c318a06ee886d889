"""qk_rms_norm_rope argument checks: TypeError/ValueError naming the argument, nothing written."""
import numpy as np
import pytest
import torch

import qknorm
from helpers import packed_qkv


def _cache(max_pos, r, dtype=torch.float32):
    inv = 1.0 / 10000 ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=-1).to(dtype)


T, HQ, HKV, D = 3, 4, 2, 64


def _args():
    qkv, q, k, v = packed_qkv(T, HQ, HKV, D, torch.bfloat16, "cpu")
    w = torch.randn(D)
    cs = _cache(16, D)
    pos = torch.tensor([5, 0, 15])
    return qkv, q, k, w, cs, pos


_f = qknorm.qk_rms_norm_rope

CASES = [
    # activations
    ("q int", lambda q, k, w, cs, p: _f(q.int(), k, w, w, cs, p), TypeError, "q must be bfloat16"),
    ("k fp64", lambda q, k, w, cs, p: _f(q, k.double(), w, w, cs, p), TypeError, "k must be bfloat16"),
    ("q/k dtypes", lambda q, k, w, cs, p: _f(q, k.half(), w, w, cs, p), TypeError, "same dtype"),
    ("q 2d", lambda q, k, w, cs, p: _f(q.reshape(T, -1), k, w, w, cs, p), ValueError, r"q must be \[T, Hq"),
    ("k 4d", lambda q, k, w, cs, p: _f(q, k[None], w, w, cs, p), ValueError, r"k must be \[T, Hkv"),
    ("head_dim", lambda q, k, w, cs, p: _f(q, k[..., :32], w, w, cs, p), ValueError, "same head_dim"),
    ("tokens", lambda q, k, w, cs, p: _f(q, k[:2], w, w, cs, p), ValueError, "same number of tokens"),
    ("q list", lambda q, k, w, cs, p: _f([1.0], k, w, w, cs, p), TypeError, "q must be a torch.Tensor"),
    # weights and scalars
    ("one weight", lambda q, k, w, cs, p: _f(q, k, w, None, cs, p), ValueError, "both be tensors or both be None"),
    ("weight len", lambda q, k, w, cs, p: _f(q, k, w, w[:63], cs, p), ValueError, r"k_weight must have shape \(64,\)"),
    ("weight int", lambda q, k, w, cs, p: _f(q, k, w.int(), w, cs, p), TypeError, "q_weight must be a floating"),
    ("eps", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, -1.0), ValueError, "eps must be"),
    ("offset no weight", lambda q, k, w, cs, p: _f(q, k, None, None, cs, p, weight_offset=1.0), ValueError,
     "weight_offset=1.0 needs a weight"),
    ("is_neox", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, is_neox=1), TypeError, "is_neox must be a Python bool, got int 1"),
    ("is_neox", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, is_neox=np.bool_(True)), TypeError,
     "is_neox must be a Python bool, got numpy.bool"),
    # rotary_dim
    ("rotary odd", lambda q, k, w, cs, p: _f(q, k, w, w, cs[:, :33], p, rotary_dim=33), ValueError,
     "rotary_dim must be even"),
    ("rotary > D", lambda q, k, w, cs, p: _f(q, k, w, w, _cache(16, 128), p, rotary_dim=128), ValueError,
     r"rotary_dim must be even and in \[2, head_dim=64\], got 128"),
    ("rotary 0", lambda q, k, w, cs, p: _f(q, k, w, w, cs[:, :0], p, rotary_dim=0), ValueError, "rotary_dim must"),
    ("rotary float", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, rotary_dim=64.0), TypeError,
     "rotary_dim must be an int"),
    # cos_sin_cache
    ("cache width", lambda q, k, w, cs, p: _f(q, k, w, w, _cache(16, 32), p), ValueError,
     r"cos_sin_cache must have shape \[max_position >= 1, rotary_dim=64\].*pass rotary_dim"),
    ("cache width partial", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, rotary_dim=32), ValueError,
     r"cos_sin_cache must have shape \[max_position >= 1, rotary_dim=32\]"),
    ("cache 1d", lambda q, k, w, cs, p: _f(q, k, w, w, cs[0], p), ValueError, "cos_sin_cache must have shape"),
    ("cache empty", lambda q, k, w, cs, p: _f(q, k, w, w, cs[:0], p), ValueError, "cos_sin_cache must have shape"),
    ("cache fp16", lambda q, k, w, cs, p: _f(q, k, w, w, cs.half(), p), TypeError,
     "cos_sin_cache must be float32 or q's dtype"),
    ("cache fp64", lambda q, k, w, cs, p: _f(q, k, w, w, cs.double(), p), TypeError, "cos_sin_cache must be"),
    ("cache list", lambda q, k, w, cs, p: _f(q, k, w, w, cs.tolist(), p), TypeError,
     "cos_sin_cache must be a torch.Tensor"),
    ("cache device", lambda q, k, w, cs, p: _f(q, k, w, w, cs.to("meta"), p), ValueError,
     "cos_sin_cache is on meta"),
    # positions
    ("pos float", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p.float()), TypeError, "positions must be int32 or int64"),
    ("pos int16", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p.short()), TypeError, "positions must be int32 or int64"),
    ("pos list", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p.tolist()), TypeError, "positions must be a torch.Tensor"),
    ("pos short", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p[:2]), ValueError, r"positions must have shape \(3,\)"),
    ("pos 2d", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p[None]), ValueError, r"positions must have shape \(3,\)"),
    ("pos device", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p.to("meta")), ValueError, "positions is on meta"),
    ("pos high", lambda q, k, w, cs, p: _f(q, k, w, w, cs, torch.tensor([1, 16, 2])), ValueError,
     r"positions must be in \[0, 15\].*got values in \[1, 16\]"),
    ("pos negative", lambda q, k, w, cs, p: _f(q, k, w, w, cs, torch.tensor([1, -1, 2], dtype=torch.int32)),
     ValueError, r"positions must be in \[0, 15\].*\[-1, 2\]"),
    # outputs
    ("q_out shape", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, q_out=q[:, :2]), ValueError, "q_out must have the shape"),
    ("k_out dtype", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, k_out=torch.empty(T, HKV, D)), TypeError,
     "k_out must have the dtype"),
    ("outputs overlap", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, q_out=q, k_out=q[:, :2]), ValueError, "overlap"),
    ("k_out over q", lambda q, k, w, cs, p: _f(q, k, w, w, cs, p, q_out=k.new_empty(q.shape), k_out=q[:, 1:3]),
     ValueError, "k_out and q overlap"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name,call,exc,match", CASES, ids=[c[0] for c in CASES])
def test_errors_name_the_argument_and_write_nothing(backend, name, call, exc, match):
    qkv, q, k, w, cs, pos = _args()
    before = [qkv.clone(), w.clone(), cs.clone(), pos.clone()]
    with qknorm.use_backend(backend):
        with pytest.raises(exc, match=match):
            call(q, k, w, cs, pos)
    for a, b in zip(before, (qkv, w, cs, pos)):
        assert torch.equal(a, b), f"{name}: an input was modified on error"


def test_out_of_range_writes_nothing_in_place():
    """In place on the packed buffer with one bad position: error, buffer untouched."""
    qkv, q, k, w, cs, pos = _args()
    before = qkv.clone()
    bad = torch.tensor([0, 1, 99])
    for backend in ("torch", "triton"):
        with qknorm.use_backend(backend):
            with pytest.raises(ValueError, match="positions must be in"):
                _f(q, k, w, w, cs, bad, q_out=q, k_out=k)
        assert torch.equal(qkv, before)


def test_valid_edges_do_not_raise():
    """Last valid position, a cache with one row, rotary_dim 2 and an int eps are accepted."""
    qkv, q, k, w, cs, pos = _args()
    _f(q, k, w, w, cs, torch.tensor([15, 15, 0]))
    _f(q, k, None, None, _cache(1, 64), torch.zeros(T, dtype=torch.int32))
    _f(q, k, w, w, _cache(4, 2), torch.tensor([3, 2, 1]), 0, rotary_dim=2, is_neox=False)


def test_numpy_integer_rotary_dim_is_an_int(impl):
    """rotary_dim takes NumPy integers as every other int argument does (group_size, mrope_section), with
    the int's result, on both backends and in the attention prologue."""
    np = pytest.importorskip("numpy")
    qkv, q, k, w, cs, pos = (t.to(impl) for t in _args())
    cs32 = cs[:, :32].contiguous()
    want = _f(q, k, w, w, cs32, pos, rotary_dim=32)
    got = _f(q, k, w, w, cs32, pos, rotary_dim=np.int64(32))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    kc = torch.zeros(4, 1, HKV, D, dtype=q.dtype, device=impl)
    vc = torch.zeros_like(kc)
    qo = qknorm.qk_norm_rope_cache(q, k, k, w, w, cs32, pos, kc, vc, torch.tensor([0, 2, 3], device=impl),
                                   rotary_dim=np.int32(32), q_out=torch.empty_like(q))
    assert torch.equal(qo, want[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("d,r", [(256, 64), (128, 64), (80, 48), (512, 128), (1024, 64), (64, 32), (96, 2)])
def test_whole_row_configs_keep_one_row_layout(dtype, d, r):
    """Partial rotary takes the whole-row form; at every token count its config lays a row out the same
    way (so the sum of squares adds in one order: batch invariance), with whole 16-byte vectors per
    thread, a plain grid and the whole head in the tile."""
    from qknorm import dispatch, invariance
    from qknorm.ops import _plan as P
    cpu = torch.device("cpu")
    assert P.row_form(d, r, True)["WHOLE"] and P.row_form(d, r, False)["WHOLE"]
    layouts = set()
    for n in (1, 18, 1000, 5000, 40000, 300000, 5_000_000):
        cfg = P.choose_rope(dtype, d, r, n, cpu, None)
        assert cfg.block_d == triton_next_pow2(d) and not cfg.persistent
        lay = invariance.row_layout(cfg.rows, cfg.block_d, cfg.num_warps, dtype.itemsize)
        assert lay.per_thread == min(16 // dtype.itemsize, cfg.block_d)
        layouts.add(lay)
    assert len(layouts) == 1, layouts

def test_exported():
    assert "qk_rms_norm_rope" in qknorm.__all__
    assert qknorm.qk_rms_norm_rope.__doc__


def test_rope_config_gives_each_thread_whole_vectors_of_a_rotary_half():
    """Full rotary (the split form) at the QK pick's 8 warps would give a thread one element of each
    half (scalar loads on sm_90): fewer warps then; a caller's config stays."""
    from qknorm import dispatch
    from qknorm.ops import _plan as P
    cpu = torch.device("cpu")
    for d, r, n in ((128, 128, 40), (256, 256, 18), (64, 64, 4096)):
        assert not P.row_form(d, r, True)["WHOLE"]
        qk = dispatch.choose_config("qk_rms_norm", torch.bfloat16, d, n, cpu)[0]
        cfg = P.choose_rope(torch.bfloat16, d, r, n, cpu, None)
        assert (cfg.block_d, cfg.persistent) == (qk.block_d, qk.persistent) and cfg.rows >= qk.rows
        half_tile = cfg.rows * triton_next_pow2(r // 2) * 2
        assert half_tile // (32 * cfg.num_warps) >= dispatch.ROPE_MIN_BYTES
        assert cfg == qk or qk.rows * triton_next_pow2(r // 2) * 2 // (32 * qk.num_warps) < dispatch.ROPE_MIN_BYTES
    forced = qknorm.KernelConfig(rows=8, block_d=256, num_warps=8)
    assert P.choose_rope(torch.bfloat16, 256, 64, 18, cpu, forced) is forced


def triton_next_pow2(n):
    return 1 << max(n - 1, 0).bit_length()
