"""The peer: the storefront server a team would write without vitrine. A Python grpcio server that
runs the PyTorch reference cascade (train/cascade.py) behind the same vitrine.v1.Storefront proto,
so that vitrine-bench measures both with the same requests (bench/run_serve.sh).

    /usr/bin/python3 bench/peer_server.py --bundle build/demo/bundle --catalog build/demo/catalog \\
        --port 0 [--workers 1] [--threads 256] [--torch-threads 1] \\
        [--batching [--max-batch 16] [--max-delay-ms 0.5]]

Two modes. The default, per request (on purpose: this is the straightforward server):
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
  at a time, small tensors, where more threads mostly add overhead), and OpenBLAS's own thread
  pool, which torch.set_num_threads does not reach, to the same count (printed as blas_threads;
  "none" where torch's BLAS is not an OpenBLAS). Python's GIL serialises the cascade's Python
  code in any case, so --workers above 1 buys little.
- A request the reference refuses (train.data.RequestError) is INVALID_ARGUMENT with its message;
  bytes that are not a RecommendRequest too; more than 4096 events or excluded ids as well (the
  same limit as vitrine serve). A call whose client has gone (deadline, cancel) before its
  compute slot came is not computed.
- GetInfo answers the bundle's versions and limits (max_batch 1). No health service, no metrics.

--batching, dynamic batching as TorchServe or Triton's Python backend would do it:
- Each handler decodes its call, puts it on one queue and waits for its answer. --workers worker
  threads (default 1) each take the oldest waiting call and then more, up to --max-batch
  (default 16, as vitrine serve), until the batch is full or the oldest has waited
  --max-delay-ms (default 0.5, vitrine's 500 us); calls already waiting are taken at once. Calls
  whose client has gone (deadline, cancel) are dropped before compute; the others run together
  through BatchedCascade.storefronts (train/cascade_batched.py: one encoder pass, one decoder
  forward per beam step for the whole batch; the reference's ids), and each call's answer is
  handed back to its handler. A request the cascade refuses fails alone (INVALID_ARGUMENT), not
  its batch. The queue is unbounded (no load shedding).
- Timing: queue_us from the handler's start to its batch's start, compute_us the batch's cascade,
  batch_size the calls taken together. GetInfo's max_batch is --max-batch.

Prints "peer_server: serving port=N ..." on stderr when the model is loaded and warmed up;
SIGTERM or SIGINT stop it (calls in flight get 5 s).
"""
import argparse
import os
import queue
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
from train.bench_batched import set_blas_threads  # noqa: E402
from train.bundle import BundleError, load_bundle, load_catalog  # noqa: E402
from train.cascade import Cascade  # noqa: E402
from train.cascade_batched import BatchedCascade  # noqa: E402
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


class Job:
    """One call waiting in the batcher: its request, and what the worker hands back."""
    __slots__ = ("req", "context", "t_enq", "done", "result", "t1", "t2", "batch_size")

    def __init__(self, req, context):
        self.req, self.context, self.t_enq = req, context, time.perf_counter()
        self.done = threading.Event()
        self.result, self.t1, self.t2, self.batch_size = None, 0.0, 0.0, 0


