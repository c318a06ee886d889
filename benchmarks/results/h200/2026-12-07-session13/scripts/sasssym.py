"""Symbolic per-element float dataflow of an sm_90 SASS listing (nvdisasm -c): for every global store, a
canonical hash of the float expression stored. Leaves: global loads labelled by the kernel parameters (constant
bank offsets) their address derives from; constants. Straight-line, last definition wins (both configs of a
kernel share one control structure)."""
import re, sys, hashlib, collections

names = {}
NOSLOT = frozenset()
def node(op, *kids, comm=False):
    ks = sorted(kids) if comm else list(kids)
    s = op + "(" + ",".join(ks) + ")"
    h = hashlib.sha1(s.encode()).hexdigest()[:16]
    names.setdefault(h, s)
    return h

FLOAT = {"FFMA", "FMUL", "FADD", "FMNMX", "MUFU", "FSEL", "SHFL", "F2F", "I2F", "I2FP", "FSWZADD"}

import struct
def const(a):
    try:
        if a.startswith("0x"):
            return hex(int(a, 16))
        return hex(struct.unpack("<I", struct.pack("<f", float(a)))[0])
    except ValueError:
        return a

def half_bits(x):
    return struct.unpack("<H", struct.pack("<e", float(x)))[0]

def analyze(sass):
    val, lab = {}, collections.defaultdict(frozenset)
    smem, last_load = [], [False]
    stores = collections.Counter()
    lines = sass.splitlines()
    skip_to = None
    for i, raw in enumerate(lines):
        if skip_to is not None:
            if raw.startswith(skip_to + ":"):
                skip_to = None
            continue
        b = re.search(r"@!?P\d+\s+BRA\s+`\((\.L_x_\d+)\)", raw)
        if b:  # a conditional forward branch over a slow-path call (div.rn's): keep the fast path only
            j = i + 1
            while j < len(lines) and j < i + 8 and not lines[j].startswith(b.group(1) + ":"):
                if "CALL.REL" in lines[j]:
                    skip_to = b.group(1)
                    break
                j += 1
            continue
        m = re.match(r"\s*/\*[0-9a-f]{4,}\*/\s+(.*?)\s*;", raw)
        if not m:
            continue
        pm = re.match(r"^@(!?U?P[T0-9]+)\s+", m.group(1))
        pred = pm.group(1) if pm and pm.group(1) not in ("PT",) else None
        ins = re.sub(r"^@!?U?P[T0-9]+\s+", "", m.group(1)).replace(".reuse", "")
        parts = ins.split(None, 1)
        opfull = parts[0]
        ops = [a.strip() for a in re.split(r",(?![^\[]*\])", parts[1])] if len(parts) > 1 else []
        base = opfull.split(".")[0]
        def rg(a):  # registers read by an operand
            out = []
            for r, pair in re.findall(r"\b(U?R\d+)(\.64)?", a):
                out.append(r)
                if pair:
                    out.append(r[:-len(re.sub(r'^U?R', '', r))] + str(int(re.sub(r'^U?R', '', r)) + 1))
            return out
        def params(a):
            return frozenset(x for x in re.findall(r"c\[0x0\]\[(0x[0-9a-f]+)\]", a) if 0x210 <= int(x, 16) < 0x250)
        def v(a):
            a = a.strip()
            neg = a.startswith("-")
            a2 = a.lstrip("-")
            absm = a2.startswith("|")
            a2 = a2.strip("|")
            if re.fullmatch(r"U?R\d+|RZ", a2):
                h = val.get(a2, node("c0x0" if a2 == "RZ" else "?" + ",".join(sorted(lab.get(a2, ())))))
            elif a2.startswith("c["):
                h = node("param" + a2)
            else:
                h = node("c" + const(a2))
            if absm:
                h = node("abs", h)
            if neg:
                h = node("neg", h)
            return h
        def dst_regs(a, n=1):
            r = re.match(r"(U?R)(\d+)", a)
            if not r:
                return []
            return [f"{r.group(1)}{int(r.group(2)) + i}" for i in range(n)]
        width = {"128": 4, "64": 2}
        if base == "LDG":
            w = next((width[x] for x in opfull.split(".") if x in width), 1)
            addr = ops[1]
            l = frozenset().union(*[lab[r] for r in rg(addr)]) if rg(addr) else frozenset()
            for k, d in enumerate(dst_regs(ops[0], w)):
                val[d] = node("G" + "|".join(sorted(l)) + ("" if l & NOSLOT else f"#{k}"))
                lab[d] = frozenset()
        elif base == "STG":
            w = next((width[x] for x in opfull.split(".") if x in width), 1)
            addr = ops[0]
            l = frozenset().union(*[lab[r] for r in rg(addr)])
            for k, s in enumerate(dst_regs(ops[1], w)):
                stores[("|".join(sorted(l)) + f"#{k}", val.get(s, "?"))] += 1
        elif base in ("STS", "STSM"):
            w = next((width[x] for x in opfull.split(".") if x in width), 1)
            if last_load[0]:
                smem.clear(); last_load[0] = False
            for s in dst_regs(ops[1], w):
                smem.append(val.get(s, "?"))
        elif base == "LDS":
            w = next((width[x] for x in opfull.split(".") if x in width), 1)
            last_load[0] = True
            pool = sorted(set(smem)) or ["empty"]
            for d in dst_regs(ops[0], w):
                val[d] = pool[0] if len(pool) == 1 else node("S", *pool)
        elif base in ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "MUFU", "SHFL", "FCHK", "F2F", "I2FP", "I2F"):
            if base == "SHFL":
                d, srcs = ops[1], [ops[2], ops[3]]
                val[d] = node("shfl" + srcs[1], v(srcs[0])); continue
            if base in ("FCHK",):
                continue
            d = ops[0]
            srcs = ops[1:]
            mods = ".".join(x for x in opfull.split(".")[1:] if x != "FTZ")
            if base == "FFMA":
                h = node("fma" + mods, *sorted([v(srcs[0]), v(srcs[1])]), v(srcs[2]))
            elif base == "FSEL":
                h = node("sel", v(srcs[0]), v(srcs[1]), comm=True)
            elif base == "FMNMX":
                h = node("mnmx", v(srcs[0]), v(srcs[1]), comm=True)
            else:
                h = node(base + mods, *[v(s) for s in srcs], comm=base in ("FMUL", "FADD"))
            for dd in dst_regs(d):
                if pred is not None:
                    h = node("psel", h, val.get(dd, "undef"))
                val[dd] = h; lab[dd] = frozenset()
        elif base in ("HFMA2", "CS2R"):
            for dd in dst_regs(ops[0], 2 if base == "CS2R" else 1):
                if base == "CS2R":
                    val[dd] = node("c0x0")
                elif ops[1:3] == ["-RZ", "RZ"]:
                    val[dd] = node("c" + hex(half_bits(ops[3]) << 16 | half_bits(ops[4])))
                else:
                    val[dd] = node("hfma2:" + ",".join(ops[1:]))
                lab[dd] = frozenset()
        elif base == "MOV" or base == "IMAD" and opfull == "IMAD.MOV.U32":
            src = ops[-1] if base == "MOV" else ops[-1]
            d = dst_regs(ops[0])
            if not d:
                continue
            if base == "IMAD" and ops[1] != "RZ":
                l = frozenset().union(params(",".join(ops[1:])), *[lab[r] for r in rg(",".join(ops[1:]))])
                lab[d[0]] = l; val.pop(d[0], None); continue
            if re.fullmatch(r"U?R\d+", src):
                val[d[0]] = val.get(src, v(src)); lab[d[0]] = lab[src]
            else:
                val[d[0]] = v(src); lab[d[0]] = params(src)
        else:  # integer / address / predicate work: labels flow
            if not ops:
                continue
            ds = dst_regs(ops[0])
            if base in ("ISETP", "FSETP", "PLOP3", "UISETP") or not ds:
                continue
            srcs = ",".join(ops[1:])
            l = frozenset().union(params(srcs), *[lab[r] for r in rg(srcs)])
            n = 2 if (".WIDE" in opfull or base in ("LDC",) and ".64" in opfull or opfull.startswith("ULDC.64")) else 1
            for dd in dst_regs(ops[0], n):
                lab[dd] = l; val.pop(dd, None)
    return stores

