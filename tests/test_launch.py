"""The cached launcher (launch.py) and the ops' fast path, without a GPU.

* ``int_spec`` against Triton's own specialisation of ints.
* Protocol detection per Triton version / launcher signature.
* The launcher's state machine (compile -> verify -> fast; fallbacks) driven through the
  installed Triton's real ``CudaLauncher.__call__`` with a recording stand-in for its C
  ``launch`` function: the fast call must pass exactly what Triton passes.
* Under TRITON_INTERPRET=1 every launch is plain.
(The ops' fast path on CPU tensors: ``tests/ops/test_plan.py``.)
"""
import inspect
import os

import pytest
import torch

import qknorm
from qknorm import launch as L
from helpers import assert_matches, packed_qkv, ref_norm, ref_add_norm, randn

triton = pytest.importorskip("triton")


# --------------------------------------------------------------------------- int_spec

def _triton_int_spec(v):
    """Triton's (type, key) for an int argument, from the installed Triton."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
        return native_specialize_impl(BaseBackend, v, False, True, True)
    except ImportError:  # Triton 3.4 / 3.5: Python specialisation
        from triton.runtime.jit import create_specialize_impl
        from triton.backends.compiler import BaseBackend
        return create_specialize_impl(BaseBackend.get_arg_specialization)(v)


@pytest.mark.parametrize("v", [0, 1, 2, 8, 15, 16, 17, 24, 32, 40, 4096, -1, -16, -17, 2**31 - 16, 2**31 - 1, 2**31,
                               2**31 + 16, -(2**31), -(2**31) - 1, -(2**31) - 16, 2**40, 2**40 + 3, 2**63 - 16,
                               2**63, 2**63 + 16, 2**64 - 1])
def test_int_spec_matches_triton(v):
    ty, key = _triton_int_spec(v)
    code = L.int_spec(v)
    if ty == "constexpr":
        assert code == 1 and v == 1
        return
    assert code != 1
    assert bool(code & 2) == (key == "D"), (v, ty, key)
    assert {"i32": 0, "i64": 4, "u64": 8}[ty] == code & 12, (v, ty, key)


def test_align_bits():
    assert L.align_bits(0, 16, 32) == 0
    assert L.align_bits(2, 16, 8) == 0b101


# --------------------------------------------------------------------------- protocol detection

class _Call3436:
    def __call__(self, gridX, gridY, gridZ, stream, function, *args):
        pass


class _Call3739:
    def __call__(self, gridX, gridY, gridZ, stream, function, kernel_metadata, launch_metadata,
                 launch_enter_hook, launch_exit_hook, *args):
        pass


@pytest.mark.parametrize("version,cls,fmt,want", [
    ("3.4.0", _Call3436, "iiiKKppOOOOO", "L34"),
    ("3.5.1", _Call3436, "iiiKKppOOOOOO", "L35"),
    ("3.6.0", _Call3436, "iiiKKppOOOOOO", "L35"),
    ("3.6.0", _Call3436, "iiiKKppOOOOO", None),      # format does not match the version
    ("3.4.0", _Call3436, "iiiKKppOOOOOO", None),
    ("3.7.0", _Call3739, None, "L37"),
    ("3.8.0", _Call3739, None, "L37"),
    ("3.9.0", _Call3739, None, "L37"),
    ("3.9.0", _Call3436, None, None),                # signature does not match the version
    ("3.10.0", _Call3739, None, None),               # unknown version: plain launches
    ("3.3.1", _Call3436, "iiiKKppOOOOO", None),
    ("4.0.0", _Call3739, None, None),
])
def test_detect_protocol(version, cls, fmt, want):
    got, why = L.detect_protocol(version, cls, fmt)
    assert got == want, why
    assert version in why


def test_installed_triton_protocol_is_known():
    """The installed Triton's real launcher class is recognised (CI has 3.9, the GPU image 3.6)."""
    from triton.backends.nvidia import driver as nv
    got, why = L.detect_protocol(triton.__version__, nv.CudaLauncher, getattr(nv, "_BASE_ARGS_FORMAT", None))
    ver = tuple(int(p) for p in triton.__version__.split(".")[:2])
    if (3, 4) <= ver <= (3, 9):
        assert got is not None, why
    else:
        assert got is None


