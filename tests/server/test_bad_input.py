"""The bad-input matrix: each request is refused with INVALID_ARGUMENT and a message naming the
problem, and the server keeps serving (health SERVING, a valid request answered) after each."""
import grpc
import pytest

from conftest import health_pb2, pb, request_from_json


def valid(fixture_requests):
    return request_from_json(fixture_requests[0])


def with_(base, **kw):
    r = pb.RecommendRequest()
    r.CopyFrom(base)
    for k, v in kw.items():
        setattr(r, k, v)
    return r


def cases(base):
    """(name, payload bytes, expected code, substring of the message)"""
    INVALID = grpc.StatusCode.INVALID_ARGUMENT
    one = with_(base)
    one.events[0].action = 99  # an enum number the proto does not define
    unset = with_(base)
    unset.events[0].action = pb.ACTION_UNSPECIFIED
    long_query = with_(base)
    long_query.events[0].query = "x" * 5000
    long_item = with_(base)
    long_item.events[0].item = "p" * 1000
    neg_ts = with_(base)
    neg_ts.events[1].ts = -5
    million = b"\x0a\x00" * 1_000_000  # a million (empty) events: 2 MB, under the 4 MiB limit
    return [
        ("not protobuf", b"\xff\xff\xff\xff\xff", INVALID, "malformed protobuf"),
        ("truncated protobuf", base.SerializeToString()[:-3], INVALID, "malformed protobuf"),
        ("empty request", b"", INVALID, "empty request: now, region"),
        ("a million events", million, INVALID, "events: 1000000 events, more than the maximum"),
        ("invalid action enum", one.SerializeToString(), INVALID,
         "events[0].action must be one of view, search, cart, purchase"),
        ("unset action", unset.SerializeToString(), INVALID, "events[0].action is missing: it must be one of"),
        ("invalid priority enum", with_(base, priority=7).SerializeToString(), INVALID,
         "priority must be PRIORITY_NORMAL (0) or PRIORITY_HIGH (1), not 7"),
        ("oversized query", long_query.SerializeToString(), INVALID,
         "events[0].query must be a string of at most"),
        ("oversized item id", long_item.SerializeToString(), INVALID,
         "events[0].item is 1000 bytes, more than 256"),
        ("oversized shopper id", with_(base, shopper_id="s" * 100000).SerializeToString(),
         INVALID, "shopper_id is 100000 bytes, more than 256"),
        ("unknown region", with_(base, region="atlantis").SerializeToString(), INVALID,
         "unknown region 'atlantis': one of 'eu', 'us', 'au', 'sg'"),
        ("negative sections", with_(base, sections=-1).SerializeToString(), INVALID,
         "sections must be an integer in 1.."),
        ("negative products", with_(base, products_per_section=-3).SerializeToString(), INVALID,
         "products_per_section must be an integer in 1.."),
        ("zero keywords", with_(base, keywords_per_section=0).SerializeToString(), INVALID,
         "keywords_per_section is missing or 0: it must be an integer in 1.."),
        ("too many sections", with_(base, sections=1000).SerializeToString(), INVALID,
         "sections must be an integer in 1.."),
        ("negative now", with_(base, now=-1).SerializeToString(), INVALID,
         "now is negative: a Unix time in seconds, 1..9007199254740991, is required"),
        ("negative event time", neg_ts.SerializeToString(), INVALID,
         "events[1].ts is negative"),
        ("over the message size limit", b"\x0a\x00" * (3 << 20), grpc.StatusCode.RESOURCE_EXHAUSTED,
         ""),
    ]


@pytest.fixture(scope="module")
def matrix(fixture_requests):
    return cases(valid(fixture_requests))


def test_bad_inputs_refused_and_server_keeps_serving(shared_server, fixture_requests, matrix):
    good = valid(fixture_requests)
    for name, payload, code, needle in matrix:
        with pytest.raises(grpc.RpcError) as ei:
            shared_server.recommend_raw(payload, timeout=20)
        e = ei.value
        assert e.code() == code, f"{name}: {e.code()} {e.details()}"
        assert needle in (e.details() or ""), f"{name}: {e.details()!r}"
        # still healthy and serving
        assert shared_server.health() == health_pb2.HealthCheckResponse.SERVING, name
        assert len(shared_server.recommend(good, timeout=10).sections) == good.sections, name
    assert shared_server.proc.poll() is None


def test_unknown_method_unimplemented(shared_server):
    m = shared_server.channel.unary_unary("/vitrine.v1.Storefront/NoSuchMethod")
    with pytest.raises(grpc.RpcError) as ei:
        m(b"", timeout=5)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_garbage_health_request(shared_server):
    with pytest.raises(grpc.RpcError) as ei:
        shared_server.channel.unary_unary("/grpc.health.v1.Health/Check")(b"\xff\xff", timeout=5)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