def show(h, depth=6):
    s = names.get(h, h)
    m = re.match(r"([^(]*)\((.*)\)$", s)
    if not m or depth == 0:
        return s[:60]
    op, inner = m.groups()
    return op + "(" + ", ".join(show(k, depth - 1) if re.fullmatch(r"[0-9a-f]{16}", k) else k for k in inner.split(",") if k) + ")"

if __name__ == "__main__":
    if sys.argv[1].startswith("--noslot="):
        NOSLOT = frozenset(sys.argv.pop(1).split("=")[1].split(","))
    res = {f: analyze(open(f).read()) for f in sys.argv[1:]}
    base = sys.argv[1]
    for f in sys.argv[1:]:
        print(f, "distinct (pointer, expression):", len(res[f]), "stores:", sum(res[f].values()))
    for f in sys.argv[2:]:
        a, b = set(res[base]), set(res[f])
        print(f"== {base} vs {f}: same={a == b} only_first={len(a - b)} only_second={len(b - a)}")
        da, db = collections.defaultdict(set), collections.defaultdict(set)
        for k in a - b: da[k[0]].add(k[1])
        for k in b - a: db[k[0]].add(k[1])
        for key in sorted(set(da) | set(db))[:1]:
            for h in sorted(da[key])[:1]: print("  <", key, show(h, 9)[:3000])
            for h in sorted(db[key])[:1]: print("  >", key, show(h, 9)[:3000])
