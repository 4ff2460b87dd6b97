#!/usr/bin/env python3
"""Regenerates the current-results table at the top of docs/benchmarks.md and
the chart docs/benchmarks.svg from one run of the criterion benches.

    python3 scripts/bench-report.py            # full run (about an hour on 2 cores)
    python3 scripts/bench-report.py --quick    # short measurement windows (minutes; noisier)
    python3 scripts/bench-report.py --no-run   # only rebuild the table from target/criterion

Every figure in the table is a criterion median from the run this script
started (target/criterion/<group>/<bench>/new/estimates.json), and every
ratio is taken between two medians of that same run. The table names the
command, the date, the machine and the commit. The Redis comparisons start
their own redis-server on free loopback ports (benches/vs_redis.rs,
benches/web.rs); without redis-server those rows say "not run".
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
SVG = os.path.join(ROOT, "docs", "benchmarks.svg")
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"

# (label, bench file, group, bench id, comparison group, comparison id, what the ratio means)
ROWS = [
    ("validate, cache hit (100k sessions, random)", "store", "validate", "hit", None, None, None),
    ("validate, cache hit (100 hot sessions)", "store", "validate", "hit/100-hot", None, None, None),
    ("validate, cache miss (4k cache, 200k sessions)", "store", "validate", "miss", None, None, None),
    ("validate vs Redis GET + decode, 1 caller", "vs_redis", "validate", "cloakroom/1-caller", "validate", "redis/1-caller", "faster"),
    ("verify_access HS256 vs bare jsonwebtoken decode", "tokens", "verify_access", "HS256/cloakroom", "verify_access", "HS256/bare-jsonwebtoken-decode", "cost"),
    ("verify_access EdDSA vs bare jsonwebtoken decode", "tokens", "verify_access", "EdDSA/cloakroom", "verify_access", "EdDSA/bare-jsonwebtoken-decode", "cost"),
    ("durable create vs Redis (AOF always), 1 caller", "vs_redis", "create-immediate-vs-always", "cloakroom/1-caller", "create-immediate-vs-always", "redis/1-caller", "faster"),
    ("durable create vs Redis (AOF always), 64 callers", "vs_redis", "create-immediate-vs-always", "cloakroom/64-callers", "create-immediate-vs-always", "redis/64-callers", "faster"),
    ("eventual create vs Redis (everysec), 1 caller", "vs_redis", "create-eventual-vs-everysec", "cloakroom/1-caller", "create-eventual-vs-everysec", "redis/1-caller", "faster"),
    ("eventual create vs Redis (everysec), 64 callers", "vs_redis", "create-eventual-vs-everysec", "cloakroom/64-callers", "create-eventual-vs-everysec", "redis/64-callers", "faster"),
    ("revoke one session vs Redis", "vs_redis", "revoke", "cloakroom/one", "revoke", "redis/one", "faster"),
    ("refresh (rotate) vs Redis", "vs_redis", "revoke", "cloakroom/refresh", "revoke", "redis/refresh", "faster"),
    ("HTTP GET with a session, 1 connection: vs tower-sessions + Redis store", "web", "web/get/1-conns", "cloakroom", "web/get/1-conns", "tower-sessions-redis", "faster"),
    ("HTTP GET with a session, 64 connections: vs tower-sessions + Redis store", "web", "web/get/64-conns", "cloakroom", "web/get/64-conns", "tower-sessions-redis", "faster"),
    ("HTTP GET, 64 connections: vs tower-sessions + moka cache + Redis", "web", "web/get/64-conns", "cloakroom", "web/get/64-conns", "tower-sessions-moka-redis", "faster"),
    ("sweep of expired sessions", "sweep", "sweep", None, None, None, None),
]

# Where `run` keeps each bench's console output (parsed for the figures
# criterion does not measure, e.g. memory per session).
LOGS = os.path.join(TARGET, "bench-report")


def sh(cmd, env=None, log=None):
    """Runs `cmd`; with `log`, its output also goes to target/bench-report/<log>."""
    print("+", " ".join(cmd), flush=True)
    if log is None:
        return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}).returncode
    os.makedirs(LOGS, exist_ok=True)
    with open(os.path.join(LOGS, log), "w") as out:
        p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
        for line in p.stdout:
            sys.stdout.write(line)
            out.write(line)
        return p.wait()


def logged(log, pattern):
    """The first match of `pattern` in a bench's kept output, or None."""
    try:
        with open(os.path.join(LOGS, log)) as f:
            m = re.search(pattern, f.read())
            return m if m else None
    except OSError:
        return None


def median(group, bench):
    path = os.path.join(TARGET, "criterion", group.replace("/", "_"), bench.replace("/", "_"), "new", "estimates.json")
    try:
        with open(path) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError):
        return None


