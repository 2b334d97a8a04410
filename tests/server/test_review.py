"""The review page (vitrine serve --review-listen, docs/SERVER.md "Review page"): in a real
headless browser (Debian's chromium through chromedriver), a reviewer loads the page, denies a
keyword of a storefront, sees the reload confirmed, and the same request's next storefront no
longer has it; over plain HTTP, what the page refuses (no token, a wrong token, another origin,
a value carrying another rule line, an unknown phrase, bodies without a length or over the limit)
with rules.txt untouched, HTML from the audit log escaped, a failed reload reported with the old
rules still serving, and the start-up checks."""
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import FIXTURE, SLOW, VITRINE, pb, request_from_json

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    HAVE_SELENIUM = True
except ImportError:
    HAVE_SELENIUM = False

RULES = "# merchandising rules, kept as they are\n"


def start(server_factory, tmp_path, *extra, rules=RULES):
    """A server with an audit log and a catalogue copy with rules.txt; (server, catalogue, audit
    log, the page's URL)."""
    cat = tmp_path / "catalog"
    shutil.copytree(os.path.join(FIXTURE, "catalog"), cat)
    (cat / "rules.txt").write_text(rules)
    log = tmp_path / "audit.jsonl"
    srv = server_factory("--catalog", str(cat), "--audit-log", str(log), "--review-listen",
                         "127.0.0.1:0", *extra)
    line = srv.wait_for(r"\breview_page\b", 5)
    port = int(re.search(r"review_port\W+(\d+)", line).group(1))
    return srv, cat, log, f"http://127.0.0.1:{port}/"


def wait_records(log, n):
    deadline = time.monotonic() + 10 * SLOW
    while True:
        if log.exists() and sum(1 for ln in log.read_text().splitlines() if ln) >= n:
            return
        assert time.monotonic() < deadline, f"fewer than {n} audit records"
        time.sleep(0.05)


def keywords_of(resp):
    return {k.text for s in resp.sections for k in s.keywords}


def get(url):
    with urllib.request.urlopen(url, timeout=10 * SLOW) as r:
        return r.status, dict(r.headers), r.read().decode()


