"""The compiled parts of the fast call (``native.py``, ``_native/*.c``): ``describe`` against its
Python twin, the launch record's packing, and on a GPU the compiled launch against Triton's."""
import struct

import pytest
import torch

import qknorm
from qknorm import launch, native
from qknorm.ops import _plan

CUDA = torch.cuda.is_available()


def _tensors():
    base = torch.randn(4096)
    z = torch.randn(4, 8, dtype=torch.complex64)
    return {
        "contiguous": torch.randn(3, 4),
        "same meta": torch.randn(3, 4),
        "other dtype": torch.randn(3, 4, dtype=torch.bfloat16),
        "transposed": torch.randn(4, 3).t(),
        "strided": base.as_strided((3, 4), (100, 2)),
        "size-1 dim": base.as_strided((1, 4), (999, 1)),
        "size-1 dim, other stride": base.as_strided((1, 4), (7, 1)),
        "expanded": base[:4].expand(3, 4),
        "offset view": base[5:17].view(3, 4),
        "empty": torch.empty(0, 4),
        "0-d": torch.tensor(1.0),
        "parameter": torch.nn.Parameter(torch.randn(3, 4), requires_grad=False),
        "int64": torch.arange(12).view(3, 4),
        "fp8": torch.zeros(3, 4, dtype=torch.float8_e4m3fn),
        "negated view": z.conj().imag,
        "sparse": torch.randn(3, 4).to_sparse(),
    }


@pytest.fixture(params=["compiled", "python"])
def describe_grad(request):
    """``describe`` (compiled, or its Python twin) with the grad flag first."""
    if request.param == "python":
        return native.describe_py
    m = native.load()
    if m is None:
        pytest.skip(f"compiled describe unavailable: {native.reason()}")
    return m.describe


@pytest.fixture
def describe(describe_grad):
    """``describe`` outside grad mode."""
    return lambda *a: describe_grad(False, *a)


def test_describe_refuses_tensors_that_require_grad_only_in_grad_mode(describe_grad):
    x, w = torch.randn(2, 8), torch.randn(8, requires_grad=True)
    p = torch.nn.Parameter(torch.randn(8))
    assert describe_grad(False, x, w) is not None and describe_grad(False, x, p) is not None
    assert describe_grad(True, x, w) is None and describe_grad(True, x, p) is None
    assert describe_grad(True, x, w.detach(), None) is not None


def test_describe_groups_exactly_by_metadata(describe):
    ts = _tensors()
    for name, t in ts.items():
        d = describe(t)
        refused = name in ("negated view", "sparse")
        assert (d is None) == refused, name
        if not refused:
            assert d[1] == t.get_device() and d[2] == t.data_ptr(), name
    keys = {n: describe(t) for n, t in ts.items() if n not in ("negated view", "sparse")}
    for a, ta in keys.items():
        for b, tb in keys.items():
            same = (ts[a].shape, ts[a].stride(), ts[a].dtype) == (ts[b].shape, ts[b].stride(), ts[b].dtype)
            assert (ta[0] == tb[0]) == same, (a, b)
            if same:
                assert hash(ta[0]) == hash(tb[0])


def test_describe_positions_and_refusals(describe):
    x, w = torch.randn(2, 8), torch.randn(8)
    a, b = describe(x, w, None), describe(x, None, w)
    assert a[0] != b[0] and a[2:] == (x.data_ptr(), w.data_ptr(), None) and b[2:] == (x.data_ptr(), None, w.data_ptr())
    assert describe(None)[1] == -1
    for bad in ("x", 3, [x], torch.Size([2]), x.numpy()):
        assert describe(x, bad) is None, type(bad)

    class Sub(torch.Tensor):
        pass

    assert describe(x.as_subclass(Sub)) is None


def test_describe_forms_agree_with_each_other():
    m = native.load()
    if m is None:
        pytest.skip(native.reason())
    ts = [t for n, t in _tensors().items()]
    for t in ts:
        a, b = m.describe(False, t, None, t), native.describe_py(False, t, None, t)
        assert (a is None) == (b is None)
        if a is not None:
            assert a[1:] == b[1:]