def test_interpreter_means_plain_launches():
    assert os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available()
    if torch.cuda.is_available():
        pytest.skip("interpreter not in use")
    got, why = L.detect_protocol()
    assert got is None and "TRITON_INTERPRET" in why
    L.init()
    assert L.PROTOCOL is None and not L.enabled()
    L.set_enabled(True)  # cannot switch on without a protocol
    assert not L.enabled()
    with qknorm.use_backend("triton"):
        qknorm.rms_norm(torch.randn(3, 32))
    states = [s for s in L.entry_states() if s[0] == "rms_norm_kernel"]
    assert states and all(s[3] == L.PLAIN for s in states)


def test_every_launch_pins_fp_fusion():
    """Triton's FMA contraction is fixed for every qknorm kernel (``launch.FP_FUSION``), not left to the
    installed Triton's default (3.10 turns it off, which would change the kernels' last bits): every
    compile goes through ``KernelLauncher.plain``."""
    seen = []

    class Recorder:
        arg_names = ["X", "Y", "n", "eps", "BLOCK"]

        def __getitem__(self, grid):
            return lambda *a, **kw: seen.append(kw)

    kl = L.KernelLauncher(Recorder(), ("X", "Y"))
    kl.plain((1,), (0, 0, 64, 1e-6, 128), (torch.empty(1), torch.empty(1)), {"num_warps": 4})
    assert L.FP_FUSION is True and seen == [{"enable_fp_fusion": True, "num_warps": 4}]


# --------------------------------------------------------------------------- the state machine

class FakeCK:
    """A CompiledKernel stand-in holding a real CudaLauncher of the installed Triton."""

    def __init__(self, launcher):
        self.run = launcher
        self.function = 0xF00
        self.packed_metadata = (4, 1, 0)


class FakeJit:
    """``kernel[grid](*args, **kw)`` as Triton's JITFunction.run does it: the compiled kernel's
    ``run(grid, stream, function, packed_metadata, launch_metadata, hooks, *args)``."""

    arg_names = ["X", "Y", "n", "eps", "BLOCK"]

    def __init__(self, launcher):
        self.ck = FakeCK(launcher)
        self.plain_calls = 0

    def __getitem__(self, grid):
        def call(*args, **kwargs):
            self.plain_calls += 1
            from triton import knobs
            g = tuple(grid) + (1, 1)
            ck = self.ck
            ck.run(g[0], g[1], g[2], L._raw_stream(0), ck.function, ck.packed_metadata, None,
                   knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *args)
            return ck
        return call


def _real_launcher(record):
    from triton.backends.nvidia.driver import CudaLauncher
    lz = object.__new__(CudaLauncher)
    lz.launch = lambda *a: record.append(a)
    lz.global_scratch_size = 0
    lz.global_scratch_align = 1
    lz.profile_scratch_size = 0
    lz.profile_scratch_align = 1
    lz.launch_cooperative_grid = False
    lz.launch_pdl = True  # differs from coop: a swap would show
    lz.num_ctas = 1
    lz.gsan_enabled = False
    lz.arg_annotations = ["annotations"]
    lz.kernel_signature = b"signature"
    return lz


@pytest.fixture
def fake_cuda(monkeypatch):
    """The launch module as on a GPU with the installed Triton's protocol; yields the recorder."""
    from triton.backends.nvidia import driver as nv
    from triton.runtime import driver as rd
    proto, why = L.detect_protocol(triton.__version__, nv.CudaLauncher, getattr(nv, "_BASE_ARGS_FORMAT", None))
    if proto is None:
        pytest.skip(why)
    params = list(inspect.signature(nv.CudaLauncher.__init__).parameters)
    assert params == ["self", "src", "metadata"]
    L.init()
    monkeypatch.setattr(L, "PROTOCOL", proto)
    monkeypatch.setattr(L, "_enabled", True)
    monkeypatch.setattr(L, "_current_device", lambda: 0)
    monkeypatch.setattr(L, "_raw_stream", lambda dev: 0x5EED)
    monkeypatch.setattr(rd, "_active", object())  # CudaLauncher.__call__ reads driver.active (3.8+)
    record = []
    yield record


def _kernel_args(x, y):
    return (x.data_ptr(), y.data_ptr(), 64, 1e-6, 128), (x, y)


