"""deploy/k8s, offline: every manifest against Kubernetes' own OpenAPI schemas (kubernetes-validate, bundled:
no cluster, no network), no secret in clear, settings that pipeline.config knows, probe and metrics paths the
app serves, Prometheus selecting every component, and the Qdrant collection's shards from settings."""

from __future__ import annotations

import copy
import functools
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBE_VERSION = "1.37"  # the newest schemas kubernetes-validate 1.37.0 bundles
SECRET = "product-search"  # the one Secret every manifest reads, by name
NOT_APPLIED = {"kustomization.yaml", "secret.example.yaml", "model-loader.yaml"}  # applied apart, or never
SECRETISH = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|AUTH|CREDENTIAL|(^|_)KEY$", re.IGNORECASE)
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:([^/\s@]+)@", re.IGNORECASE)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as kustomize's configMapGenerator ``envs`` reads them (comments and blanks skipped)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {key.strip(): value for key, value in pairs}


def _kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _build() -> list[dict[str, Any]]:
    """What ``kubectl apply -k deploy/k8s`` applies, less kustomize's name suffixes and common labels."""
    kust = _kustomization()
    out = [d for name in kust["resources"] for d in _docs(K8S / name)]
    for gen in kust.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for env in gen.get("envs", []):
            data |= _env_file(K8S / env)
        for file in gen.get("files", []):
            data[Path(file).name] = (K8S / file).read_text()
        out.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return out


def _get(resources: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod_specs(resources: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod spec) for every Deployment, StatefulSet, Job and bare Pod."""
    for r in resources:
        if r["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield r, r["spec"]["template"]["spec"]
        elif r["kind"] == "Pod":
            yield r, r["spec"]


def _containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _container(resources: list[dict[str, Any]], kind: str, name: str, container: str) -> dict[str, Any]:
    spec = _get(resources, kind, name)["spec"]["template"]["spec"]
    return next(c for c in _containers(spec) if c["name"] == container)


def _walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_strings(value)


@pytest.fixture(scope="module")
def kube() -> Iterator[Any]:
    """kubernetes_validate, reading each bundled schema file once (it re-reads megabytes of JSON per call)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    from kubernetes_validate import utils

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "schema_contents", functools.cache(utils.schema_contents))
        yield kubernetes_validate


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    return _build()


@pytest.fixture(scope="module")
def settings_env() -> dict[str, str]:
    return _env_file(K8S / "pipeline.env") | _env_file(K8S / "limits.env")


