"""gen.py ROOT MODULE KERNEL WARPS OUT key=val ... : compile for sm_90 with the JIT's usual specialisation
(unit strides constexpr 1, 16-divisible pointers and ints), write nvdisasm SASS to OUT. ``key=value``: a
constexpr (or a unit-stride override); ``NAME=*fp32``: a pointer's element type (default ``*bf16``)."""
import sys, re, os, subprocess, tempfile, importlib
root, mod, kname, warps, out = sys.argv[1:6]
sys.path.insert(0, root)
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
K = getattr(importlib.import_module("qknorm.kernels." + mod), kname)
consts, ptr_types = {}, {}
for kv in sys.argv[6:]:
    k, v = kv.split("=")
    if v.startswith("*"):  # a pointer's element type, e.g. CS=*fp32 (default *bf16)
        ptr_types[k] = v
        continue
    consts[k] = {"True": True, "False": False}.get(v, None) if v in ("True", "False") else (float(v) if "." in v else int(v))
names = list(K.arg_names)
for n in names:
    if re.fullmatch(r"[a-z]*[xyro]sd|[qk]?[xy]sd|[qk]?ws|ws|N2|[qk]N2", n) and n not in consts: consts[n] = 1
consts = {k: v for k, v in consts.items() if k in names}
FLOATS = {"eps", "eps_tiny", "w_offset", "ub"}
ptrs = set(names[:names.index("eps")])  # every kernel takes its pointers first, then eps
sig = {n: (ptr_types.get(n, "*bf16") if n in ptrs else "constexpr" if n in consts else "fp32" if n in FLOATS
           else "i32") for n in names}
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if sig[n].startswith("*") or sig[n] == "i32"}
src = ASTSource(fn=K, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()}, attrs=attrs)
ck = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": int(warps)})
nvd = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/nvdisasm")
f = tempfile.NamedTemporaryFile(suffix=".cubin", delete=False); f.write(ck.asm["cubin"]); f.close()
open(out, "w").write(subprocess.run([nvd, "-c", f.name], capture_output=True, text=True).stdout)
cuo = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
res = subprocess.run([cuo, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
print(re.findall(r"REG:\d+|SHARED:\d+", res))
print(out, {k: v for k, v in sig.items() if v != "i32" and v != "fp32"})
