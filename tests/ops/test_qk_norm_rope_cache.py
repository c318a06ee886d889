"""qk_norm_rope_cache: argument checks (errors name the argument, nothing is written), both
CPU paths agree, mRoPE against transformers' formula, the custom op, its fake and
torch.compile."""
import pytest
import torch

import qknorm
from helpers import packed_qkv, ref_norm

T, HQ, HKV, D, NB, BS = 3, 4, 2, 64, 2, 4
_f = qknorm.qk_norm_rope_cache


def _cs(max_pos, r, dtype=torch.float32):
    inv = 1.0 / 10000 ** (torch.arange(0, r, 2, dtype=torch.float64) / r)
    ang = torch.arange(max_pos, dtype=torch.float64)[:, None] * inv[None, :]
    return torch.cat((ang.cos(), ang.sin()), dim=-1).to(dtype)


def _args(dtype=torch.bfloat16, cache_dtype=None):
    qkv, q, k, v = packed_qkv(T, HQ, HKV, D, dtype, "cpu", gen=torch.Generator().manual_seed(0))
    cdt = cache_dtype or dtype
    a = dict(qkv=qkv, q=q, k=k, v=v, w=torch.randn(D), cs=_cs(16, D), pos=torch.tensor([5, 0, 15]),
             kc=torch.zeros(NB, BS, HKV, D, dtype=cdt), vc=torch.zeros(NB, BS, HKV, D, dtype=cdt),
             sm=torch.tensor([1, -1, 7]))
    return a


def call(a, **kw):
    args = [a[n] for n in ("q", "k", "v")] + [a["w"], a["w"], a["cs"], a["pos"], a["kc"], a["vc"], a["sm"]]
    for i, n in enumerate(("q", "k", "v", "qw", "kw", "cs", "pos", "kc", "vc", "sm")):
        if n in kw:
            args[i] = kw.pop(n)
    return _f(*args, **kw)


