#!/usr/bin/env bash
# `make demo`: starts `vitrine serve` on the demo bundle (loopback, free ports), sends
# train/demo_request.json and a few variations with a real gRPC client (Python grpcio, message
# classes generated here by protoc), prints the storefronts, then stops the server with SIGTERM and
# checks that it drained and exited 0.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
DEMO=${DEMO:-$BUILD/demo}
REQUEST=${REQUEST:-train/demo_request.json}
PY=/usr/bin/python3

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

"$BUILD/vitrine" serve --bundle "$DEMO/bundle" --catalog "$DEMO/catalog" \
  --listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --log-requests 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 1 100); do
  grep -q " serving " "$tmp/server.log" && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log" >&2; echo "demo: the server did not start" >&2; exit 1; }
  sleep 0.1
done
line=$(grep " serving " "$tmp/server.log") || { cat "$tmp/server.log" >&2; exit 1; }
grpc_port=$(sed -E 's/.*grpc_port=([0-9]+).*/\1/' <<<"$line")
metrics_port=$(sed -E 's/.*metrics_port=([0-9]+).*/\1/' <<<"$line")
echo "demo: $line"

mkdir -p "$tmp/pb/vt_health"
cp /usr/share/grpc-proto/grpc/health/v1/health.proto "$tmp/pb/vt_health/"
protoc -I proto -I "$tmp/pb" --python_out="$tmp/pb" vitrine/v1/storefront.proto vt_health/health.proto

PYTHONPATH="$tmp/pb" "$PY" - "$grpc_port" "$metrics_port" "$REQUEST" "$BUILD/vitrine" "$DEMO" <<'PYEOF'
import json, struct, subprocess, sys, urllib.request
import grpc
from vitrine.v1 import storefront_pb2 as pb
from vt_health import health_pb2

port, mport, path, vitrine, demo = sys.argv[1:6]
ch = grpc.insecure_channel(f"127.0.0.1:{port}")
recommend = ch.unary_unary("/vitrine.v1.Storefront/Recommend",
                           request_serializer=pb.RecommendRequest.SerializeToString,
                           response_deserializer=pb.RecommendResponse.FromString)
info = ch.unary_unary("/vitrine.v1.Storefront/GetInfo",
                      request_serializer=pb.GetInfoRequest.SerializeToString,
                      response_deserializer=pb.GetInfoResponse.FromString)(pb.GetInfoRequest(), timeout=5)
check = ch.unary_unary("/grpc.health.v1.Health/Check",
                       request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                       response_deserializer=health_pb2.HealthCheckResponse.FromString)
st = check(health_pb2.HealthCheckRequest(), timeout=5).status
print(f"health: {health_pb2.HealthCheckResponse.ServingStatus.Name(st)}; model {info.model_version}, "
      f"catalogue {info.catalog_version} ({info.products} products), regions {list(info.regions)}")

ACT = {"view": pb.ACTION_VIEW, "search": pb.ACTION_SEARCH, "cart": pb.ACTION_CART,
       "purchase": pb.ACTION_PURCHASE}
def to_pb(d):
    r = pb.RecommendRequest(now=d["now"], region=d["region"], shopper_id=d.get("shopper_id", ""),
                            sections=d["sections"], keywords_per_section=d["keywords_per_section"],
                            products_per_section=d["products_per_section"], exclude=d.get("exclude", []))
    for e in d["events"]:
        r.events.add(action=ACT[e["action"]], ts=e["ts"], item=e.get("item") or "", query=e.get("query") or "")
    return r

def show(title, r):
    t = r.timing
    print(f"\n== {title}: {len(r.sections)} sections  (queue {t.queue_us} us, compute {t.compute_us} us, "
          f"total {t.total_us} us, batch {t.batch_size})")
    for i, s in enumerate(r.sections, 1):
        print(f"section {i}  {s.theme.text:<36} score {s.theme.score:7.3f}")
        print("  keywords: " + ", ".join(f"{k.text} ({k.score:.2f})" for k in s.keywords))
        for p in s.products:
            print(f"    {p.id:<8} {p.score:7.3f}  via {p.keyword_text}")

base = json.load(open(path))
first = recommend(to_pb(base), timeout=10)
show(f"{path} (shopper {base.get('shopper_id')})", first)

# the same request through the CLI (`vitrine recommend`): the same storefront
cli = json.loads(subprocess.run([vitrine, "recommend", "--bundle", f"{demo}/bundle", "--catalog",
                                 f"{demo}/catalog", "--request", path], capture_output=True,
                                text=True, check=True).stdout)
f32 = lambda x: struct.unpack("f", struct.pack("f", x))[0]
same = [(s.theme.id, s.theme.score, [(k.id, k.score) for k in s.keywords],
         [(p.id, p.score, p.keyword) for p in s.products]) for s in first.sections] == \
       [(c["theme"]["id"], f32(c["theme"]["score"]), [(k["id"], f32(k["score"])) for k in c["keywords"]],
         [(p["id"], f32(p["score"]), p["keyword"]) for p in c["products"]]) for c in cli["sections"]]
print(f"\nsame storefront as `vitrine recommend --request {path}`: {'yes' if same else 'NO'}")
if not same:
    sys.exit(1)

# the same shopper, excluding what the first page showed
excl = dict(base, exclude=[p.id for s in first.sections for p in s.products])
show("same shopper, first page's products excluded", recommend(to_pb(excl), timeout=10))

# the same history seen from another region, a bigger page, high priority
other = [r for r in info.regions if r != base["region"]][0]
big = to_pb(dict(base, region=other, sections=4, products_per_section=3))
big.priority = pb.PRIORITY_HIGH
show(f"region {other}, 4 sections, high priority", recommend(big, timeout=10))

# a cold-start shopper with only a search
cold = dict(base, shopper_id="new-shopper", events=[{"action": "search", "ts": base["now"] - 60,
                                                      "query": first.sections[0].keywords[0].text}])
show("cold start: one search", recommend(to_pb(cold), timeout=10))

# 32 concurrent copies: dynamic batching
futs = [recommend.future(to_pb(base), timeout=20) for _ in range(32)]
sizes = [f.result().timing.batch_size for f in futs]
print(f"\n32 concurrent requests: all answered, batch sizes seen {sorted(set(sizes))}")

# an invalid request
bad = to_pb(base); bad.sections = -1
try:
    recommend(bad, timeout=5)
except grpc.RpcError as e:
    print(f"invalid request: {e.code().name}: {e.details()}")

text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
print("\nmetrics (excerpt):")
for line in text.splitlines():
    if line.startswith(("vitrine_requests_total", "vitrine_batch_size_sum", "vitrine_batch_size_count",
                        "vitrine_model_info", "vitrine_request_duration_seconds_count")):
        print("  " + line)
PYEOF

kill -TERM "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=""
echo
grep -E " (draining|stopped) " "$tmp/server.log" | sed 's/^/demo: /'
if [ "$status" -ne 0 ]; then
  echo "demo: the server exited $status after SIGTERM" >&2
  cat "$tmp/server.log" >&2
  exit 1
fi
echo "demo: server drained and exited 0"
