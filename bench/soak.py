"""Soak and overload (`make soak`, issue #12): a real `vitrine serve` under a long steady load and a
short overload, with SIGHUP reloads.

The good calls come from vitrine-bench (C, gRPC core: a few microseconds per call, so the
generator neither takes the server's cores nor adds its own lag to the latencies; every call is
recorded with --records); the bad and cancelled calls, which need per-call logic, from a Python
grpc.aio client. All times are on CLOCK_MONOTONIC, shared by the processes.

1. capacity: vitrine-bench closed loop (--conc calls outstanding) for --capacity-s seconds; its
   storefronts/s is the capacity C.
2. soak: --soak-min minutes open loop (Poisson) at --soak-load x C in all: good calls from
   vitrine-bench, bad (INVALID_ARGUMENT expected) and cancelled (0-3 ms after sending: CANCELLED,
   or OK if the answer came first) from Python, in the --mix shares; a SIGHUP reload every
   --reload-s seconds; the server's RSS every 5 s; every second the machine's CPU time (busy,
   steal) and the server's and the generators' (from /proc), so that a stall of the tail can be
   told from the server's own doing: the seconds whose p99 is over 3x the soak's median
   per-second p99 are listed with what the machine did in them ("stalls"). Also every second:
   the engine threads' on-CPU and waiting-for-a-CPU time (/proc/PID/task/TID/schedstat of the
   threads named vt-engine-N), the engine's CPU time per call, and a speed probe (a fixed piece
   of work every 100 ms timed in its own CPU time: how fast a core runs, apart from the server).
   Pass: RSS growth after warm-up (--warmup-min) under 5%; p99 of good calls in the first and the
   last 5 minutes after warm-up within 20%; no unexpected status.
3. overload: vitrine-bench at --overload x C for --overload-s seconds; then, as soon as the
   overload's calls in flight are answered, as long again at the soak rate (its next step).
   Pass: the excess refused with UNAVAILABLE and nothing else, at once (p99 of the refusals under
   50 ms from their scheduled send), p99 of the accepted calls under the deadline; from one second
   after the overload ends every call OK and p99 within 20% of the soak's (full recovery). The
   server runs with --max-queue-ms (default 200): the backlog an overload leaves is at most that
   much work, gone in about that over the spare capacity (200 ms / 30% < 1 s at 70% load).

Writes DIR/soak.json (and vitrine-bench's records and results under DIR/) and prints a summary;
exit 0 when every check passed, 1 otherwise.

    /usr/bin/python3 bench/soak.py --vitrine build/vitrine --bench build/vitrine-bench \
        --bundle build/demo/bundle --catalog build/demo/catalog \
        --requests build/demo/requests.jsonl --out build/soak
"""
import argparse
import csv
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


def mix_client(target, requests_path, t_start, seconds, rate, bad_share, deadline_s, q, seed):
    """The bad and cancelled calls (grpc.aio, open loop, Poisson at `rate`): a share bad_share of
    them bad, the rest good requests cancelled 0-3 ms after sending. Sends back records
    (t_sched, latency_s, kind, code), t_sched on CLOCK_MONOTONIC."""
    import asyncio

    import grpc
    import vtproto
    pb = vtproto.load()
    good = [json.loads(ln) for ln in open(requests_path)]
    good_b = [to_pb(pb, d).SerializeToString() for d in good]
    bad_b = bad_requests(pb, good)
    rnd = random.Random(seed)

    async def run():
        loop = asyncio.get_running_loop()
        ch = grpc.aio.insecure_channel(target)
        call = ch.unary_unary("/vitrine.v1.Storefront/Recommend")
        recs, tasks = [], set()

        async def one(kind, body, t_sched):
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
            recs.append((t_sched, time.monotonic() - t_sched, kind, code))

        t, end = t_start, t_start + seconds
        while True:
            t += rnd.expovariate(rate)
            if t >= end:
                break
            now = time.monotonic()
            if t > now:
                await asyncio.sleep(t - now)
            if rnd.random() < bad_share:
                kind, body = BAD, bad_b[rnd.randrange(len(bad_b))]
            else:
                kind, body = CANCEL, good_b[rnd.randrange(len(good_b))]
            task = asyncio.ensure_future(one(kind, body, t))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(set(tasks), timeout=deadline_s + 2)
        q.put(recs)
        await ch.close()

    asyncio.run(run())


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