class _Sig:
    """A stand-in for a compiled kernel: what ``launch_record`` reads."""

    def __init__(self, signature, shared=0, num_warps=4, pdl=False):
        self.src = type("Src", (), {"signature": signature})()
        self.metadata = type("Md", (), {"num_ctas": 1, "shared": shared, "num_warps": num_warps})()
        self.function = 0x1234
        self.packed_metadata = (num_warps, 1, shared)
        self.run = type("CudaLauncher", (), {"global_scratch_size": 0, "profile_scratch_size": 0,
                                               "launch_cooperative_grid": False, "launch_pdl": pdl,
                                               "arg_annotations": None, "kernel_signature": None})()


def test_launch_record_packs_every_parameter(monkeypatch):
    monkeypatch.setattr(launch, "PROTOCOL", "L35")
    sig = {"X": "*bf16", "Y": "*bf16", "eps": "fp32", "n": "i32", "big": "i64", "ONE": "constexpr", "B": "constexpr"}
    kl = type("KL", (), {"arg_names": list(sig), "name": "k"})()
    plan = type("P", (), {"launcher": kl, "tail": (1e-6, -5, 2**40, 1, 128), "grid": (7, 1, 1), "device": 0})()
    ck = _Sig(sig, shared=512, num_warps=8, pdl=True)
    sizes = [8, 8, 4, 4, 8, 8, 8]
    rec, why = launch.launch_record(lambda f: [(0, s) for s in sizes], plan, ck, (11, 22))
    assert why == "" and rec is not None
    h = launch._RECORD_HEAD.unpack(rec[:launch._RECORD_HEAD.size])
    fn, gx, gy, gz, block, shared, dev, flags, nparams, nhead, hslot, hkind = h[:12]
    assert (fn, gx, gy, gz, block, shared, dev, flags, nparams, nhead) == (0x1234, 7, 1, 1, 256, 512, 0, 1, 7, 2)
    assert hslot[:2] == bytes([0, 1]) and hkind[:2] == b"pp"
    slots = struct.unpack("<7Q", rec[launch._RECORD_HEAD.size:])
    assert slots[2] == struct.unpack("<I", struct.pack("<f", 1e-6))[0]
    assert slots[3] == (-5) & 0xFFFFFFFF and slots[4] == 2**40 and slots[5:] == (0, 0)
    # the driver's parameter list must agree, else no record
    assert launch.launch_record(lambda f: [(0, s) for s in sizes[:-1]], plan, ck, (11, 22))[0] is None
    assert launch.launch_record(lambda f: None, plan, ck, (11, 22))[0] is None
    bad = dict(sig, n="u64")
    assert launch.launch_record(lambda f: [(0, s) for s in sizes], plan, _Sig(bad), (11, 22))[0] is None
    monkeypatch.setattr(launch, "PROTOCOL", "L34")
    assert launch.launch_record(lambda f: [(0, s) for s in sizes], plan, ck, (11, 22))[0] is None


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_compiled_launch_matches_triton_launch():
    """Every op, called until its plans run through the compiled launch, gives the bits of
    Triton's own launcher on fresh data each call (in place, out of place, weights, RoPE)."""
    if native.load_launcher() is None:
        pytest.skip(native.reason(launcher=True))
    dev, dt = "cuda", torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)

    def r(*s, dtype=dt):
        return torch.randn(*s, device=dev, dtype=dtype, generator=g)

    T, D = 37, 128
    cs = torch.randn(4096, D, device=dev)
    pos = torch.randint(0, 4096, (T,), device=dev, generator=g)
    kc = torch.zeros(16, 16, 8, D, device=dev, dtype=dt)
    vc = torch.zeros(16, 16, 8, D, device=dev, dtype=dt)
    slots = torch.randperm(256, device=dev, generator=g)[:T]

    def calls(inp):
        x, res, w, qkv, qw, kw = inp
        q, k, v = qkv[:, :32 * D].view(T, 32, D), qkv[:, 32 * D:40 * D].view(T, 8, D), qkv[:, 40 * D:].view(T, 8, D)
        out = [qknorm.rms_norm(x, w), qknorm.rms_norm(x[:, :4000], w[:4000])]
        xa, ra = x.clone(), res.clone()
        out += list(qknorm.fused_add_rms_norm(xa, ra, w))
        q2, k2 = q.clone(), k.clone()
        out += list(qknorm.qk_rms_norm(q2, k2, qw, kw, q_out=q2, k_out=k2)) + list(qknorm.qk_rms_norm(q, k, qw, kw))
        out += list(qknorm.qk_rms_norm_rope(q, k, qw, kw, cs, pos))
        out += list(qknorm.rms_norm_quant(x, w))
        q3 = q.clone()
        out += [qknorm.qk_norm_rope_cache(q3, k, v, qw, kw, cs, pos, kc, vc, slots), kc.clone(), vc.clone()]
        return [o.float() if o.dtype.itemsize == 1 else o for o in out]

    inputs = [(r(T, 4096), r(T, 4096), r(4096), r(T, 48 * D), r(D), r(D)) for _ in range(8)]
    launch.record_stats.clear()
    got = [calls(i) for i in inputs]
    armed = {k for k, v in launch.record_stats.items() if v.get("armed")}
    assert {"rms_norm_kernel", "qk_rms_norm_kernel"} <= armed, launch.record_stats
    express = native.load_launcher().launches()
    calls(inputs[0])  # every plan armed by now: the four ops' calls run in the express call
    assert native.load_launcher().launches() - express >= 7
    launch.set_enabled(False)  # Triton's own kernel[grid] launches
    try:
        want = [calls(i) for i in inputs]
    finally:
        launch.set_enabled(True)
    for i, (a, b) in enumerate(zip(got, want)):
        for j, (u, v) in enumerate(zip(a, b)):
            assert torch.equal(u, v), (i, j)
    assert not launch._record_errors


