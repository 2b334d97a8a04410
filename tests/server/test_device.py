"""--device: a malformed value is refused at start naming it; CUDA that cannot be used falls back
to the CPU engines with one log line giving the reason, and the server answers as usual."""
import subprocess

from conftest import FIXTURE, VITRINE, pb, request_from_json


def _start(*extra):
    return subprocess.run([VITRINE, "serve", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                           f"{FIXTURE}/catalog", "--listen", "127.0.0.1:0", *extra],
                          capture_output=True, text=True, timeout=20)


def test_malformed_device_is_refused_naming_it():
    for bad, words in (("gpu", "'gpu'"), ("cuda:", "device number"), ("cuda:0,0", "twice"),
                       ("cuda:0;1", "unexpected ';'"), ("cuda:99", "above")):
        p = _start("--device", bad)
        assert p.returncode == 2, (bad, p.stderr)
        assert words in p.stderr and "--device" in p.stderr, (bad, p.stderr)


def test_cuda_request_falls_back_with_a_reason_and_serves(server_factory, fixture_requests):
    srv = server_factory("--device", "cuda")
    line = srv.wait_for(r"device_fallback", 5)
    assert "requested=cuda" in line and "device=cpu" in line and "reason=" in line
    resp = srv.recommend(request_from_json(fixture_requests[0]), timeout=10)
    assert isinstance(resp, pb.RecommendResponse) and len(resp.sections) > 0


def test_cpu_device_logs_no_fallback(server_factory, fixture_requests):
    srv = server_factory("--device", "cpu")
    srv.recommend(request_from_json(fixture_requests[0]), timeout=10)
    assert not any("device_fallback" in l for l in srv.lines)
