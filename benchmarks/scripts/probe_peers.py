"""Print the peer libraries' versions and the signatures of their norm entry points (GPU machine)."""
import importlib
import inspect
import traceback


def show(mod, names):
    try:
        m = importlib.import_module(mod)
    except Exception as e:
        print(f"{mod}: import failed: {type(e).__name__}: {e}")
        return None
    print(f"{mod}: {getattr(m, '__version__', '')} at {getattr(m, '__file__', '')}")
    for n in names:
        f = getattr(m, n, None)
        if f is None:
            print(f"  {n}: missing")
            continue
        try:
            print(f"  {n}{inspect.signature(f)}")
        except Exception:
            print(f"  {n}: {f!r}")
    return m


show("flashinfer", [])
fi = show("flashinfer.norm", ["rmsnorm", "fused_add_rmsnorm", "gemma_rmsnorm", "gemma_fused_add_rmsnorm", "rmsnorm_cute", "qk_rmsnorm"])
if fi:
    print("  names:", [n for n in dir(fi) if not n.startswith("__")])
    try:
        src = inspect.getsource(fi.rmsnorm)
        print(src[:3000])
    except Exception:
        traceback.print_exc()
show("flashinfer.rope", ["apply_rope_with_cos_sin_cache_inplace", "apply_rope_with_cos_sin_cache"])
q = show("quack", [])
if q:
    print("  names:", [n for n in dir(q) if not n.startswith("_")])
qr = show("quack.rmsnorm", ["rmsnorm", "rmsnorm_fwd", "_rmsnorm_fwd"])
if qr:
    print("  names:", [n for n in dir(qr) if not n.startswith("__")][:80])
show("liger_kernel.ops.rms_norm", ["LigerRMSNormFunction", "rms_norm_forward"])
show("liger_kernel.transformers.rms_norm", ["LigerRMSNorm"])
for m in ("vllm", "sgl_kernel"):
    show(m, [])
