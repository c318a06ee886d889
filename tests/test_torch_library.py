"""torch.ops.qknorm.* custom ops: schema/fake checks (opcheck), torch.compile(fullgraph=True)
tracing of model code that calls the public functions, and eager calls skipping the op layer.

Most compile tests use backend="aot_eager": it runs the same Dynamo tracing and AOT
functionalisation (where mutation annotations matter) as inductor, without minutes of C++
compilation on a 2-core CI machine. One small case runs inductor itself.
"""
import pytest
import torch

import qknorm
from qknorm import torch_library as TL  # noqa: F401 - registers the ops
from helpers import packed_qkv

ops = torch.ops.qknorm


def _inputs(t=3, hq=4, hkv=2, d=64, dtype=torch.float32):
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, "cpu", torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    qw = torch.randn(d, generator=g)
    kw = torch.randn(d, generator=g)
    x = torch.randn(t, 128, generator=g)
    r = torch.randn(t, 128, generator=g)
    w = torch.randn(128, generator=g)
    return qkv, qw, kw, x, r, w


@pytest.mark.parametrize("name", ["rms_norm", "rms_norm_", "fused_add_rms_norm", "qk_rms_norm", "qk_rms_norm_"])
def test_opcheck(name):
    qkv, qw, kw, x, r, w = _inputs()
    q = torch.randn(3, 4, 64)
    k = torch.randn(3, 2, 64)
    args = {
        "rms_norm": [(x, w, 1e-6, 0.0), (x, None, 1e-5, 0.0)],
        "rms_norm_": [(x.clone(), w, 1e-6, 1.0)],
        "fused_add_rms_norm": [(x.clone(), r.clone(), w, 1e-6, 0.0), (x.clone(), r.clone(), None, 1e-6, 0.0)],
        "qk_rms_norm": [(q, k, qw, kw, 1e-6, 0.0), (q, k, None, None, 1e-6, 0.0)],
        "qk_rms_norm_": [(q.clone(), k.clone(), qw, kw, 1e-6, 0.5)],
    }[name]
    op = getattr(ops, name).default
    for a in args:
        torch.library.opcheck(op, a)


def test_schemas_declare_mutation():
    import re
    mut = lambda name, s: re.search(r"Tensor\(\w+!\) " + name + r"\b", s)  # noqa: E731
    assert mut("x", str(ops.rms_norm_.default._schema))
    s = str(ops.fused_add_rms_norm.default._schema)
    assert mut("x", s) and mut("residual", s) and not mut("weight", s)
    s = str(ops.qk_rms_norm_.default._schema)
    assert mut("q", s) and mut("k", s) and not mut("q_weight", s)
    assert "!" not in str(ops.qk_rms_norm.default._schema)
    assert "!" not in str(ops.rms_norm.default._schema)


def layer(qkv, qw, kw, x, r, w):
    """Model-like code calling the public API: packed QKV normalised in place, a residual
    block, functional calls with and without weights."""
    t = qkv.shape[0]
    q = qkv[:, :4 * 64].view(t, 4, 64)
    k = qkv[:, 4 * 64:6 * 64].view(t, 2, 64)
    qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k)
    qn, kn = qknorm.qk_rms_norm(q, k, qw, kw, 1e-5, weight_offset=1.0)
    y = qknorm.rms_norm(x, w, 1e-6)
    z = qknorm.rms_norm(y, None, 1e-6)
    qknorm.fused_add_rms_norm(x, r, w, 1e-6)
    out = torch.empty_like(z)
    qknorm.rms_norm(z, w, out=out)
    qknorm.rms_norm(z, w, out=z)
    return qkv * 2, qn.sum() + kn.sum(), y + 1, out, z


def _check_compiled(fn, backend, graphs=None):
    args = _inputs()
    ref_args = [a.clone() for a in args]
    ref = layer(*ref_args)
    got_args = [a.clone() for a in args]
    got = torch.compile(fn, fullgraph=True, backend=backend)(*got_args)
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b)
    for a, b in zip(ref_args, got_args):  # mutations of inputs (qkv, x, r) happened
        torch.testing.assert_close(a, b)
    assert not torch.equal(got_args[0], args[0]) and not torch.equal(got_args[4], args[4])