def post(url, fields, headers=None):
    """(status, body) of a form POST."""
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(url + "deny", data=data, method="POST", headers={
        "Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30 * SLOW) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def token_of(page):
    m = re.search(r'name="token" value="([0-9a-f]{32})"', page)
    assert m, "no token in the page"
    return m.group(1)


def raw_http(url, data):
    """Sends bytes to the page's port; the answer's status code."""
    port = urllib.parse.urlparse(url).port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    return int(out.split(b" ", 2)[1])


def chrome():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    o = Options()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--disable-extensions", "--no-first-run"):
        o.add_argument(a)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                    reason="the browser test needs Debian's chromium and chromium-driver "
                           "(scripts/install-deps.sh installs them)")
@pytest.mark.skipif(not HAVE_SELENIUM,
                    reason="the browser test needs python3-selenium (scripts/install-deps.sh)")
def test_deny_a_keyword_in_a_browser(server_factory, fixture_requests, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    srv, cat, log, url = start(server_factory, tmp_path)
    req = request_from_json(fixture_requests[0])
    first = srv.recommend(req, timeout=10)
    keyword = first.sections[0].keywords[0].text
    wait_records(log, 1)

    driver = chrome()
    try:
        driver.set_page_load_timeout(30 * SLOW)
        driver.get(url)
        assert driver.title == "vitrine review"
        # the storefront as answered: theme -> keyword -> products, a deny button on each
        shown = driver.find_element(By.CSS_SELECTOR, "section.storefront")
        themes = [e.text for e in shown.find_elements(By.CSS_SELECTOR, ".phrase.theme")]
        assert themes == [s.theme.text for s in first.sections]
        products = [e.text for e in shown.find_elements(By.CSS_SELECTOR, "code.product")]
        assert products == [p.id for s in first.sections
                            for k in s.keywords for p in s.products if p.keyword == k.id]
        assert sorted(products) == sorted(p.id for s in first.sections for p in s.products)
        # each product under the keyword that retrieved it (the record's product "keyword")
        section = shown.find_element(By.CSS_SELECTOR, "li.section")
        for k, li in zip(first.sections[0].keywords,
                         section.find_elements(By.CSS_SELECTOR, "ul.keywords > li")):
            assert li.find_element(By.CSS_SELECTOR, ".phrase.keyword").text == k.text
            assert [e.text for e in li.find_elements(By.CSS_SELECTOR, "code.product")] == \
                [p.id for p in first.sections[0].products if p.keyword == k.id]
        buttons = [b for b in driver.find_elements(By.CSS_SELECTOR, "button.deny")
                   if b.get_attribute("data-kind") == "keyword"
                   and b.get_attribute("data-value") == keyword]
        assert buttons, f"no deny button for keyword {keyword!r}"
        buttons[0].click()
        WebDriverWait(driver, 30 * SLOW).until(
            lambda d: d.find_elements(By.ID, "result"))
        result = driver.find_element(By.ID, "result")
        assert result.get_attribute("class") == "ok", result.text
        assert f"Denied keyword '{keyword}'" in result.text, result.text
        version = result.get_attribute("data-rules-version")
        assert version and version != first.rules_version
        assert driver.find_element(By.ID, "rules-version").text == version

        # the next storefront of the same request has no such keyword, under the new rules
        second = srv.recommend(req, timeout=10)
        assert second.rules_version == version
        assert keyword not in keywords_of(second)
        assert keyword in keywords_of(first)
        wait_records(log, 2)
        driver.get(url)
        newest, older = driver.find_elements(By.CSS_SELECTOR, "section.storefront")[:2]
        assert keyword not in [e.text for e in
                               newest.find_elements(By.CSS_SELECTOR, ".phrase.keyword")]
        # the older storefront still shows it, marked denied instead of a button
        assert not [b for b in older.find_elements(By.CSS_SELECTOR, "button.deny")
                    if b.get_attribute("data-value") == keyword]
        assert older.find_elements(By.CSS_SELECTOR, ".denied")
    finally:
        driver.quit()

    rules = (cat / "rules.txt").read_text()
    assert rules.startswith(RULES)  # the existing content, byte for byte
    added = rules[len(RULES):].splitlines()
    assert len(added) == 1
    assert re.fullmatch(rf"deny keyword {re.escape(keyword)}  # review page "
                        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ from 127\.0\.0\.1", added[0]), added
    assert srv.wait_for(r"\breview_deny\b", 5)
    assert srv.info(pb.GetInfoRequest(), timeout=5).rules_version == version
    assert srv.stop() == 0


def test_refusals_leave_the_rules_untouched(server_factory, fixture_requests, tmp_path):
    # with the watcher on: the deny's own change must not be reloaded a second time
    srv, cat, log, url = start(server_factory, tmp_path, "--watch-catalog-ms", "50")
    first = srv.recommend(request_from_json(fixture_requests[1]), timeout=10)
    keyword = first.sections[0].keywords[0].text
    wait_records(log, 1)
    status, headers, page = get(url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    token = token_of(page)
    refusals = [
        ({"kind": "keyword", "value": keyword}, None, 403, "token"),
        ({"token": "0" * 32, "kind": "keyword", "value": keyword}, None, 403, "token"),
        ({"token": token, "kind": "keyword", "value": keyword},
         {"Origin": "http://evil.example"}, 403, "origin"),
        ({"token": token, "kind": "keyword",
          "value": f"{keyword}\ndeny product {first.sections[0].products[0].id}"}, None, 400,
         "control character"),
        ({"token": token, "kind": "keyword", "value": f"{keyword} # hidden"}, None, 400, "&#39;#&#39;"),
        ({"token": token, "kind": "keyword", "value": "zzzz qqqq"}, None, 400, "unknown keyword"),
        ({"token": token, "kind": "term", "value": "acme"}, None, 400, "only a theme"),
        ({"token": token, "kind": "product", "value": "no-such-product"}, None, 400,
         "unknown product"),
    ]
    for fields, headers, want_status, want_text in refusals:
        status, body = post(url, fields, headers)
        assert status == want_status, (fields, status, body[:300])
        assert want_text in body, (fields, re.findall(r'id="result"[^>]*>[^<]*', body))
        assert 'id="result" class="error"' in body
        assert (cat / "rules.txt").read_text() == RULES
    # not a form; no length; too long; another method; another path
    status, body = post(url, {"token": token}, {"Content-Type": "text/plain"})
    assert status == 415
    assert raw_http(url, b"POST /deny HTTP/1.1\r\nHost: localhost\r\n\r\n") == 411
    assert raw_http(url, b"POST /deny HTTP/1.1\r\nHost: x\r\nContent-Length: 99999\r\n\r\n") == 413
    assert raw_http(url, b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n") == 405
    with pytest.raises(urllib.error.HTTPError) as e:
        get(url + "etc/passwd")
    assert e.value.code == 404
    # a name other than localhost in Host (a DNS-rebinding page's): refused, even the page
    assert raw_http(url, b"GET / HTTP/1.1\r\nHost: evil.example:80\r\n\r\n") == 403
    status, body = post(url, {"token": token, "kind": "keyword", "value": keyword},
                        {"Host": "rebound.evil.example"})
    assert status == 403 and "DNS rebinding" in body
    assert (cat / "rules.txt").read_text() == RULES
    # the same origin is fine (a browser sends it), and a repeat is refused as already denied
    port = urllib.parse.urlparse(url).port
    status, body = post(url, {"token": token, "kind": "keyword", "value": keyword},
                        {"Origin": f"http://127.0.0.1:{port}"})
    assert status == 200, body[:500]
    status, body = post(url, {"token": token, "kind": "keyword", "value": keyword})
    assert status == 400 and "already denied" in body
    assert (cat / "rules.txt").read_text().count("deny keyword") == 1
    time.sleep(0.5 * SLOW)  # ten looks of the watcher
    assert sum(1 for ln in srv.lines if re.search(r"\breloaded\b", ln)) == 1, srv.lines[-8:]
    assert not [ln for ln in srv.lines if "catalog_changed" in ln]
    # a theme: gone from the next answer too
    theme = first.sections[0].theme.text
    status, body = post(url, {"token": token, "kind": "theme", "value": theme})
    assert status == 200, body[:500]
    again = srv.recommend(request_from_json(fixture_requests[1]), timeout=10)
    assert theme not in {s.theme.text for s in again.sections} and keyword not in keywords_of(again)
    assert (cat / "rules.txt").read_text().startswith(RULES + f"deny keyword {keyword}  # ")
    assert srv.stop() == 0


def test_audit_text_is_escaped(server_factory, fixture_requests, tmp_path):
    """The page shows what the audit file holds; whatever is in it arrives as text, not markup."""
    srv, cat, log, url = start(server_factory, tmp_path)
    srv.recommend(request_from_json(fixture_requests[2]), timeout=10)
    wait_records(log, 1)
    evil = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'
    with open(log, "a") as f:
        f.write('{"ts":"' + evil.replace('"', '\\"') + '","request":"r","sections":[{"theme":'
                '{"id":0,"text":"' + evil.replace('"', '\\"') + '","score":0},"keywords":[],'
                '"products":[]}]}\n')
        f.write("not a record\n")
    _, _, page = get(url)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" \
        in page
    assert "1 lines skipped" in page
    assert srv.stop() == 0


def test_a_failed_reload_is_reported_and_the_old_rules_serve(server_factory, fixture_requests,
                                                            tmp_path):
    srv, cat, log, url = start(server_factory, tmp_path)
    first = srv.recommend(request_from_json(fixture_requests[3]), timeout=10)
    product = first.sections[0].products[0].id
    wait_records(log, 1)
    token = token_of(get(url)[2])
    # the catalogue on disk breaks after it was loaded: the deny is written, the reload refused
    (cat / "manifest.json").write_text("{broken")
    status, body = post(url, {"token": token, "kind": "product", "value": product})
    assert status == 500, body[:300]
    assert "the reload failed, so the old catalogue and rules keep serving" in body
    assert "manifest.json" in body
    assert f"deny product {product}  # review page" in (cat / "rules.txt").read_text()
    srv.wait_for(r"\breload_failed\b", 5)
    again = srv.recommend(request_from_json(fixture_requests[3]), timeout=10)
    assert again.rules_version == first.rules_version
    assert product in {p.id for s in again.sections for p in s.products}
    assert srv.stop() == 0


def test_start_up_checks(tmp_path):
    import subprocess
    base = [VITRINE, "serve", "--bundle", os.path.join(FIXTURE, "bundle"), "--catalog",
            os.path.join(FIXTURE, "catalog"), "--listen", "127.0.0.1:0", "--metrics-listen",
            "off"]
    r = subprocess.run(base + ["--review-listen", "127.0.0.1:0"], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "--review-listen needs --audit-log" in r.stderr, r.stderr
    r = subprocess.run(base + ["--audit-log", str(tmp_path / "a.jsonl"), "--review-listen",
                               "localhost"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--review-listen must be IPV4:PORT or off" in r.stderr, r.stderr
    r = subprocess.run(base + ["--help"], capture_output=True, text=True, timeout=30)
    assert "--review-listen" in r.stdout and "VITRINE_REVIEW_LISTEN" in r.stdout
