#!/usr/bin/env python3
"""Summarise a bench/proxy.sh results folder as markdown tables.

usage: summarize.py RESULTS_DIR

Reads tput/<target>.<round>.txt (wrk), lat/<target>.<round>.json (oha) or
.txt (wrk fallback), mem.tsv and meta.env, all written by proxy.sh.
"""

import json
import math
import re
import statistics
import sys
from pathlib import Path

UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def wrk_seconds(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"bad wrk duration {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path: Path) -> dict:
    text = path.read_text()
    out = {"rps": None, "errors": 0, "non2xx": 0, "pct": {}}
    m = re.search(r"(\d+) requests in", text)
    out["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Requests/sec:\s+([0-9.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", text, re.M):
        out["pct"]["p" + pct] = wrk_seconds(val)
    return out


def parse_oha(path: Path) -> dict:
    data = json.loads(path.read_text())
    summary = data.get("summary", {})
    pct = data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {}) or {}
    errors = data.get("errorDistribution", {}) or {}
    total_codes = sum(int(v) for v in codes.values())
    non2xx = sum(int(v) for k, v in codes.items() if not str(k).startswith("2"))
    return {
        "rps": summary.get("requestsPerSec"),
        "success": summary.get("successRate"),
        # oha counts the requests still in flight when -z ends as "aborted due
        # to deadline": not failures of the target.
        "errors": sum(int(v) for k, v in errors.items() if "deadline" not in k),
        "non2xx": non2xx,
        "count": total_codes,
        "pct": {k: v for k, v in pct.items() if v is not None},
        "max": summary.get("slowest"),
    }


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "n/a"
    return f"{a / b:.2f}"


def paired(a: dict, b: dict) -> list:
    """Per-round ratios a/b over the rounds both have, sorted."""
    return sorted(a[k] / b[k] for k in a if k in b and b[k])


def spread(xs: list) -> str:
    """`median (min–max)` of sorted ratios."""
    return "n/a" if not xs else f"{statistics.median(xs):.2f} ({xs[0]:.2f}–{xs[-1]:.2f})"


def paired_table(p, intro: str, targets: list, refs: list, by_round) -> None:
    """A table of paired ratios of each target against each reference."""
    p(intro)
    p("")
    p("| target | " + " | ".join(f"vs {r}" for r in refs) + " |")
    p("|" + " --- |" * (1 + len(refs)))
    for t in targets:
        p(f"| {t} | " + " | ".join(spread(paired(by_round(t), by_round(r))) for r in refs) + " |")
    p("")


def sign_test(xs: list, ahead_above: bool) -> str:
    """How many rounds Switchyard was ahead in (a ratio above 1 when
    `ahead_above`, below 1 otherwise), and the two-sided sign test's p:
    the chance of a split at least that uneven if neither target were
    ahead. Rounds with a ratio of exactly 1 count for neither."""
    ahead = sum(1 for x in xs if (x > 1 if ahead_above else x < 1))
    behind = sum(1 for x in xs if (x < 1 if ahead_above else x > 1))
    n = ahead + behind
    if n == 0:
        return "no round decided"
    tail = sum(math.comb(n, i) for i in range(min(ahead, behind) + 1)) / 2**n
    return f"ahead in {ahead} of {n}, sign test p={min(1.0, 2 * tail):.2f}"


def paired_note(xs: list, ahead_above: bool = True) -> str:
    """The headline's note on paired ratios, empty without any."""
    if not xs:
        return ""
    return (
        f" (paired by round: median {statistics.median(xs):.2f}, {xs[0]:.2f}–{xs[-1]:.2f}"
        f" over {len(xs)} rounds; {sign_test(xs, ahead_above)})"
    )


def us1(x):
    return "n/a" if x is None else f"{x:.1f}"


def ms(x):
    return "n/a" if x is None else f"{x * 1e3:.3f}"