def test_compile_fullgraph_aot_eager():
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd
        return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)

    _check_compiled(layer, backend)
    assert len(graphs) == 1, "one graph: no graph break"
    code = graphs[0].code
    # every form traces to a functional op (+ copy_): Inductor never reinplaces a mutating qknorm op
    for name in ("qknorm.qk_rms_norm", "qknorm.rms_norm", "qknorm.fused_add_rms_norm_functional"):
        assert name in code, name
    import re
    mutating = re.findall(r"qknorm\.(?:qk_rms_norm_|rms_norm_|fused_add_rms_norm)[.(]", code)
    assert not mutating, mutating


def test_compile_inductor_small():
    """Inductor on the CPU path (C++ codegen; the slowest test here, kept to one small case)."""
    torch._dynamo.reset()

    def f(qkv, qw, kw, x, w):
        t = qkv.shape[0]
        q = qkv[:, :4 * 64].view(t, 4, 64)
        k = qkv[:, 4 * 64:6 * 64].view(t, 2, 64)
        qknorm.qk_rms_norm(q, k, qw, kw, 1e-6, q_out=q, k_out=k)
        return qknorm.rms_norm(x, w, 1e-6)

    qkv, qw, kw, x, _, w = _inputs()
    a, b = qkv.clone(), qkv.clone()
    ref = f(a, qw, kw, x, w)
    got = torch.compile(f, fullgraph=True, backend="inductor")(b, qw, kw, x, w)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(b, a)


def test_nn_modules_compile():
    torch._dynamo.reset()
    norm = qknorm.nn.RMSNorm(128, eps=1e-6).requires_grad_(False)
    qk = qknorm.nn.QKNorm(64).requires_grad_(False)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        qk.q_weight.uniform_(0.5, 1.5)

    def f(x, qkv):
        t = qkv.shape[0]
        q = qkv[:, :4 * 64].view(t, 4, 64)
        k = qkv[:, 4 * 64:6 * 64].view(t, 2, 64)
        qk(q, k, in_place=True)
        return norm(x)

    qkv, _, _, x, _, _ = _inputs()
    a, b = qkv.clone(), qkv.clone()
    ref = f(x, a)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x, b)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(b, a)


def test_config_under_compile_is_refused():
    torch._dynamo.reset()
    cfg = qknorm.KernelConfig(rows=1, block_d=128)

    def f(x):
        return qknorm.rms_norm(x, None, config=cfg)
    with pytest.raises(Exception, match="config= is not supported under torch.compile"):
        torch.compile(f, fullgraph=True, backend="eager")(torch.randn(2, 128))


def test_eager_calls_skip_the_custom_op_layer(monkeypatch):
    """Plain eager calls never touch torch.ops.qknorm (its dispatcher costs host time)."""
    from qknorm import torch_library as TL

    def boom(*args, **kwargs):
        raise AssertionError("eager call routed through the custom op")
    for name in TL.__all__:  # the traced_* and autograd_* routes of qknorm.functional
        monkeypatch.setattr(TL, name, boom)
    qkv, qw, kw, x, r, w = _inputs()
    qknorm.rms_norm(x, w)
    qknorm.fused_add_rms_norm(x, r, w)
    qknorm.qk_rms_norm(qkv[:, :256].view(3, 4, 64), qkv[:, 256:384].view(3, 2, 64), qw, kw)


def test_custom_ops_match_eager():
    qkv, qw, kw, x, r, w = _inputs()
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6, 0.5), qknorm.rms_norm(x, w, 1e-6, weight_offset=0.5))
    q = qkv[:, :256].view(3, 4, 64)
    k = qkv[:, 256:384].view(3, 2, 64)
    a, b = ops.qk_rms_norm(q, k, qw, kw, 1e-6, 0.0)
    c, d = qknorm.qk_rms_norm(q, k, qw, kw)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(b, d)
    ops.qk_rms_norm_(q, k, qw, kw, 1e-6, 0.0)
    torch.testing.assert_close(q, c)
    torch.testing.assert_close(k, d)