class Batcher:
    """A queue and `workers` threads, each taking up to max_batch calls or waiting max_delay
    seconds from the oldest call's arrival, then running them through the batched cascade."""

    def __init__(self, cascade, max_batch, max_delay, workers):
        self.cascade, self.max_batch, self.max_delay = cascade, max_batch, max_delay
        self.queue = queue.Queue()
        self.threads = [threading.Thread(target=self.work, name="batcher-%d" % i, daemon=True)
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def submit(self, req, context):
        job = Job(req, context)
        self.queue.put(job)
        return job

    def stop(self):
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()

    def take(self):
        """The next batch: the oldest job, then more until max_batch or the oldest's delay."""
        first = self.queue.get()
        if first is None:
            return None
        batch = [first]
        due = first.t_enq + self.max_delay
        while len(batch) < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                left = due - time.perf_counter()
                if left <= 0:
                    break
                try:
                    job = self.queue.get(timeout=left)
                except queue.Empty:
                    break
            if job is None:  # stopping: let another worker see it, finish this batch
                self.queue.put(None)
                break
            batch.append(job)
        return batch

    def work(self):
        while True:
            batch = self.take()
            if batch is None:
                return
            live = []
            for job in batch:
                if job.context.is_active():
                    live.append(job)
                else:  # deadline passed or cancelled while queued: not computed
                    job.done.set()
            if not live:
                continue
            t1 = time.perf_counter()
            try:
                fronts = self.cascade.storefronts([j.req for j in live], errors=True)
            except Exception as e:  # noqa: BLE001 (a bug: every call of the batch learns it)
                fronts = [e] * len(live)
            t2 = time.perf_counter()
            for job, front in zip(live, fronts):
                job.result, job.t1, job.t2, job.batch_size = front, t1, t2, len(live)
                job.done.set()


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
            max_request_events=MAX_REQUEST_EVENTS, workers=a.workers,
            max_batch=a.max_batch if a.batching else 1)
        self.slots = threading.Semaphore(a.workers)
        # warm-up: the first call pays for lazy initialisation, not a client's request
        warm = {"now": 1, "region": tables.regions[0]["name"], "events": [], "sections": 1,
                "keywords_per_section": 1, "products_per_section": 1}
        self.cascade.recommend(warm)
        self.batcher = None
        if a.batching:
            batched = BatchedCascade.from_manifest(model, tables, catalog, manifest)
            batched.storefronts([warm])
            batched.storefronts([warm] * a.max_batch)
            self.batcher = Batcher(batched, a.max_batch, a.max_delay_ms / 1000.0, a.workers)

    def recommend(self, raw, context):
        t0 = time.perf_counter()
        try:
            req = request_dict(pb.RecommendRequest.FromString(raw))
        except RequestError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except Exception:  # the protobuf runtime's DecodeError
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          "request is not a vitrine.v1.RecommendRequest")
        if self.batcher is not None:
            return self.recommend_batched(req, context, t0)
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

    def recommend_batched(self, req, context, t0):
        job = self.batcher.submit(req, context)
        job.done.wait()
        if job.result is None:  # dropped before compute: the call had ended
            context.abort(grpc.StatusCode.CANCELLED, "the call ended before compute")
        if isinstance(job.result, RequestError):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(job.result))
        if isinstance(job.result, Exception):
            context.abort(grpc.StatusCode.INTERNAL, "batch failed: %s" % job.result)
        r = response(job.result, (int((job.t1 - t0) * 1e6), int((job.t2 - job.t1) * 1e6), 0,
                                  job.batch_size), self.versions)
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
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads, and OpenBLAS's threads")
    ap.add_argument("--batching", action="store_true",
                    help="dynamic batching through the batched cascade")
    ap.add_argument("--max-batch", type=int, default=16, help="--batching: largest batch")
    ap.add_argument("--max-delay-ms", type=float, default=0.5,
                    help="--batching: longest wait for a batch to fill, from its oldest call")
    a = ap.parse_args(argv)
    if a.max_batch < 1 or a.max_delay_ms < 0 or a.workers < 1:
        print("peer_server: --max-batch and --workers must be >= 1, --max-delay-ms >= 0",
              file=sys.stderr)
        return 2
    torch.set_num_threads(a.torch_threads)
    blas = set_blas_threads(a.torch_threads)
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
    mode = ("batching max_batch=%d max_delay_ms=%g" % (a.max_batch, a.max_delay_ms)
            if a.batching else "per-request")
    print("peer_server: serving port=%d mode=%s workers=%d threads=%d torch_threads=%d "
          "blas_threads=%s model_version=%s catalog_version=%s startup_ms=%d" %
          (port, mode, a.workers, a.threads, a.torch_threads, blas if blas else "none",
           peer.versions[0], peer.versions[1], (time.perf_counter() - t_start) * 1000),
          file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(5).wait()
    if peer.batcher is not None:
        peer.batcher.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
