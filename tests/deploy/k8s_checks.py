"""What breaks a vitrine deployment, as checks over the objects `kubectl kustomize` renders from
deploy/k8s/overlays/<name>. Each check takes a Rendered and returns a list of problems (empty:
fine); tests/deploy/test_k8s.py runs every check on both overlays, and runs each one again on a
copy broken on purpose to show that it can fail."""
import copy
import os
import re
import subprocess

import yaml

from vt_deploy import ROOT, VITRINE

K8S = os.path.join(ROOT, "deploy", "k8s")
# the options an overlay need not set: test-only, or optional with their own setup (TLS needs a
# Secret, and turns the gRPC port into one the kubelet's native gRPC probes cannot speak to)
OPTIONAL_OPTIONS = {"VITRINE_COMPUTE_DELAY_US", "VITRINE_TLS_CERT", "VITRINE_TLS_KEY",
                    "VITRINE_TLS_CLIENT_CA"}
READINESS_SERVICES = {"", "vitrine.v1.Storefront"}
LIVENESS_SERVICE = "liveness"
# the least time a startup probe must give loading and warm-up, by overlay
STARTUP_BUDGET_S = {"cpu": 120, "kind": 120, "gpu": 300, "cpu-tls": 120}


def render(path):
    out = subprocess.run(["kubectl", "kustomize", path], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, f"kubectl kustomize {path}:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def server_help(binary=VITRINE):
    """{VITRINE_NAME: default or None} from `vitrine serve --help`."""
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    opts = {}
    for m in re.finditer(r"env (VITRINE_[A-Z0-9_]+)(?:, default (\S+))?", out.stdout):
        opts[m.group(1)] = m.group(2)
    assert opts, "no VITRINE_* variable in `vitrine serve --help`:\n" + out.stdout
    return opts


def shutdown_grace_s():
    """The seconds open calls get after the drain (docs/SERVER.md: 'open calls get 2 s')."""
    with open(os.path.join(ROOT, "docs", "SERVER.md")) as f:
        m = re.search(r"open calls get (\d+) s", f.read())
    assert m, "docs/SERVER.md no longer says how long open calls get after the drain"
    return int(m.group(1))


def dockerfile_user():
    with open(os.path.join(ROOT, "deploy", "Dockerfile")) as f:
        users = re.findall(r"^USER\s+(\S+)", f.read(), re.M)
    return users[-1] if users else None


def adapter_rules():
    with open(os.path.join(K8S, "monitoring", "prometheus-adapter-rules.yaml")) as f:
        cm = yaml.safe_load(f)
    return yaml.safe_load(cm["data"]["config.yaml"])["rules"]


class Rendered:
    """The rendered objects of one overlay, and what the checks look up in them."""

    def __init__(self, name, docs, help_opts):
        self.name = name
        self.docs = docs
        self.help = help_opts

    def copy(self):
        return Rendered(self.name, copy.deepcopy(self.docs), self.help)

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def one(self, kind, name=None):
        found = [d for d in self.of_kind(kind) if name is None or d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.name}: expected one {kind} {name or ''}, found {len(found)}"
        return found[0]

    @property
    def deployment(self):
        return self.one("Deployment")

    @property
    def pod(self):
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self):
        (c,) = [c for c in self.pod["containers"] if c["name"] == "vitrine"]
        return c

    def config(self):
        """The VITRINE_* the container gets: its envFrom ConfigMaps, then its env."""
        env = {}
        cms = {d["metadata"]["name"]: d for d in self.of_kind("ConfigMap")}
        for src in self.container.get("envFrom", []):
            ref = src.get("configMapRef")
            if ref:
                env.update((cms.get(ref["name"]) or {}).get("data") or {})
        for e in self.container.get("env", []):
            if "value" in e:
                env[e["name"]] = e["value"]
        return env

    def setting(self, name):
        """A server option's effective value: the pod's, else the server's default."""
        v = self.config().get(name)
        return v if v is not None else self.help.get(name)