def test_fake_impl_checks_metadata():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(3, 64)
        y = ops.rms_norm(x, None, 1e-6, 0.0)
        assert y.shape == x.shape and y.is_contiguous()
        with pytest.raises(ValueError, match=r"weight must have shape \(64,\)"):
            ops.rms_norm(x, torch.empty(32), 1e-6, 0.0)
        q, k = torch.empty(2, 4, 64).transpose(0, 1), torch.empty(4, 2, 64)
        a, b = ops.qk_rms_norm(q, k, None, None, 1e-6, 0.0)
        assert a.shape == q.shape and a.is_contiguous() and b.shape == k.shape


@pytest.mark.gpu
def test_gpu_compile_inductor_and_cudagraphs():
    """torch.compile on CUDA: inductor with CUDA graphs (mode="reduce-overhead")."""
    torch._dynamo.reset()
    dev = "cuda"
    qkv, q, k, _ = packed_qkv(8, 32, 8, 128, torch.bfloat16, dev)
    qw = torch.rand(128, device=dev) + 0.5
    kw = torch.rand(128, device=dev) + 0.5
    x = torch.randn(8, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.rand(4096, device=dev) + 0.5

    def f(buf, xx):
        qq, kk = buf[:, :32 * 128].view(8, 32, 128), buf[:, 32 * 128:40 * 128].view(8, 8, 128)
        qknorm.qk_rms_norm(qq, kk, qw, kw, q_out=qq, k_out=kk)
        return qknorm.rms_norm(xx, w) * 2

    ref_buf = qkv.clone()
    ref = f(ref_buf, x)
    cf = torch.compile(f, fullgraph=True, mode="reduce-overhead")
    for _ in range(3):  # warm-up, record, replay
        buf = qkv.clone()
        got = cf(buf, x)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(buf, ref_buf)


def _rope_inputs(t=5, hq=4, hkv=2, d=64, rotary=32, dtype=torch.float32):
    qkv, q, k, v = packed_qkv(t, hq, hkv, d, dtype, "cpu", torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    qw, kw = torch.randn(d, generator=g), torch.randn(d, generator=g)
    ang = torch.arange(16.0)[:, None] * torch.rand(rotary // 2, generator=g)[None, :]
    cache = torch.cat((ang.cos(), ang.sin()), dim=-1)
    pos = torch.randint(0, 16, (t,), generator=g)
    return qkv, q, k, v, qw, kw, cache, pos


@pytest.mark.parametrize("name", ["qk_rms_norm_rope", "qk_rms_norm_rope_"])
def test_opcheck_rope(name):
    _, q, k, _, qw, kw, cache, pos = _rope_inputs()
    q, k = q.contiguous(), k.contiguous()
    op = getattr(ops, name).default
    torch.library.opcheck(op, (q.clone(), k.clone(), qw, kw, cache, pos, 1e-6, True, 32, 0.0))
    torch.library.opcheck(op, (q.clone(), k.clone(), None, None, cache, pos.int(), 1e-6, False, 32, 0.0))


def test_rope_schemas_declare_mutation():
    import re
    s = str(ops.qk_rms_norm_rope_.default._schema)
    assert re.search(r"Tensor\(\w+!\) q\b", s) and re.search(r"Tensor\(\w+!\) k\b", s)
    assert not re.search(r"!\) (q_weight|k_weight|cos_sin_cache|positions)", s)
    assert "!" not in str(ops.qk_rms_norm_rope.default._schema)


@pytest.mark.parametrize("in_place", [True, False], ids=["in_place", "new_outputs"])
def test_rope_compile_fullgraph(in_place):
    """qk_rms_norm_rope in model code traces into one graph with the custom op and matches eager."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        from torch._dynamo.backends.common import aot_autograd
        return aot_autograd(fw_compiler=lambda g, _: g)(gm, example_inputs)

    def f(qkv, qw, kw, cache, pos):
        t = qkv.shape[0]
        q = qkv[:, :4 * 64].view(t, 4, 64)
        k = qkv[:, 4 * 64:6 * 64].view(t, 2, 64)
        if in_place:
            qknorm.qk_rms_norm_rope(q, k, qw, kw, cache, pos, 1e-6, rotary_dim=32, q_out=q, k_out=k)
            return qkv * 1.0
        qo, ko = qknorm.qk_rms_norm_rope(q, k, qw, kw, cache, pos, 1e-6, rotary_dim=32, is_neox=False)
        return qo + 0.0, ko * 1.0

    qkv, _, _, _, qw, kw, cache, pos = _rope_inputs()
    a, b = qkv.clone(), qkv.clone()
    ref = f(a, qw, kw, cache, pos)
    got = torch.compile(f, fullgraph=True, backend=backend)(b, qw, kw, cache, pos)
    assert len(graphs) == 1
    assert "qknorm.qk_rms_norm_rope" in graphs[0].code  # functional also in place (then copy_)
    assert "qknorm.qk_rms_norm_rope_." not in graphs[0].code and "qknorm.qk_rms_norm_rope_(" not in graphs[0].code
    for x, y in zip(got if isinstance(got, tuple) else (got,), ref if isinstance(ref, tuple) else (ref,)):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(b, a)


def test_functional_fused_add_fake_takes_what_the_op_takes():
    """The functional fused add only reads x and residual (one out-of-place launch): its fake, like
    its body, takes inputs the in-place op refuses to write (an expanded x), and still checks
    shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(64).expand(4, 64)
    r = torch.randn(4, 64)
    y, s = torch.ops.qknorm.fused_add_rms_norm_functional(x, r, None, 1e-6, 0.0)
    assert y.shape == s.shape == (4, 64)
    r2 = r[:2].clone()
    with FakeTensorMode() as mode:
        fx, fr, fr2 = mode.from_tensor(x), mode.from_tensor(r), mode.from_tensor(r2)
        fy, fs = torch.ops.qknorm.fused_add_rms_norm_functional(fx, fr, None, 1e-6, 0.0)
        assert fy.shape == (4, 64)
        with pytest.raises(ValueError, match="residual must have the shape"):
            torch.ops.qknorm.fused_add_rms_norm_functional(fx, fr2, None, 1e-6, 0.0)


def test_compile_with_dynamic_shapes_takes_sizes_as_arguments():
    """``torch.compile(dynamic=True)``: the width is a SymInt while tracing, and the defaults derived from it
    (``rotary_dim=None`` is the head width) or sizes a caller computes from shapes (``group_size``) reach the
    ops' checks as SymInts; each op compiles once and matches eager at two token counts."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(16, generator=g)
    cs = torch.randn(8, 16, generator=g)

    def rope(q, k, pos):
        return qknorm.qk_rms_norm_rope(q, k, w, w, cs, pos)

    def prologue(q, k, v, pos, kc, vc, sm):
        qknorm.qk_norm_rope_cache(q, k, v, w, w, cs, pos, kc, vc, sm)
        return q * 1.0, kc * 1.0, vc * 1.0

    def quant(x):
        return qknorm.rms_norm_quant(x, None, group_size=x.shape[-1] // 2)

    for fn in (rope, prologue, quant):
        torch._dynamo.reset()
        compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
        for t in (3, 5):
            q, k = torch.randn(t, 2, 16, generator=g), torch.randn(t, 1, 16, generator=g)
            pos = torch.randint(0, 8, (t,), generator=g)
            args = {rope: lambda: (q, k, pos),
                    prologue: lambda: (q.clone(), k, k * 2, pos, torch.zeros(4, 2, 1, 16), torch.zeros(4, 2, 1, 16),
                                       torch.arange(t)),
                    quant: lambda: (torch.randn(t, 32, generator=g),)}[fn]()
            ref = fn(*[a.clone() for a in args])
            got = compiled(*[a.clone() for a in args])
            for a, b in zip(got, ref):
                torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0, msg=f"{fn.__name__} T={t}")
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_functions_under_fake_tensor_mode(backend):
    """Under a FakeTensorMode outside torch.compile (shape propagation) every public op takes the traced path, as
    under compile: the outputs' shapes and dtypes are the real call's. Before, the fused forms and the prologue
    raised "x and residual overlap in memory" (fake tensors have no storage) and the plain forms reached the
    kernel path on the triton backend."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    def calls(x, r, w, q, k, v, cs, pos, kc, vc, sm):
        return {
            "rms_norm": lambda: qknorm.rms_norm(x, w),
            "rms_norm out": lambda: qknorm.rms_norm(x, w, out=torch.empty_like(x)),
            "fused_add_rms_norm": lambda: qknorm.fused_add_rms_norm(x.clone(), r.clone(), w),
            "qk_rms_norm": lambda: qknorm.qk_rms_norm(q.clone(), k.clone(), None, None),
            "qk_rms_norm_rope": lambda: qknorm.qk_rms_norm_rope(q.clone(), k.clone(), None, None, cs, pos),
            "rms_norm_quant": lambda: qknorm.rms_norm_quant(x, None, group_size=128),
            "fused_add_rms_norm_quant": lambda: qknorm.fused_add_rms_norm_quant(x, r.clone(), None, group_size=128),
            "qk_norm_rope_cache": lambda: qknorm.qk_norm_rope_cache(q.clone(), k, v, None, None, cs, pos, kc.clone(),
                                                                    vc.clone(), sm),
        }

    # the Triton backend's kernels run on the GPU where there is one, else in the interpreter (CI sets it)
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"

    def inputs():
        g = torch.Generator().manual_seed(0)
        return tuple(t.to(device) for t in (
            torch.randn(3, 256, generator=g), torch.randn(3, 256, generator=g), torch.randn(256, generator=g),
            torch.randn(2, 4, 64, generator=g), torch.randn(2, 2, 64, generator=g),
            torch.randn(2, 2, 64, generator=g), torch.randn(8, 64, generator=g), torch.tensor([0, 3]),
            torch.zeros(4, 2, 2, 64), torch.zeros(4, 2, 2, 64), torch.tensor([0, 5])))

    def meta(res):
        return [(tuple(t.shape), t.dtype) for t in (res if isinstance(res, tuple) else (res,))]

    with qknorm.use_backend(backend):
        real = {name: meta(fn()) for name, fn in calls(*inputs()).items()}
        with FakeTensorMode() as mode:
            fakes = [mode.from_tensor(t) for t in inputs()]
            for name, fn in calls(*fakes).items():
                assert meta(fn()) == real[name], name


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_public_functions_under_fake_tensor_mode_check_as_eagerly(backend):
    """Shape propagation reports what an eager call would: the outputs' shape and dtype rules raise the eager
    call's errors (the traced path alone copied into any broadcastable ``out``), and a valid ``config`` is
    accepted (it only picks a kernel)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from qknorm import KernelConfig

    x, r, w = torch.randn(3, 256), torch.randn(3, 256), torch.randn(256)
    q, k = torch.randn(2, 4, 64), torch.randn(2, 2, 64)
    cs, pos = torch.randn(8, 64), torch.zeros(2, dtype=torch.long)
    cfg = KernelConfig(rows=1, block_d=256, num_warps=4)
    with qknorm.use_backend(backend), FakeTensorMode() as mode:
        fx, fr, fw, fq, fk, fcs, fpos = (mode.from_tensor(t) for t in (x, r, w, q, k, cs, pos))
        with pytest.raises(ValueError, match="out must have the shape of x"):
            qknorm.rms_norm(fx, fw, out=torch.empty(2, 3, 256))
        with pytest.raises(TypeError, match="out must have the dtype of x"):
            qknorm.rms_norm(fx, fw, out=torch.empty(3, 256, dtype=torch.float16))
        with pytest.raises(ValueError, match="weight must have shape"):
            qknorm.rms_norm(fx, fw[:10], config=cfg)
        assert qknorm.rms_norm(fx, fw, config=cfg).shape == x.shape
        assert qknorm.fused_add_rms_norm(fx, fr, fw, config=cfg)[0].shape == x.shape
        with pytest.raises(ValueError, match="q_out must have the shape of q"):
            qknorm.qk_rms_norm(fq, fk, None, None, q_out=torch.empty(2, 3, 4, 64))
        with pytest.raises(TypeError, match="q_out must have the dtype of q"):
            qknorm.qk_rms_norm_rope(fq, fk, None, None, fcs, fpos, q_out=torch.empty(2, 4, 64, dtype=torch.float16))