def sweep_benches():
    d = os.path.join(TARGET, "criterion", "sweep")
    return sorted(n for n in os.listdir(d) if os.path.isdir(os.path.join(d, n)) and n != "report") if os.path.isdir(d) else []


def human(ns):
    if ns is None:
        return "not run"
    for unit, div in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= div:
            return f"{ns / div:.3g} {unit}"
    return f"{ns:.0f} ns"


def machine():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.+)", f.read())
            model = m.group(1).strip() if m else model
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemTotal:\s+(\d+)", f.read()).group(1))
            mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} × {model}{mem}, {platform.system()} {platform.release()}"


def table(cmd):
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        BEGIN,
        "## Current results",
        "",
        f"One run of `{cmd}` — {now}, commit `{rev}`, {machine()}. Criterion medians;",
        "each ratio is between two medians of this run. Regenerate with the same command.",
        "",
        "| what | bench | cloakroom | compared with | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    bars = []
    for label, file, group, bench, cgroup, cbench, kind in ROWS:
        if group == "sweep":
            for b in sweep_benches():
                lines.append(f"| {label}: `{b}` | `cargo bench --bench sweep` | {human(median('sweep', b))} | | |")
            if not sweep_benches():
                lines.append(f"| {label} | `cargo bench --bench sweep` | not run | | |")
            continue
        ours = median(group, bench)
        theirs = median(cgroup, cbench) if cgroup else None
        ratio = ""
        if ours and theirs:
            if kind == "faster":
                ratio = f"{theirs / ours:.2f}× faster"
                bars.append((label, theirs / ours))
            else:
                ratio = f"{ours / theirs:.2f}× the bare decode"
        comp = human(theirs) if cgroup else ""
        lines.append(f"| {label} | `{file}`: `{group}/{bench}` | {human(ours)} | {comp} | {ratio} |")
    m = logged("store.log", r"open/1M-sessions: (\d+) sessions, indexes (\d+) bytes \((\d+) bytes per session\)")
    mem = f"{m.group(3)} B" if m else "not run"
    lines.append(f"| memory per session (in-memory indexes, 1M sessions) | `store`: `open/1M-sessions` output | {mem} | | |")
    lines += [
        "",
        "![cloakroom vs Redis, this run](benchmarks.svg)",
        "",
        "Not in this table: `cloakroom bench` load runs (authoritative for tail",
        "latency and throughput under many callers; criterion is authoritative for",
        "per-call medians): see the sections below and docs/benchmarks-history.md.",
        END,
    ]
    return "\n".join(lines), bars


def chart(bars):
    w, row, left = 760, 26, 330
    h = 40 + row * max(1, len(bars))
    top = max([b for _, b in bars] + [1.0])
    scale = (w - left - 70) / top
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<text x="10" y="18" font-weight="bold">How many times faster than the Redis-backed equivalent (this run)</text>']
    for i, (label, r) in enumerate(bars):
        y = 30 + i * row
        out.append(f'<text x="10" y="{y + 15}">{label[:48]}</text>')
        out.append(f'<rect x="{left}" y="{y + 3}" width="{max(1, r * scale):.1f}" height="{row - 8}" fill="#4a7"/>')
        out.append(f'<text x="{left + r * scale + 5:.1f}" y="{y + 15}">{r:.2f}×</text>')
    one = left + scale
    out.append(f'<line x1="{one:.1f}" y1="26" x2="{one:.1f}" y2="{h - 4}" stroke="#c33" stroke-dasharray="3,3"/>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="short measurement windows")
    ap.add_argument("--no-run", action="store_true", help="rebuild the table from target/criterion only")
    a = ap.parse_args()
    crit = ["--", "--warm-up-time", "0.5", "--measurement-time", "2", "--sample-size", "10"] if a.quick else []
    cmd = "python3 scripts/bench-report.py" + (" --quick" if a.quick else "")
    if not a.no_run:
        for b in ("store", "tokens", "sweep"):
            if sh(["cargo", "bench", "--bench", b] + crit, log=f"{b}.log") != 0:
                sys.exit(f"bench {b} failed")
        env = {"CLOAKROOM_BENCH_QUICK": "1"} if a.quick else {}
        for b in ("vs_redis", "web"):
            if sh(["cargo", "bench", "--all-features", "--bench", b], env, log=f"{b}.log") != 0:
                sys.exit(f"bench {b} failed")
    text, bars = table(cmd)
    with open(DOC) as f:
        doc = f.read()
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        head, _, rest = doc.partition("\n")
        doc = head + "\n\n" + text + "\n" + rest
    with open(DOC, "w") as f:
        f.write(doc)
    with open(SVG, "w") as f:
        f.write(chart(bars))
    print(f"wrote {DOC} and {SVG}")


if __name__ == "__main__":
    main()