def test_every_manifest_passes_the_kubernetes_schemas(resources, kube):
    kust = _kustomization()
    files = {p.name for p in K8S.glob("*.yaml")}
    assert set(kust["resources"]) == files - NOT_APPLIED, "every manifest is applied, or named as applied apart"
    extra = [d for name in sorted(NOT_APPLIED - {"kustomization.yaml"}) for d in _docs(K8S / name)]
    kinds: set[str] = set()
    for doc in [*resources, *extra]:
        kube.validate(doc, KUBE_VERSION, strict=True)  # strict: an unknown field fails too
        kinds.add(doc["kind"])
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job",
            "ConfigMap", "PersistentVolumeClaim", "Role"} <= kinds, kinds  # fmt: skip
    # The check can fail: a wrong type, and a misspelt field.
    api = copy.deepcopy(_get(resources, "Deployment", "api"))
    api["spec"]["replicas"] = "three"
    with pytest.raises(kube.ValidationError):
        kube.validate(api, KUBE_VERSION, strict=True)
    api = copy.deepcopy(_get(resources, "Deployment", "api"))
    api["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kube.ValidationError):
        kube.validate(api, KUBE_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl (its built-in kustomize checks the build)")
def test_kustomize_builds_what_the_tests_check(resources, kube):
    """The real build (kubectl's own kustomize, offline): the same objects, each valid, and every reference to
    a generated ConfigMap rewritten to its hashed name."""
    proc = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    built = [d for d in yaml.safe_load_all(proc.stdout) if d]
    generated = {g["name"] for g in _kustomization()["configMapGenerator"]}

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        name = doc["metadata"]["name"]
        if doc["kind"] == "ConfigMap":
            name = next((g for g in generated if re.fullmatch(rf"{g}-[a-z0-9]{{10}}", name)), name)
        return doc["kind"], name

    assert sorted(map(key, built)) == sorted(map(key, resources))
    for doc in built:
        kube.validate(doc, KUBE_VERSION, strict=True)
        assert doc["metadata"].get("namespace", "product-search") == "product-search", key(doc)
    hashed = {d["metadata"]["name"] for d in built if d["kind"] == "ConfigMap"}

    def config_map_refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("configMapRef", "configMapKeyRef", "configMap"):
                    yield v["name"]
                else:
                    yield from config_map_refs(v)
        elif isinstance(node, list):
            for v in node:
                yield from config_map_refs(v)

    refs = {ref for doc in built for ref in config_map_refs(doc)}
    assert refs and refs <= hashed, (refs, hashed)


def test_no_secret_in_clear(resources):
    kust = _kustomization()
    assert "secretGenerator" not in kust and "secret.example.yaml" not in kust["resources"]
    assert not [r for r in resources if r["kind"] == "Secret"], "the Secret is created with kubectl, not applied"
    example = _docs(K8S / "secret.example.yaml")[0]
    assert example["metadata"]["name"] == SECRET
    keys = set(example["stringData"])
    assert all(v.startswith("<") and v.endswith(">") for v in example["stringData"].values()), "placeholders only"

    used: set[str] = set()
    for workload, spec in _pod_specs(resources):
        for c in _containers(spec):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{c['name']}"
            from_secret: set[str] = set()
            for env in c.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == SECRET and ref["key"] in keys, (where, env)
                    used.add(ref["key"])
                    from_secret.add(env["name"])
                elif SECRETISH.search(env["name"]):
                    pytest.fail(f"{where}: {env['name']} looks like a secret but is not from the Secret")
                # A secret inside a value (a URL's password) only as $(VAR) of a variable defined above it.
                for password in URL_PASSWORD.findall(env.get("value", "")):
                    assert re.fullmatch(r"\$\((\w+)\)", password) and password[2:-1] in from_secret, (where, env)
            args = [*c.get("command", []), *c.get("args", [])]
            for flag, value in itertools.pairwise(args):
                if re.fullmatch(r"--(requirepass|password|pass|auth)", flag):
                    assert re.fullmatch(r"\$\((\w+)\)", value) and value[2:-1] in from_secret, (where, flag)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] == SECRET
                used |= {item["key"] for item in volume["secret"]["items"]}
    assert used == keys, f"keys the manifests read vs the example: {sorted(used ^ keys)}"

    for r in resources:
        for text in _walk_strings(r):
            for password in URL_PASSWORD.findall(text):
                assert password.startswith("$("), f"{r['kind']}/{r['metadata']['name']}: a password in a URL"
            for placeholder in example["stringData"].values():
                assert placeholder not in text
        if r["kind"] == "ConfigMap":
            assert not [k for k in r["data"] if SECRETISH.search(k)], r["metadata"]["name"]

    def inline_credentials(node: Any) -> list[str]:
        if isinstance(node, list):
            return [k for v in node for k in inline_credentials(v)]
        if not isinstance(node, dict):
            return []
        bad = [k for k in node if k in ("credentials", "password", "bearer_token")]
        return bad + [k for v in node.values() for k in inline_credentials(v)]

    assert inline_credentials(yaml.safe_load((K8S / "prometheus.yml").read_text())) == []

    # The README's kubectl command creates exactly these keys.
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Beyond one machine (Kubernetes)", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"--from-(?:literal|file)=([a-z0-9-]+)=", section))
    assert named == keys, f"README vs secret.example.yaml: {sorted(named ^ keys)}"


def test_pipeline_settings_are_real_settings(resources, settings_env, monkeypatch):
    """Every PIPELINE__ variable the pods get names a field of pipeline.config.Settings (which ignores unknown
    ones, so a typo would pass silently), and loads to the value meant."""
    from pydantic import BaseModel

    from pipeline.config import Settings

    api = _container(resources, "Deployment", "api", "api")
    worker = _container(resources, "Deployment", "worker", "worker")
    assert api["env"] == worker["env"] and api["envFrom"] == worker["envFrom"], "the api and workers share settings"
    triton = _container(resources, "Deployment", "triton", "triton")
    limits = {"configMapRef": {"name": "pipeline-limits"}}  # held to the same input limits wherever decoded
    assert api["envFrom"] == [{"configMapRef": {"name": "pipeline-settings"}}, limits]
    assert triton["envFrom"] == [limits]

    assert not [n for n in _env_file(K8S / "pipeline.env") if n.startswith("PIPELINE__LIMITS__")], "in limits.env"
    assert all(n.startswith("PIPELINE__LIMITS__") for n in _env_file(K8S / "limits.env"))
    env = dict(settings_env)
    for var in api["env"]:  # secrets get stand-ins; $(VAR) expands as the kubelet expands it
        value = var.get("value") or f"from-secret-{var['name'].lower()}"
        env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], value)
    names = [n for n in env if n.startswith("PIPELINE__")]
    assert len(names) >= 15
    for name in names:
        model: type[BaseModel] = Settings
        parts = name.removeprefix("PIPELINE__").lower().split("__")
        for i, part in enumerate(parts):
            assert part in model.model_fields, f"{name}: no setting {'.'.join(parts[: i + 1])}"
            annotation = model.model_fields[part].annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                model = annotation
            else:
                assert i == len(parts) - 1, f"{name}: {part} is not a section"

    for name in [n for n in os.environ if n.startswith("PIPELINE__")]:
        monkeypatch.delenv(name)
    for name in names:
        monkeypatch.setenv(name, env[name])
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.environment == "production" and s.api.behind_proxy and s.jobs.runner == "celery"
    assert s.encoder.precision == "fp16" and s.triton.url == "triton:8001"
    assert s.qdrant.api_key is not None and s.qdrant.api_key.get_secret_value().startswith("from-secret-")
    assert s.mongo.password is not None and s.mongo.username == "product_search"
    assert s.jobs.broker_url is not None
    assert s.jobs.broker_url.get_secret_value() == "redis://:from-secret-redis_password@redis:6379/0"

    # The URLs name the Services (and ports) these manifests define.
    def service_port(name: str) -> set[int]:
        return {p["port"] for p in _get(resources, "Service", name)["spec"]["ports"]}

    host, port = s.triton.url.split(":")
    assert int(port) in service_port(host)
    for url in (s.qdrant.url, s.jobs.broker_url.get_secret_value()):
        parts = urlsplit(url)
        assert parts.port in service_port(str(parts.hostname)), url
    mongo = _get(resources, "StatefulSet", "mongo")
    members = {f"mongo-{i}.{mongo['spec']['serviceName']}:27017" for i in range(mongo["spec"]["replicas"])}
    assert s.mongo.uri is not None
    uri = urlsplit(s.mongo.uri.get_secret_value())
    assert set(uri.netloc.split(",")) == members and uri.query == "replicaSet=rs0"
    assert "--replSet rs0" in _container(resources, "StatefulSet", "mongo", "mongo")["args"][0]
    assert _get(resources, "Service", "mongo")["spec"]["clusterIP"] == "None"


