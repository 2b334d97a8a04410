"""Soak and overload (`make soak`, issue #12): a real `vitrine serve` under a long steady load and a
short overload, from several client processes (Python grpcio), with SIGHUP reloads.

1. capacity: closed loop (CONC calls outstanding per client) for --capacity-s seconds; the
   measured storefronts/s of good calls is the capacity C.
2. soak: open loop (Poisson) at --soak-load x C for --soak-min minutes; the calls are a mix:
   good (answered OK), bad (a request the server must refuse: INVALID_ARGUMENT) and cancelled
   (the client cancels after 0-3 ms: CANCELLED, or OK if the answer came first); a SIGHUP reload
   every --reload-s seconds. RSS of the server every 5 s.
   Pass: RSS growth after warm-up (--warmup-min) under 5%; p99 of good calls in the first and the
   last 5 minutes (after warm-up) within 20%; no unexpected status.
3. overload: open loop at --overload x C for --overload-s seconds, then --recover-s seconds at
   the soak rate. Pass: the excess is refused with UNAVAILABLE at once (p99 of those refusals
   under 50 ms), p99 of the accepted calls under the deadline, and from one second after the
   overload ends no UNAVAILABLE and p99 back within 20% of the soak's (full recovery).

Writes DIR/soak.json and prints a summary; exit 0 when every check passed, 1 otherwise.

    /usr/bin/python3 bench/soak.py --vitrine build/vitrine --bundle build/demo/bundle \
        --catalog build/demo/catalog --requests build/demo/requests.jsonl --out bench/results/soak
"""
import argparse
import json
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

GOOD, BAD, CANCEL = 0, 1, 2
KIND = {GOOD: "good", BAD: "bad", CANCEL: "cancelled"}
EXPECTED = {GOOD: {"OK"}, BAD: {"INVALID_ARGUMENT"}, CANCEL: {"CANCELLED", "OK"}}
ACTIONS = {"view": 1, "search": 2, "cart": 3, "purchase": 4}


def to_pb(pb, d):
    r = pb.RecommendRequest(now=d["now"], region=d["region"], shopper_id=d.get("shopper_id", ""),
                            sections=d["sections"], keywords_per_section=d["keywords_per_section"],
                            products_per_section=d["products_per_section"],
                            exclude=d.get("exclude", []))
    for e in d.get("events", []):
        r.events.add(action=ACTIONS[e["action"]], ts=e["ts"], item=e.get("item") or "",
                     query=e.get("query") or "")
    return r


def bad_requests(pb, good):
    """Requests the server must refuse with INVALID_ARGUMENT, each for another reason."""
    g = good[0]
    out = []
    r = to_pb(pb, g); r.region = "atlantis"; out.append(r)
    r = to_pb(pb, g); r.now = 0; out.append(r)
    r = to_pb(pb, g); r.sections = 0; out.append(r)
    r = to_pb(pb, g); r.events[0].ts = 2**53 + 1; out.append(r)
    r = to_pb(pb, g); r.shopper_id = "x" * 300; out.append(r)
    return [x.SerializeToString() for x in out]


