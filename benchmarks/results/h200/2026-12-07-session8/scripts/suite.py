"""suite.py: the whole test suite on one GPU machine, in K processes at once (Triton compiles are CPU-bound; the
node ids are dealt round-robin so each process gets a share of every file). Each shard's log goes to
/tmp/suite/shard<i>.log (the failures' short tracebacks are copied into the summary); a summary of the pass/fail/skip counts and every failure to $OUT/suite/summary.txt (each failure's
head and tail: the exception is at the end of a long traceback; before session 14 the first 6000 characters).
    python suite.py K SECONDS [pytest paths...]"""
import os, re, subprocess, sys, time

k, limit, paths = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:] or ["tests"]
out = os.path.join(os.environ.get("OUT", "/tmp"), "suite")
logs = "/tmp/suite"  # $OUT brings back a few files only: the logs stay on the machine, the summary quotes them
os.makedirs(out, exist_ok=True)
os.makedirs(logs, exist_ok=True)
t0 = time.time()
col = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *paths],
                     capture_output=True, text=True)
ids = [ln for ln in col.stdout.splitlines() if "::" in ln]
print(f"collected {len(ids)} in {time.time() - t0:.0f}s", flush=True)
procs = []
for i in range(k):
    with open(f"{logs}/ids{i}.txt", "w") as f:
        f.write("\n".join(ids[i::k]))
    log = open(f"{logs}/shard{i}.log", "w")
    procs.append(subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short", "-rfE",
                                   *ids[i::k]], stdout=log, stderr=subprocess.STDOUT))
for p in procs:
    try:
        p.wait(timeout=max(1.0, limit - (time.time() - t0)))
    except subprocess.TimeoutExpired:
        p.kill()
totals, failed = {}, []
for i in range(k):
    text = open(f"{logs}/shard{i}.log").read()
    last = [ln for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped)", ln)]
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|deselected)", last[-1] if last else ""):
        totals[what] = totals.get(what, 0) + int(n)
    failed += [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    if "FAILED" in text or " ERROR " in text or "= ERRORS =" in text:
        # each failure's head and tail (the exception message is at the end of a long traceback)
        tb = text.split("= FAILURES =", 1)[-1] if "= FAILURES =" in text else text
        blocks = re.split(r"\n(?=_{5,} .* _{5,}\n)", tb)
        kept = [b if len(b) <= 2500 else b[:700] + "\n[...]\n" + b[-1800:] for b in blocks]
        failed.append(f"--- shard {i} tracebacks ---\n" + "\n".join(kept)[:12000])
    if not last:
        failed.append(f"shard {i}: no summary line (killed at the time limit?), rc={procs[i].returncode}")
with open(f"{out}/summary.txt", "w") as f:
    f.write(f"{len(ids)} collected, {k} processes, {time.time() - t0:.0f}s\n{totals}\n" + "\n".join(failed) + "\n")
print(open(f"{out}/summary.txt").read())
