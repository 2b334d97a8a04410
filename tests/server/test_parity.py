"""A real independent client (Python grpcio) gets the same storefront over gRPC as
`vitrine recommend` gives for the same request."""
import grpc

from conftest import assert_same_storefront, cli_storefront, pb, request_from_json


def test_same_storefront_as_cli(shared_server, fixture_requests):
    info = shared_server.info(pb.GetInfoRequest(), timeout=5)
    for req in fixture_requests[:12]:
        resp = shared_server.recommend(request_from_json(req), timeout=10)
        assert_same_storefront(resp, cli_storefront(req))
        assert resp.model_version == info.model_version
        assert resp.catalog_version == info.catalog_version
        assert resp.timing.batch_size == 1  # alone: compared exactly
        assert resp.timing.total_us >= resp.timing.queue_us + resp.timing.compute_us > 0


def test_dropped_events_and_excludes_as_cli(shared_server, fixture_requests):
    # more events than the model keeps (max_events), and excluded products: same answer as the CLI
    req = dict(fixture_requests[0])
    info = shared_server.info(pb.GetInfoRequest(), timeout=5)
    ev = req["events"]
    req["events"] = [dict(ev[i % len(ev)], ts=ev[0]["ts"] + i) for i in range(info.max_model_events + 7)]
    first = cli_storefront(req)
    req["exclude"] = [p["id"] for p in first["sections"][0]["products"][:2]] + ["no-such-product"]
    cli = cli_storefront(req)
    assert cli["dropped_events"] == 7
    resp = shared_server.recommend(request_from_json(req), timeout=10)
    assert_same_storefront(resp, cli)
    shown = {p.id for s in resp.sections for p in s.products}
    assert not shown & set(req["exclude"])


def test_get_info(shared_server):
    info = shared_server.info(pb.GetInfoRequest(), timeout=5)
    assert info.model_version and info.catalog_version
    assert info.products > 0 and info.themes > 0 and info.keywords > 0
    assert len(info.regions) > 0 and info.workers == 1 and info.max_batch == 16
    assert info.max_request_events == 4096


def test_health_services(shared_server):
    from conftest import health_pb2
    SERVING = health_pb2.HealthCheckResponse.SERVING
    assert shared_server.health("") == SERVING
    assert shared_server.health("vitrine.v1.Storefront") == SERVING
    try:
        shared_server.health("no.such.Service")
        raise AssertionError("an unknown service must be NOT_FOUND")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND


def watch_stream(srv, service=""):
    from conftest import health_pb2
    watch = srv.channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString)
    return watch(health_pb2.HealthCheckRequest(service=service), timeout=20)


def test_health_watch_first_message(shared_server):
    from conftest import health_pb2
    it = watch_stream(shared_server)
    assert next(it).status == health_pb2.HealthCheckResponse.SERVING
    it.cancel()
    unknown = watch_stream(shared_server, "no.such.Service")  # kept open, SERVICE_UNKNOWN
    assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()
    assert shared_server.health() == health_pb2.HealthCheckResponse.SERVING