def machine_cpu():
    """(busy, steal, total) jiffies of the whole machine since boot (/proc/stat's cpu line)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return total - idle - steal, steal, total


def proc_cpu(pid):
    """utime + stime jiffies of one process (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def engine_sched(pid):
    """(on-CPU ns, runnable-but-waiting ns) summed over the server's engine threads (named
    vt-engine-N), from /proc/PID/task/TID/schedstat."""
    run = wait = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if not f.read().startswith("vt-engine"):
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                v = f.read().split()
            run += int(v[0])
            wait += int(v[1])
        except (OSError, IndexError, ValueError):
            pass
    return run, wait


def speed_probe(t_start, seconds, q):
    """The CPU's own speed, apart from the server: every 100 ms a fixed piece of work (about a
    millisecond), timed in this process's CPU time, so that neither waiting for a core nor the
    server's load counts, only how fast a core runs while it is ours (a VM's neighbours, a shared
    cache or memory bus). [(t, cpu_ns)] on the soak's clock."""
    out = []
    wait_until(t_start)
    nxt = t_start
    while nxt < t_start + seconds:
        c0 = time.process_time_ns()
        acc = 0
        for i in range(20000):
            acc += i * i & 1023
        out.append((round(time.monotonic() - t_start, 3), time.process_time_ns() - c0))
        nxt += 0.1
        wait_until(nxt)
    q.put(out)


class CpuLog:
    """Per-second CPU shares: the machine's busy and steal time, the server's and the load
    generators' and every other process's (all as a fraction of the machine's time, so 1.0 =
    every core busy); and the engine threads' on-CPU and waiting-for-a-CPU time (as a fraction of
    one core: 1.0 = one engine busy all the second)."""

    def __init__(self):
        self.rows, self.prev = [], None

    def sample(self, t, server_pid, gen_pids):
        busy, steal, total = machine_cpu()
        srv = proc_cpu(server_pid)
        gen = sum(proc_cpu(p) for p in gen_pids if p)
        erun, ewait = engine_sched(server_pid)
        now = (t, busy, steal, total, srv, gen, erun, ewait, time.monotonic())
        if self.prev:
            dt = max(1, total - self.prev[3])
            wall = max(1e-3, now[8] - self.prev[8]) * 1e9
            self.rows.append({"t": round(self.prev[0], 1),
                              "busy": round((busy - self.prev[1]) / dt, 3),
                              "steal": round((steal - self.prev[2]) / dt, 3),
                              "server": round((srv - self.prev[4]) / dt, 3),
                              "generators": round((gen - self.prev[5]) / dt, 3),
                              "engine_run": round((erun - self.prev[6]) / wall, 3),
                              "engine_wait": round((ewait - self.prev[7]) / wall, 3)})
            r = self.rows[-1]
            r["other"] = round(max(0.0, r["busy"] - r["server"] - r["generators"]), 3)
        self.prev = now

    def over(self, t0, t1):
        """Mean shares over [t0, t1)."""
        xs = [r for r in self.rows if t0 <= r["t"] < t1]
        if not xs:
            return {}
        return {k: round(sum(r[k] for r in xs) / len(xs), 3)
                for k in ("busy", "steal", "server", "generators", "other", "engine_run",
                          "engine_wait")}


class Bench:
    """One vitrine-bench run (one step) in the background; its records once it has ended."""

    def __init__(self, a, target, out, *args):
        self.out = out
        self.p = subprocess.Popen([a.bench, "--target", target, "--requests", a.requests,
                                   "--out", out, "--records", out, "--quiet",
                                   "--max-outstanding", "16384", "--connections", "2", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self):
        text = self.p.communicate()[0]
        if self.p.returncode != 0:
            sys.exit(f"soak: vitrine-bench failed ({self.p.returncode}):\n{text[-3000:]}")
        with open(os.path.join(self.out, "results.json")) as f:
            self.results = json.load(f)
        return self

    def records(self, step=1):
        """[(t_intended, t_done, status)] of one step on CLOCK_MONOTONIC (seconds)."""
        with open(os.path.join(self.out, "records-%d.csv" % step)) as f:
            t0 = int(f.readline().split("=")[1])
            return [((t0 + int(r["intended_ns"])) / 1e9, (t0 + int(r["done_ns"])) / 1e9,
                     r["status"]) for r in csv.DictReader(f)]


def wait_until(t):
    while True:
        left = t - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vitrine", default="build/vitrine")
    ap.add_argument("--bench", default="build/vitrine-bench")
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--requests", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--conc", type=int, default=32, help="capacity: calls kept outstanding")
    ap.add_argument("--capacity-s", type=float, default=30)
    ap.add_argument("--soak-min", type=float, default=30)
    ap.add_argument("--warmup-min", type=float, default=2)
    ap.add_argument("--soak-load", type=float, default=0.7)
    ap.add_argument("--reload-s", type=float, default=60)
    ap.add_argument("--overload", type=float, default=5)
    ap.add_argument("--overload-s", type=float, default=120)
    ap.add_argument("--deadline-ms", type=float, default=1000)
    ap.add_argument("--max-queue-ms", type=int, default=200,
                    help="the server's --max-queue-ms: the backlog an overload leaves behind")
    ap.add_argument("--mix", default="0.85,0.10,0.05", help="good,bad,cancelled shares")
    ap.add_argument("serve_args", nargs="*", help="more `vitrine serve` options (after --)")
    a = ap.parse_args()
    mix = tuple(float(x) for x in a.mix.split(","))
    os.makedirs(a.out, exist_ok=True)
    deadline = a.deadline_ms / 1000
    dur = a.soak_min * 60
    # p99 is compared over the first and the last 5 minutes after warm-up (shorter spans for a
    # quick try of the tool: half of what is left each)
    span = min(300.0, (dur - a.warmup_min * 60) / 2)
    if span < 10:
        sys.exit("soak: --soak-min must leave at least 20 s after --warmup-min")

    srv = subprocess.Popen([a.vitrine, "serve", "--bundle", a.bundle, "--catalog", a.catalog,
                            "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                            "--max-queue-ms", str(a.max_queue_ms), *a.serve_args], stderr=subprocess.PIPE, text=True,
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
              "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "generators": "good calls: vitrine-bench (C); bad and cancelled: Python grpc.aio"}
    ok = True
    timing = ["--warmup", "0", "--tolerance", "0", "--timeout-ms", str(int(a.deadline_ms)),
              "--drain", str(deadline + 2)]
    try:
        # 1. capacity
        cap_run = Bench(a, target, os.path.join(a.out, "capacity"), "--concurrency", str(a.conc),
                        "--warmup", "5", "--window", str(max(1.0, (a.capacity_s - 5) / 5)),
                        "--max-windows", "5", "--tolerance", "0").wait()
        cap = cap_run.results["steps"][0]["ok_per_s"]
        report["capacity_per_s"] = cap
        print(f"capacity: {cap:.0f} storefronts/s (closed loop, {a.conc} outstanding)", flush=True)

        # 2. soak: the schedule starts at t_start for every generator
        rate = a.soak_load * cap
        t_start = time.monotonic() + 3
        q = mp.Queue()
        mixer = mp.Process(target=mix_client, args=(target, a.requests, t_start, dur,
                                                    rate * (mix[1] + mix[2]),
                                                    mix[1] / (mix[1] + mix[2]), deadline, q, 7))
        mixer.start()
        pq = mp.Queue()
        prober = mp.Process(target=speed_probe, args=(t_start, dur, pq))
        prober.start()
        wait_until(t_start)
        # windows of 30 s at most 60: the soak is one step of vitrine-bench
        win = dur / min(60, max(2, int(dur // 30)))
        soak_run = Bench(a, target, os.path.join(a.out, "soak"), "--rate", str(rate * mix[0]),
                         "--window", str(win), "--max-windows", str(int(round(dur / win))),
                         *timing)
        rss, reloads = [], 0
        cpu = CpuLog()
        next_rss, next_cpu, next_reload = 0.0, 0.0, a.reload_s
        while time.monotonic() < t_start + dur:
            t = time.monotonic() - t_start
            if t >= next_cpu:
                cpu.sample(t, srv.pid, (soak_run.p.pid, mixer.pid))
                next_cpu += 1
            if t >= next_rss:
                rss.append((round(t, 1), rss_kb(srv.pid)))
                next_rss += 5
            if t >= next_reload:
                srv.send_signal(signal.SIGHUP)
                next_reload += a.reload_s
                reloads += 1
            time.sleep(0.2)

        # 3. overload, then recovery at the soak rate as soon as its calls in flight are answered:
        # two steps of one vitrine-bench, which writes its records only after the last (writing
        # them takes CPU that the recovery's calls would share)
        over_win = a.overload_s / min(60, max(2, int(a.overload_s // 2)))
        over_run = Bench(a, target, os.path.join(a.out, "overload"), "--rate",
                         f"{a.overload * cap},{rate}", "--window", str(over_win), "--max-windows",
                         str(int(round(a.overload_s / over_win))), *timing)
        soak_run.wait()
        over_run.wait()
        mixed = q.get(timeout=deadline + 60)
        mixer.join()
        probes = pq.get(timeout=60)
        prober.join()

        report["reloads"] = reloads
        report["reloaded_lines"] = sum(1 for ln in lines if re.search(r"\breloaded\b", ln))
        report["reload_failed_lines"] = sum(1 for ln in lines if "reload_failed" in ln)
        report["rss_kb"] = rss

        # the soak: vitrine-bench's good calls and the Python mix
        calls = [(t - t_start, done - t, GOOD, code) for t, done, code in soak_run.records()]
        calls += [(t - t_start, lat, kind, code) for t, lat, kind, code in mixed]
        warm = a.warmup_min * 60
        counts, unexpected = {}, {}
        for t, lat, kind, code in calls:
            k = f"{KIND[kind]}:{code}"
            counts[k] = counts.get(k, 0) + 1
            if code not in EXPECTED[kind]:
                unexpected[k] = unexpected.get(k, 0) + 1
        goods = [(t, lat) for t, lat, kind, code in calls if kind == GOOD and code == "OK"]
        first = [lat for t, lat in goods if warm <= t < warm + span]
        last = [lat for t, lat in goods if t >= dur - span]
        per_min = []
        for m0 in range(int(dur // 60)):
            xs = [lat for t, lat in goods if m0 * 60 <= t < (m0 + 1) * 60]
            per_min.append({"minute": m0 + 1, "calls": len(xs),
                            "p50_ms": round(1000 * (pct(xs, 50) or 0), 2),
                            "p99_ms": round(1000 * (pct(xs, 99) or 0), 2),
                            "cpu": cpu.over(m0 * 60, (m0 + 1) * 60)})
        # the seconds of the tail: p99 over 3x the median per-second p99, with the machine's CPU
        by_sec = {}
        for t, lat in goods:
            by_sec.setdefault(int(t), []).append(lat)
        sec_p99 = {k: pct(v, 99) for k, v in by_sec.items() if k >= warm and len(v) >= 20}
        med = pct(list(sec_p99.values()), 50) or 0
        # the probe's fixed work per second, as a slowdown against its median over the soak
        pr_sec = {}
        for t, ns in probes:
            pr_sec.setdefault(int(t), []).append(ns)
        pr_sec = {k: pct(v, 50) for k, v in pr_sec.items()}
        pr_med = pct(list(pr_sec.values()), 50) or 1
        slow = {k: round(v / pr_med, 2) for k, v in pr_sec.items()}
        # the engine's CPU time per good call answered in the second (its share of the cancelled
        # calls it computed included)
        done_sec = {}
        for t, lat in goods:
            done_sec[int(t + lat)] = done_sec.get(int(t + lat), 0) + 1
        eng = {int(r["t"]): r["engine_run"] for r in cpu.rows}
        eng_us = {k: round(1e6 * eng[k] / done_sec[k]) for k in eng if done_sec.get(k)}
        eng_med = pct([v for k, v in eng_us.items() if k >= warm], 50) or 1

        def around(k, d):
            xs = [d[j] for j in (k - 1, k, k + 1) if j in d]
            return max(xs) if xs else None

        stalls = [{"second": k, "p99_ms": round(1000 * v, 1), "cpu": cpu.over(k - 1, k + 1),
                   "probe_slowdown": around(k, slow), "engine_us_per_call": around(k, eng_us)}
                  for k, v in sorted(sec_p99.items()) if med and v > 3 * med]
        probe_report = {
            "median_us": round(pr_med / 1000, 1),
            "seconds_over_1.3x": sum(1 for k, v in slow.items() if k >= warm and v > 1.3),
            "stalls_with_probe_over_1.3x": sum(1 for s in stalls
                                               if (s["probe_slowdown"] or 0) > 1.3),
            "engine_us_per_call_median": eng_med,
            "stalls_with_engine_per_call_over_1.3x":
                sum(1 for s in stalls if (s["engine_us_per_call"] or 0) > 1.3 * eng_med)}
        quiet = cpu.over(warm, dur)
        rss_after_warm = [kb for t, kb in rss if warm <= t <= dur]
        growth = (rss_after_warm[-1] / rss_after_warm[0] - 1) if len(rss_after_warm) > 1 else None
        p99_first, p99_last = pct(first, 99), pct(last, 99)

        # the same comparison over only the seconds in which the probe (and the seconds beside)
        # ran within x1.1 of its median: what is left of the drift where the CPU was not slower
        def steady(k):
            return all(slow.get(j, 1.0) <= 1.1 for j in (k - 1, k, k + 1))

        first_s = [lat for t, lat in goods if warm <= t < warm + span and steady(int(t))]
        last_s = [lat for t, lat in goods if t >= dur - span and steady(int(t))]
        at_speed = {"p99_first5_ms": round(1000 * (pct(first_s, 99) or 0), 2),
                    "p99_last5_ms": round(1000 * (pct(last_s, 99) or 0), 2),
                    "p50_first5_ms": round(1000 * (pct(first_s, 50) or 0), 2),
                    "p50_last5_ms": round(1000 * (pct(last_s, 50) or 0), 2),
                    "seconds_first5": len({int(t) for t, _ in goods
                                           if warm <= t < warm + span and steady(int(t))}),
                    "seconds_last5": len({int(t) for t, _ in goods
                                          if t >= dur - span and steady(int(t))})}
        drift = (p99_last / p99_first - 1) if p99_first and p99_last else None
        soak_lag = soak_run.results["steps"][0].get("generator", {}).get("lag_ms", {})
        report["soak"] = {"calls": len(calls), "rate_per_s": rate, "counts": counts,
                          "unexpected": unexpected,
                          "rss_first_kb": rss_after_warm[0] if rss_after_warm else None,
                          "rss_last_kb": rss_after_warm[-1] if rss_after_warm else None,
                          "rss_growth": growth, "p99_span_s": span,
                          "p99_first5_ms": 1000 * (p99_first or 0),
                          "p99_last5_ms": 1000 * (p99_last or 0), "p99_drift": drift,
                          "drift_at_probe_speed": at_speed,
                          "generator_lag_p99_ms": soak_lag.get("p99"),
                          "cpu_mean": quiet, "second_p99_median_ms": round(1000 * med, 2),
                          "stalls": stalls, "probe": probe_report,
                          "probe_slowdown_per_second": slow, "engine_us_per_call": eng_us,
                          "per_minute": per_min, "cpu_per_second": cpu.rows}
        checks = {
            "soak: no unexpected status": not unexpected,
            "soak: RSS growth after warm-up < 5%": growth is not None and growth < 0.05,
            "soak: p99 first vs last 5 min within 20%": drift is not None and abs(drift) <= 0.20,
            "soak: every SIGHUP reloaded": report["reloaded_lines"] >= reloads > 0
            and report["reload_failed_lines"] == 0,
        }

        # the overload
        over = over_run.records()
        t_end = max(t for t, done, code in over)  # its last scheduled send
        acc = [done - t for t, done, code in over if code == "OK"]
        refused = [done - t for t, done, code in over if code == "UNAVAILABLE"]
        other = {}
        for t, done, code in over:
            if code not in ("OK", "UNAVAILABLE"):
                other[code] = other.get(code, 0) + 1
        over_s = over_run.results["steps"][0]
        rec = sorted(over_run.records(2))
        rec_after = [(t, done, code) for t, done, code in rec if t >= t_end + 1.0]
        rec_not_ok = sum(1 for t, done, code in rec_after if code != "OK")
        rec_p99 = pct([done - t for t, done, code in rec_after if code == "OK"], 99)
        soak_p99 = pct([lat for t, lat in goods if t >= warm], 99)
        first_ok_after = None
        for t, done, code in rec:
            if code != "OK":
                first_ok_after = None
            elif first_ok_after is None:
                first_ok_after = t - t_end
        report["overload"] = {
            "offered_per_s": len(over) / a.overload_s, "target_per_s": a.overload * cap,
            "generator_lag_p99_ms": over_s.get("generator", {}).get("lag_ms", {}).get("p99"),
            "dropped_by_generator": over_s.get("generator", {}).get("dropped"),
            "accepted": len(acc), "refused_unavailable": len(refused), "other": other,
            "accepted_per_s": len(acc) / a.overload_s,
            "p50_accepted_ms": 1000 * (pct(acc, 50) or 0),
            "p99_accepted_ms": 1000 * (pct(acc, 99) or 0),
            "p99_refusal_ms": 1000 * (pct(refused, 99) or 0),
            "recover_calls_after_1s": len(rec_after), "recover_not_ok_after_1s": rec_not_ok,
            "recover_start_s": (rec[0][0] - t_end) if rec else None,
            "recover_p99_ms": 1000 * (rec_p99 or 0), "soak_p99_ms": 1000 * (soak_p99 or 0),
            "recovered_after_s": first_ok_after}
        checks.update({
            "overload: the excess refused with UNAVAILABLE": len(refused) > 0 and not other,
            "overload: refusals at once (p99 < 50 ms)": bool(refused) and pct(refused, 99) < 0.05,
            "overload: p99 of accepted under the deadline": bool(acc) and pct(acc, 99) < deadline,
            "recovery: all OK from 1 s after the overload": bool(rec_after) and rec_not_ok == 0,
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
              f"{report['reloads']} reloads, generator lag p99 {s['generator_lag_p99_ms']} ms")
        print(f"  CPU (share of the machine): {s['cpu_mean']}; {len(s['stalls'])} seconds with "
              f"p99 over 3x the median second's ({s['second_p99_median_ms']} ms)")
        print(f"  speed probe: {s['probe']}")
        print(f"  first/last 5 min where the probe ran within x1.1 (a diagnosis, not a check): "
              f"{s['drift_at_probe_speed']}")
        for st in s["stalls"][:20]:
            print(f"    second {st['second']}: p99 {st['p99_ms']} ms, probe x{st['probe_slowdown']}, "
                  f"engine {st['engine_us_per_call']} us/call, CPU {st['cpu']}")
    if o:
        print(f"overload: offered {o['offered_per_s']:.0f}/s (target {o['target_per_s']:.0f}, "
              f"lag p99 {o['generator_lag_p99_ms']} ms), accepted {o['accepted_per_s']:.0f}/s "
              f"p50 {o['p50_accepted_ms']:.0f} p99 {o['p99_accepted_ms']:.0f} ms, "
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
