"""The server under valgrind: load, bad inputs, a cancellation, an expired deadline, a catalogue
reload, health Watch streams (one cancelled, one open at shutdown) and a drain give no memory error
and no leak (definitely or indirectly lost)."""
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import grpc
import pytest

from conftest import FIXTURE, SANITIZED, VITRINE, pb, request_from_json

pytestmark = [
    pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed"),
    # valgrind refuses an ASan binary ("ASan runtime does not come first"); ASan + LSan check the
    # same things there
    pytest.mark.skipif(SANITIZED, reason="valgrind cannot run an AddressSanitizer build"),
]


def test_valgrind_clean(fixture_requests, tmp_path):
    log = tmp_path / "vg.log"
    supp = os.path.join(os.path.dirname(__file__), "..", "valgrind.supp")  # ld.so false positive
    p = subprocess.Popen(["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                          f"--suppressions={supp}",
                          "--error-exitcode=9", f"--log-file={log}", VITRINE, "serve",
                          "--bundle", os.path.join(FIXTURE, "bundle"),
                          "--catalog", os.path.join(FIXTURE, "catalog"),
                          "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                          "--workers", "2", "--max-batch", "4"],
                         stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        port = None
        end = time.monotonic() + 25
        for line in p.stderr:
            lines.append(line)
            m = re.search(r" serving .*grpc_port=(\d+)", line)
            if m:
                port = int(m.group(1))
                break
            assert time.monotonic() < end
        assert port, lines
        reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
        reader.start()
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        rec = ch.unary_unary("/vitrine.v1.Storefront/Recommend",
                             request_serializer=pb.RecommendRequest.SerializeToString,
                             response_deserializer=pb.RecommendResponse.FromString)
        raw = ch.unary_unary("/vitrine.v1.Storefront/Recommend")
        futs = [rec.future(request_from_json(fixture_requests[i % 32]), timeout=25)
                for i in range(24)]
        assert all(len(f.result().sections) > 0 for f in futs)
        for bad in (b"\xff\xff", b"", b"\x0a\x00" * 5000):
            with pytest.raises(grpc.RpcError) as ei:
                raw(bad, timeout=20)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        rec.future(request_from_json(fixture_requests[0]), timeout=25).cancel()
        with pytest.raises(grpc.RpcError):
            rec(request_from_json(fixture_requests[0]), timeout=0.001)
        p.send_signal(signal.SIGHUP)
        end = time.monotonic() + 20
        while not any(" reloaded " in ln for ln in lines):
            assert time.monotonic() < end, lines
            time.sleep(0.1)
        from conftest import health_pb2
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch",
                                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                response_deserializer=health_pb2.HealthCheckResponse.FromString)
        cancelled = watch(health_pb2.HealthCheckRequest(), timeout=25)
        assert next(cancelled).status == health_pb2.HealthCheckResponse.SERVING
        cancelled.cancel()
        open_watch = watch(health_pb2.HealthCheckRequest(), timeout=25)  # open at shutdown
        assert next(open_watch).status == health_pb2.HealthCheckResponse.SERVING
        futs = [rec.future(request_from_json(fixture_requests[i]), timeout=25) for i in range(8)]
        time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        for f in futs:
            try:
                f.result()
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError):
            list(open_watch)  # NOT_SERVING, then ended by the shutdown
        ch.close()
        rc = p.wait(25)
        report = log.read_text()
        assert rc == 0, report[-3000:]
        assert "ERROR SUMMARY: 0 errors" in report, report[-3000:]
        assert re.search(r"definitely lost: 0 bytes", report) or "no leaks are possible" in report
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