def test_compile_verify_fast(fake_cuda):
    record = fake_cuda
    jit = FakeJit(_real_launcher(record))
    kl = L.KernelLauncher(jit, ("X", "Y"))
    entries = kl.entries(("spec",), 2)
    x, y = torch.zeros(64), torch.zeros(64)
    args, tensors = _kernel_args(x, y)
    for i in range(4):
        L.run(kl, entries, 0, (3, 1, 1), args, tensors, {"num_warps": 4}, 0)
    assert jit.plain_calls == 2, "first call compiles, second verifies, then fast"
    assert entries[0].state == L.FAST, entries[0].why
    assert len(record) == 4
    triton_call, fast_call = record[1], record[3]
    # Triton passed tensors where the fast call passes their data_ptr ints; all else identical
    assert L.compare_calls(L.PROTOCOL, fast_call, triton_call) == ""
    assert fast_call[0:3] == (3, 1, 1) and fast_call[3] == 0x5EED and fast_call[4] == 0xF00
    flat = fast_call[-1] if L.PROTOCOL == "L37" else fast_call[-5:]
    assert tuple(flat) == args


def test_fast_call_that_raises_falls_back_for_good(fake_cuda):
    record = fake_cuda
    launcher = _real_launcher(record)
    jit = FakeJit(launcher)
    kl = L.KernelLauncher(jit, ("X", "Y"))
    entries = kl.entries(("spec",), 2)
    args, tensors = _kernel_args(torch.zeros(64), torch.zeros(64))
    for _ in range(2):
        L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
    assert entries[0].state == L.FAST

    e = entries[0]
    real_go = e.go

    def boom(*a):
        raise RuntimeError("launch failed")
    e.go = boom
    L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)  # redone on the plain path
    assert e.state == L.PLAIN and "launch failed" in e.why and e.go is None
    n = jit.plain_calls
    L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
    assert jit.plain_calls == n + 1, "stays plain"
    assert real_go is not None


def test_verification_mismatch_stays_plain(fake_cuda):
    record = fake_cuda

    class Liar(FakeJit):  # Triton launches something other than what we would pack
        def __getitem__(self, grid):
            inner = super().__getitem__(grid)
            return lambda *a, **k: inner(*a[:-1], 256, **k)

    jit = Liar(_real_launcher(record))
    kl = L.KernelLauncher(jit, ("X", "Y"))
    entries = kl.entries(("spec",), 2)
    args, tensors = _kernel_args(torch.zeros(64), torch.zeros(64))
    for _ in range(4):
        L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
    assert entries[0].state == L.PLAIN and "verification failed" in entries[0].why
    assert jit.plain_calls == 4


def test_scratch_and_gsan_kernels_get_no_fast_call(fake_cuda):
    for attr, value, why in [("global_scratch_size", 128, "scratch"), ("profile_scratch_size", 64, "scratch"),
                             ("gsan_enabled", True, "GSan")]:
        launcher = _real_launcher(fake_cuda)
        setattr(launcher, attr, value)
        st, reason = L._launcher_state(FakeCK(launcher), L.PROTOCOL)
        assert st is None and why in reason
    st, reason = L._launcher_state(FakeCK(_real_launcher(fake_cuda)), L.PROTOCOL)
    assert st is not None and st["function"] == 0xF00


def test_active_launch_hook_takes_plain_path(fake_cuda):
    record = fake_cuda
    from triton import knobs
    jit = FakeJit(_real_launcher(record))
    kl = L.KernelLauncher(jit, ("X", "Y"))
    entries = kl.entries(("spec",), 2)
    args, tensors = _kernel_args(torch.zeros(64), torch.zeros(64))
    for _ in range(2):
        L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
    assert entries[0].state == L.FAST
    seen = []
    hook = knobs.runtime.launch_enter_hook
    if not hasattr(hook, "add"):
        pytest.skip("Triton < 3.5: hooks are plain attributes")
    hook.add(seen.append)
    try:
        n = jit.plain_calls
        L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
        assert jit.plain_calls == n + 1, "a profiler hook must see the launch"
    finally:
        hook.remove(seen.append)
    L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
    assert jit.plain_calls == n + 1