def _port_of(addr):
    m = re.fullmatch(r"(.*):(\d+)", addr or "")
    return int(m.group(2)) if m else None


def _container_port(c, name):
    for p in c.get("ports", []):
        if p.get("name") == name:
            return p["containerPort"]
    return None


# ---- the checks ----

def check_options(r):
    """Every VITRINE_* the pod sets is an option of `vitrine serve --help`; the ConfigMaps hold
    only VITRINE_* names; every option the server has is set (but the optional ones)."""
    problems = []
    cm_names = {d["metadata"]["name"] for d in r.of_kind("ConfigMap")}
    refs = [s["configMapRef"]["name"] for s in r.container.get("envFrom", [])
            if "configMapRef" in s]
    if not refs:
        problems.append("the container takes no ConfigMap (envFrom)")
    for ref in refs:
        if ref not in cm_names:
            problems.append(f"envFrom names ConfigMap {ref}, which is not rendered")
    for d in r.of_kind("ConfigMap"):
        if d["metadata"]["name"] not in refs:
            continue
        for k in d.get("data") or {}:
            if not k.startswith("VITRINE_"):
                problems.append(f"ConfigMap {d['metadata']['name']} holds {k}, not a VITRINE_* option")
    env = r.config()
    for k in env:
        if k.startswith("VITRINE_") and k not in r.help:
            problems.append(f"{k} is not an option of `vitrine serve --help`")
    for k in r.help:
        if k not in env and k not in OPTIONAL_OPTIONS:
            problems.append(f"{k} (an option of vitrine serve) is not set in the ConfigMap")
    return problems


def check_ports(r):
    """The container's ports are the ones the server listens on, on every interface; the probes,
    the Services and the scrape annotations use them."""
    problems = []
    c = r.container
    listen, metrics = r.setting("VITRINE_LISTEN"), r.setting("VITRINE_METRICS_LISTEN")
    grpc_port, metrics_port = _port_of(listen), _port_of(metrics)
    if metrics == "off" or metrics_port is None:
        problems.append(f"VITRINE_METRICS_LISTEN={metrics}: no metrics for Prometheus and the HPA")
    for var, addr in (("VITRINE_LISTEN", listen), ("VITRINE_METRICS_LISTEN", metrics)):
        host = (addr or "").rsplit(":", 1)[0]
        if host not in ("0.0.0.0", "[::]", ""):
            problems.append(f"{var}={addr}: the kubelet and other pods reach the pod's IP, not {host}")
    if _container_port(c, "grpc") != grpc_port:
        problems.append(f"containerPort grpc {_container_port(c, 'grpc')} != VITRINE_LISTEN port {grpc_port}")
    if _container_port(c, "metrics") != metrics_port:
        problems.append(f"containerPort metrics {_container_port(c, 'metrics')} != "
                        f"VITRINE_METRICS_LISTEN port {metrics_port}")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = c.get(probe)
        if not p:
            problems.append(f"no {probe}")
            continue
        if "httpGet" in p:  # the metrics port's /readyz and /livez (components/tls)
            if p["httpGet"].get("port") != metrics_port:
                problems.append(f"{probe} port {p['httpGet'].get('port')} != "
                                f"VITRINE_METRICS_LISTEN port {metrics_port}")
            continue
        if "grpc" not in p:
            problems.append(f"{probe} is neither a native gRPC probe nor /readyz, /livez")
            continue
        if p["grpc"].get("port") != grpc_port:
            problems.append(f"{probe} port {p['grpc'].get('port')} != VITRINE_LISTEN port {grpc_port}")
    ann = r.deployment["spec"]["template"]["metadata"].get("annotations") or {}
    if "prometheus.io/port" in ann and int(ann["prometheus.io/port"]) != metrics_port:
        problems.append(f"prometheus.io/port {ann['prometheus.io/port']} != metrics port {metrics_port}")
    names = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    for svc in r.of_kind("Service"):
        for sp in svc["spec"].get("ports", []):
            t = sp.get("targetPort", sp.get("port"))
            if isinstance(t, str) and t not in names:
                problems.append(f"Service {svc['metadata']['name']} targets port {t!r}, "
                                "not a container port")
            elif isinstance(t, int) and t not in names.values():
                problems.append(f"Service {svc['metadata']['name']} targets port {t}, "
                                "not a container port")
    for sm in r.of_kind("ServiceMonitor"):
        svc_ports = {sp["name"] for svc in r.of_kind("Service")
                     for sp in svc["spec"].get("ports", []) if sp.get("name")}
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in svc_ports:
                problems.append(f"ServiceMonitor scrapes port {ep.get('port')!r}, no Service has it")
    return problems


