"""The audit log (--audit-log, docs/SERVER.md "Audit log"): a record per sampled answered call,
none at --audit-sample 0, shopper ids hashed unless --audit-raw-ids, rotation keeping at most
--audit-keep files under --audit-max-bytes, a full ring dropping and counting records instead of
holding up the answers (the log is a FIFO nobody reads: a disk that stopped), and the brief's
failure case with the season rule that decided it in the record."""
import hashlib
import hmac
import json
import os
import shutil
import signal
import threading
import time

import grpc

from conftest import FIXTURE, SLOW, metric_value, pb, request_from_json

JAN = 1736899200  # 2025-01-15 00:00 UTC
JUL = 1752537600  # 2025-07-15 00:00 UTC
APR = JAN + 90 * 86400


def records(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def audit_counts(srv):
    text = srv.metrics()
    return (metric_value(text, "vitrine_audit_records_written_total"),
            metric_value(text, "vitrine_audit_records_dropped_total", reason="ring_full"),
            metric_value(text, "vitrine_audit_records_dropped_total", reason="too_large"),
            metric_value(text, "vitrine_audit_write_errors_total"))


def wait_written(srv, n, timeout=10):
    deadline = time.monotonic() + timeout * SLOW
    while audit_counts(srv)[0] < n:
        assert time.monotonic() < deadline, audit_counts(srv)
        time.sleep(0.05)


def named(d, i):
    return dict(d, shopper_id=f"shopper-{i:03d}@example.com")


def test_records_for_answered_calls_with_hashed_ids(server_factory, fixture_requests, tmp_path):
    log = tmp_path / "audit.jsonl"
    srv = server_factory("--audit-log", str(log), "--audit-salt", "s3cret")
    sent = [named(d, i) for i, d in enumerate(fixture_requests[:8])]
    answers = [srv.recommend(request_from_json(d), timeout=10) for d in sent]
    wait_written(srv, 8)
    recs = records(log)
    assert len(recs) == 8
    by_digest = {r["request"]: r for r in recs}
    text = log.read_text()
    for d, a in zip(sent, answers):
        raw = request_from_json(d).SerializeToString()
        rec = by_digest[hashlib.sha256(raw).hexdigest()[:16]]
        want = hmac.new(b"s3cret", d["shopper_id"].encode(), hashlib.sha256).hexdigest()[:16]
        assert rec["shopper"] == want and "shopper_id" not in rec
        assert d["shopper_id"] not in text
        n_events = len(d.get("events", []))
        assert rec["segment"] == {"region": d["region"], "events": n_events, "activity":
                                  "new" if n_events == 0 else "light" if n_events < 20
                                  else "heavy"}
        assert rec["now"] == d["now"]
        assert rec["versions"] == {"model": a.model_version, "catalog": a.catalog_version,
                                   "rules": a.rules_version}
        assert rec["season"]["by"] in ("calendar", "fixed")
        assert len(rec["sections"]) == len(a.sections)
        for s, r in zip(a.sections, rec["sections"]):
            assert (r["theme"]["id"], r["theme"]["text"]) == (s.theme.id, s.theme.text)
            assert abs(r["theme"]["score"] - s.theme.score) <= 1e-6 * (1 + abs(s.theme.score))
            assert [(k["id"], k["text"]) for k in r["keywords"]] == \
                [(k.id, k.text) for k in s.keywords]
            assert [p["id"] for p in r["products"]] == [p.id for p in s.products]
            assert set(r["held_back"]) == {"stock", "region", "season", "rules"}
        assert rec["removed_by"] == [] and rec["in_effect"] == []  # no rules.txt
    # the same salt, the same hashes: a second server (another replica) agrees
    assert audit_counts(srv)[1:] == (0, 0, 0)
    assert srv.stop() == 0


def test_no_records_at_sample_zero_and_raw_ids_only_when_asked(server_factory,
                                                                fixture_requests, tmp_path):
    off = tmp_path / "none.jsonl"
    srv = server_factory("--audit-log", str(off), "--audit-sample", "0")
    for i, d in enumerate(fixture_requests[:6]):
        srv.recommend(request_from_json(named(d, i)), timeout=10)
    assert audit_counts(srv) == (0, 0, 0, 0)
    assert srv.stop() == 0
    assert off.exists() and off.read_text() == ""

    raw = tmp_path / "raw.jsonl"
    srv = server_factory("--audit-log", str(raw), "--audit-raw-ids")
    sent = [named(d, i) for i, d in enumerate(fixture_requests[:4])]
    for d in sent:
        srv.recommend(request_from_json(d), timeout=10)
    wait_written(srv, 4)
    assert [r["shopper_id"] for r in records(raw)] == [d["shopper_id"] for d in sent]
    assert all("shopper" not in r for r in records(raw))
    assert srv.stop() == 0

    # no salt: a random one per process, so the hash is not the unsalted sha256 and two
    # processes disagree
    hashes = []
    for run in range(2):
        p = tmp_path / f"random{run}.jsonl"
        srv = server_factory("--audit-log", str(p))
        srv.recommend(request_from_json(sent[0]), timeout=10)
        wait_written(srv, 1)
        hashes.append(records(p)[0]["shopper"])
        assert srv.stop() == 0
    assert hashes[0] != hashes[1]
    assert hashlib.sha256(sent[0]["shopper_id"].encode()).hexdigest()[:16] not in hashes


def test_rotation_keeps_at_most_keep_files_under_the_bound(server_factory, fixture_requests,
                                                           tmp_path):
    log = tmp_path / "audit.jsonl"
    bound, keep = 8192, 3
    srv = server_factory("--audit-log", str(log), "--audit-max-bytes", str(bound),
                         "--audit-keep", str(keep))
    n = 48
    for i in range(n):
        srv.recommend(request_from_json(named(fixture_requests[i % 64], i)), timeout=10)
    wait_written(srv, n)
    assert audit_counts(srv)[1:] == (0, 0, 0)
    files = sorted(os.listdir(tmp_path))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"], files
    total = 0
    for f in files:
        size = os.path.getsize(tmp_path / f)
        assert 0 < size <= bound, (f, size)
        recs = records(tmp_path / f)  # every line whole and valid JSON
        total += len(recs)
    assert total < n  # the oldest files fell off
    assert srv.stop() == 0
    # the newest record is in the current file, the oldest kept in the last one
    assert records(log)[-1]["shopper"] and records(tmp_path / "audit.jsonl.2")


def test_a_full_ring_drops_and_counts_instead_of_blocking(server_factory, fixture_requests,
                                                          tmp_path):
    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader that does not read: writes stall
    got = bytearray()
    try:
        srv = server_factory("--audit-log", str(fifo), "--audit-ring", "2", "--max-batch", "8")
        n = 160
        errors, took = [], []

        def call(i):
            t0 = time.monotonic()
            try:
                srv.recommend(request_from_json(named(fixture_requests[i % 64], i)), timeout=20)
            except grpc.RpcError as e:
                errors.append(e.code())
            took.append(time.monotonic() - t0)

        for start in range(0, n, 8):
            threads = [threading.Thread(target=call, args=(i,)) for i in range(start, start + 8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        assert not errors, errors[:3]
        written, dropped, too_large, write_errors = audit_counts(srv)
        assert dropped > 0, (written, dropped)
        assert too_large == 0 and write_errors == 0
        # the pipe holds 64 KiB: the writer is stuck in write() with most records still unwritten
        assert written < n - dropped
        assert max(took) < 10, max(took)
        # the disk comes back: everything the ring held is written, nothing else is lost
        stop = threading.Event()

        def drain():
            while not stop.is_set():
                try:
                    chunk = os.read(rfd, 1 << 16)
                    if chunk:
                        got.extend(chunk)
                        continue
                except BlockingIOError:
                    pass
                time.sleep(0.01)

        reader = threading.Thread(target=drain)
        reader.start()
        try:
            deadline = time.monotonic() + 10 * SLOW
            while True:
                written, dropped, _, _ = audit_counts(srv)
                if written + dropped == n:
                    break
                assert time.monotonic() < deadline, (written, dropped)
                time.sleep(0.05)
            assert srv.stop() == 0
        finally:
            stop.set()
            reader.join(10)
        while True:
            try:
                chunk = os.read(rfd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                break
            got.extend(chunk)
        lines = got.decode().splitlines()
        assert len(lines) == written and all(json.loads(ln)["request"] for ln in lines)
    finally:
        os.close(rfd)


def winter_items():
    """Products that suit winter only and are sold in every region (the fixture has some)."""
    items = []
    with open(os.path.join(FIXTURE, "catalog", "products.tsv")) as f:
        head = f.readline().rstrip("\n").split("\t")
        col = {name: i for i, name in enumerate(head)}
        for line in f:
            c = line.rstrip("\n").split("\t")
            if c[col["seasons"]] == "winter" and set(c[col["regions"]].split(",")) == \
                    {"eu", "us", "au", "sg"}:
                items.append(c[col["id"]])
    assert len(items) >= 4, items
    return items[:8]


def winter_request(region, now, items, shopper="winter-shopper"):
    actions = ["view", "cart", "purchase", "view"]
    return {"now": now, "region": region, "shopper_id": shopper, "sections": 3,
            "keywords_per_section": 3, "products_per_section": 6,
            "events": [{"item": it, "action": actions[k % 4], "ts": now - 86400 * (len(items) - k)}
                       for k, it in enumerate(items)]}


def test_failure_case_shows_the_deciding_rule(server_factory, tmp_path):
    """A tropical-region shopper (sg: summer all year in the bundle) in the local summer with a
    winter history gets no winter products, and the same request in the northern winter does;
    the record names the season in effect and what decided it: the `season` line of rules.txt
    (text and line number), the calendar, or the region's fixed season; a product rule that
    removes a product the keywords retrieved is named with its count."""
    items = winter_items()
    winter = set(items)
    with open(os.path.join(FIXTURE, "catalog", "products.tsv")) as f:
        head = f.readline().rstrip("\n").split("\t")
        col = {name: i for i, name in enumerate(head)}
        for line in f:
            c = line.rstrip("\n").split("\t")
            if "winter" in c[col["seasons"]].split(",") and \
                    "summer" not in c[col["seasons"]].split(","):
                winter.add(c[col["id"]])
    cat = tmp_path / "catalog"
    shutil.copytree(os.path.join(FIXTURE, "catalog"), cat)
    (cat / "rules.txt").write_text("version audit-1\n# sg's local summer, said explicitly\n"
                                   "season sg 06-01..08-31 summer\n")
    log = tmp_path / "audit.jsonl"
    srv = server_factory("--catalog", str(cat), "--audit-log", str(log))
    sent = {"sg-jul": winter_request("sg", JUL, items), "eu-jan": winter_request("eu", JAN, items),
            "sg-apr": winter_request("sg", APR, items)}
    shown = {}
    for name, d in sent.items():
        a = srv.recommend(request_from_json(d), timeout=10)
        shown[name] = [p.id for s in a.sections for p in s.products]
    wait_written(srv, 3)
    recs = {r["request"]: r for r in records(log)}

    def rec_of(name):
        return recs[hashlib.sha256(request_from_json(sent[name]).SerializeToString())
                    .hexdigest()[:16]]

    # the tropical summer: no winter products, decided by line 3 of rules.txt
    assert shown["sg-jul"] and not winter & set(shown["sg-jul"]), shown["sg-jul"]
    r = rec_of("sg-jul")
    assert r["season"] == {"name": "summer", "by": "rules.txt:3",
                           "rule": "season sg 06-01..08-31 summer"}, r["season"]
    assert r["versions"]["rules"] == "audit-1"
    # the winter products its keywords retrieved were held back by the season filter
    assert sum(s["held_back"]["season"] for s in r["sections"]) > 0, r["sections"]
    assert not winter & {p["id"] for s in r["sections"] for p in s["products"]}
    # the northern winter: winter products, the calendar decided
    assert winter & set(shown["eu-jan"]), shown["eu-jan"]
    r = rec_of("eu-jan")
    assert r["season"] == {"name": "winter", "by": "calendar"}, r["season"]
    # a date no rule covers: sg's fixed season decides
    assert rec_of("sg-apr")["season"] == {"name": "summer", "by": "fixed"}
    assert not winter & set(shown["sg-apr"])

    # a product rule: a winter product eu's January page shows, made unavailable there; the
    # record names the line and counts the product among what it removed. A keyword rule of
    # sg's only: listed as in effect for sg's request, not for eu's
    gone = next(p for p in shown["eu-jan"] if p in winter)
    kw = srv.recommend(request_from_json(sent["sg-jul"]), timeout=10).sections[0].keywords[0].text
    (cat / "rules.txt").write_text("version audit-2\nseason sg 06-01..08-31 summer\n"
                                   f"unavailable product {gone} region=eu season=winter\n"
                                   f"unavailable keyword {kw} region=sg\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for(r"\breloaded\b.*rules_version=audit-2", 10 * SLOW)
    a = srv.recommend(request_from_json(sent["eu-jan"]), timeout=10)
    assert gone not in {p.id for s in a.sections for p in s.products}
    a = srv.recommend(request_from_json(sent["sg-jul"]), timeout=10)
    assert kw not in {k.text for s in a.sections for k in s.keywords}
    wait_written(srv, 6)
    eu, sg = [x for x in records(log) if x["versions"]["rules"] == "audit-2"]
    assert eu["segment"]["region"] == "eu" and sg["segment"]["region"] == "sg"
    assert eu["removed_by"] == [{"line": 3, "rule":
                                 f"unavailable product {gone} region=eu season=winter",
                                 "products": eu["removed_by"][0]["products"]}], eu["removed_by"]
    assert eu["removed_by"][0]["products"] >= 1
    assert sum(s["held_back"]["rules"] for s in eu["sections"]) >= 1
    assert eu["season"] == {"name": "winter", "by": "calendar"}
    assert eu["in_effect"] == [] and sg["removed_by"] == []
    assert sg["in_effect"] == [{"line": 4, "rule": f"unavailable keyword {kw} region=sg",
                                "kind": "keyword"}], sg["in_effect"]
    assert srv.stop() == 0
