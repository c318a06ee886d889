"""rope_sass.py OUTDIR: the fp32 head_dim 256 full-rotary QK norm + RoPE configs whose rows differ by 1-4 ulp on a
GPU (session 12): runs the two default picks (T = 1, 256) and four forced configs on the same inputs, prints which
outputs are bitwise equal, and writes every compiled variant of the kernel (PTX, SASS by the bundled nvdisasm,
TTGIR, the specialisation key) to OUTDIR, for an offline per-element dataflow comparison (sasssym.py)."""
import os
import subprocess
import sys

import torch
import triton

import qknorm
from qknorm.config import KernelConfig
from qknorm.kernels.qk_norm_rope import qk_rms_norm_rope_kernel as K

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
d = 256
g = torch.Generator(device="cuda").manual_seed(d)
w = torch.randn(d, device="cuda", generator=g)
qkv = torch.randn(256, 48 * d, device="cuda", generator=g)
q, k = qkv[:, :32 * d].view(256, 32, d), qkv[:, 32 * d:40 * d].view(256, 8, d)
cs = torch.randn(512, d, device="cuda", generator=g)
pos = torch.randint(0, 512, (256,), device="cuda", generator=g)
res = {"default T=256": qknorm.qk_rms_norm_rope(q, k, w, w, cs, pos, rotary_dim=d)[0][:1]}
res["default T=1"] = qknorm.qk_rms_norm_rope(q[:1], k[:1], w, w, cs, pos[:1], rotary_dim=d)[0]
for rows, warps in ((8, 8), (8, 2), (16, 4), (1, 1)):
    cfg = KernelConfig(rows=rows, block_d=d, num_warps=warps)
    res[cfg.name] = qknorm.qk_rms_norm_rope(q[:1], k[:1], w, w, cs, pos[:1], rotary_dim=d, config=cfg)[0]
names = list(res)
for a in names:
    print(f"{a:16s}", " ".join(f"{b}={'=' if torch.equal(res[a], res[b]) else 'x'}" for b in names))
nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
caches = K.device_caches[torch.cuda.current_device()][0]
print("ptxas:", os.environ.get("TRITON_PTXAS_PATH", "(bundled)"), "compiled variants:", len(caches))
for i, (key, ck) in enumerate(caches.items()):
    base = os.path.join(out, f"v{i}_w{ck.metadata.num_warps}")
    with open(base + ".key.txt", "w") as f:
        f.write(repr(key) + "\n" + repr(ck.metadata) + "\n")
    with open(base + ".ptx", "w") as f:
        f.write(ck.asm["ptx"])
    with open(base + ".ttgir", "w") as f:
        f.write(ck.asm["ttgir"])
    with open(base + ".cubin", "wb") as f:
        f.write(ck.asm["cubin"])
    sass = subprocess.run([nvdisasm, "-c", base + ".cubin"], capture_output=True, text=True).stdout
    with open(base + ".sass", "w") as f:
        f.write(sass)
    print(f"v{i}: warps {ck.metadata.num_warps}, key {str(key)[:300]}")