def check_probes(r):
    """Startup and readiness ask for readiness ("" or vitrine.v1.Storefront), liveness for the
    `liveness` service (SERVING while loading and draining); the startup probe gives loading and
    warm-up enough time; no native gRPC probe when the gRPC port speaks TLS (the kubelet's
    probes are plaintext)."""
    problems = []
    c = r.container
    for probe, want in (("startupProbe", READINESS_SERVICES), ("readinessProbe", READINESS_SERVICES),
                        ("livenessProbe", {LIVENESS_SERVICE})):
        p = c.get(probe) or {}
        svc = (p.get("grpc") or {}).get("service", "")
        if "grpc" in p and svc not in want:
            problems.append(f"{probe} asks for service {svc!r}, not one of {sorted(want)}")
        path = (p.get("httpGet") or {}).get("path")
        want_path = "/livez" if probe == "livenessProbe" else "/readyz"
        if "httpGet" in p and path != want_path:
            problems.append(f"{probe} asks for {path!r}, not {want_path!r}")
    sp = c.get("startupProbe") or {}
    budget = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3)
    need = STARTUP_BUDGET_S.get(r.name, 120)
    if budget < need:
        problems.append(f"startupProbe allows {budget} s for loading and warm-up, less than {need} s")
    if r.config().get("VITRINE_TLS_CERT") and any(
            "grpc" in (c.get(p) or {}) for p in ("startupProbe", "readinessProbe", "livenessProbe")):
        problems.append("VITRINE_TLS_CERT is set: the kubelet's native gRPC probes cannot do TLS")
    return problems


def prestop_sleep_s(c):
    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = (pre.get("exec") or {}).get("command") or []
    if len(cmd) == 2 and os.path.basename(cmd[0]) == "sleep":
        return int(cmd[1])
    return None


def check_grace(r):
    """A preStop pause lets endpoints update; the grace period outlasts pause + linger + drain +
    the shutdown's wait for open calls, so the kubelet never SIGKILLs a drain."""
    problems = []
    pause = prestop_sleep_s(r.container)
    if pause is None:
        problems.append("no preStop sleep: SIGTERM may arrive before endpoints stop sending")
        pause = 0
    linger = int(r.setting("VITRINE_DRAIN_LINGER_MS") or 0) / 1000
    drain = int(r.setting("VITRINE_DRAIN_TIMEOUT_MS") or 0) / 1000
    need = pause + linger + drain + shutdown_grace_s()
    grace = r.pod.get("terminationGracePeriodSeconds", 30)
    if not grace > need:
        problems.append(f"terminationGracePeriodSeconds {grace} <= preStop {pause} + linger "
                        f"{linger} + drain {drain} + {shutdown_grace_s()} s for open calls")
    return problems


