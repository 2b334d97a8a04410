"""deploy/k8s: both overlays render with `kubectl kustomize` (offline), and the rendered objects
pass the checks of k8s_checks.py (probe ports are the listen ports, the grace period outlasts
the drain, every VITRINE_* is an option of `vitrine serve --help`, the GPU overlay asks for GPUs
and runs on them, images are pinned, the pod runs as non-root, ...). Each check is also run on a
copy broken on purpose, to show that it fails when it should."""
import os
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml", reason="python3-yaml is not installed")
if shutil.which("kubectl") is None:
    pytest.skip("kubectl is not installed: cannot render deploy/k8s", allow_module_level=True)

import k8s_checks as kc  # noqa: E402
from vt_deploy import need_vitrine  # noqa: E402

# kind: the CPU overlay for docs/DEPLOY.md's walkthrough; cpu-tls: TLS on the gRPC port, probes
# over HTTP on the metrics port (components/tls)
OVERLAYS = ["cpu", "gpu", "kind", "cpu-tls"]


@pytest.fixture(scope="module")
def help_opts():
    need_vitrine()
    return kc.server_help()


@pytest.fixture(scope="module")
def rendered(help_opts):
    return {o: kc.Rendered(o, kc.render(os.path.join(kc.K8S, "overlays", o)), help_opts)
            for o in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders(rendered, overlay):
    kinds = sorted(d["kind"] for d in rendered[overlay].docs)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler",
                            "PersistentVolumeClaim", "PersistentVolumeClaim",
                            "PodDisruptionBudget", "Service", "Service"]), kinds
    assert all(d["metadata"].get("namespace") == "vitrine" for d in rendered[overlay].docs)


