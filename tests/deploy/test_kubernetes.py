"""deploy/kubernetes: the kustomizations render, validate offline and hang together.

Schema validation uses kubernetes-validate's bundled OpenAPI schemas for a
pinned Kubernetes version (strict: unknown fields are errors). The one CRD,
the Prometheus Operator's ServiceMonitor, has no bundled schema: it is
checked structurally here against the fields the operator reads, and against
the Service it must select.
"""

from __future__ import annotations

import asyncio
import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config.load import load_config
from proxy.policy_store import PolicyStore
from tests.deploy.manifests import (
    KUBERNETES_VERSION,
    KUSTOMIZATIONS,
    Doc,
    by_kind,
    config_arg,
    container,
    kubectl,
    load_kustomization,
    materialise_pod,
    one,
    render,
    render_fallback,
    render_kubectl,
    write_atomic_volume,
)
from tests.support.cli import gatehouse_command

# Neither ships type information; loaded as Any rather than silenced per line.
# kubernetes-validate (which brings jsonschema) belongs in the test extras.
_MISSING = "kubernetes-validate is not installed: pip install kubernetes-validate"
jsonschema: Any = pytest.importorskip("jsonschema", reason=_MISSING)
kubernetes_validate: Any = pytest.importorskip("kubernetes_validate", reason=_MISSING)

# (kustomization, Deployment, Gatehouse container)
GATEHOUSE_PODS = [("gateway", "gatehouse", "gatehouse"), ("sidecar", "orders", "gatehouse")]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    return {name: render(path) for name, path in KUSTOMIZATIONS.items()}


def _duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", str(text))
    assert m, text
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale


def _config_of(docs: list[Doc], deployment: str, name: str) -> dict[str, Any]:
    """The gatehouse.yaml a container reads, from the rendered ConfigMap."""
    dep = one(docs, "Deployment", deployment)
    c = container(dep, name)
    mount_dir = str(Path(config_arg(c)).parent)
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == mount_dir)
    volume = next(
        v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]
    )
    data = one(docs, "ConfigMap", volume["configMap"]["name"])["data"]
    parsed: dict[str, Any] = yaml.safe_load(data[Path(config_arg(c)).name])
    return parsed


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# -- the kustomizations themselves ---------------------------------------------


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_listed_resource_and_generator_file_exists_and_parses(name: str) -> None:
    directory = KUSTOMIZATIONS[name]
    k = load_kustomization(directory)
    assert k["kind"] == "Kustomization"
    for entry in k["resources"]:
        docs = [d for d in yaml.safe_load_all((directory / entry).read_text()) if d]
        assert docs, f"{entry} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{entry}: {doc}"
            assert doc["metadata"].get("name"), f"{entry}: unnamed {doc['kind']}"
    for gen in k.get("configMapGenerator", []):
        for item in gen["files"]:
            assert (directory / item.rpartition("=")[2]).is_file(), item


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_rendered_manifests_validate_against_the_pinned_kubernetes_schema(
    name: str, rendered: dict[str, list[Doc]]
) -> None:
    validated: set[str] = set()
    crds: set[str] = set()
    for doc in rendered[name]:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            validated.add(doc["kind"])
        except kubernetes_validate.SchemaNotFoundError:
            # Only the Prometheus Operator CRD may lack a built-in schema.
            assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["kind"]
            crds.add(doc["kind"])
    expected = {"Deployment", "Service", "ConfigMap", "NetworkPolicy"}
    if name == "gateway":
        expected |= {"HorizontalPodAutoscaler", "PodDisruptionBudget", "Namespace"}
        assert crds == {"ServiceMonitor"}
    assert expected <= validated