E4 = torch.float8_e4m3fn
CASES = [
    ("v dtype", lambda a: call(a, v=a["v"].float()), TypeError, r"v must have the dtype of q \("),
    ("v shape", lambda a: call(a, v=a["v"][:, :1]), ValueError, r"v must be \[T=3, Hkv=2"),
    ("v tensor", lambda a: call(a, v=[1.0]), TypeError, "v must be a torch.Tensor"),
    ("q 2d", lambda a: call(a, q=a["q"].reshape(T, -1)), ValueError, r"q must be \[T, Hq"),
    ("tokens", lambda a: call(a, k=a["k"][:2]), ValueError, "same number of tokens"),
    ("eps", lambda a: call(a, eps=-1.0), ValueError, "eps must be"),
    ("rotary", lambda a: call(a, rotary_dim=33), ValueError, "rotary_dim must be even"),
    ("cache width", lambda a: call(a, cs=_cs(16, 32)), ValueError, "cos_sin_cache must have shape"),
    ("pos shape", lambda a: call(a, pos=a["pos"][:2]), ValueError, r"positions must have shape \(3,\)"),
    ("pos range", lambda a: call(a, pos=torch.tensor([0, 16, 1])), ValueError, r"positions must be in \[0, 15\]"),
    ("k_cache type", lambda a: call(a, kc=None), TypeError, "k_cache must be a torch.Tensor"),
    ("k_cache dtype", lambda a: call(a, kc=a["kc"].float()), TypeError, "k_cache must have q's dtype"),
    ("k_cache heads", lambda a: call(a, kc=torch.zeros(NB, BS, 3, D, dtype=torch.bfloat16)), ValueError,
     r"k_cache must have shape \[num_blocks, block_size, num_kv_heads=2, head_dim=64\]"),
    ("v_cache width", lambda a: call(a, vc=torch.zeros(NB, BS, HKV, 32, dtype=torch.bfloat16)), ValueError,
     "v_cache must have shape"),
    ("k_cache 2d", lambda a: call(a, kc=torch.zeros(8, D, dtype=torch.bfloat16)), ValueError,
     "k_cache must have shape"),
    ("cache blocks", lambda a: call(a, vc=torch.zeros(NB + 1, BS, HKV, D, dtype=torch.bfloat16)), ValueError,
     "same num_blocks and block_size"),
    ("cache device", lambda a: call(a, kc=a["kc"].to("meta")), ValueError, "k_cache is on meta"),
    ("slots dtype", lambda a: call(a, sm=a["sm"].float()), TypeError, "slot_mapping must be int32 or int64"),
    ("slots shape", lambda a: call(a, sm=a["sm"][:2]), ValueError, r"slot_mapping must have shape \(3,\)"),
    ("slots list", lambda a: call(a, sm=[0, 1, 2]), TypeError, "slot_mapping must be a torch.Tensor"),
    ("slot range", lambda a: call(a, sm=torch.tensor([0, 8, 1])), ValueError, "slot_mapping must be < num_slots=8"),
    ("fp8 no k_scale", lambda a: call(a, kc=a["kc"].to(E4), vc=a["vc"].to(E4), v_scale=torch.ones(1)), ValueError,
     "k_scale is needed for an FP8 k_cache"),
    ("fp8 no v_scale", lambda a: call(a, kc=a["kc"].to(E4), vc=a["vc"].to(E4), k_scale=torch.ones(1)), ValueError,
     "v_scale is needed"),
    ("scale dtype", lambda a: call(a, kc=a["kc"].to(E4), vc=a["vc"].to(E4), k_scale=torch.ones(1, dtype=torch.float64),
                                   v_scale=torch.ones(1)), TypeError, "k_scale must be a 1-element float32"),
    ("scale size", lambda a: call(a, kc=a["kc"].to(E4), vc=a["vc"].to(E4), k_scale=torch.ones(1), v_scale=torch.ones(2)),
     ValueError, "v_scale must be a 1-element float32"),
    ("scale number", lambda a: call(a, kc=a["kc"].to(E4), vc=a["vc"].to(E4), k_scale=1.0, v_scale=torch.ones(1)),
     TypeError, "k_scale must be a 1-element float32 torch.Tensor"),
    ("mrope type", lambda a: call(a, mrope_section=(16, 16)), TypeError, "mrope_section must be None or three ints"),
    ("mrope sum", lambda a: call(a, mrope_section=(16, 8, 4), pos=torch.zeros(3, T, dtype=torch.long)), ValueError,
     "summing to rotary_dim / 2 = 32"),
    ("mrope positions", lambda a: call(a, mrope_section=(16, 8, 8)), ValueError, r"positions must have shape \(3, 3\)"),
    ("q_out shape", lambda a: call(a, q_out=a["q"][:, :2]), ValueError, "q_out must have the shape"),
    ("k_out over q", lambda a: call(a, q_out=torch.empty_like(a["q"]), k_out=a["q"][:, 1:3]), ValueError,
     "k_out and q overlap"),
    ("q_out over v", lambda a: call(a, q_out=a["qkv"][:, 4 * D:].view(T, HQ, D)), ValueError, "overlap"),
    ("k_out over v", lambda a: call(a, k_out=a["v"]), ValueError, "k_out and v overlap"),
    ("cache over q", lambda a: call(a, kc=a["qkv"][:, :HKV * D].view(T, HKV, D), vc=torch.zeros(T, HKV, D,
                                    dtype=torch.bfloat16), sm=torch.tensor([0, -1, 2])), ValueError,
     "k_cache and q overlap"),
    ("cache over v", lambda a: call(a, vc=a["v"], kc=torch.zeros(T, HKV, D, dtype=torch.bfloat16),
                                    sm=torch.tensor([0, -1, 2])), ValueError, "v_cache and v overlap"),
    ("caches overlap", lambda a: call(a, vc=a["kc"]), ValueError, "k_cache and v_cache overlap"),
    ("k_out over cache", lambda a: call(a, k_out=a["kc"][0, :T]), ValueError, "k_cache and k_out overlap"),
    ("cache self overlap", lambda a: call(a, kc=a["kc"][:, :1].expand(NB, BS, HKV, D)), ValueError,
     "k_cache overlaps itself"),
    ("grad", lambda a: call(a, q=a["q"].detach().requires_grad_()), ValueError, "q requires grad"),
    ("q in place over itself", lambda a: call(a, q=a["qkv"][:1, :HQ * D].view(1, HQ, D).expand(T, HQ, D)),
     ValueError, r"q \(written in place: q_out=None\) overlaps itself"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("name,fn,exc,match", CASES, ids=[c[0] for c in CASES])
def test_errors_name_the_argument_and_write_nothing(backend, name, fn, exc, match):
    a = _args()
    before = {n: a[n].clone() for n in ("qkv", "w", "cs", "pos", "kc", "vc", "sm")}
    with qknorm.use_backend(backend):
        with pytest.raises(exc, match=match):
            fn(a)
    for n, b in before.items():
        assert torch.equal(a[n], b), f"{name}: {n} was modified on error"


def test_exported():
    assert "qk_norm_rope_cache" in qknorm.__all__
    doc = qknorm.qk_norm_rope_cache.__doc__
    for word in ("k_cache", "slot_mapping", "mrope_section", "k_scale", "Zhang", "Su et al", "Qwen2-VL", "Kwon"):
        assert word in doc


def _dev(backend):
    """Where a backend's kernels run in this test run: the PyTorch path on the CPU; the Triton
    kernels on the GPU when there is one, else in the interpreter on the CPU."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _full(dtype, cache_dtype, seed=0, t=7, mrope=None, is_neox=True, d=80, r=48, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(t, (HQ + 2 * HKV) * d, generator=g).to(dtype).to(device)
    q = qkv[:, :HQ * d].view(t, HQ, d)
    k = qkv[:, HQ * d:(HQ + HKV) * d].view(t, HKV, d)
    v = qkv[:, (HQ + HKV) * d:].view(t, HKV, d)
    qw, kw = torch.randn(d, generator=g).to(device), torch.randn(d, generator=g).to(dtype).to(device)
    cs = _cs(32, r).to(device)
    if mrope is None:
        pos = torch.randint(0, 32, (t,), generator=g).to(device)
    else:
        pos = torch.randint(0, 32, (3, t), generator=g).to(device)
    kc = torch.zeros(3, 4, HKV, d, dtype=cache_dtype, device=device)
    vc = torch.zeros(3, 4, HKV, d, dtype=cache_dtype, device=device)
    sm = torch.tensor([11, -1, 0, 5, 7, -3, 4])[:t].to(device)
    sc = {}
    if cache_dtype.is_floating_point and cache_dtype.itemsize == 1:
        sc = dict(k_scale=torch.tensor([0.03], device=device), v_scale=torch.tensor([0.02], device=device))
    ko = torch.zeros_like(k)
    return (qkv, q, k, v, qw, kw, cs, pos, kc, vc, sm), dict(is_neox=is_neox, rotary_dim=r, mrope_section=mrope,
                                                             k_out=ko, weight_offset=0.5, **sc)


@pytest.mark.parametrize("mrope", [None, (8, 8, 8)], ids=["rope", "mrope"])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float8_e4m3fn], ids=["fp32", "e4m3"])
def test_cpu_path_matches_kernel(cache_dtype, mrope):
    """fp32 activations: the PyTorch path and the kernel agree to fp32 rounding (FP8 codes
    to one step, at most a few of them)."""
    res = {}
    for backend in ("torch", "triton"):
        (qkv, q, k, v, qw, kw, cs, pos, kc, vc, sm), kw_ = _full(torch.float32, cache_dtype, mrope=mrope,
                                                                  device=_dev(backend))
        with qknorm.use_backend(backend):
            _f(q, k, v, qw, kw, cs, pos, kc, vc, sm, **kw_)
        res[backend] = tuple(t.cpu() for t in (qkv, kc.float(), vc.float(), kw_["k_out"]))
    for i, (a, b) in enumerate(zip(res["torch"], res["triton"])):
        if cache_dtype == torch.float32 or i in (0, 3):  # Q (in the buffer), k_out, fp32 caches
            torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6)
        else:
            assert (a != b).float().mean() < 0.02
            torch.testing.assert_close(a, b, rtol=0.13, atol=1e-3)


def _hf_mrope(x, cs, pos, section, r):
    """transformers' Qwen2-VL ``apply_multimodal_rotary_pos_emb`` (NeoX halves) in fp64, on the
    first ``r`` elements: cos/sin ``[3, T, r]`` as ``cat(freqs, freqs)``, split by
    ``mrope_section * 2``, chunk ``i`` taken from position row ``i % 3``."""
    half = r // 2
    rows = cs.double()[pos.long()]  # [3, T, r]
    cos = torch.cat((rows[..., :half], rows[..., :half]), dim=-1)
    sin = torch.cat((rows[..., half:], rows[..., half:]), dim=-1)
    split = list(section) * 2
    cos = torch.cat([m[i % 3] for i, m in enumerate(cos.split(split, dim=-1))], dim=-1)[:, None]
    sin = torch.cat([m[i % 3] for i, m in enumerate(sin.split(split, dim=-1))], dim=-1)[:, None]
    xr = x[..., :r]
    rot_half = torch.cat((-xr[..., half:], xr[..., :half]), dim=-1)
    return torch.cat((xr * cos + rot_half * sin, x[..., r:]), dim=-1)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("section", [(8, 12, 4), (24, 0, 0), (0, 4, 20)])
def test_mrope_matches_transformers_formula(backend, section):
    (qkv, q, k, v, qw, kw, cs, pos, kc, vc, sm), kw_ = _full(torch.float32, torch.float32, mrope=section,
                                                              device=_dev(backend))
    q0, k0 = q.clone(), k.clone()
    with qknorm.use_backend(backend):
        _f(q, k, v, qw, kw, cs, pos, kc, vc, sm, **kw_)
    q, kc, ko, cs, pos, sm = (t.cpu() for t in (q, kc, kw_["k_out"], cs, pos, sm))
    kw_["k_out"] = ko
    rq = _hf_mrope(ref_norm(q0, qw, 1e-6, 0.5), cs, pos, section, 48)
    rk = _hf_mrope(ref_norm(k0, kw, 1e-6, 0.5), cs, pos, section, 48)
    torch.testing.assert_close(q.double(), rq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kw_["k_out"].double(), rk, rtol=1e-5, atol=1e-5)
    s = sm[sm >= 0]
    torch.testing.assert_close(kc[s // 4, s % 4].double(), rk[sm >= 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mrope_equal_rows_is_rope(backend):
    """Text tokens (three equal position rows) get plain RoPE, GPT-J style too."""
    out = []
    for mrope in (None, (4, 10, 10)):
        (qkv, q, k, v, qw, kw, cs, pos, kc, vc, sm), kw_ = _full(torch.float32, torch.float32, mrope=None,
                                                                  is_neox=False, device=_dev(backend))
        if mrope is not None:
            pos = pos.expand(3, -1).contiguous()
            kw_["mrope_section"] = mrope
        with qknorm.use_backend(backend):
            _f(q, k, v, qw, kw, cs, pos, kc, vc, sm, **kw_)
        out.append((qkv, kc))
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])


def test_custom_op_and_fake():
    """torch.ops.qknorm.qk_norm_rope_cache writes q_out, k_out and the caches; its fake checks
    the arguments and writes nothing."""
    (qkv, q, k, v, qw, kw, cs, pos, kc, vc, sm), kw_ = _full(torch.bfloat16, torch.bfloat16)
    want_kc, want_vc = kc.clone(), vc.clone()
    want_q = _f(q, k, v, qw, kw, cs, pos, want_kc, want_vc, sm, is_neox=True, rotary_dim=48, weight_offset=0.5,
                q_out=torch.empty_like(q))
    qo = torch.empty_like(q)
    torch.ops.qknorm.qk_norm_rope_cache(q, k, v, qw, kw, cs, pos, kc, vc, sm, 1e-6, True, 48, 0.5, None, None, None,
                                        qo, None)
    assert torch.equal(qo, want_q) and torch.equal(kc, want_kc) and torch.equal(vc, want_vc)
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode(allow_non_fake_inputs=False) as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        fargs = [mode.from_tensor(t) for t in (qw, kw, cs, pos, kc, vc, sm)]
        torch.ops.qknorm.qk_norm_rope_cache(fq, fk, fv, *fargs, 1e-6, True, 48, 0.5, None, None, None, mode.from_tensor(qo), None)
        with pytest.raises(ValueError, match="slot_mapping must have shape"):
            torch.ops.qknorm.qk_norm_rope_cache(fq, fk, fv, *fargs[:6], fargs[6][:2], 1e-6, True, 48, 0.5, None,
                                                None, None, mode.from_tensor(qo), None)


@pytest.mark.parametrize("q_out", [False, True])
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float8_e5m2], ids=["bf16", "e5m2"])
def test_compile_matches_eager(q_out, cache_dtype):
    """torch.compile(fullgraph=True) traces the public call as the custom op (in place on Q
    or into q_out, with k_out, mRoPE, FP8 scales); results equal eager ones."""
    torch._dynamo.reset()

    def fn(q, k, v, qw, kw, cs, pos, kc, vc, sm, qo, ko, ks, vs):
        return qknorm.qk_norm_rope_cache(q, k, v, qw, kw, cs, pos, kc, vc, sm, is_neox=False, rotary_dim=48,
                                         weight_offset=0.5, mrope_section=(8, 8, 8), k_scale=ks, v_scale=vs,
                                         q_out=qo, k_out=ko)

    res = []
    for f in (fn, torch.compile(fn, fullgraph=True, backend="aot_eager")):
        (qkv, q, k, v, qw, kw, cs, pos, kc, vc, sm), kw_ = _full(torch.bfloat16, cache_dtype, mrope=(8, 8, 8))
        qo = torch.empty_like(q) if q_out else None
        ko = torch.zeros_like(k)
        ks, vs = kw_.get("k_scale"), kw_.get("v_scale")
        r = f(q, k, v, qw, kw, cs, pos, kc, vc, sm, qo, ko, ks, vs)
        assert r is (qo if q_out else q) or torch.equal(r, qo if q_out else q)
        res.append((qkv.clone(), kc.view(torch.uint8) if cache_dtype.itemsize == 1 else kc,
                    vc.view(torch.uint8) if cache_dtype.itemsize == 1 else vc, ko, r))
    for a, b in zip(*res):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- the fast call (issue 16)

from qknorm.ops import PLANS, _plan  # noqa: E402
from qknorm.ops import qk_norm_rope_cache as cache_op  # noqa: E402


@pytest.fixture
def fast_ops(monkeypatch):
    """The fast call taking CPU tensors (interpreted kernel), with a count of its answers:
    ``hits["fast"]`` calls it took, ``hits["general"]`` calls that went the general way."""
    if torch.cuda.is_available():
        pytest.skip("CPU stand-in for the CUDA fast path")
    pytest.importorskip("triton")
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    hits = {"fast": 0, "general": 0}
    fast = cache_op.fast

    def counted_fast(*a):
        r = fast(*a)
        hits["fast" if r is not None else "general"] += 1
        return r

    monkeypatch.setattr(cache_op, "fast", counted_fast)
    with qknorm.use_backend("triton"):
        yield hits


def _setup(dtype=torch.float32, cache_dtype=torch.float32, layout="nhd", t=5, d=64, r=64, mrope=None, seed=0):
    """Arguments of one call on a packed QKV buffer (fresh tensors each time)."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(t, (HQ + 2 * HKV) * d, generator=g).to(dtype)
    q = qkv[:, :HQ * d].view(t, HQ, d)
    k = qkv[:, HQ * d:(HQ + HKV) * d].view(t, HKV, d)
    v = qkv[:, (HQ + HKV) * d:].view(t, HKV, d)
    qw, kw = torch.randn(d, generator=g), torch.randn(d, generator=g)
    cs = _cs(32, r)
    pos = torch.randint(0, 32, (t,) if mrope is None else (3, t), generator=g)
    nb, bs = 3, 4
    if layout == "nhd":
        kc, vc = torch.full((nb, bs, HKV, d), 7.0).to(cache_dtype), torch.full((nb, bs, HKV, d), 7.0).to(cache_dtype)
    elif layout == "hnd":
        kc = torch.full((nb, HKV, bs, d), 7.0).to(cache_dtype).permute(0, 2, 1, 3)
        vc = torch.full((nb, HKV, bs, d), 7.0).to(cache_dtype).permute(0, 2, 1, 3)
    elif layout == "flat":
        kc, vc = torch.full((nb * bs, HKV, d), 7.0).to(cache_dtype), torch.full((nb * bs, HKV, d), 7.0).to(cache_dtype)
    else:  # "kv_interleaved": FlashInfer's [num_blocks, 2, block_size, H, D]: K and V pages alternate
        kv = torch.full((nb, 2, bs, HKV, d), 7.0).to(cache_dtype)
        kc, vc = kv[:, 0], kv[:, 1]
    sm = torch.tensor([11, -1, 0, 5, 7, -3, 4, 2])[:t]
    kw_ = dict(rotary_dim=r, mrope_section=mrope)
    if cache_dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        kw_.update(k_scale=torch.tensor([0.03]), v_scale=torch.tensor([0.02]))
    return dict(qkv=qkv, q=q, k=k, v=v, qw=qw, kw=kw, cs=cs, pos=pos, kc=kc, vc=vc, sm=sm), kw_


def _go(a, fn=None, **kw):
    """``fn`` (default the public call) on ``a``'s tensors, any of them replaced by name in ``kw``."""
    fn = fn or _f
    names = ("q", "k", "v", "qw", "kw", "cs", "pos", "kc", "vc", "sm")
    return fn(*[kw.pop(n) if n in kw else a[n] for n in names], **kw)


def _state(a, extra=()):
    raw = [a["qkv"], a["kc"], a["vc"], *extra]
    return [x.view(torch.uint8) if x.element_size() == 1 else x.clone() for x in raw]


def _equal(x, y):
    for a, b in zip(x, y):
        assert torch.equal(a, b)


FAST_CASES = {
    "bf16 in place": dict(dtype=torch.bfloat16, cache_dtype=torch.bfloat16),
    "fp32 hnd gptj": dict(layout="hnd", call=dict(is_neox=False)),
    "flat pool no weights": dict(layout="flat", call=dict(weights=False)),
    "kv interleaved": dict(layout="kv_interleaved", dtype=torch.bfloat16, cache_dtype=torch.bfloat16),
    "e4m3 partial": dict(dtype=torch.bfloat16, cache_dtype=torch.float8_e4m3fn, r=32, call=dict(weight_offset=1.0)),
    "e5m2 mrope": dict(dtype=torch.bfloat16, cache_dtype=torch.float8_e5m2, mrope=(8, 16, 8)),
    "mrope list": dict(mrope=[16, 8, 8]),
    "q_out k_out": dict(call=dict(outs=True)),
    "k_out in place": dict(call=dict(k_out_k=True)),
    "q_out same view": dict(call=dict(q_out_view=True)),
}


def _call_kwargs(a, kw, call):
    kw = dict(kw)
    call = dict(call)
    extra = []
    if not call.pop("weights", True):
        a["qw"] = a["kw"] = None
    if call.pop("outs", False):
        kw.update(q_out=torch.full_like(a["q"], 3.0), k_out=torch.full_like(a["k"], 3.0))
        extra = [kw["q_out"], kw["k_out"]]
    if call.pop("k_out_k", False):
        kw["k_out"] = a["k"]
    if call.pop("q_out_view", False):
        kw["q_out"] = a["qkv"][:, :HQ * a["q"].shape[-1]].view(a["q"].shape)
    kw.update(call)
    return kw, extra


@pytest.mark.parametrize("name", list(FAST_CASES))
def test_fast_call_equals_general_call(fast_ops, name):
    """The fast call takes the case (first call: builds the plan; second: reuses it) and writes
    exactly what the general call writes."""
    case = dict(FAST_CASES[name])
    call = case.pop("call", {})
    res = []
    for way in ("general", "fast", "fast again"):
        a, kw = _setup(**case)
        kw, extra = _call_kwargs(a, kw, call)
        before = (fast_ops["fast"], len(PLANS))
        r = _go(a, cache_op.general if way == "general" else None, **kw)
        if way != "general":
            assert fast_ops["fast"] == before[0] + 1, f"{name}: the fast call declined"
            if way == "fast again":
                assert len(PLANS) == before[1], "the second call reuses the plan"
        assert r is kw.get("q_out", a["q"])
        res.append(_state(a, extra))
    _equal(res[0], res[1])
    _equal(res[0], res[2])


def test_custom_op_takes_the_fast_call(fast_ops):
    a, kw = _setup(dtype=torch.bfloat16, cache_dtype=torch.bfloat16)
    want, _ = _setup(dtype=torch.bfloat16, cache_dtype=torch.bfloat16)
    _go(want, cache_op.general)
    torch.ops.qknorm.qk_norm_rope_cache(a["q"], a["k"], a["v"], a["qw"], a["kw"], a["cs"], a["pos"], a["kc"], a["vc"],
                                        a["sm"], 1e-6, True, 64, 0.0, None, None, None, a["q"], None)
    assert fast_ops["fast"] == 1
    _equal(_state(a), _state(want))


def _like_qkv(a, bad):
    """The packed buffer itself (bad) or another buffer of its shape (valid, same strides)."""
    return a["qkv"] if bad else torch.zeros_like(a["qkv"])


def _view(a, bad, shape, col):
    """``[5, *shape[1:]]`` rows of a packed buffer from column ``col`` (the QKV buffer's when bad)."""
    buf = _like_qkv(a, bad)
    n = 1
    for x in shape[1:]:
        n *= x
    return buf[:, col:col + n].view(shape)


def _flat(a):
    return torch.zeros(5, HKV, 64)


_SLOTS = torch.tensor([0, -1, 2, 3, 4])
# (name, call(a, bad): a valid call (bad=False) and the call that breaks a rule with the same key, error)
DECLINED = [
    ("caches overlap", lambda a, bad: _go(a, vc=a["kc"] if bad else a["vc"]), "k_cache and v_cache overlap"),
    ("k_cache over q", lambda a, bad: _go(a, kc=_view(a, bad, (5, HKV, 64), 0), vc=_flat(a), sm=_SLOTS),
     "k_cache and q overlap"),
    ("v_cache over v", lambda a, bad: _go(a, vc=_view(a, bad, (5, HKV, 64), (HQ + HKV) * 64), kc=_flat(a), sm=_SLOTS),
     "v_cache and v overlap"),
    ("q_out over k, v", lambda a, bad: _go(a, q_out=_view(a, bad, (5, HQ, 64), 2 * HKV * 64)),
     "q_out and k overlap"),
    ("k_out over v", lambda a, bad: _go(a, k_out=_view(a, bad, (5, HKV, 64), (HQ + HKV) * 64)),
     "k_out and v overlap"),
    ("k_out over q", lambda a, bad: _go(a, q_out=torch.empty_like(a["q"]), k_out=_view(a, bad, (5, HKV, 64), 64)),
     "k_out and q overlap"),
    ("q_out partial", lambda a, bad: _go(a, q_out=_view(a, bad, (5, HQ, 64), 64)), "q_out partially overlaps q"),
    ("k_out over cache", lambda a, bad: _go(a, k_out=(a["kc"] if bad else torch.zeros_like(a["kc"])).view(-1)
                                            [:5 * HKV * 64].view(5, HKV, 64)), "k_cache and k_out overlap"),
    ("slot range", lambda a, bad: _go(a, sm=torch.tensor([0, 12 if bad else 11, 1, 2, 3])),
     "slot_mapping must be < num_slots=12"),
    ("pos range", lambda a, bad: _go(a, pos=torch.tensor([0, 32 if bad else 31, 1, 2, 3])),
     r"positions must be in \[0, 31\]"),
    ("negated v", lambda a, bad: _go(a, v=a["v"]._neg_view() if bad else a["v"]), "v is a negated view"),
    ("negated cache", lambda a, bad: _go(a, kc=a["kc"]._neg_view() if bad else a["kc"]), "k_cache is a negated view"),
    ("negated scale", lambda a, bad: _go(a, k_scale=torch.ones(1)._neg_view() if bad else torch.ones(1)),
     "k_scale is a negated view"),
    ("grad", lambda a, bad: _go(a, q=a["q"].detach().requires_grad_(bad)), "q requires grad"),
    ("grad cache", lambda a, bad: _go(a, vc=a["vc"].detach().requires_grad_(bad)), "v_cache requires grad"),
    ("grad k_scale", lambda a, bad: _go(a, k_scale=torch.ones(1).requires_grad_(bad)), "k_scale requires grad"),
    ("grad v_scale", lambda a, bad: _go(a, v_scale=torch.ones(1).requires_grad_(bad)), "v_scale requires grad"),
    ("mrope bools", lambda a, bad: _go(a, pos=torch.zeros(3, 5, dtype=torch.long),
                                       mrope_section=(True, 15, 16) if bad else (1, 15, 16)),
     "mrope_section must be None or three ints"),
]


@pytest.mark.parametrize("name,fn,match", DECLINED, ids=[c[0] for c in DECLINED])
def test_fast_call_declines_and_the_general_call_raises(fast_ops, name, fn, match):
    """With the plan of the same key cached by a valid call, a call breaking a rule that only
    its buffers or values show is declined by the fast call and raised by the general call,
    with nothing written."""
    a, _ = _setup(t=5)
    fn(a, False)
    fn(a, False)
    assert fast_ops == {"fast": 2, "general": 0}, f"{name}: the valid call did not take the fast call"
    a, _ = _setup(t=5)
    before = {n: a[n].clone() for n in ("qkv", "qw", "cs", "pos", "kc", "vc", "sm")}
    with pytest.raises((ValueError, TypeError), match=match):
        fn(a, True)
    assert fast_ops["general"] == 1, f"{name}: the fast call did not decline"
    for n, b in before.items():
        assert torch.equal(a[n], b), f"{name}: {n} was modified on error"


ALIASED_READS = {
    "q_weight in q": lambda a, bad: dict(qw=(a["qkv"] if bad else a["qkv"].clone())[1, 64:128]),
    "k_weight in v_cache": lambda a, bad: dict(kw=(a["vc"] if bad else a["vc"].clone()).view(-1)[64:128]),
    "k_scale in k_cache": lambda a, bad: dict(k_scale=(a["kc"] if bad else a["kc"].clone()).view(-1)[3:4]),
    "cos_sin in k_out": lambda a, bad: dict(cs=(a["ko"] if bad else a["ko"].clone()).view(5 * HKV, 64)[:8],
                                            pos=torch.tensor([0, 7, 1, 2, 3]), k_out=a["ko"]),
}


@pytest.mark.parametrize("name", list(ALIASED_READS))
def test_fast_call_declines_a_read_tensor_in_a_written_one(fast_ops, name):
    """A read-only tensor sharing memory with a written one: the fast call declines and the
    general call reads it from a private copy (its values on entry)."""
    def args(bad):
        a, _ = _setup(t=5)
        a["ko"] = torch.randn(5, HKV, 64, generator=torch.Generator().manual_seed(1))
        kw = ALIASED_READS[name](a, bad)
        a.update({n: kw.pop(n) for n in ("qw", "kw", "cs", "pos") if n in kw})
        return a, kw

    a, kw = args(False)
    _go(a, **kw)
    assert fast_ops == {"fast": 1, "general": 0}
    a, kw = args(True)
    want_a, want_kw = args(True)  # the same values, read from copies taken before the call
    for n in ("qw", "kw", "cs"):
        want_a[n] = want_a[n].clone()
    want_kw = {n: t.clone() if n != "k_out" else t for n, t in want_kw.items()}
    _go(a, **kw)
    assert fast_ops == {"fast": 1, "general": 1}, f"{name}: the fast call did not decline"
    _go(want_a, cache_op.general, **want_kw)
    _equal(_state(a, [a["ko"]]), _state(want_a, [want_a["ko"]]))


@pytest.mark.parametrize("name", [n for n in FAST_CASES if "mrope" not in n])
def test_express_call_equals_general_call(fast_ops, name):
    """After a fast call, the same call on fresh tensors runs in the express call (``ops/_express.py``,
    through stand-in records and the interpreter) and writes exactly what the general call writes."""
    from qknorm.ops import _express
    if not _express.set_test_launch(True):
        pytest.skip("compiled launch module unavailable")
    try:
        case = dict(FAST_CASES[name])
        call = case.pop("call", {})
        res = []
        for way in ("general", "fast", "express", "express again"):
            a, kw = _setup(**case)
            kw, extra = _call_kwargs(a, kw, call)
            _express.hits.clear()
            fast_before = fast_ops["fast"]
            r = _go(a, cache_op.general if way == "general" else None, **kw)
            if way.startswith("express"):
                assert _express.hits == ["qk_norm_rope_cache_kernel"] and fast_ops["fast"] == fast_before, name
            assert r is kw.get("q_out", a["q"])
            res.append(_state(a, extra))
        for got in res[1:]:
            _equal(res[0], got)
    finally:
        _express.set_test_launch(False)
        _plan.clear_caches()