def client(idx, target, requests_path, phases, deadline_s, q, seed):
    """One client process (grpc.aio: one event loop, no thread per call): runs the phases
    [(name, mode, rate_or_conc, seconds, mix)] in order and sends back per-call records
    (phase, t_sched, latency_s, kind, code), latency counted from the scheduled time."""
    import asyncio

    import grpc
    import vtproto
    pb = vtproto.load()
    good = [json.loads(ln) for ln in open(requests_path)]
    good_b = [to_pb(pb, d).SerializeToString() for d in good]
    bad_b = bad_requests(pb, good)
    rnd = random.Random(seed)
    t0_all = time.monotonic()

    def pick(mix):
        x = rnd.random()
        if x < mix[0]:
            return GOOD, good_b[rnd.randrange(len(good_b))]
        if x < mix[0] + mix[1]:
            return BAD, bad_b[rnd.randrange(len(bad_b))]
        return CANCEL, good_b[rnd.randrange(len(good_b))]

    async def run():
        loop = asyncio.get_running_loop()
        ch = grpc.aio.insecure_channel(target)
        call = ch.unary_unary("/vitrine.v1.Storefront/Recommend")
        recs = []

        async def one(phase, kind, body, t_sched):
            c = call(body, timeout=deadline_s)
            if kind == CANCEL:
                loop.call_later(rnd.random() * 0.003, c.cancel)
            try:
                await c
                code = "OK"
            except asyncio.CancelledError:
                code = "CANCELLED"
            except grpc.aio.AioRpcError as e:
                code = e.code().name
            recs.append((phase, t_sched - t0_all, time.monotonic() - t_sched, kind, code))

        tasks = set()
        for name, mode, level, seconds, mix in phases:
            end = time.monotonic() + seconds
            if mode == "closed":
                async def worker():
                    while time.monotonic() < end:
                        kind, body = pick(mix)
                        await one(name, kind, body, time.monotonic())
                await asyncio.gather(*(worker() for _ in range(int(level))))
            else:
                t = time.monotonic()
                while t < end:
                    t += rnd.expovariate(level)
                    now = time.monotonic()
                    if t > now:
                        await asyncio.sleep(t - now)
                    kind, body = pick(mix)
                    task = asyncio.ensure_future(one(name, kind, body, t))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        # the phases follow each other without a gap (recovery is timed from the overload's end);
        # then the calls still in flight finish, and the records go back by phase
        if tasks:
            await asyncio.wait(set(tasks), timeout=deadline_s + 2)
        for name, *_ in phases:
            q.put((idx, name, [r for r in recs if r[0] == name]))
        await ch.close()

    asyncio.run(run())
    q.put((idx, None, None))


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100.0 * len(xs)))]


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return None


def run_clients(n, target, requests, phases, deadline_s, seed):
    q = mp.Queue()
    procs = [mp.Process(target=client, args=(i, target, requests, phases, deadline_s, q,
                                             seed + i)) for i in range(n)]
    for p in procs:
        p.start()
    return q, procs


