"""The peer: the storefront server a team would write without vitrine. A Python grpcio server that
runs the PyTorch reference cascade (train/cascade.py) behind the same vitrine.v1.Storefront proto,
so that vitrine-bench measures both with the same requests (bench/run_serve.sh).

    /usr/bin/python3 bench/peer_server.py --bundle build/demo/bundle --catalog build/demo/catalog \\
        --port 0 [--workers 1] [--threads 256] [--torch-threads 1]

How it works, and what it does not do (on purpose: this is the straightforward server):
- grpcio's synchronous server with a thread pool of --threads handler threads. Each Recommend
  decodes the protobuf, turns it into the JSON request form (docs/SERVER.md: an empty item or
  query is "none"; an action outside the enum becomes null, which the reference refuses), waits
  for one of --workers compute slots, and runs Cascade.recommend on it alone: no batching, one
  request per compute slot.
- Timing: queue_us is the wait for a compute slot; compute_us the cascade; total_us from the
  handler's start to the answer built; batch_size 1. Time a call spends in grpcio's own queue
  before a handler thread takes it (more calls open than --threads) is invisible to the handler:
  it shows only in the client's latency. --threads defaults to 256, the largest concurrency of
  bench/run_serve.sh, so that queueing happens where it is measured.
- torch.set_num_threads(--torch-threads) (default 1: one thread per compute slot, as vitrine's
  engine worker runs on one core with OPENBLAS_NUM_THREADS=1; the cascade decodes one beam step
  at a time, small tensors, where more threads mostly add overhead). Python's GIL serialises
  the cascade's Python code in any case, so --workers above 1 buys little.
- A request the reference refuses (train.data.RequestError) is INVALID_ARGUMENT with its message;
  bytes that are not a RecommendRequest too; more than 4096 events or excluded ids as well (the
  same limit as vitrine serve). A call whose client has gone (deadline, cancel) before its
  compute slot came is not computed.
- GetInfo answers the bundle's versions and limits (max_batch 1). No health service, no metrics.

Prints "peer_server: serving port=N ..." on stderr when the model is loaded and warmed up;
SIGTERM or SIGINT stop it (calls in flight get 5 s).
"""
import argparse
import os
import signal
import sys
import threading
import time
from concurrent import futures

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
import torch  # noqa: E402

import vtproto  # noqa: E402
from train.bundle import BundleError, load_bundle, load_catalog  # noqa: E402
from train.cascade import Cascade  # noqa: E402
from train.data import LIMITS, RequestError  # noqa: E402

pb = vtproto.load()

ACTIONS = {pb.ACTION_VIEW: "view", pb.ACTION_SEARCH: "search", pb.ACTION_CART: "cart",
           pb.ACTION_PURCHASE: "purchase"}
MAX_REQUEST_EVENTS = 4096  # vitrine serve's default --max-request-events


def request_dict(m):
    """RecommendRequest -> the JSON request form the reference cascade takes."""
    if len(m.events) > MAX_REQUEST_EVENTS:
        raise RequestError("events: %d events, more than the maximum of %d per request" %
                           (len(m.events), MAX_REQUEST_EVENTS))
    if len(m.exclude) > MAX_REQUEST_EVENTS:
        raise RequestError("exclude: %d ids, more than the maximum of %d per request" %
                           (len(m.exclude), MAX_REQUEST_EVENTS))
    events = []
    for e in m.events:
        d = {"action": ACTIONS.get(e.action), "ts": e.ts}
        if e.item:
            d["item"] = e.item
        if e.query:
            d["query"] = e.query
        events.append(d)
    return {"now": m.now, "region": m.region, "shopper_id": m.shopper_id, "events": events,
            "sections": m.sections, "keywords_per_section": m.keywords_per_section,
            "products_per_section": m.products_per_section, "exclude": list(m.exclude)}


