"""The catalogue's rules.txt (docs/RULES.md) in a running server: its version in GetInfo, in every
answer, in the metrics and the logs; a hot reload under load (0 failed calls, every answer under
the new version obeys the new rules); a broken rules file refused with its line number while the
old rules keep applying; --watch-catalog-ms seeing rules.txt change; start-up and the CLI refusing
a broken file; the CLI and a server on two emulated CUDA devices agreeing under rules loaded by a
reload (every device decodes under the new pruned tries)."""
import collections
import hashlib
import os
import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

from conftest import (FIXTURE, SLOW, VITRINE, VITRINE_EMU, assert_same_storefront, cli_storefront,
                      metric_value, pb, request_from_json)


def catalog_copy(tmp_path):
    cat = tmp_path / "catalog"
    shutil.copytree(os.path.join(FIXTURE, "catalog"), cat)
    return cat


def write_rules(cat, text):
    """Replaces rules.txt atomically, as an editor's save or a volume's swap does."""
    tmp = cat / "rules.txt.tmp"
    tmp.write_text(text)
    os.replace(tmp, cat / "rules.txt")


def shown(resp):
    """(themes, keywords, product ids) of an answer."""
    themes, keywords, products = set(), set(), set()
    for s in resp.sections:
        themes.add(s.theme.text)
        keywords.update(k.text for k in s.keywords)
        products.update(p.id for p in s.products)
    return themes, keywords, products


def model_info(srv):
    for line in srv.metrics().splitlines():
        if line.startswith("vitrine_model_info{"):
            return line
    raise AssertionError("no vitrine_model_info")


def test_rules_version_in_info_answers_metrics_and_logs(server_factory, fixture_requests,
                                                        tmp_path):
    cat = catalog_copy(tmp_path)
    write_rules(cat, "# merchandising\nversion r-test-1\n")
    srv = server_factory("--catalog", str(cat))
    assert "rules_version=r-test-1" in srv.wait_for(r"\bserving\b", 5)
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == "r-test-1"
    for d in fixture_requests[:4]:
        assert srv.recommend(request_from_json(d), timeout=10).rules_version == "r-test-1"
    assert 'rules_version="r-test-1"' in model_info(srv)
    # no version line: the first 12 hex of the file's sha256
    write_rules(cat, "deny product p00001\n")
    srv.proc.send_signal(signal.SIGHUP)
    line = srv.wait_for(r"\breloaded\b", 10 * SLOW)
    want = hashlib.sha256(b"deny product p00001\n").hexdigest()[:12]
    assert f"rules_version={want}" in line, line
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == want
    # removed: no rules, an empty version
    os.remove(cat / "rules.txt")
    srv.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10 * SLOW
    while sum("reloaded" in ln for ln in srv.lines) < 2:
        assert time.monotonic() < deadline, srv.lines[-5:]
        time.sleep(0.05)
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == ""
    assert srv.recommend(request_from_json(fixture_requests[0]), timeout=10).rules_version == ""
    assert srv.stop() == 0


def test_hot_reload_under_load_and_a_broken_file(server_factory, fixture_requests, tmp_path):
    cat = catalog_copy(tmp_path)
    srv = server_factory("--catalog", str(cat), "--max-batch", "8")
    # what the storefronts show without rules: the most frequent keyword and product
    kw, pr = collections.Counter(), collections.Counter()
    for d in fixture_requests[:32]:
        _, k, p = shown(srv.recommend(request_from_json(d), timeout=10))
        kw.update(k)
        pr.update(p)
    keyword, product = kw.most_common(1)[0][0], pr.most_common(1)[0][0]

    stop = threading.Event()
    errors, answers = [], []

    def load():
        i = 0
        while not stop.is_set():
            try:
                r = srv.recommend(request_from_json(fixture_requests[i % 32]), timeout=10)
                answers.append((r.rules_version, shown(r)))
            except grpc.RpcError as e:
                errors.append((e.code(), e.details()))
            i += 1

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        write_rules(cat, f"version r2\ndeny keyword {keyword}\ndeny product {product}\n")
        srv.proc.send_signal(signal.SIGHUP)
        srv.wait_for(r"\breloaded\b.*rules_version=r2", 10 * SLOW)
        n_before = len(answers)
        deadline = time.monotonic() + 10 * SLOW
        while len(answers) < n_before + 20:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not errors, errors[:3]
    versions = collections.Counter(v for v, _ in answers)
    assert versions[""] > 0 and versions["r2"] >= 20, versions
    assert set(versions) == {"", "r2"}, versions
    for v, (_, k, p) in answers:
        if v == "r2":  # every answer under the new rules obeys them
            assert keyword not in k and product not in p, (keyword, product, k, p)
    assert any(keyword in k for v, (_, k, _) in answers if v == ""), "it did appear before"
    assert metric_value(srv.metrics(), "vitrine_catalog_reloads_total", result="ok") == 1

    # a broken file: refused with its line number, the old catalogue and rules keep serving
    write_rules(cat, "version r3\n\ndeny keyword zzqq nothing\n")
    srv.proc.send_signal(signal.SIGHUP)
    line = srv.wait_for(r"reload_failed", 10 * SLOW)
    assert "rules.txt:3: unknown keyword 'zzqq nothing'" in line, line
    assert metric_value(srv.metrics(), "vitrine_catalog_reloads_total", result="failed") == 1
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == "r2"
    assert 'rules_version="r2"' in model_info(srv)
    for d in fixture_requests[:32]:
        r = srv.recommend(request_from_json(d), timeout=10)
        _, k, p = shown(r)
        assert r.rules_version == "r2" and keyword not in k and product not in p
    assert srv.stop() == 0