def collect(q, procs, on_tick=None):
    """Records by phase until every client says it is done."""
    out, left = {}, len(procs)
    while left:
        try:
            idx, name, batch = q.get(timeout=1)
        except Exception:
            if on_tick:
                on_tick()
            continue
        if name is None:
            left -= 1
        else:
            out.setdefault(name, []).extend(batch)
        if on_tick:
            on_tick()
    for p in procs:
        p.join()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vitrine", default="build/vitrine")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--conc", type=int, default=16, help="capacity: outstanding calls per client")
    ap.add_argument("--capacity-s", type=float, default=30)
    ap.add_argument("--soak-min", type=float, default=30)
    ap.add_argument("--warmup-min", type=float, default=2)
    ap.add_argument("--soak-load", type=float, default=0.7)
    ap.add_argument("--reload-s", type=float, default=60)
    ap.add_argument("--overload", type=float, default=5)
    ap.add_argument("--overload-s", type=float, default=120)
    ap.add_argument("--recover-s", type=float, default=20)
    ap.add_argument("--deadline-ms", type=float, default=1000)
    ap.add_argument("--mix", default="0.85,0.10,0.05", help="good,bad,cancelled shares")
    ap.add_argument("serve_args", nargs="*", help="more `vitrine serve` options (after --)")
    a = ap.parse_args()
    mix = tuple(float(x) for x in a.mix.split(","))
    os.makedirs(a.out, exist_ok=True)
    deadline = a.deadline_ms / 1000

    srv = subprocess.Popen([a.vitrine, "serve", "--bundle", a.bundle, "--catalog", a.catalog,
                            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                            *a.serve_args], stderr=subprocess.PIPE, text=True,
                           errors="replace")
    lines = []
    port = None
    while port is None:
        ln = srv.stderr.readline()
        if not ln:
            sys.exit("soak: vitrine serve exited:\n" + "".join(lines[-20:]))
        lines.append(ln)
        m = re.search(r"\bserving\b.*grpc_port\W+(\d+)", ln)
        if m:
            port = int(m.group(1))
    threading.Thread(target=lambda: [lines.append(x) for x in srv.stderr], daemon=True).start()
    target = f"127.0.0.1:{port}"
    report = {"machine": os.uname().nodename, "cpus": os.cpu_count(), "args": vars(a),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    ok = True
    try:
        # 1. capacity
        q, procs = run_clients(a.clients, target, a.requests,
                               [("capacity", "closed", a.conc, a.capacity_s, (1, 0, 0))],
                               deadline, 1)
        recs = collect(q, procs)["capacity"]
        good_ok = [r for r in recs if r[4] == "OK" and r[1] > 5]  # the first 5 s warm up
        cap = len(good_ok) / max(1e-9, a.capacity_s - 5)
        report["capacity_per_s"] = cap
        print(f"capacity: {cap:.0f} storefronts/s ({a.clients} clients x {a.conc} outstanding)",
              flush=True)

        # 2. soak + 3. overload + recovery, one schedule
        rate = a.soak_load * cap / a.clients
        phases = [("soak", "open", rate, a.soak_min * 60, mix),
                  ("overload", "open", a.overload * cap / a.clients, a.overload_s, (1, 0, 0)),
                  ("recover", "open", rate, a.recover_s, (1, 0, 0))]
        rss, reloads = [], 0
        t0 = time.monotonic()
        state = {"next_rss": 0.0, "next_reload": a.reload_s}

        def tick():
            t = time.monotonic() - t0
            if t >= state["next_rss"]:
                rss.append((round(t, 1), rss_kb(srv.pid)))
                state["next_rss"] += 5
            if t >= state["next_reload"] and t < a.soak_min * 60:
                srv.send_signal(signal.SIGHUP)
                state["next_reload"] += a.reload_s
                state["reloads"] = state.get("reloads", 0) + 1

        q, procs = run_clients(a.clients, target, a.requests, phases, deadline, 100)
        by = collect(q, procs, tick)
        reloads = state.get("reloads", 0)
        report["reloads"] = reloads
        report["reloaded_lines"] = sum(1 for ln in lines if re.search(r"\breloaded\b", ln))
        report["reload_failed_lines"] = sum(1 for ln in lines if "reload_failed" in ln)
        report["rss_kb"] = rss

        soak = by.get("soak", [])
        warm = a.warmup_min * 60
        counts, unexpected = {}, {}
        for ph, t, lat, kind, code in soak:
            counts[f"{KIND[kind]}:{code}"] = counts.get(f"{KIND[kind]}:{code}", 0) + 1
            if code not in EXPECTED[kind]:
                unexpected[f"{KIND[kind]}:{code}"] = unexpected.get(f"{KIND[kind]}:{code}", 0) + 1
        goods = [(t, lat) for ph, t, lat, kind, code in soak if kind == GOOD and code == "OK"]
        dur = a.soak_min * 60
        first = [lat for t, lat in goods if warm <= t < warm + 300]
        last = [lat for t, lat in goods if t >= dur - 300]
        per_min = []
        for m0 in range(int(dur // 60)):
            xs = [lat for t, lat in goods if m0 * 60 <= t < (m0 + 1) * 60]
            per_min.append({"minute": m0 + 1, "calls": len(xs),
                            "p50_ms": round(1000 * (pct(xs, 50) or 0), 2),
                            "p99_ms": round(1000 * (pct(xs, 99) or 0), 2)})
        rss_after_warm = [kb for t, kb in rss if warm <= t <= dur]
        growth = (rss_after_warm[-1] / rss_after_warm[0] - 1) if len(rss_after_warm) > 1 else None
        p99_first, p99_last = pct(first, 99), pct(last, 99)
        drift = (p99_last / p99_first - 1) if p99_first and p99_last else None
        report["soak"] = {"calls": len(soak), "rate_per_s": a.soak_load * cap,
                          "counts": counts, "unexpected": unexpected,
                          "rss_first_kb": rss_after_warm[0] if rss_after_warm else None,
                          "rss_last_kb": rss_after_warm[-1] if rss_after_warm else None,
                          "rss_growth": growth, "p99_first5_ms": 1000 * (p99_first or 0),
                          "p99_last5_ms": 1000 * (p99_last or 0), "p99_drift": drift,
                          "per_minute": per_min}
        checks = {
            "soak: no unexpected status": not unexpected,
            "soak: RSS growth after warm-up < 5%": growth is not None and growth < 0.05,
            "soak: p99 first vs last 5 min within 20%": drift is not None and abs(drift) <= 0.20,
            "soak: every SIGHUP reloaded": report["reloaded_lines"] >= reloads > 0
            and report["reload_failed_lines"] == 0,
        }

        over = by.get("overload", [])
        t_over0 = dur
        t_over1 = dur + a.overload_s
        acc = [lat for ph, t, lat, kind, code in over if code == "OK"]
        refused = [lat for ph, t, lat, kind, code in over if code == "UNAVAILABLE"]
        other = {}
        for ph, t, lat, kind, code in over:
            if code not in ("OK", "UNAVAILABLE"):
                other[code] = other.get(code, 0) + 1
        rec = by.get("recover", [])
        rec_after = [(t, lat, code) for ph, t, lat, kind, code in rec if t >= t_over1 + 1.0]
        rec_unavail = sum(1 for t, lat, code in rec_after if code != "OK")
        rec_p99 = pct([lat for t, lat, code in rec_after if code == "OK"], 99)
        soak_p99 = pct([lat for t, lat in goods if t >= warm], 99)
        first_ok_after = None
        for ph, t, lat, kind, code in sorted(rec, key=lambda r: r[1]):
            if code != "OK":
                first_ok_after = None
            elif first_ok_after is None:
                first_ok_after = t - t_over1
        report["overload"] = {
            "offered_per_s": len(over) / a.overload_s, "target_per_s": a.overload * cap,
            "accepted": len(acc), "refused_unavailable": len(refused), "other": other,
            "accepted_per_s": len(acc) / a.overload_s,
            "p99_accepted_ms": 1000 * (pct(acc, 99) or 0),
            "p99_refusal_ms": 1000 * (pct(refused, 99) or 0),
            "recover_calls_after_1s": len(rec_after), "recover_not_ok_after_1s": rec_unavail,
            "recover_p99_ms": 1000 * (rec_p99 or 0), "soak_p99_ms": 1000 * (soak_p99 or 0),
            "recovered_after_s": first_ok_after}
        checks.update({
            "overload: the excess refused with UNAVAILABLE": len(refused) > 0 and not other,
            "overload: refusals at once (p99 < 50 ms)": bool(refused) and pct(refused, 99) < 0.05,
            "overload: p99 of accepted under the deadline": bool(acc) and pct(acc, 99) < deadline,
            "recovery: all OK from 1 s after the overload": bool(rec_after) and rec_unavail == 0,
            "recovery: p99 within 20% of the soak's": bool(rec_p99 and soak_p99)
            and rec_p99 <= 1.2 * soak_p99,
        })
        report["checks"] = checks
        ok = all(checks.values())
    finally:
        srv.send_signal(signal.SIGTERM)
        try:
            report["exit"] = srv.wait(30)
        except subprocess.TimeoutExpired:
            srv.kill()
            report["exit"] = "killed"
            ok = False
        with open(os.path.join(a.out, "soak.json"), "w") as f:
            json.dump(report, f, indent=1)
    s, o = report.get("soak", {}), report.get("overload", {})
    if s:
        print(f"soak: {s['calls']} calls at {s['rate_per_s']:.0f}/s, counts {s['counts']}")
        print(f"  RSS {s['rss_first_kb']} -> {s['rss_last_kb']} kB "
              f"({100 * (s['rss_growth'] or 0):+.1f}%), p99 first/last 5 min "
              f"{s['p99_first5_ms']:.1f} / {s['p99_last5_ms']:.1f} ms, "
              f"{report['reloads']} reloads")
    if o:
        print(f"overload: offered {o['offered_per_s']:.0f}/s (target {o['target_per_s']:.0f}), "
              f"accepted {o['accepted_per_s']:.0f}/s p99 {o['p99_accepted_ms']:.0f} ms, "
              f"{o['refused_unavailable']} UNAVAILABLE p99 {o['p99_refusal_ms']:.1f} ms, "
              f"other {o['other']}")
        print(f"recovery: first OK streak from {o['recovered_after_s']} s after the end; "
              f"p99 {o['recover_p99_ms']:.1f} ms (soak {o['soak_p99_ms']:.1f}), "
              f"{o['recover_not_ok_after_1s']} not OK after 1 s")
    for k, v in report.get("checks", {}).items():
        print(f"  [{'PASS' if v else 'FAIL'}] {k}")
    print(f"exit {report.get('exit')}; {os.path.join(a.out, 'soak.json')}")
    sys.exit(0 if ok and report.get("exit") == 0 else 1)


if __name__ == "__main__":
    main()
