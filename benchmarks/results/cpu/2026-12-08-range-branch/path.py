"""Instructions one warp executes on the common path of an nvdisasm listing (``path.py LISTING``): a
conditional branch is taken when its fall-through side starts the fp32-range rescue (the ``2**-72``
constant, 2.1175823681357508477e-22, within its next 32 instructions) and not taken otherwise (the Q/K
split, row masks, BRA.DIV: the first segment, full rows, converged warps); unconditional branches are
followed; the walk stops at an unpredicated EXIT."""
import collections
import re
import sys

HI = "2.1175823681357508477e-22"
ins, labels = [], {}
for raw in open(sys.argv[1]).read().splitlines():
    lab = re.match(r"^(\.L_x_\d+):", raw)
    if lab:
        labels[lab.group(1)] = len(ins)
        continue
    m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", raw)
    if m:
        ins.append(m.group(1))


def rescue_at(i):
    """Whether the rescue starts within 32 instructions from ``i`` (unconditional branches followed)."""
    for _ in range(32):
        if i >= len(ins):
            return False
        if HI in ins[i]:
            return True
        i = labels[re.search(r"\((\.L_x_\d+)\)", ins[i]).group(1)] if re.match(r"^BRA\s", ins[i]) else i + 1
    return False


i, n, steps = 0, collections.Counter(), 0
while i < len(ins) and steps < 100000:
    s = ins[i]
    steps += 1
    pred = re.match(r"^@!?U?P\w+\s+", s)
    body = re.sub(r"^@!?U?P\w+\s+", "", s)
    op = body.split()[0]
    n[op.split(".")[0]] += 1
    if op.startswith("EXIT") and not pred:
        break
    if op.startswith("BRA"):
        tgt = labels[re.search(r"\((\.L_x_\d+)\)", body).group(1)]
        if not pred and not op.startswith("BRA.DIV"):
            i = tgt
            continue
        if not op.startswith("BRA.DIV") and rescue_at(i + 1) and not rescue_at(tgt):
            i = tgt
            continue
    i += 1
print(sum(n.values()), dict(n.most_common(8)))
