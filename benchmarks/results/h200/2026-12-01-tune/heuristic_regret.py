import json, math, torch, importlib
from qknorm import dispatch
from qknorm.tuned_table import load_table
t = load_table("/tmp/hp/h200.json")
regs = []
missing = 0
for (op, dt, D, rows), e in sorted(t.entries.items()):
    alts = dict(e.alternatives)
    n = e.n_rows or rows
    c = dispatch.heuristic(op, torch.bfloat16, D, n, 132)[0]
    us = alts.get(c.name)
    if us is None:
        missing += 1; print("not measured", op, D, n, c.name); continue
    r = us / e.us
    regs.append(r)
    if r > 1.05: print(f"{op:20s} D={D:5d} n={n:7d} heur {c.name:16s} {us:7.2f}  best {e.config.name:18s} {e.us:7.2f}  +{100*(r-1):.1f}%")
g = math.exp(sum(map(math.log, regs)) / len(regs))
print(f"geomean +{100*(g-1):.2f}%  worst +{100*(max(regs)-1):.1f}%  n={len(regs)} missing={missing}")