def test_watch_catalog_sees_rules_txt(server_factory, tmp_path):
    cat = catalog_copy(tmp_path)
    srv = server_factory("--catalog", str(cat), "--watch-catalog-ms", "100")
    write_rules(cat, "version w1\n")
    srv.wait_for(r"\breloaded\b.*rules_version=w1", 10 * SLOW)
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == "w1"
    write_rules(cat, "version w2\nseason mars 01-01..01-31 winter\n")
    line = srv.wait_for(r"reload_failed", 10 * SLOW)
    assert "rules.txt:2: unknown region 'mars'" in line, line
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == "w1"
    assert srv.stop() == 0


def test_start_and_cli_refuse_a_broken_rules_file(tmp_path):
    cat = catalog_copy(tmp_path)
    write_rules(cat, "deny product p00001\nunavailable product p00002 season=monsoon\n")
    bundle = os.path.join(FIXTURE, "bundle")
    p = subprocess.run([VITRINE, "serve", "--bundle", bundle, "--catalog", str(cat), "--listen",
                        "127.0.0.1:0", "--metrics-listen", "off"], capture_output=True, text=True,
                       timeout=60 * SLOW)
    assert p.returncode != 0
    assert "load_failed" in p.stderr and "rules.txt:2: unknown season 'monsoon'" in p.stderr, \
        p.stderr
    p = subprocess.run([VITRINE, "info", "--bundle", bundle, "--catalog", str(cat)],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert p.returncode == 2 and "rules.txt:2: unknown season 'monsoon'" in p.stderr, p.stderr
    write_rules(cat, "version cli-1\ndeny product p00001\n")
    p = subprocess.run([VITRINE, "info", "--bundle", bundle, "--catalog", str(cat)],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert p.returncode == 0, p.stderr
    assert "cli-1" in p.stdout and "0 keywords, 1 products" in p.stdout, p.stdout


@pytest.mark.skipif(not os.path.exists(VITRINE_EMU), reason="vitrine-emu is not built")
def test_cli_and_emulated_devices_agree_after_a_rules_reload(server_factory, fixture_requests,
                                                              tmp_path):
    cat = catalog_copy(tmp_path)
    srv = server_factory("--catalog", str(cat), "--device", "cuda:0,1", "--max-batch", "4",
                         env={"VT_EMU_DEVICES": "2"}, binary=VITRINE_EMU)
    write_rules(cat, "version emu-1\ndeny term alpine\ndeny keyword scented sweater set\n"
                     "deny product p00001\nseason sg 06-01..08-31 winter\n")
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for(r"\breloaded\b.*rules_version=emu-1", 30 * SLOW)
    futs = [srv.recommend.future(request_from_json(r), timeout=60) for r in fixture_requests[:12]]
    for r, f in zip(fixture_requests[:12], futs):
        got = f.result()
        assert got.rules_version == "emu-1"
        assert_same_storefront(got, cli_storefront(r, catalog=str(cat)), rel=1e-5)
        themes, keywords, products = shown(got)
        assert not any("alpine" in t.split() for t in themes | keywords)
        assert "scented sweater set" not in keywords and "p00001" not in products
    # no graceful stop here (the factory kills it, as test_device_emu.py's servers): a worker
    # thread's cuBLAS handle (kernels/cuda/matmul.cu, thread-local) is never destroyed, which
    # LeakSanitizer reports at a clean exit of vitrine-emu under `make check-asan`