def main() -> int:
    res = Path(sys.argv[1])
    meta = dict(
        line.split("=", 1) for line in (res / "meta.env").read_text().splitlines() if "=" in line
    )
    targets = meta["targets"].split()
    proxies = [t for t in targets if t != "direct"]
    refs = [t for t in ("direct", "haproxy", "nginx", "haproxy-fwd", "nginx-fwd") if t in targets]
    out = []
    p = out.append

    p(f"### Run {meta['date']} ({meta['mode']} mode)")
    p("")
    p(
        f"{meta['cpus']} cores shared by the load generator, the proxy and the backend; "
        f"{meta['workers']} worker thread/process per proxy; backend nginx (1 worker) answering "
        f'`200 "ok\\n"`. HAProxy {meta["haproxy"]}, nginx {meta["nginx"]}, wrk {meta["wrk"]}, '
        f"oha {meta['oha']}, switchyard {meta['switchyard']}. Load average "
        f"{meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end "
        "(above ~0.5 at the start means other work shared the cores)."
    )
    p("")
    p(
        "CPU µs/request: user+system CPU time of the target's own processes (the backend "
        "for `direct`) during the wrk rounds, divided by the requests answered; less "
        "sensitive to other load than requests/s. Of it user: the part spent in user space "
        "(the kernel's share, the same system calls for every proxy, moves with the machine). "
        "Backend, wrk: the CPU time the backend's processes and wrk used per request meanwhile "
        "(on these 2 cores a proxy's throughput also depends on what it costs them)."
    )
    p("")

    # ------------------------------------------------------------ throughput
    tput = {}
    for t in targets:
        files = sorted((res / "tput").glob(f"{t}.*.txt"))
        runs = [parse_wrk(f) for f in files]
        cpu_us, user_us, backend_us, wrk_us = [], [], [], []
        for f, r in zip(files, runs):
            if not r.get("requests"):
                continue
            for suffix, into in ((".cpu", cpu_us), (".user", user_us), (".backend", backend_us)):
                ticks = f.with_suffix(suffix)
                if ticks.exists():
                    into.append(int(ticks.read_text()) / int(meta["clk_tck"]) * 1e6 / r["requests"])
            # GNU time's "%U %S" (seconds); the last line, after any warning.
            wrk_cpu = f.with_suffix(".wrkcpu")
            if wrk_cpu.exists() and wrk_cpu.read_text().split():
                user, system = wrk_cpu.read_text().split()[-2:]
                wrk_us.append((float(user) + float(system)) * 1e6 / r["requests"])
        tput[t] = {
            "by_round": {
                int(f.name.split(".")[-2]): r["rps"] for f, r in zip(files, runs) if r["rps"]
            },
            "rounds": [r["rps"] for r in runs],
            "median": median([r["rps"] for r in runs]),
            "errors": sum(r["errors"] for r in runs),
            "non2xx": sum(r["non2xx"] for r in runs),
            "p99": median([r["pct"].get("p99") for r in runs]),
            "cpu_us": median(cpu_us),
            "user_us": median(user_us),
            "backend_us": median(backend_us),
            "wrk_us": median(wrk_us),
        }
    p(
        f"**Throughput** — wrk, {meta['conns']} connections, {meta['wrk_threads']} thread, "
        f"{meta['duration']} s × {meta['rounds']} rounds in rotating order; requests/s, median of the rounds"
    )
    p("")
    head = "| target | req/s (median) | rounds | " + " | ".join(f"vs {r}" for r in refs)
    head += " | CPU µs/request | of it user | backend, wrk µs/request | wrk p99 (ms, closed loop)"
    head += " | errors / non-2xx |"
    p(head)
    p("|" + " --- |" * (8 + len(refs)))
    for t in targets:
        d = tput[t]
        rounds = ", ".join(f"{x:.0f}" for x in d["rounds"] if x is not None)
        cells = [ratio(d["median"], tput[r]["median"]) for r in refs]
        med = "n/a" if d["median"] is None else f"{d['median']:.0f}"
        p(
            f"| {t} | {med} | {rounds} | " + " | ".join(cells)
            + f" | {'n/a' if d['cpu_us'] is None else format(d['cpu_us'], '.1f')}"
            + f" | {'n/a' if d['user_us'] is None else format(d['user_us'], '.1f')}"
            + f" | {us1(d['backend_us'])}, {us1(d['wrk_us'])}"
            + f" | {ms(d['p99'])} | {d['errors']} / {d['non2xx']} |"
        )
    p("")

    # Paired ratios: within a round the targets run back to back, so a
    # slow spell of the shared machine touches both sides of a ratio; the
    # ratio of the medians mixes rounds run minutes apart.
    sys_targets = [t for t in targets if t.startswith("switchyard")]
    if sys_targets and refs:
        paired_table(
            p,
            "Paired ratios (requests/s of a Switchyard target over a reference's in the same "
            "round; median and range over the rounds; less exposed to the machine's drift "
            "than the ratio of medians):",
            sys_targets,
            refs,
            lambda t: tput[t]["by_round"],
        )

    # ------------------------------------------------------------ latency
    lat = {}
    fallback = meta["lat_tool"] != "oha"
    for t in targets:
        files = sorted((res / "lat").glob(f"{t}.*.json")) or sorted((res / "lat").glob(f"{t}.*.txt"))
        runs = [parse_oha(f) if f.suffix == ".json" else parse_wrk(f) for f in files]
        keys = ["p50", "p99", "p99.9"] if not fallback else ["p50", "p90", "p99"]
        lat[t] = {k: median([r["pct"].get(k) for r in runs]) for k in keys}
        for k in ("p50", "p99"):
            lat[t][f"{k}_by_round"] = {
                int(f.name.split(".")[-2]): r["pct"].get(k)
                for f, r in zip(files, runs)
                if r["pct"].get(k)
            }
        lat[t]["rps"] = median([r["rps"] for r in runs])
        # The scheduler's nanoseconds on a CPU during the round, per request.
        cpu = []
        for f, r in zip(files, runs):
            ns = f.with_suffix(".ns")
            if ns.exists() and r.get("count"):
                cpu.append(int(ns.read_text()) / 1000 / r["count"])
        lat[t]["cpu_us"] = median(cpu)
        lat[t]["errors"] = sum(r["errors"] for r in runs)
        lat[t]["non2xx"] = sum(r["non2xx"] for r in runs)
        lat[t]["max"] = max((r.get("max") or 0 for r in runs), default=None)
    if fallback:
        p(
            f"**Latency** — FALLBACK: oha was not available, so these are wrk's closed-loop "
            f"percentiles with {meta['oha_conns']} connections, NOT at a fixed rate and NOT "
            f"corrected for coordinated omission; ms, median of {meta['lat_rounds']} rounds"
        )
        keys = ["p50", "p90", "p99"]
    else:
        p(
            f"**Latency at a fixed rate** — oha open loop, {meta['rate']} req/s, "
            f"{meta['oha_conns']} connections, `--latency-correction` (coordinated omission "
            f"corrected), {meta['lat_duration']} s × {meta['lat_rounds']} rounds; ms, median of the rounds"
        )
        keys = ["p50", "p99", "p99.9"]
    p("")
    p(
        "| target | achieved req/s | " + " | ".join(keys) + " | max | "
        + " | ".join(f"p99 vs {r}" for r in refs) + " | CPU µs/request | errors / non-2xx |"
    )
    p("|" + " --- |" * (5 + len(keys) + len(refs)))
    for t in targets:
        d = lat[t]
        cells = [ratio(d.get("p99"), lat[r].get("p99")) for r in refs]
        rps = "n/a" if d["rps"] is None else f"{d['rps']:.0f}"
        p(
            f"| {t} | {rps} | " + " | ".join(ms(d[k]) for k in keys)
            + f" | {ms(d['max'])} | " + " | ".join(cells)
            + f" | {us1(d['cpu_us'])} | {d['errors']} / {d['non2xx']} |"
        )
    p("")
    p(
        "CPU µs/request here: the target's processes' time on a CPU during the fixed-rate "
        "rounds (the scheduler's nanosecond count), per request, median of the rounds: a "
        "request mostly finds the caches cold at this rate, which is what a proxy adds to "
        "its latency."
    )
    p("")

    if sys_targets and refs:
        paired_table(
            p,
            "Paired p99 ratios (a Switchyard target's p99 over a reference's in the same "
            "round; median and range over the rounds):",
            sys_targets,
            refs,
            lambda t: lat[t]["p99_by_round"],
        )

    # ------------------------------------------------------------ memory
    mem = {}
    lines = (res / "mem.tsv").read_text().splitlines()[1:]
    for line in lines:
        t, start, before, with_, ok, open_ = line.split("\t")
        mem[t] = dict(start=int(start), before=int(before), with_=int(with_), ok=int(ok), open=int(open_))
    p(
        f"**Memory** — RSS (process and its children); {meta['idle_conns']} idle keep-alive "
        "client connections, each after one request"
    )
    p("")
    p("| proxy | RSS idle at start | RSS before the idle connections | RSS with them | connections open (answered) | per idle connection |")
    p("| --- | --- | --- | --- | --- | --- |")
    for t in proxies:
        if t not in mem:
            continue
        m = mem[t]
        per = "n/a"
        if m["open"]:
            per = f"{(m['with_'] - m['before']) / m['open']:.2f} KiB"
        p(
            f"| {t} | {m['start'] / 1024:.1f} MiB | {m['before'] / 1024:.1f} MiB | "
            f"{m['with_'] / 1024:.1f} MiB | {m['open']} ({m['ok']}) | {per} |"
        )
    p("")

    # ------------------------------------------------------------ headline
    p("**Headline ratios**")
    p("")
    for sy in [t for t in targets if t.startswith("switchyard")]:
        for r in ("haproxy", "nginx", "haproxy-fwd", "nginx-fwd", "direct"):
            if r in targets:
                pair = paired_note(paired(tput[sy]["by_round"], tput[r]["by_round"]))
                p(f"- {sy}/{r} throughput: {ratio(tput[sy]['median'], tput[r]['median'])}{pair}")
        for r in ("haproxy", "nginx", "haproxy-fwd", "nginx-fwd"):
            if r in targets:
                p(
                    f"- {sy}/{r} CPU per request: {ratio(tput[sy]['cpu_us'], tput[r]['cpu_us'])}"
                    f" (user {ratio(tput[sy]['user_us'], tput[r]['user_us'])})"
                )
        for r in ("haproxy", "nginx", "haproxy-fwd", "nginx-fwd"):
            if r in targets and "p99" in lat[sy]:
                pair = paired_note(
                    paired(lat[sy]["p99_by_round"], lat[r]["p99_by_round"]), ahead_above=False
                )
                p(f"- {sy}/{r} p99 at the fixed rate: {ratio(lat[sy]['p99'], lat[r]['p99'])}{pair}")
                pair = paired_note(
                    paired(lat[sy]["p50_by_round"], lat[r]["p50_by_round"]), ahead_above=False
                )
                p(f"- {sy}/{r} p50 at the fixed rate: {ratio(lat[sy]['p50'], lat[r]['p50'])}{pair}")
                p(
                    f"- {sy}/{r} CPU per request at the fixed rate: "
                    f"{ratio(lat[sy]['cpu_us'], lat[r]['cpu_us'])}"
                )
        if sy in mem and "haproxy" in mem and "nginx" in mem:
            def per(t):
                m = mem[t]
                return (m["with_"] - m["before"]) / m["open"] if m["open"] else None
            p(
                f"- {sy} memory per idle connection vs haproxy: {ratio(per(sy), per('haproxy'))}, "
                f"vs nginx: {ratio(per(sy), per('nginx'))}"
            )
    warn = []
    rate = float(meta["rate"])
    if not fallback:
        for t in targets:
            if lat[t]["rps"] is not None and lat[t]["rps"] < 0.95 * rate:
                warn.append(f"{t} reached only {lat[t]['rps']:.0f} of {rate:.0f} req/s in the latency phase")
    for t in targets:
        if tput[t]["errors"] or tput[t]["non2xx"] or lat[t]["errors"] or lat[t]["non2xx"]:
            warn.append(f"{t} had errors or non-2xx answers (see the tables)")
    for t, m in mem.items():
        if m["open"] < int(meta["idle_conns"]) or m["ok"] < m["open"]:
            warn.append(f"{t}: only {m['open']} idle connections open, {m['ok']} answered")
    if warn:
        p("")
        p("**Warnings**")
        p("")
        for w in warn:
            p(f"- {w}")
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
