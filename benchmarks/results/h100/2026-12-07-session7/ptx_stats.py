"""sm_90 PTX of the row kernels with pointers and the row strides specialised as at run time (16-byte aligned,
divisible by 16): barriers and shuffles in the whole kernel and before the first branch (the common path)."""
import re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from qknorm.kernels.fused_add import fused_add_rms_norm_kernel
from qknorm.kernels.qk_norm import qk_rms_norm_kernel
from qknorm.kernels.rms_norm import rms_norm_kernel
FLOATS = {"eps", "eps_tiny", "w_offset"}
DIV16 = {p + s for p in ("", "q", "k") for s in ("xs0", "xs1", "xs2", "ys0", "ys1", "ys2", "rs0", "rs1", "rs2")}
ONE = {"xsd", "ysd", "rsd", "ws", "qws", "kws", "qxsd", "qysd", "kxsd", "kysd"}
def compile_(kernel, ptrs, consts, num_warps):
    names = list(kernel.arg_names)
    consts = {n: v for n, v in consts.items() if n in names}
    consts.update({n: 1 for n in ONE if n in names})
    sig = {n: ptrs.get(n) or ("constexpr" if n in consts else "fp32" if n in FLOATS else "i32") for n in names}
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n in ptrs or n in DIV16}
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(n),): v for n, v in consts.items()}, attrs=attrs)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]
    body = ptx[:ptx.find(" bra ")] if " bra " in ptx else ptx
    return dict(bar=ptx.count("bar.sync"), shfl=ptx.count("shfl.sync"), bar_before_branch=body.count("bar.sync"),
                shfl_before_branch=body.count("shfl.sync"), ld_v4=ptx.count("ld.global.v4") + ptx.count("ld.global.nc.v4"))
base = {"HAS_WEIGHT": True, "ROWS": 1, "PERSISTENT": False, "USE_PDL": False, "CHUNKED": 0}
rows = {"X": "*bf16", "Y": "*bf16", "W": "*bf16"}
qk = {"XQ": "*bf16", "YQ": "*bf16", "WQ": "*bf16", "XK": "*bf16", "YK": "*bf16", "WK": "*bf16"}
for name, k, p, c, w in (("rms 4096 r1 w8", rms_norm_kernel, rows, dict(base, D=4096, BLOCK_D=4096), 8),
                         ("add 4096 r1 w8", fused_add_rms_norm_kernel, {"X": "*bf16", "R": "*bf16", "W": "*bf16"}, dict(base, D=4096, BLOCK_D=4096), 8),
                         ("rms 128 r16 w8", rms_norm_kernel, rows, dict(base, D=128, ROWS=16, BLOCK_D=128), 8),
                         ("qk 128 r16 w8", qk_rms_norm_kernel, qk, dict(base, D=128, ROWS=16, BLOCK_D=128), 8),
                         ("qk 128 r32 w4", qk_rms_norm_kernel, qk, dict(base, D=128, ROWS=32, BLOCK_D=128), 4)):
    print(f"{name:16s}", compile_(k, p, c, w))