def test_disabled_means_plain(fake_cuda, monkeypatch):
    monkeypatch.setattr(L, "_enabled", False)
    jit = FakeJit(_real_launcher(fake_cuda))
    kl = L.KernelLauncher(jit, ("X", "Y"))
    entries = kl.entries(("spec",), 2)
    args, tensors = _kernel_args(torch.zeros(64), torch.zeros(64))
    for _ in range(3):
        L.run(kl, entries, 0, (1, 1, 1), args, tensors, {}, 0)
    assert jit.plain_calls == 3 and entries[0].state == L.PLAIN


@pytest.mark.parametrize("protocol", ["L34", "L35", "L37"])
def test_compare_calls_catches_differences(protocol):
    x = torch.zeros(4)
    rec = []
    go = L._make_go(protocol, lambda *a: rec.append(a), 0xF00, False, False, (4, 1, 0), ["a"], b"s")
    go((2, 1, 1), 77, (x.data_ptr(), 5, 1e-6, True))
    ours = rec[0]
    # "Triton's" call: tensors in pointer slots
    if protocol == "L37":
        theirs = ours[:-1] + ((x, 5, 1e-6, True),)
    else:
        theirs = ours[:-4] + (x, 5, 1e-6, True)
    assert L.compare_calls(protocol, ours, theirs) == ""
    swapped = list(theirs)
    swapped[0], swapped[1] = 1, 2
    assert L.compare_calls(protocol, ours, tuple(swapped)) != ""
    other = torch.zeros(4)
    bad = ours[:-1] + ((other, 5, 1e-6, True),) if protocol == "L37" else ours[:-4] + (other, 5, 1e-6, True)
    assert "kernel argument 0" in L.compare_calls(protocol, ours, bad)
    wrong_type = ours[:-1] + ((x, 5.0, 1e-6, True),) if protocol == "L37" else ours[:-4] + (x, 5.0, 1e-6, True)
    assert L.compare_calls(protocol, ours, wrong_type) != ""
    assert L.compare_calls(protocol, ours, theirs[:-1]) != ""


# --------------------------------------------------------------------------- on a GPU

@pytest.mark.gpu
def test_gpu_entries_become_fast_and_match_plain():
    """On CUDA with a known Triton: compile, verify, then fast; fast results == plain results."""
    dev = "cuda"
    qkv, q, k, _ = packed_qkv(16, 32, 8, 128, torch.bfloat16, dev)
    qw = torch.rand(128, device=dev) + 0.5
    kw = torch.rand(128, device=dev) + 0.5
    x = torch.randn(16, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.rand(4096, device=dev) + 0.5
    r = torch.randn_like(x)

    def step(buf, xx, rr):
        qq, kk = buf[:, :32 * 128].view(16, 32, 128), buf[:, 32 * 128:40 * 128].view(16, 8, 128)
        qknorm.qk_rms_norm(qq, kk, qw, kw, q_out=qq, k_out=kk)
        y = qknorm.rms_norm(xx, w)
        qknorm.fused_add_rms_norm(xx, rr, w)
        return y

    L.set_enabled(False)
    plain = [qkv.clone(), x.clone(), r.clone()]
    y_plain = step(*plain)
    L.set_enabled(True)
    if L.PROTOCOL is None:
        pytest.skip(L.PROTOCOL_REASON)
    for _ in range(3):
        fast = [qkv.clone(), x.clone(), r.clone()]
        y_fast = step(*fast)
    torch.cuda.synchronize()
    states = L.entry_states()  # set_enabled(True) cleared the older ones: these are step()'s
    assert {s[0] for s in states} == {"rms_norm_kernel", "qk_rms_norm_kernel", "fused_add_rms_norm_kernel"}
    for s in states:
        assert s[3] == L.FAST, s
    assert torch.equal(y_fast, y_plain)
    for a, b in zip(fast, plain):
        assert torch.equal(a, b)


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_of_fast_launches():
    dev = "cuda"
    x = torch.randn(4, 4096, device=dev, dtype=torch.bfloat16)
    w = torch.rand(4096, device=dev) + 0.5
    for _ in range(3):
        qknorm.rms_norm(x, w, out=torch.empty_like(x))
    out = torch.empty_like(x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        qknorm.rms_norm(x, w, out=out)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        qknorm.rms_norm(x, w, out=out)
    x.copy_(torch.randn_like(x))
    out.zero_()
    g.replay()
    torch.cuda.synchronize()
    assert_matches(out, ref_norm(x, w), torch.bfloat16)
