"""`vitrine serve --device cuda:...` through the CUDA emulator (build/vitrine-emu: the same binary
linked against tests/cuda_emu instead of the CUDA runtime; VT_EMU_DEVICES emulated devices), so
the device path of the server is tested on machines without a GPU: one engine per device, the
same answers as the CPU engines, a catalogue reload that swaps every device, a failed launch that
fails its batch with INTERNAL while the server goes on serving, and a device that does not exist
refused at start."""
import json
import os
import signal
import subprocess

import grpc
import pytest

from conftest import FIXTURE, VITRINE_EMU, cli_storefront, request_from_json, assert_same_storefront

pytestmark = pytest.mark.skipif(not os.path.exists(VITRINE_EMU),
                                reason="vitrine-emu is not built (VITRINE_CUDA_EMU=OFF)")


def _emu(n_devices=2, **extra):
    env = {"VT_EMU_DEVICES": str(n_devices)}
    env.update(extra)
    return env


def test_one_engine_per_device_answers_as_the_cpu_engine(server_factory, fixture_requests):
    srv = server_factory("--device", "cuda:0,1", "--max-batch", "8", env=_emu(),
                         binary=VITRINE_EMU)
    srv.wait_for(r"engine\W+worker\W+0\W+device\W+cuda:0", 5)
    srv.wait_for(r"engine\W+worker\W+1\W+device\W+cuda:1", 5)
    assert not any("device_fallback" in ln for ln in srv.lines)
    futs = [srv.recommend.future(request_from_json(r), timeout=60) for r in fixture_requests[:24]]
    for r, f in zip(fixture_requests[:24], futs):
        assert_same_storefront(f.result(), cli_storefront(r), rel=1e-5)


def test_cuda_graphs_give_the_same_answers(server_factory, fixture_requests):
    srv = server_factory("--device", "cuda:1", "--cuda-graphs", "1", "--max-batch", "4",
                         env=_emu(), binary=VITRINE_EMU)
    for r in fixture_requests[:6] + fixture_requests[:6]:  # captured, then replayed
        assert_same_storefront(srv.recommend(request_from_json(r), timeout=60), cli_storefront(r),
                               rel=1e-5)


def test_reload_swaps_every_device(server_factory, fixture_requests):
    srv = server_factory("--device", "cuda", env=_emu(), binary=VITRINE_EMU)
    before = srv.recommend(request_from_json(fixture_requests[0]), timeout=60)
    srv.proc.send_signal(signal.SIGHUP)
    srv.wait_for(r"\breloaded\b", 30)
    for r in fixture_requests[:8]:
        assert_same_storefront(srv.recommend(request_from_json(r), timeout=60), cli_storefront(r),
                               rel=1e-5)
    assert before.sections


def test_a_failed_launch_fails_its_batch_and_the_server_goes_on(server_factory, fixture_requests):
    # the page kernel's second launch fails (the first is the warm-up batch's)
    srv = server_factory("--device", "cuda:0", "--max-batch", "1", binary=VITRINE_EMU,
                         env=_emu(1, VT_EMU_FAIL_KERNEL="page_kernel:1:1"))
    with pytest.raises(grpc.RpcError) as e:
        srv.recommend(request_from_json(fixture_requests[0]), timeout=60)
    assert e.value.code() == grpc.StatusCode.INTERNAL, e.value.details()
    assert "page_assemble" in e.value.details() and "cuda:0" in e.value.details(), \
        e.value.details()
    for r in fixture_requests[1:4]:
        assert_same_storefront(srv.recommend(request_from_json(r), timeout=60), cli_storefront(r),
                               rel=1e-5)


def test_a_device_that_does_not_exist_is_refused():
    p = subprocess.run([VITRINE_EMU, "serve", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                        f"{FIXTURE}/catalog", "--listen", "127.0.0.1:0", "--device", "cuda:2"],
                       capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, **_emu(2)))
    assert p.returncode == 2, p.stderr
    assert "cuda:2 does not exist (2 devices)" in p.stderr, p.stderr


def test_cli_batch_on_an_emulated_device_answers_as_the_cpu(fixture_requests, tmp_path):
    reqs = tmp_path / "requests.jsonl"
    reqs.write_text("".join(json.dumps(r) + "\n" for r in fixture_requests[:16]))

    def run(binary, *extra):
        p = subprocess.run([binary, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                            f"{FIXTURE}/catalog", "--requests", str(reqs), "--batch", "5", *extra],
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, **_emu(2)))
        assert p.returncode == 0, p.stderr
        return [json.loads(ln) for ln in p.stdout.splitlines()]

    def ids(front):
        return [(s["theme"]["id"], [k["id"] for k in s["keywords"]],
                 [(p["index"], p["keyword"]) for p in s["products"]]) for s in front["sections"]]

    cpu, dev = run(VITRINE_EMU), run(VITRINE_EMU, "--device", "cuda:1")
    assert len(cpu) == len(dev) == 16
    for a, b in zip(cpu, dev):
        assert ids(a) == ids(b)
    p = subprocess.run([VITRINE_EMU, "batch", "--bundle", f"{FIXTURE}/bundle", "--catalog",
                        f"{FIXTURE}/catalog", "--requests", str(reqs), "--device", "cuda:5"],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ, **_emu(2)))
    assert p.returncode == 2 and "cuda:5 does not exist (2 devices)" in p.stderr, p.stderr