def test_describe_tells_int8_from_the_shell_dtypes_sharing_its_dlpack_code(describe):
    """DLPack gives torch.int1..int7 (uint1..uint7) the code of int8 (uint8): never one key."""
    a, b = describe(torch.empty(4, 64, dtype=torch.int8)), describe(torch.empty(4, 64, dtype=torch.int4))
    assert a is not None and (b is None or b[0] != a[0])
    c, d = describe(torch.empty(4, 64, dtype=torch.uint8)), describe(torch.empty(4, 64, dtype=torch.uint3))
    assert c is not None and (d is None or d[0] != c[0]) and c[0] != a[0]


def test_a_quant_output_of_a_shell_dtype_is_refused_after_an_int8_one(monkeypatch):
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    if CUDA:
        pytest.skip("CPU stand-in for the CUDA fast path")
    x, w = torch.randn(4, 64), torch.ones(64)
    with qknorm.use_backend("triton"):
        qknorm.rms_norm_quant(x, w, 1e-6, out_dtype=torch.int8, out=torch.empty(4, 64, dtype=torch.int8))
        with pytest.raises(TypeError, match="out"):
            qknorm.rms_norm_quant(x, w, 1e-6, out_dtype=torch.int8, out=torch.empty(4, 64, dtype=torch.int4))


def test_clear_forgets_launch_records():
    rec = launch.Records([b"x", False, None])
    launch._record_lists[id(rec)] = rec
    launch.clear()
    assert list(rec) == [None, None, None]


def test_cpu_fast_call_with_none_positions_raises_the_general_error(monkeypatch):
    monkeypatch.setattr(_plan, "FAST_ON_CPU", True)
    if CUDA:
        pytest.skip("CPU stand-in for the CUDA fast path")
    q, k, w = torch.randn(2, 4, 64), torch.randn(2, 2, 64), torch.ones(64)
    cs = torch.randn(16, 64)
    with qknorm.use_backend("triton"), pytest.raises(TypeError, match="positions"):
        qknorm.qk_rms_norm_rope(q, k, w, w, cs, None)