def check_device(r):
    """The GPU overlay asks for GPUs, runs its engines on them (one per GPU) and uses the CUDA
    image; the CPU overlay asks for none."""
    problems = []
    c = r.container
    res = c.get("resources") or {}
    gpus = int((res.get("limits") or {}).get("nvidia.com/gpu", 0))
    req_gpus = (res.get("requests") or {}).get("nvidia.com/gpu")
    device = r.setting("VITRINE_DEVICE") or "cpu"
    tag = c["image"].rsplit(":", 1)[-1] if ":" in c["image"].rsplit("/", 1)[-1] else ""
    if r.name == "gpu":
        if gpus < 1:
            problems.append("the GPU overlay asks for no nvidia.com/gpu (limits)")
        if req_gpus is not None and int(req_gpus) != gpus:
            problems.append(f"nvidia.com/gpu requests {req_gpus} != limits {gpus}")
        if not device.startswith("cuda"):
            problems.append(f"VITRINE_DEVICE={device}: the GPU overlay's engines would run on the CPU")
        elif device.startswith("cuda:"):
            ids = [int(x) for x in device[5:].split(",")]
            if len(ids) > gpus or max(ids) >= gpus:
                problems.append(f"VITRINE_DEVICE={device} names devices the pod's {gpus} GPUs lack")
        if "cuda" not in tag:
            problems.append(f"image tag {tag!r} is not a CUDA build (its engines fall back to the CPU)")
    else:
        if gpus or req_gpus:
            problems.append(f"the {r.name} overlay asks for GPUs")
        if device != "cpu":
            problems.append(f"VITRINE_DEVICE={device} in the {r.name} overlay")
        if "cuda" in tag:
            problems.append(f"image tag {tag!r}: the CUDA image on CPU nodes")
    return problems


def check_images(r):
    """Every image is pinned: a tag other than latest, or a digest."""
    problems = []
    for d in r.docs:
        spec = d.get("spec") or {}
        pod = ((spec.get("template") or {}).get("spec")) if d.get("kind") != "Pod" else spec
        for c in (pod or {}).get("containers", []) + (pod or {}).get("initContainers", []):
            img = c.get("image", "")
            last = img.rsplit("/", 1)[-1]
            if "@sha256:" in img:
                continue
            if ":" not in last or last.endswith(":latest"):
                problems.append(f"{d['kind']} {d['metadata']['name']}: image {img!r} is not pinned by tag")
    return problems


def check_nonroot(r):
    """The pod runs as the image's non-root user, without privilege escalation, read-only."""
    problems = []
    sc = r.pod.get("securityContext") or {}
    if sc.get("runAsNonRoot") is not True:
        problems.append("runAsNonRoot is not true")
    uid = sc.get("runAsUser")
    if not isinstance(uid, int) or uid <= 0:
        problems.append(f"runAsUser {uid!r} is not a non-root uid")
    want = dockerfile_user()
    if want and isinstance(uid, int) and str(uid) != want.split(":")[0]:
        problems.append(f"runAsUser {uid} is not the image's USER {want}")
    for c in r.pod["containers"] + r.pod.get("initContainers", []):
        csc = c.get("securityContext") or {}
        if csc.get("runAsUser") == 0 or csc.get("runAsNonRoot") is False:
            problems.append(f"container {c['name']} runs as root")
        if csc.get("privileged"):
            problems.append(f"container {c['name']} is privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {c['name']} allows privilege escalation")
        if csc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"container {c['name']} has a writable root file system")
    return problems


