"""A stub vitrine.v1.Storefront with known answers, to validate vitrine-bench (tests/bench).

    /usr/bin/python3 bench/stub_server.py --port 0 --delay-ms 20 [--fail-every 5
        --fail-code INVALID_ARGUMENT] [--stall-every-ms 1000 --stall-ms 200]

Recommend checks that the request is a vitrine.v1.RecommendRequest (INVALID_ARGUMENT if not),
waits exactly --delay-ms (asyncio, so any number of calls wait at once: no queueing), and answers
a small valid RecommendResponse (one section, one keyword, one product) whose Timing says
queue_us 0, compute_us = the delay, batch_size 1. So a correct load generator must report:
latency >= the delay for every call, p50 close to it, throughput = concurrency / delay in closed
loop and = the rate in open loop, server compute = the delay exactly.

--fail-every N: every Nth Recommend call (counted from the start, over all connections) ends
with --fail-code after the same delay, so errors are exactly 1/N of the calls.
--stall-every-ms P --stall-ms S: a server hiccup: answers that become ready during the first S ms
of every P ms period are held until the stall ends (as a garbage-collection or a lock pause
would). A load generator without coordinated omission shows it in the open-loop tail.

Prints "stub_server: serving port=N" on stderr when ready; SIGTERM or SIGINT stop it.
"""
import argparse
import asyncio
import os
import signal
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vtproto  # noqa: E402

pb = vtproto.load()


class Stub:
    def __init__(self, a):
        self.a = a
        self.delay_s = a.delay_ms / 1000.0
        self.calls = 0
        self.origin = time.monotonic()
        self.fail_code = grpc.StatusCode[a.fail_code]

    async def recommend(self, raw, context):
        self.calls += 1  # one event loop thread: no lock needed
        n = self.calls
        t0 = time.monotonic()
        try:
            pb.RecommendRequest.FromString(raw)
        except Exception:  # the protobuf runtime's DecodeError
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "stub: not a vitrine.v1.RecommendRequest")
        await asyncio.sleep(self.delay_s)
        if self.a.stall_every_ms > 0:
            period, stall = self.a.stall_every_ms / 1000.0, self.a.stall_ms / 1000.0
            phase = (time.monotonic() - self.origin) % period
            if phase < stall:
                await asyncio.sleep(stall - phase)
        if self.a.fail_every > 0 and n % self.a.fail_every == 0:
            await context.abort(self.fail_code, "stub: call %d fails (--fail-every %d)" %
                                (n, self.a.fail_every))
        r = pb.RecommendResponse(model_version="stub", catalog_version="stub")
        s = r.sections.add()
        s.theme.id, s.theme.text, s.theme.score = 0, "stub theme", -0.5
        s.keywords.add(id=0, text="stub keyword", score=-1.0)
        s.products.add(id="p00000", score=1.0, keyword=0, index=0, keyword_text="stub keyword")
        r.timing.queue_us = 0
        r.timing.compute_us = int(round(self.a.delay_ms * 1000))
        r.timing.total_us = int((time.monotonic() - t0) * 1e6)
        r.timing.batch_size = 1
        return r.SerializeToString()

    async def get_info(self, raw, context):
        return pb.GetInfoResponse(model_version="stub", catalog_version="stub", products=1,
                                  themes=1, keywords=1, regions=["eu"], max_sections=16,
                                  max_keywords_per_section=16, max_products_per_section=64,
                                  max_query_bytes=1024, max_model_events=64,
                                  max_request_events=4096, workers=1,
                                  max_batch=1).SerializeToString()


async def serve(a):
    stub = Stub(a)
    # no (de)serializers: the handlers get and return bytes, so a bad request reaches the handler
    handler = grpc.method_handlers_generic_handler("vitrine.v1.Storefront", {
        "Recommend": grpc.unary_unary_rpc_method_handler(stub.recommend),
        "GetInfo": grpc.unary_unary_rpc_method_handler(stub.get_info),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("%s:%d" % (a.host, a.port))
    if port == 0:
        print("stub_server: cannot listen on %s:%d" % (a.host, a.port), file=sys.stderr)
        return 1
    await server.start()
    print("stub_server: serving port=%d delay_ms=%g fail_every=%d fail_code=%s" %
          (port, a.delay_ms, a.fail_every, a.fail_code), file=sys.stderr, flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop(1)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0: any free port (printed)")
    ap.add_argument("--delay-ms", type=float, default=10.0)
    ap.add_argument("--fail-every", type=int, default=0, metavar="N")
    ap.add_argument("--fail-code", default="INVALID_ARGUMENT",
                    choices=[c.name for c in grpc.StatusCode if c != grpc.StatusCode.OK])
    ap.add_argument("--stall-every-ms", type=float, default=0.0)
    ap.add_argument("--stall-ms", type=float, default=0.0)
    a = ap.parse_args(argv)
    return asyncio.run(serve(a))


if __name__ == "__main__":
    sys.exit(main())