def response(front, timing, versions):
    """The reference's storefront dict -> RecommendResponse."""
    r = pb.RecommendResponse(dropped_events=front["dropped_events"], model_version=versions[0],
                             catalog_version=versions[1])
    for sec in front["sections"]:
        s = r.sections.add()
        th = sec["theme"]
        s.theme.id, s.theme.text, s.theme.score = th["id"], th["text"], th["score"]
        texts = {}
        for k in sec["keywords"]:
            s.keywords.add(id=k["id"], text=k["text"], score=k["score"])
            texts[k["id"]] = k["text"]
        for p in sec["products"]:
            s.products.add(id=p["id"], score=p["score"], keyword=p["keyword"], index=p["index"],
                           keyword_text=texts.get(p["keyword"], ""))
    r.timing.queue_us, r.timing.compute_us, r.timing.total_us, r.timing.batch_size = timing
    return r


class Peer:
    def __init__(self, a):
        model, tables, manifest = load_bundle(a.bundle)
        catalog, cat_manifest = load_catalog(a.catalog, tables, model.cfg,
                                             manifest["model_version"])
        self.cascade = Cascade.from_manifest(model, tables, catalog, manifest)
        self.versions = (manifest["model_version"], cat_manifest["catalog_version"])
        limits = dict(LIMITS, **manifest.get("limits", {}))
        self.info = pb.GetInfoResponse(
            model_version=self.versions[0], catalog_version=self.versions[1],
            products=len(catalog.ids), themes=len(tables.theme_texts),
            keywords=len(tables.keyword_texts), regions=[r["name"] for r in tables.regions],
            max_sections=limits["max_sections"],
            max_keywords_per_section=limits["max_keywords_per_section"],
            max_products_per_section=limits["max_products_per_section"],
            max_query_bytes=limits["max_query_bytes"], max_model_events=model.cfg.max_events,
            max_request_events=MAX_REQUEST_EVENTS, workers=a.workers, max_batch=1)
        self.slots = threading.Semaphore(a.workers)
        # warm-up: the first call pays for lazy initialisation, not a client's request
        self.cascade.recommend({"now": 1, "region": tables.regions[0]["name"], "events": [],
                                "sections": 1, "keywords_per_section": 1,
                                "products_per_section": 1})

    def recommend(self, raw, context):
        t0 = time.perf_counter()
        try:
            req = request_dict(pb.RecommendRequest.FromString(raw))
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception:  # the protobuf runtime's DecodeError
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "request is not a vitrine.v1.RecommendRequest")
        with self.slots:
            t1 = time.perf_counter()
            if not context.is_active():  # deadline passed or cancelled while waiting
                context.abort(grpc.StatusCode.CANCELLED, "the call ended before compute")
            try:
                front = self.cascade.recommend(req)
            except RequestError as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
            t2 = time.perf_counter()
        r = response(front, (int((t1 - t0) * 1e6), int((t2 - t1) * 1e6), 0, 1), self.versions)
        r.timing.total_us = int((time.perf_counter() - t0) * 1e6)
        return r.SerializeToString()

    def get_info(self, raw, context):
        return self.info.SerializeToString()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50052, help="0: any free port (printed)")
    ap.add_argument("--workers", type=int, default=1, help="requests computed at once")
    ap.add_argument("--threads", type=int, default=256, help="grpcio handler threads")
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.torch_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (torch was used before)
        pass
    t_start = time.perf_counter()
    try:
        peer = Peer(a)
    except (BundleError, OSError) as e:
        print("peer_server: %s" % e, file=sys.stderr)
        return 2
    # no (de)serializers: handlers get bytes, so a malformed request is ours to refuse
    handler = grpc.method_handlers_generic_handler("vitrine.v1.Storefront", {
        "Recommend": grpc.unary_unary_rpc_method_handler(peer.recommend),
        "GetInfo": grpc.unary_unary_rpc_method_handler(peer.get_info),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.threads))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("%s:%d" % (a.host, a.port))
    if port == 0:
        print("peer_server: cannot listen on %s:%d" % (a.host, a.port), file=sys.stderr)
        return 1
    server.start()
    print("peer_server: serving port=%d workers=%d threads=%d torch_threads=%d "
          "model_version=%s catalog_version=%s startup_ms=%d" %
          (port, a.workers, a.threads, a.torch_threads, peer.versions[0], peer.versions[1],
           (time.perf_counter() - t_start) * 1000), file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
