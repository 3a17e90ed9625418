"""Rendering the kustomizations in deploy/kubernetes, and laying out their mounts on disk.

Two routes to the rendered manifests: ``kubectl kustomize`` when a kubectl is
on PATH (the machine image ships one), else :func:`render_fallback`, a small
renderer for exactly the kustomization fields these directories use. It
refuses any other field, so a kustomization cannot grow a feature the
fallback silently ignores; a test pins that both routes agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZATIONS = {
    "gateway": DEPLOY / "kubernetes" / "gateway",
    "sidecar": DEPLOY / "kubernetes" / "sidecar",
}
# The Kubernetes version whose OpenAPI schema the manifests must satisfy
# (kubernetes-validate ships the schemas; nothing is fetched).
KUBERNETES_VERSION = "1.32.0"

Doc = dict[str, Any]

_FALLBACK_FIELDS = {
    "apiVersion",
    "kind",
    "namespace",
    "labels",
    "resources",
    "images",
    "configMapGenerator",
}
_CLUSTER_SCOPED = {"Namespace"}
# kustomize's hash alphabet avoids vowels and look-alike digits.
_HASH_MAP = str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"})


class UnsupportedKustomization(ValueError):
    pass


def kubectl() -> str | None:
    return shutil.which("kubectl")


def render_kubectl(directory: Path) -> list[Doc]:
    exe = kubectl()
    assert exe is not None
    out = subprocess.run(
        [exe, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def render(directory: Path) -> list[Doc]:
    """The kustomization rendered by kubectl when available, else by the fallback."""
    return render_kubectl(directory) if kubectl() else render_fallback(directory)


def load_kustomization(directory: Path) -> Doc:
    data: Doc = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert isinstance(data, dict), f"{directory}/kustomization.yaml is not a mapping"
    return data


def _generated_name(name: str, data: dict[str, str]) -> str:
    digest = hashlib.sha256(
        json.dumps({"kind": "ConfigMap", "name": name, "data": data}, sort_keys=True).encode()
    ).hexdigest()
    return f"{name}-{digest[:10].translate(_HASH_MAP)}"


def _pod_specs(doc: Doc) -> Iterator[Doc]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "Pod":
        yield spec
    template = spec.get("template", {}).get("spec")
    if template is not None:
        yield template


def render_fallback(directory: Path) -> list[Doc]:
    """Render ``directory`` with the subset of kustomize semantics it uses."""
    k = load_kustomization(directory)
    unknown = set(k) - _FALLBACK_FIELDS
    if unknown:
        raise UnsupportedKustomization(f"fallback renderer does not support {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in k.get("resources", []):
        path = directory / entry
        if not path.is_file():
            raise UnsupportedKustomization(f"resource {entry} is not a file in {directory}")
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)

    renamed: dict[str, str] = {}
    for gen in k.get("configMapGenerator", []):
        extra = set(gen) - {"name", "files", "options"}
        options = gen.get("options", {})
        if extra or set(options) - {"disableNameSuffixHash"}:
            raise UnsupportedKustomization(f"configMapGenerator {gen['name']}: {gen}")
        data: dict[str, str] = {}
        for item in gen["files"]:
            key, _, rel = item.rpartition("=") if "=" in item else ("", "", item)
            data[key or Path(rel).name] = (directory / rel).read_text()
        name = gen["name"]
        if not options.get("disableNameSuffixHash", False):
            renamed[name] = _generated_name(name, data)
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": renamed.get(name, name)},
                "data": data,
            }
        )

    images = {i["name"]: i for i in k.get("images", [])}
    for doc in docs:
        for spec in _pod_specs(doc):
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                image = container["image"]
                base = image.split(":", 1)[0]
                if base in images:
                    new = images[base]
                    tag = new.get("newTag", image.split(":", 1)[1] if ":" in image else None)
                    container["image"] = new.get("newName", base) + (f":{tag}" if tag else "")
            for volume in spec.get("volumes", []):
                ref = volume.get("configMap")
                if ref is not None and ref["name"] in renamed:
                    ref["name"] = renamed[ref["name"]]

    for block in k.get("labels", []):
        if block.get("includeSelectors") or block.get("includeTemplates"):
            raise UnsupportedKustomization("labels into selectors/templates are not supported")
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(block["pairs"])

    namespace = k.get("namespace")
    if namespace:
        for doc in docs:
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def configmap_named(docs: list[Doc], name: str) -> Doc:
    """The ConfigMap a volume refers to (generated names carry a hash suffix)."""
    return one(docs, "ConfigMap", name)


def write_atomic_volume(mount: Path, files: dict[str, str], generation: str) -> None:
    """Lay out ``files`` the way the kubelet's atomic writer does, then swap to them.

    ``mount/..<generation>/<key>`` holds the content, ``..data`` points at the
    current generation and every ``<key>`` is a symlink through ``..data``;
    an update writes a new generation and renames a new ``..data`` over the
    old one, which is what a running Gatehouse sees on a ConfigMap change.
    """
    mount.mkdir(parents=True, exist_ok=True)
    gen_dir = mount / f"..{generation}"
    gen_dir.mkdir()
    for key, content in files.items():
        (gen_dir / key).write_text(content)
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(gen_dir.name)
    os.replace(tmp_link, mount / "..data")
    for key in files:
        link = mount / key
        if not link.is_symlink():
            link.symlink_to(Path("..data") / key)
    for old in mount.glob("..[0-9a-z]*"):
        if old.is_dir() and not old.is_symlink() and old.name != gen_dir.name:
            shutil.rmtree(old)


def container(doc: Doc, name: str) -> Doc:
    spec = doc["spec"]["template"]["spec"]
    found: list[Doc] = [c for c in spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"{doc['metadata']['name']}: no single container {name!r}"
    return found[0]


def config_arg(c: Doc) -> str:
    args: list[str] = list(c.get("command", [])) + list(c.get("args", []))
    assert "--config" in args, f"container {c['name']} passes no --config"
    return args[args.index("--config") + 1]


def materialise_pod(docs: list[Doc], deployment: str, container_name: str, root: Path) -> Path:
    """Write what ``container_name`` of ``deployment`` sees under ``root``; return its config.

    ConfigMap volumes get the rendered ConfigMap's data in the kubelet's
    atomic layout. Secret volumes get the files the config names: a server
    certificate and key for ``tls.crt``/``tls.key`` and a fresh signing key
    set for ``*keys.json``, a fresh key for ``state-key``, a fresh ``apikey-pepper``. Absolute paths in the config are re-rooted.
    """
    from proxy.credentials.signing import rotate_key_file
    from proxy.dev.certs import dev_certificates
    from proxy.identity.session import new_cookie_key as new_state_key

    dep = one(docs, "Deployment", deployment)
    c = container(dep, container_name)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    secret_mounts = [
        m["mountPath"] for m in c.get("volumeMounts", []) if "secret" in volumes[m["name"]]
    ]
    secret_modes = {
        m["mountPath"]: volumes[m["name"]]["secret"].get("defaultMode", 0o644)
        for m in c.get("volumeMounts", [])
        if "secret" in volumes[m["name"]]
    }

    def reroot(text: str) -> str:
        for mount in secret_mounts:
            text = text.replace(mount + "/", f"{root}{mount}/")
        return text

    for mount in c.get("volumeMounts", []):
        assert "subPath" not in mount, "subPath mounts never see ConfigMap/Secret updates"
        volume = volumes[mount["name"]]
        target = root / mount["mountPath"].lstrip("/")
        if "configMap" in volume:
            data = configmap_named(docs, volume["configMap"]["name"])["data"]
            write_atomic_volume(target, {k: reroot(v) for k, v in data.items()}, "2026_01_01_00")
        elif "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)

    config = root / config_arg(c).lstrip("/")
    text = config.read_text()
    certs: dict[str, Path] | None = None
    for mount in secret_mounts:
        prefix = f"{root}{mount}/"
        for word in text.split():
            if not word.startswith(prefix):
                continue
            path = Path(word)
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.name in ("tls.crt", "tls.key"):
                certs = certs or dev_certificates(root / "devcerts", ("localhost",))
                source = certs["server_cert" if path.suffix == ".crt" else "server_key"]
                shutil.copyfile(source, path)
            elif path.name.endswith("keys.json"):
                rotate_key_file(path)
            elif path.name == "state-key":
                path.write_text(new_state_key() + "\n")
            elif path.name == "apikey-pepper":
                path.write_text(secrets.token_urlsafe(48) + "\n")
            if path.exists():
                # The kubelet gives Secret files the volume's defaultMode (0644 when unset).
                path.chmod(secret_modes[mount])
    return config


COMPOSE = DEPLOY / "compose.yaml"


def load_compose() -> Doc:
    data: Doc = yaml.safe_load(COMPOSE.read_text())
    return data


def materialise_compose(root: Path, bin_dir: Path) -> Path:
    """What the compose file's gatehouse container sees, under ``root``; return its config.

    Bind mounts are copied from deploy/; the shared named volume is filled by
    running the ``setup`` service's own command (re-rooted) with the
    ``gatehouse`` and ``python`` found in ``bin_dir``.
    """
    services = load_compose()["services"]

    def reroot(text: str) -> str:
        for prefix in ("/var/lib/gatehouse", "/etc/gatehouse"):
            text = text.replace(prefix, f"{root}{prefix}")
        return text

    for volume in services["gatehouse"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("./"):
            src = COMPOSE.parent / source
            dst = root / target.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                dst.write_text(reroot(src.read_text()))
        else:
            (root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)
    setup = services["setup"]
    assert setup["entrypoint"] == ["sh", "-c"]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(2):  # the second run must find everything in place and change nothing
        out = subprocess.run(
            ["sh", "-c", reroot(setup["command"][0])],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    config_target: str = next(
        v.split(":")[1] for v in services["gatehouse"]["volumes"] if v.endswith("gatehouse.yaml:ro")
    )
    return root / config_target.lstrip("/")