@pytest.mark.parametrize("check", kc.CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_check_passes(rendered, overlay, check):
    assert check(rendered[overlay]) == []


# ---- every check can fail: a broken copy of a rendered overlay for each ----

def cm(r):
    """The data of the ConfigMap the container takes its variables from."""
    ref = r.container["envFrom"][0]["configMapRef"]["name"]
    return r.one("ConfigMap", ref)["data"]


def probe(name):
    return lambda r: r.container[name]


def set_(getter, key, value):
    def f(r):
        getter(r)[key] = value
    return f


def delete(getter, key):
    def f(r):
        del getter(r)[key]
    return f


def svc(name):
    return lambda r: r.one("Service", name)["spec"]


def hpa(r):
    return r.one("HorizontalPodAutoscaler")["spec"]


BREAKS = [
    # (check, overlay, what is broken, how)
    (kc.check_options, "cpu", "an option the server lacks", set_(cm, "VITRINE_BOGUS", "1")),
    (kc.check_options, "cpu", "an option left unset", delete(cm, "VITRINE_DRAIN_LINGER_MS")),
    (kc.check_options, "gpu", "a non-VITRINE variable in the ConfigMap", set_(cm, "FOO", "1")),
    (kc.check_ports, "cpu", "readiness probe on another port",
     lambda r: r.container["readinessProbe"]["grpc"].update(port=50052)),
    (kc.check_ports, "gpu", "server listening on another port", set_(cm, "VITRINE_LISTEN", "0.0.0.0:50052")),
    (kc.check_ports, "cpu", "server listening on loopback", set_(cm, "VITRINE_LISTEN", "127.0.0.1:50051")),
    (kc.check_ports, "cpu", "metrics port moved", set_(cm, "VITRINE_METRICS_LISTEN", "0.0.0.0:9000")),
    (kc.check_ports, "cpu", "metrics off", set_(cm, "VITRINE_METRICS_LISTEN", "off")),
    (kc.check_ports, "cpu", "Service targets a missing port",
     lambda r: r.one("Service", "vitrine")["spec"]["ports"][1].update(targetPort="prom")),
    (kc.check_ports, "cpu", "an HTTP liveness probe on another port",
     lambda r: r.container.update(livenessProbe={"httpGet": {"port": 8080, "path": "/livez"}})),
    (kc.check_probes, "cpu", "an HTTP liveness probe on the metrics, not /livez",
     lambda r: r.container.update(livenessProbe={"httpGet": {"port": 9464, "path": "/"}})),
    (kc.check_probes, "cpu-tls", "TLS: readiness on /livez",
     lambda r: r.container["readinessProbe"]["httpGet"].update(path="/livez")),
    (kc.check_ports, "cpu-tls", "TLS: startup probe on the gRPC port over HTTP",
     lambda r: r.container["startupProbe"]["httpGet"].update(port=50051)),
    (kc.check_probes, "cpu-tls", "TLS with a native gRPC probe back",
     lambda r: r.container.update(livenessProbe={"grpc": {"port": 50051,
                                                           "service": "liveness"}})),
    (kc.check_probes, "cpu", "liveness asks for readiness",
     lambda r: r.container["livenessProbe"]["grpc"].update(service="vitrine.v1.Storefront")),
    (kc.check_probes, "gpu", "readiness asks for liveness",
     lambda r: r.container["readinessProbe"]["grpc"].update(service="liveness")),
    (kc.check_probes, "gpu", "startup probe too short",
     lambda r: r.container["startupProbe"].update(failureThreshold=30)),
    (kc.check_probes, "cpu", "TLS with native gRPC probes", set_(cm, "VITRINE_TLS_CERT", "/tls/crt")),
    (kc.check_grace, "cpu", "grace period shorter than the drain",
     lambda r: r.pod.update(terminationGracePeriodSeconds=20)),
    (kc.check_grace, "gpu", "linger longer than the grace period allows",
     set_(cm, "VITRINE_DRAIN_LINGER_MS", "20000")),
    (kc.check_grace, "cpu", "no preStop", lambda r: r.container.pop("lifecycle")),
    (kc.check_device, "gpu", "no GPU asked for",
     lambda r: r.container["resources"]["limits"].pop("nvidia.com/gpu")),
    (kc.check_device, "gpu", "engines on the CPU", set_(cm, "VITRINE_DEVICE", "cpu")),
    (kc.check_device, "gpu", "more devices than GPUs", set_(cm, "VITRINE_DEVICE", "cuda:0,1")),
    (kc.check_device, "gpu", "the CPU image", lambda r: r.container.update(
        image=r.container["image"].replace("cuda13.0", "cpu"))),
    (kc.check_device, "cpu", "a GPU on the CPU overlay",
     lambda r: r.container["resources"]["limits"].update({"nvidia.com/gpu": 1})),
    (kc.check_images, "cpu", "latest", lambda r: r.container.update(image="vitrine:latest")),
    (kc.check_images, "gpu", "no tag", lambda r: r.container.update(image="registry.example.com/vitrine")),
    (kc.check_nonroot, "cpu", "root", lambda r: r.pod["securityContext"].update(runAsUser=0)),
    (kc.check_nonroot, "gpu", "runAsNonRoot off",
     lambda r: r.pod["securityContext"].pop("runAsNonRoot")),
    (kc.check_nonroot, "cpu", "another uid than the image's",
     lambda r: r.pod["securityContext"].update(runAsUser=1000)),
    (kc.check_nonroot, "cpu", "privilege escalation",
     lambda r: r.container["securityContext"].update(allowPrivilegeEscalation=True)),
    (kc.check_services, "cpu", "no headless Service", lambda r: svc("vitrine-headless")(r).pop("clusterIP")),
    (kc.check_services, "cpu", "Service selects nothing",
     lambda r: svc("vitrine")(r).update(selector={"app": "other"})),
    (kc.check_services, "gpu", "PDB blocks drains",
     lambda r: r.one("PodDisruptionBudget")["spec"].update(maxUnavailable=0)),
    (kc.check_services, "cpu", "HPA metric the adapter does not serve",
     lambda r: hpa(r)["metrics"][0]["pods"]["metric"].update(name="vitrine_queue_p99")),
    (kc.check_services, "cpu", "HPA without the CPU fallback", lambda r: hpa(r)["metrics"].pop(1)),
    (kc.check_services, "cpu", "CPU fallback without CPU requests",
     lambda r: r.container["resources"]["requests"].pop("cpu")),
    (kc.check_services, "gpu", "HPA on another Deployment",
     lambda r: hpa(r)["scaleTargetRef"].update(name="other")),
    (kc.check_catalog, "cpu", "no catalogue watch", set_(cm, "VITRINE_WATCH_CATALOG_MS", "0")),
    (kc.check_catalog, "gpu", "catalogue outside the volumes", set_(cm, "VITRINE_CATALOG", "/data/catalog")),
    (kc.check_catalog, "cpu", "catalogue volume writable",
     lambda r: [m.pop("readOnly") for m in r.container["volumeMounts"] if m["name"] == "catalog"]),
]


@pytest.mark.parametrize("check,overlay,what,breaker", BREAKS,
                         ids=[f"{b[0].__name__}-{b[1]}-{b[2].replace(' ', '_')}" for b in BREAKS])
def test_check_catches(rendered, check, overlay, what, breaker):
    broken = rendered[overlay].copy()
    breaker(broken)
    assert check(broken), f"{check.__name__} missed: {what}"


def test_every_check_has_a_break():
    assert {b[0] for b in BREAKS} == set(kc.CHECKS)


# ---- the pieces outside the overlays ----

def test_servicemonitor_component(tmp_path, help_opts):
    """components/servicemonitor added to an overlay: the ServiceMonitor scrapes the Service's
    metrics port, and the scrape annotations are gone (no double scrape)."""
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": "vitrine",  # as in the overlay the component is added to
        "resources": [os.path.relpath(os.path.join(kc.K8S, "overlays", "cpu"), tmp_path)],
        "components": [os.path.relpath(os.path.join(kc.K8S, "components", "servicemonitor"),
                                       tmp_path)]}))
    r = kc.Rendered("cpu", kc.render(str(tmp_path)), help_opts)
    sm = r.one("ServiceMonitor")
    assert sm["metadata"]["namespace"] == "vitrine"
    for check in kc.CHECKS:
        assert check(r) == [], check.__name__
    ann = r.deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert not [k for k in ann if k.startswith("prometheus.io/")], ann
    sel = sm["spec"]["selector"]["matchLabels"]
    scraped = [s for s in r.of_kind("Service")
               if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
    assert [s["metadata"]["name"] for s in scraped] == ["vitrine"]  # one target per pod


def test_adapter_rule_is_valid():
    """The Prometheus adapter rule: the HPA's metric from vitrine's queue histogram, per pod."""
    (rule,) = kc.adapter_rules()
    assert rule["name"]["as"] == "vitrine_queue_seconds"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    q = rule["metricsQuery"]
    assert "vitrine_queue_duration_seconds_sum" in q and "vitrine_queue_duration_seconds_count" in q
    assert q.count("<<.LabelMatchers>>") == 2 and q.count("<<.GroupBy>>") == 2


def test_model_loader_pod(help_opts):
    """tools/model-loader.yaml mounts the base's volumes, runs as the same non-root user, and
    its image is pinned."""
    with open(os.path.join(kc.K8S, "tools", "model-loader.yaml")) as f:
        pod = yaml.safe_load(f)
    r = kc.Rendered("cpu", [pod], help_opts)
    assert kc.check_images(r) == []
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"]["volumes"]}
    base = kc.render(os.path.join(kc.K8S, "base"))
    assert claims == {d["metadata"]["name"] for d in base if d["kind"] == "PersistentVolumeClaim"}
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True and str(sc["runAsUser"]) == kc.dockerfile_user().split(":")[0]


def test_help_parser_sees_the_new_options(help_opts):
    """The names this deployment relies on (graceful linger, the catalogue watch) are options
    of the binary under test, with the defaults the grace period is computed from."""
    for name in ("VITRINE_DRAIN_LINGER_MS", "VITRINE_WATCH_CATALOG_MS", "VITRINE_DRAIN_TIMEOUT_MS",
                 "VITRINE_LISTEN", "VITRINE_METRICS_LISTEN", "VITRINE_DEVICE"):
        assert name in help_opts, name
    assert help_opts["VITRINE_LISTEN"].endswith(":50051")


def test_kubectl_kustomize_is_offline():
    """The render needs nothing remote (no http resources), so it works where the tests run."""
    for dirpath, _, files in os.walk(kc.K8S):
        for f in files:
            if f == "kustomization.yaml":
                text = open(os.path.join(dirpath, f)).read()
                assert "http://" not in text and "https://" not in text, os.path.join(dirpath, f)
    out = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True)
    assert out.returncode == 0