@functools.cache
def _production_app() -> Any:
    from pipeline.api.app import create_app
    from pipeline.config import Settings

    return create_app(Settings(_env_file=None, environment="production"))  # type: ignore[call-arg]


def _served(path: str) -> bool:
    """Whether the service (as production builds it) has a GET route for ``path``: matched, not called, so no
    stores are needed."""
    from starlette.routing import Match

    scope = {"type": "http", "path": path, "method": "GET", "root_path": "", "query_string": b"", "headers": []}
    return any(route.matches(scope)[0] == Match.FULL for route in _production_app().router.routes)


def _relabel_keep(job: dict[str, Any], labels: dict[str, str]) -> bool:
    for rule in job.get("relabel_configs", []):
        action = rule.get("action", "replace")
        if action not in ("keep", "drop"):
            continue
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        if bool(re.fullmatch(rule.get("regex", "(.*)"), value)) != (action == "keep"):
            return False
    return True


def test_probes_and_scrapes_reach_real_paths(resources):
    api = _container(resources, "Deployment", "api", "api")
    port = next(p for p in api["ports"] if p["name"] == "http")["containerPort"]
    assert api["command"][-2:] == ["--port", str(port)]
    probes = {k: api[k]["httpGet"] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["port"] == "http" and _served(probe["path"]), probe
    assert _served("/metrics") and not _served("/health/nope")  # the route check can fail

    # Prometheus: simulate its pod discovery (one target per container port) over every workload here.
    config = yaml.safe_load((K8S / "prometheus.yml").read_text())
    scraped: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    for workload, spec in _pod_specs(resources):
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        for c in spec["containers"]:
            for p in c.get("ports", []):
                labels = {f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}": v
                          for k, v in pod_labels.items()}  # fmt: skip
                labels["__meta_kubernetes_pod_container_port_name"] = p.get("name", "")
                for job in config["scrape_configs"]:
                    sd = job.get("kubernetes_sd_configs", [])
                    if sd and _relabel_keep(job, labels):
                        assert (workload["metadata"]["name"], p["name"]) not in scraped, "scraped twice"
                        scraped[(workload["metadata"]["name"], p["name"])] = (job["job_name"], job)
    assert all(sd["role"] == "pod" and sd["namespaces"] == {"own_namespace": True}
               for job in config["scrape_configs"] for sd in job.get("kubernetes_sd_configs", []))  # fmt: skip
    job_name, job = scraped[("api", "http")]
    assert job_name == "product-search-api" and job.get("metrics_path", "/metrics") == "/metrics"
    expected = {("api", "http"), ("triton", "metrics"), ("qdrant", "http"), ("mongo", "metrics"), ("redis", "metrics")}
    assert set(scraped) == expected, sorted(scraped)
    for workload, spec in _pod_specs(resources):  # no metrics port is left out
        for c in spec["containers"]:
            for p in c.get("ports", []):
                assert p["name"] != "metrics" or (workload["metadata"]["name"], "metrics") in scraped
    triton = _container(resources, "Deployment", "triton", "triton")
    assert {"name": "metrics", "containerPort": 8002} in triton["ports"]

    # Qdrant's /metrics needs a key: a file from the Secret, mounted where the job reads it.
    key_file = Path(scraped[("qdrant", "http")][1]["authorization"]["credentials_file"])
    prom = _get(resources, "Deployment", "prometheus")["spec"]["template"]["spec"]
    mount = next(m for m in prom["containers"][0]["volumeMounts"] if m["mountPath"] == str(key_file.parent))
    volume = next(v for v in prom["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["items"] == [{"key": "qdrant-read-only-api-key", "path": key_file.name}]
    role = _get(resources, "Role", "prometheus")
    assert any("pods" in r["resources"] and {"list", "watch"} <= set(r["verbs"]) for r in role["rules"])


def test_the_stack_has_the_shape_the_readme_describes(resources):
    api = _get(resources, "Deployment", "api")
    assert api["spec"]["replicas"] == 3
    pdb = _get(resources, "PodDisruptionBudget", "api")["spec"]
    assert pdb["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"] and pdb["minAvailable"] < 3
    hpa = _get(resources, "HorizontalPodAutoscaler", "api")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "api" and hpa["minReplicas"] == 3
    assert hpa["metrics"][0]["resource"]["name"] == "cpu"
    assert api["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]  # HPA needs it

    worker = _get(resources, "Deployment", "worker")
    assert worker["spec"]["replicas"] == 2
    assert worker["spec"]["template"]["spec"]["containers"][0]["command"] == ["python", "-m", "pipeline", "worker"]

    triton = _get(resources, "Deployment", "triton")["spec"]["template"]["spec"]
    server = triton["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--model-repository=/models" in server["command"]
    assert not [a for a in server["command"] if "model-config-name" in a], "production configs, not cpu_test"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in triton["volumes"])  # /dev/shm

    qdrant = _get(resources, "StatefulSet", "qdrant")
    assert qdrant["spec"]["replicas"] == 3 and qdrant["spec"]["volumeClaimTemplates"]
    env = {e["name"]: e.get("value") for e in qdrant["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["QDRANT__CLUSTER__ENABLED"] == "true"
    headless = _get(resources, "Service", qdrant["spec"]["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert 6335 in {p["port"] for p in headless["ports"]}  # p2p

    mongo = _get(resources, "StatefulSet", "mongo")
    assert mongo["spec"]["replicas"] == 3 and mongo["spec"]["volumeClaimTemplates"]
    init = _get(resources, "Job", "mongo-init")["spec"]["template"]["spec"]
    script = _get(resources, "ConfigMap", "mongo-init")["data"]["mongo-init.js"]
    assert init["volumes"][0]["configMap"]["name"] == "mongo-init"
    assert "rs.initiate" in script and "readWrite" in script and "MONGO_APP_PASSWORD" in script

    redis = _get(resources, "StatefulSet", "redis")
    assert redis["spec"]["template"]["spec"]["containers"][0]["args"][:3] == ["redis-server", "--appendonly", "yes"]
    assert redis["spec"]["volumeClaimTemplates"]


async def test_collections_get_shards_and_replicas_from_settings(settings_env, resources):
    """The server adapter creates each collection (first open, every re-index) with the configured shard number
    and replication factor; local mode accepts and ignores them, so the adapter still works there."""
    from pydantic import ValidationError

    from pipeline.config import QdrantSettings
    from pipeline.schemas import SearchFilters
    from pipeline.stores.qdrant_server import ServerIndex
    from pipeline.stores.vectors import ModelStamp, SpaceQuery, VectorPoint
    from pipeline.types import Modality

    assert (QdrantSettings().shard_number, QdrantSettings().replication_factor) == (1, 1)
    with pytest.raises(ValidationError):
        QdrantSettings(shard_number=0)
    shards = int(settings_env["PIPELINE__QDRANT__SHARD_NUMBER"])
    replicas = int(settings_env["PIPELINE__QDRANT__REPLICATION_FACTOR"])
    assert replicas == 2 and replicas <= _get(resources, "StatefulSet", "qdrant")["spec"]["replicas"]

    index = ServerIndex(":memory:", "products", shard_number=shards, replication_factor=replicas)
    calls: list[dict[str, Any]] = []
    create = index._client.create_collection

    async def spy(*args: Any, **kwargs: Any) -> bool:
        calls.append(kwargs)
        return await create(*args, **kwargs)

    index._client.create_collection = spy  # type: ignore[method-assign]
    stamp = ModelStamp("c" * 64, 4, "model-c")
    await index.open(stamp)
    async with index.rebuild(stamp) as staged:
        vec = np.array([1, 0, 0, 0], np.float32)
        await staged.upsert([VectorPoint("p", 0, vec, vec, {"product_id": "p", "image_index": 0})])
    assert [(c["shard_number"], c["replication_factor"]) for c in calls] == [(shards, replicas)] * 2
    hits = await index.search([SpaceQuery(vec, Modality.IMAGE)], SearchFilters(), 1)
    assert [h.product_id for h in hits[0]] == ["p"]
    await index.aclose()