def test_schema_validation_rejects_a_misspelt_field(rendered: dict[str, list[Doc]]) -> None:
    """The validator is not vacuous: a typo in the Deployment is an error."""
    dep = copy.deepcopy(one(rendered["gateway"], "Deployment"))
    dep["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"tcpSocket": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSION, strict=True)
    dep = copy.deepcopy(one(rendered["gateway"], "Deployment"))
    dep["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBERNETES_VERSION, strict=True)


def test_schema_validation_works_without_network(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """kubernetes-validate's CLI in a network namespace with no interfaces up."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare(1) not installed: cannot cut the network for this check")
    probe = subprocess.run([unshare, "--net", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.decode().strip()}")
    manifest = tmp_path / "gateway.yaml"
    manifest.write_text(yaml.safe_dump_all(rendered["gateway"]))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    isolated = [unshare, "--net", "--map-root-user"]
    validate = [str(cli), "--strict", "--no-warn", "-k", KUBERNETES_VERSION, str(manifest)]
    out = subprocess.run(
        [*isolated, *validate],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deployment/gatehouse" in out.stdout


def _normalise_generated(docs: list[Doc], directory: Path) -> str:
    """YAML text with hash-suffixed generated names reduced to ``<name>-HASH``."""
    text = yaml.safe_dump_all(sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"])))
    for gen in load_kustomization(directory).get("configMapGenerator", []):
        if not gen.get("options", {}).get("disableNameSuffixHash"):
            text = re.sub(
                rf"\b{re.escape(gen['name'])}-[a-z0-9]{{10}}\b", f"{gen['name']}-HASH", text
            )
    return text


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_fallback_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    if kubectl() is None:
        pytest.skip("no kubectl on PATH: the fallback renderer is the only route here")
    directory = KUSTOMIZATIONS[name]
    assert _normalise_generated(render_fallback(directory), directory) == _normalise_generated(
        render_kubectl(directory), directory
    )


def test_a_config_change_rolls_the_deployment_but_a_policy_change_is_hot_reloaded(
    tmp_path: Path,
) -> None:
    """gatehouse.yaml's ConfigMap name follows its content; the policies' name is stable."""
    copy_dir = tmp_path / "gateway"
    shutil.copytree(KUSTOMIZATIONS["gateway"], copy_dir)

    def names() -> tuple[str, str, list[str]]:
        docs = render(copy_dir)
        dep = one(docs, "Deployment")
        mounted = [
            v["configMap"]["name"]
            for v in dep["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        ]
        maps = [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")]
        config = next(n for n in maps if n.startswith("gatehouse-config"))
        policies = next(n for n in maps if n.startswith("gatehouse-policies"))
        return config, policies, mounted

    config0, policies0, mounted0 = names()
    assert policies0 == "gatehouse-policies"
    assert sorted(mounted0) == sorted([config0, policies0])
    (copy_dir / "policies" / "orders.yaml").write_text(
        (copy_dir / "policies" / "orders.yaml").read_text() + "\n# reviewed\n"
    )
    config1, policies1, _ = names()
    assert (config1, policies1) == (config0, policies0)
    cfg = copy_dir / "config" / "gatehouse.yaml"
    cfg.write_text(cfg.read_text().replace("drain_timeout: 30s", "drain_timeout: 25s"))
    config2, _, mounted2 = names()
    assert config2 != config0
    assert config2 in mounted2


# -- the pieces refer to each other correctly ------------------------------------


def _pod_labels(docs: list[Doc], deployment: str) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment", deployment)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


@pytest.mark.parametrize(("name", "deployment", "cname"), GATEHOUSE_PODS)
def test_gatehouse_container_is_hardened_probed_and_drains_before_sigkill(
    name: str, deployment: str, cname: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[name]
    dep = one(docs, "Deployment", deployment)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep, cname)
    assert dep["spec"]["replicas"] >= 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's fixed UID
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert c[probe]["httpGet"] == {"path": path, "port": "admin"}, probe
    # The only writable place is an emptyDir at /tmp (--workers metric files).
    tmp = next(m for m in c["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])

    config = _config_of(docs, deployment, cname)
    assert int(config["listen"]["address"].rsplit(":", 1)[1]) == ports["https"]
    admin_host, admin_port = config["admin"]["address"].rsplit(":", 1)
    assert admin_host == "0.0.0.0", "kubelet probes and Prometheus connect to the pod IP"
    assert int(admin_port) == ports["admin"]

    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and float(sleep[1]) >= 5
    drain = _duration_seconds(config["shutdown"]["drain_timeout"])
    assert pod["terminationGracePeriodSeconds"] > float(sleep[1]) + drain


@pytest.mark.parametrize(("name", "deployment", "cname"), GATEHOUSE_PODS)
def test_config_and_policies_are_whole_directory_mounts_and_secrets_are_references(
    name: str, deployment: str, cname: str, rendered: dict[str, list[Doc]]
) -> None:
    docs = rendered[name]
    dep = one(docs, "Deployment", deployment)
    c = container(dep, cname)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    config_dir = str(Path(config_arg(c)).parent)
    config = _config_of(docs, deployment, cname)
    policy_dir = str((Path(config_dir) / config["policies"]["dir"]).resolve())
    for path in (config_dir, policy_dir):
        assert path in mounts, f"{path} is not a volume mount"
        assert "subPath" not in mounts[path]
        assert "configMap" in volumes[mounts[path]["name"]]
    secret_volumes = [v for v in volumes.values() if "secret" in v]
    assert secret_volumes
    for v in secret_volumes:
        assert not by_kind(docs, "Secret"), "Secrets are created out of band, never committed"
        assert v["secret"]["defaultMode"] == 0o440


def test_gateway_services_budget_autoscaler_and_network_policy_select_the_pods(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["gateway"]
    labels = _pod_labels(docs, "gatehouse")
    c = container(one(docs, "Deployment", "gatehouse"), "gatehouse")
    port_names = {p["name"] for p in c["ports"]}
    for svc in by_kind(docs, "Service"):
        assert _matches(svc["spec"]["selector"], labels), svc["metadata"]["name"]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names
    traffic = one(docs, "Service", "gatehouse")
    assert [p["targetPort"] for p in traffic["spec"]["ports"]] == ["https"], (
        "no /metrics via traffic"
    )
    pdb = one(docs, "PodDisruptionBudget")
    assert _matches(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gatehouse",
    }
    assert hpa["spec"]["minReplicas"] >= 2
    netpol = one(docs, "NetworkPolicy")
    assert _matches(netpol["spec"]["podSelector"]["matchLabels"], labels)
    ingress_ports = {p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == port_names
    admin_rule = next(r for r in netpol["spec"]["ingress"] if r["ports"][0]["port"] == "admin")
    assert admin_rule["from"], "the admin port must not be open to everyone"


SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["matchLabels"],
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                        "any": {"type": "boolean"},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                        },
                    },
                },
            },
        },
    },
}


def test_servicemonitor_is_well_formed_and_scrapes_the_admin_port(
    rendered: dict[str, list[Doc]],
) -> None:
    docs = rendered["gateway"]
    monitor = one(docs, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    spec = monitor["spec"]
    selected = [
        s
        for s in by_kind(docs, "Service")
        if _matches(spec["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in selected] == ["gatehouse-metrics"]
    svc = selected[0]
    assert monitor["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
    assert svc["metadata"]["namespace"] == monitor["metadata"]["namespace"]
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
        assert _duration_seconds(endpoint["scrapeTimeout"]) < _duration_seconds(
            endpoint["interval"]
        )
    # The alert rules select job="gatehouse": jobLabel must produce it.
    assert svc["metadata"]["labels"][spec["jobLabel"]] == "gatehouse"


def test_sidecar_app_is_reachable_only_through_gatehouse(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["sidecar"]
    dep = one(docs, "Deployment", "orders")
    app = container(dep, "app")
    assert "ports" not in app
    command = app["command"]
    assert command[command.index("--host") + 1] == "127.0.0.1"
    app_port = int(command[command.index("--port") + 1])
    config = _config_of(docs, "orders", "gatehouse")
    assert config["backends"]["app"]["urls"] == [f"http://127.0.0.1:{app_port}"]
    svc = one(docs, "Service", "orders")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["https"]
    # The app stays up while Gatehouse drains the requests it is forwarding.
    gh = container(dep, "gatehouse")
    app_sleep = float(app["lifecycle"]["preStop"]["exec"]["command"][1])
    gh_sleep = float(gh["lifecycle"]["preStop"]["exec"]["command"][1])
    drain = _duration_seconds(config["shutdown"]["drain_timeout"])
    assert app_sleep >= gh_sleep + drain
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > app_sleep


# -- the example configuration works where the pod will see it ---------------------


@pytest.mark.parametrize(("name", "deployment", "cname"), GATEHOUSE_PODS)
def test_example_config_passes_gatehouse_check_in_the_pod_filesystem_layout(
    name: str, deployment: str, cname: str, rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    config = materialise_pod(rendered[name], deployment, cname, tmp_path)
    out = gatehouse_command("check", "--config", str(config), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    # Relative policy paths resolve through the mount, not into kubelet's
    # timestamped directory (which disappears on the next update).
    loaded = load_config(config)
    assert not any(part.startswith("..2") for part in loaded.policy_dir.parts)
    assert loaded.policy_dir.resolve() == (tmp_path / "etc/gatehouse/policies").resolve()


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_example_policies_pass_check_and_their_fixtures(name: str) -> None:
    """The CI steps of deploy/README.md's policy rollout: check, then test."""
    policies = KUSTOMIZATIONS[name] / "policies"
    backends = yaml.safe_load((KUSTOMIZATIONS[name] / "config" / "gatehouse.yaml").read_text())
    names = ",".join(backends["backends"])
    out = gatehouse_command("policy", "check", "--backends", names, str(policies))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 warnings" in out.stdout
    fixtures = sorted((policies / "tests").glob("*.yaml"))
    assert fixtures
    out = gatehouse_command("policy", "test", *map(str, fixtures))
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 failed" in out.stdout


async def test_policy_configmap_update_is_hot_reloaded_and_a_broken_one_is_not(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """The existing watcher against the kubelet's symlink swap on the mount from deployment.yaml."""
    docs = rendered["gateway"]
    config = load_config(materialise_pod(docs, "gatehouse", "gatehouse", tmp_path))
    store = PolicyStore(config.policy_dir, backends=set(config.backends))
    first = store.current.version
    routes = {r.name for r in store.current.routes}
    policies = one(docs, "ConfigMap", "gatehouse-policies")["data"]
    watcher = asyncio.ensure_future(store.watch(interval=0.05))

    async def wait_for(predicate: Any, what: str) -> None:
        for _ in range(200):
            if predicate():
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        extra_route = (
            "\n  - name: orders-health\n    host: orders.example.com\n    path_exact: /healthz\n"
            "    methods: [GET]\n    backend: orders\n    allow:\n      - name: anyone\n"
            "        public: true\n"
        )
        updated = {**policies, "orders.yaml": policies["orders.yaml"] + extra_route}
        write_atomic_volume(config.policy_dir, updated, "2026_01_01_01")
        await wait_for(lambda: store.current.version != first, "the new policy version")
        second = store.current.version
        assert {r.name for r in store.current.routes} == routes | {"orders-health"}

        broken = {**updated, "orders.yaml": "routes:\n  - name: [unclosed\n"}
        write_atomic_volume(config.policy_dir, broken, "2026_01_01_02")
        await wait_for(lambda: not store.changed(), "the broken update to be examined")
        assert store.current.version == second
        assert {r.name for r in store.current.routes} == routes | {"orders-health"}
    finally:
        watcher.cancel()
