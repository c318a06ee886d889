"""Where the two-pass group form's fp32 n differs from rms_norm's kernel (GPU only): the failing case of
tests/kernels/test_rms_norm_quant.py::test_modes_formats_dtypes[g40-*] on an H100, with the differences in
fp32 ulps, the configs, and the same call with a forced config."""
import torch
import qknorm
from qknorm.ops import rms_norm_quant as Q

torch.manual_seed(2)
for dtype in (torch.float32, torch.bfloat16):
    base = torch.randn(6, 3, 168, device="cuda", dtype=dtype) * 3
    x = base[:, 1, 8:]
    w = torch.randn(160, device="cuda") * 0.5
    for cfg in (None, qknorm.KernelConfig(rows=1, block_d=256, num_warps=1)):
        dbg = torch.full(x.shape, float("nan"), device="cuda")
        Q.call(x, None, w, 1e-6, config=cfg, debug=dbg, group_size=40, weight_offset=1.0)
        ref = qknorm.rms_norm(x, w, 1e-6, weight_offset=1.0, config=cfg)
        n = dbg.to(dtype)
        it = torch.int32 if dtype == torch.float32 else torch.int16
        d = (n.view(it).long() - ref.view(it).long()).abs()
        print(dtype, cfg, "max ulps", int(d.max()), "count>0", int((d > 0).sum()), "rows", sorted(set((d > 0).nonzero()[:, 0].tolist())))