def test_our_dlpack_abi_matches_torchs_header(tmp_path):
    """``_native/dlpack_abi.h`` (hand-written, so the C files need no torch headers) has the
    layout of torch's own ``ATen/dlpack.h``: sizes and field offsets, compiled both ways."""
    import os
    import shutil
    import subprocess
    cc = shutil.which("cc") or shutil.which("gcc")
    inc = os.path.join(os.path.dirname(torch.__file__), "include")
    if cc is None or not os.path.exists(os.path.join(inc, "ATen", "dlpack.h")):
        pytest.skip("needs a C compiler and torch's headers")
    probe = r'''
#include <stdio.h>
#include <stddef.h>
HEADER
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu %zu\n", sizeof(DLTensor), offsetof(DLTensor, ndim), offsetof(DLTensor, dtype),
         offsetof(DLTensor, shape), offsetof(DLTensor, strides), offsetof(DLTensor, byte_offset), sizeof(DLDataType));
  printf("%zu %zu %zu\n", sizeof(DLPackExchangeAPI), offsetof(DLPackExchangeAPI, dltensor_from_py_object_no_sync),
         offsetof(DLPackExchangeAPI, current_work_stream));
  printf("%d %d %d\n", (int)kDLCPU, (int)kDLCUDA, (int)kDLROCM);
  return 0;
}
'''
    outs = []
    for name, header in (("torch", '#include "ATen/dlpack.h"'), ("ours", native.source_text("dlpack_abi.h"))):
        src = tmp_path / f"{name}.c"
        src.write_text(probe.replace("HEADER", header))
        exe = tmp_path / name
        subprocess.run([cc, "-I", inc, "-o", str(exe), str(src)], check=True, capture_output=True, timeout=600)  # hang guard only
        outs.append(subprocess.run([str(exe)], check=True, capture_output=True, text=True,
                                   timeout=600).stdout)  # hang guard only
    assert outs[0] == outs[1]


def _launch_module_uninitialised():
    """The compiled launch module without ``init`` (no CUDA driver here): ``pick`` needs none."""
    try:
        from triton.runtime.build import compile_module_from_src
        return compile_module_from_src(src=native.source_text("launchcall.c"), name="qknorm_launchcall")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"cannot build launchcall.c here: {e}")


def test_pick_takes_the_record_of_the_pointers_alignment_and_idle_hooks():
    m = _launch_module_uninitialised()
    try:
        _pick_cases(m)
    finally:  # the module is the process's launcher too: give it Triton's hooks back
        launch.init()
        m.set_hooks(launch._rt, launch._HookChain if launch._HookChain.__module__.startswith("triton") else None)


def _pick_cases(m):
    recs = launch.Records([b"aligned", b"first odd", None, False])
    m.set_hooks(None, None)
    assert m.pick(recs, 4096, 8192, 1.5) == b"aligned"  # floats after the pointers: not counted
    assert m.pick(recs, 4097, 8192) == b"first odd"
    assert m.pick(recs, 4096, 8200) is None  # entry 2: no record yet
    assert m.pick(recs, 4100, 8200) is None  # entry 3: none possible
    assert m.pick(recs, 4096, 8192, 24) is None  # entry 4: past the list
    assert m.pick([], 1) is None and m.pick((b"x",), 0) is None  # not a record list
    for head in ((4096, 8192), (4097, 8192), (4096, 8200, 3), (5, 6, 7, 2.0), ()):
        assert launch.bits_of(head) == (launch.align_bits(*[p for p in head if type(p) is int]) if head else 0)

    class Chain:
        def __init__(self, calls):
            self.calls = calls

    class Runtime:
        launch_enter_hook = Chain([])
        launch_exit_hook = None

    rt = Runtime()
    m.set_hooks(rt, Chain)
    assert m.pick(recs, 4096) == b"aligned"
    rt.launch_exit_hook = Chain([print])  # a profiler's hook: Triton's own launch must run
    assert m.pick(recs, 4096) is None
    rt.launch_exit_hook = lambda *a: None  # Triton 3.4's plain callables
    assert m.pick(recs, 4096) is None

    class NotAChain:
        calls = []

    rt.launch_exit_hook = NotAChain()  # only Triton's own (empty) chains count as idle
    assert m.pick(recs, 4096) is None

    class Sneaky:  # a hook whose attribute runs code that empties the record list
        @property
        def calls(self):
            recs[:] = [None] * len(recs)
            return []

    rt.launch_exit_hook = Sneaky()
    m.set_hooks(rt, Sneaky)
    assert m.pick(recs, 4096) is None  # the list is read after the hooks: no freed record used
    assert m.pick(recs, *range(16, 16 * 40, 16)) is None  # past 30 pointers: no record
