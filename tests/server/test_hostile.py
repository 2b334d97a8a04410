"""What an outside client found (issue #12), one test per case, with raw bytes on the wire where a
well-behaved client library would not send them: a compressed bomb, NUL bytes and invalid UTF-8
inside strings, an unset `now`, misleading messages, malformed and unusual protobuf, deadline
storms, a slowloris on the metrics port, whitespace the tokeniser must split on, and refusals
that --log-requests must log."""
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest

from conftest import (FIXTURE, SANITIZED, VITRINE, health_pb2, metric_value, pb,
                      request_from_json)

RECOMMEND = "/vitrine.v1.Storefront/Recommend"
INVALID = grpc.StatusCode.INVALID_ARGUMENT
MAX_TIME = 2 ** 53 - 1


# ---- raw protobuf ----
def varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def key(field, wire_type):
    return varint(field << 3 | wire_type)


def f_bytes(field, b):
    return key(field, 2) + varint(len(b)) + b


def f_varint(field, v):
    return key(field, 0) + varint(v)


def event_bytes(item=None, action=1, ts=1700000000, query=None):
    out = b""
    if item is not None:
        out += f_bytes(1, item)
    if action:
        out += f_varint(2, action)
    if ts:
        out += f_varint(3, ts)
    if query is not None:
        out += f_bytes(4, query)
    return out


def refused(srv, payload, needle, code=INVALID, stub=None, **kw):
    """The call fails with code and a message containing needle; returns the message."""
    with pytest.raises(grpc.RpcError) as ei:
        (stub or srv.recommend_raw)(payload, timeout=20, **kw)
    e = ei.value
    assert e.code() == code, (e.code(), e.details())
    assert needle in (e.details() or ""), e.details()
    return e.details()


def cli(req_text):
    """`vitrine recommend` on a JSON text: (exit status, stdout, stderr)."""
    p = subprocess.run([VITRINE, "recommend", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                        f"{FIXTURE}/catalog", "--request", "-"], input=req_text.encode(),
                       capture_output=True, timeout=30)
    return p.returncode, p.stdout.decode(), p.stderr.decode("utf-8", "backslashreplace")


@pytest.fixture(scope="module")
def base(fixture_requests):
    return request_from_json(fixture_requests[0])


def proc_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


BAD_UTF8 = [b"\xed\xa0\x80", b"\xff", b"\xc0\xaf", b"ab\xe2\x82", b"\xf4\x90\x80\x80"]


def test_nul_in_json_strings_refused_by_the_cli(fixture_requests):
    req = dict(fixture_requests[0])
    region = req["region"]
    for patch, needle in [({"region": region + "\u0000evil"}, "region contains a NUL character"),
                          ({"exclude": ["p00001\u0000zzz"]}, "exclude[0] contains a NUL character"),
                          ({"shopper_id": "a\u0000"}, "shopper_id contains a NUL character")]:
        rc, _, err = cli(json.dumps(dict(req, **patch)))
        assert rc == 2 and needle in err, err
    ev = dict(req["events"][0], item="p00001\u0000junk")
    rc, _, err = cli(json.dumps(dict(req, events=[ev] + req["events"][1:])))
    assert rc == 2 and "events[0].item contains a NUL character" in err, err
    # a raw NUL byte or control character inside a JSON string is not JSON (never a cut string)
    for raw in ("\x00", "\x01", "\n"):
        rc, _, err = cli(json.dumps(dict(req, region="@@")).replace("@@", region + raw + "x"))
        assert rc == 2 and "not valid JSON" in err, err


def test_invalid_utf8_refused_by_the_cli(fixture_requests):
    req = json.dumps(dict(fixture_requests[0], shopper_id="@@")).encode()
    for bad in BAD_UTF8:
        p = subprocess.run([VITRINE, "recommend", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                            f"{FIXTURE}/catalog", "--request", "-"],
                           input=req.replace(b"@@", bad), capture_output=True, timeout=30)
        assert p.returncode == 2
        err = p.stderr.decode("utf-8")  # escaped: valid UTF-8
        assert "shopper_id is not valid UTF-8" in err, err


# every character Python's str.split() splits on (str.isspace): what docs/SERVER.md lists
SPACES = [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680,
          *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000]
NOT_SPACES = [0x00, 0x08, 0x0E, 0x1B, 0x7F, 0x84, 0x180E, 0x200B, 0x200C, 0x2060, 0xFEFF,
              0xFFFD]


def test_tokeniser_matches_the_reference():
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from train.bundle import load_bundle
    _, tables, _ = load_bundle(f"{FIXTURE}/bundle")
    assert sorted(c for c in range(0x110000) if chr(c).isspace()) == SPACES
    texts = ["scented\u001fscarf", "Scented SCARF", "\u00c9t\u00c9 scarf", "wool\u00a0scarf  "]
    texts += [f"scented{chr(c)}scarf" for c in SPACES + NOT_SPACES if c]
    texts += [f"{chr(c)}wool{chr(c)}{chr(c)}scarf{chr(c)}" for c in SPACES]
    p = subprocess.run([VITRINE, "tokenize", "--bundle", f"{FIXTURE}/bundle"],
                       input="\n".join(json.dumps(t) for t in texts) + "\n", capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    got = [json.loads(ln) for ln in p.stdout.splitlines()]
    want = [tables.vocab.encode(t) for t in texts]
    assert got == want
    assert got[0] == [tables.vocab.stoi["scented"], tables.vocab.stoi["scarf"]]
