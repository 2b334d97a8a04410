"""The request file: a line that cannot become a RecommendRequest is refused at start, naming
file:line and the field, before any connection (the target here listens nowhere)."""
import json

import pytest

from conftest import run_bench

GOOD = {"now": 1748803417, "region": "eu", "shopper_id": "s1", "sections": 2,
        "keywords_per_section": 3, "products_per_section": 4,
        "events": [{"action": "view", "ts": 1748040291, "item": "p00001"},
                   {"action": "search", "ts": 1748040292, "query": "red shoes", "item": None}],
        "exclude": ["p00002"]}


def with_(**kw):
    d = json.loads(json.dumps(GOOD))
    d.update(kw)
    return json.dumps(d)


@pytest.mark.parametrize("bad,why", [
    ("{not json", "not valid JSON"),
    ('{"now": 1} trailing', "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    (with_(now="soon"), "now"),
    (with_(now=1.5), "now"),
    (with_(region=7), "region"),
    (with_(sections=None), "sections"),
    (with_(products_per_section=2 ** 40), "products_per_section"),
    (with_(events={"action": "view"}), "events must be a list"),
    (with_(events=[{"action": "jump", "ts": 1}]), "events[0].action"),
    (with_(events=[{"action": "view"}]), "events[0].ts"),
    (with_(events=[{"action": "view", "ts": 1, "item": ""}]), "events[0].item"),
    (with_(events=[{"action": "view", "ts": 1, "query": 5}]), "events[0].query"),
    (with_(exclude=[1]), "exclude[0]"),
])
def test_malformed_line_is_refused_with_file_and_line(tmp_path, bad, why):
    path = tmp_path / "requests.jsonl"
    # a blank line counts: the bad request is on line 4
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n\n" + bad + "\n" +
                    json.dumps(GOOD) + "\n")
    p, res = run_bench("127.0.0.1:1", str(path), "--concurrency", "1", "--connect-timeout", "1",
                       check=False)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "%s:4: " % path in p.stderr, p.stderr
    assert why in p.stderr, p.stderr
    assert res is None


def test_values_the_server_refuses_are_sent(tmp_path):
    """Values the protobuf can carry (an unknown region, 0 sections, a negative time) are not the
    bench's to refuse: the file loads, and the bench goes on to connect (and fails to, here)."""
    path = tmp_path / "requests.jsonl"
    path.write_text(with_(region="mars", sections=0, now=-5) + "\n")
    p, _ = run_bench("127.0.0.1:1", str(path), "--concurrency", "1", "--connect-timeout", "0.5",
                     check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "GetInfo failed" in p.stderr


def test_empty_file_and_bad_options(tmp_path):
    path = tmp_path / "requests.jsonl"
    path.write_text("\n \n")
    p, _ = run_bench("127.0.0.1:1", str(path), "--concurrency", "1", check=False)
    assert p.returncode == 2 and "no requests" in p.stderr
    path.write_text(json.dumps(GOOD) + "\n")
    for args in (["--concurrency", "0"], ["--rate", "0.5x"], ["--arrivals", "bursty", "--rate",
                                                                 "1"],
                 ["--concurrency", "2000"], ["--max-windows", "1", "--concurrency", "1"]):
        p, _ = run_bench("127.0.0.1:1", str(path), *args, check=False)
        assert p.returncode == 2, (args, p.stderr)