def _selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_services(r):
    """A headless Service and a ClusterIP one select the pods; the PDB selects them and lets
    one go; the HPA scales this Deployment on the adapter's queue-time metric and on CPU, which
    needs CPU requests."""
    problems = []
    labels = r.deployment["spec"]["template"]["metadata"].get("labels") or {}
    svcs = r.of_kind("Service")
    if not any(s["spec"].get("clusterIP") == "None" for s in svcs):
        problems.append("no headless Service (clusterIP: None) for client-side round robin")
    if not any(s["spec"].get("clusterIP") != "None" for s in svcs):
        problems.append("no ClusterIP Service")
    for s in svcs:
        if not _selects(s["spec"].get("selector"), labels):
            problems.append(f"Service {s['metadata']['name']} does not select the pods")
    for s in svcs:
        if s["spec"].get("clusterIP") == "None" and s["spec"].get("publishNotReadyAddresses"):
            problems.append("the headless Service publishes pods that are not ready")
    pdbs = r.of_kind("PodDisruptionBudget")
    hpas = r.of_kind("HorizontalPodAutoscaler")
    if len(pdbs) != 1:
        problems.append(f"{len(pdbs)} PodDisruptionBudgets")
    if len(hpas) != 1:
        problems.append(f"{len(hpas)} HorizontalPodAutoscalers")
        return problems
    hpa = hpas[0]["spec"]
    for pdb in pdbs:
        sel = (pdb["spec"].get("selector") or {}).get("matchLabels")
        if not _selects(sel, labels):
            problems.append("the PodDisruptionBudget does not select the pods")
        mu, ma = pdb["spec"].get("maxUnavailable"), pdb["spec"].get("minAvailable")
        if mu is not None and mu in (0, "0%"):
            problems.append("the PodDisruptionBudget allows no disruption: node drains block")
        if isinstance(ma, int) and ma >= hpa.get("minReplicas", 1):
            problems.append(f"PodDisruptionBudget minAvailable {ma} >= minReplicas: drains block")
    ref = hpa["scaleTargetRef"]
    if ref.get("kind") != "Deployment" or ref.get("name") != r.deployment["metadata"]["name"]:
        problems.append(f"the HPA scales {ref.get('kind')} {ref.get('name')}, not the Deployment")
    if hpa.get("minReplicas", 1) < 2:
        problems.append("minReplicas < 2: a single pod's drain or crash stops traffic")
    metrics = hpa.get("metrics", [])
    pod_metrics = [m["pods"]["metric"]["name"] for m in metrics if m.get("type") == "Pods"]
    rule_names = set()
    for rule in adapter_rules():
        rule_names.add(rule["name"]["as"])
        series = re.match(r"\s*(\w+)", rule["seriesQuery"]).group(1)
        with open(os.path.join(ROOT, "serve", "metrics.c")) as f:
            metrics_c = f.read()
        base = re.sub(r"_(count|sum|bucket)$", "", series)
        if f'"{base}"' not in metrics_c:
            problems.append(f"the adapter rule reads {series}, which vitrine does not export")
        for ref_series in re.findall(r"(vitrine_\w+)\{", rule["metricsQuery"]):
            if f'"{re.sub(r"_(count|sum|bucket)$", "", ref_series)}"' not in metrics_c:
                problems.append(f"the adapter rule's query reads {ref_series}, not exported")
    if not pod_metrics:
        problems.append("the HPA has no per-pod (queue time) metric")
    for name in pod_metrics:
        if name not in rule_names:
            problems.append(f"the HPA's metric {name} is not one the adapter rule serves "
                            f"({sorted(rule_names)})")
    if not any(m.get("type") == "Resource" and m["resource"]["name"] == "cpu" for m in metrics):
        problems.append("no CPU fallback metric in the HPA")
    elif not ((r.container.get("resources") or {}).get("requests") or {}).get("cpu"):
        problems.append("the HPA scales on CPU utilisation but the container requests no CPU")
    return problems


def check_catalog(r):
    """The bundle and the catalogue come from read-only volumes, not the image; the catalogue is
    watched, so a swap on the volume reloads it without a restart."""
    problems = []
    mounts = {m["mountPath"]: m for m in r.container.get("volumeMounts", [])}
    for var in ("VITRINE_BUNDLE", "VITRINE_CATALOG"):
        path = r.setting(var) or ""
        under = [m for mp, m in mounts.items() if path == mp or path.startswith(mp.rstrip("/") + "/")]
        if not under:
            problems.append(f"{var}={path} is not on a mounted volume")
        elif not under[0].get("readOnly"):
            problems.append(f"{var}'s volume is mounted writable")
    if int(r.setting("VITRINE_WATCH_CATALOG_MS") or 0) <= 0:
        problems.append("VITRINE_WATCH_CATALOG_MS is 0: a new catalogue on the volume needs a restart")
    return problems


CHECKS = [check_options, check_ports, check_probes, check_grace, check_device, check_images,
          check_nonroot, check_services, check_catalog]
