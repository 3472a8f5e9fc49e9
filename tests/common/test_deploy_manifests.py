"""Static checks of the deployment files: deploy/k8s (kustomize), docker-compose.yml, Dockerfile.

No cluster and no database needed. When `kustomize` or `kubectl` is on PATH, both overlays are
also rendered and the rendered objects get the same checks as the base files.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from libs.common.stack import STACK

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = K8S / "overlays"
COMPOSE = REPO / "docker-compose.yml"

# The public contract (ARCHITECTURE.md): process -> (port, uvicorn factory).
CONTRACT = {
    "gateway": (8080, "gateway.app:create_app"),
    "tickets": (8101, "services.tickets.app:create_app"),
    "summarization": (8102, "services.summarization.app:create_app"),
    "notifications": (8103, "services.notifications.app:create_app"),
    "analytics": (8104, "services.analytics.app:create_app"),
}
SECRET_WORDS = ("SECRET", "PASSWORD", "DATABASE_URL", "API_KEY", "TOKEN")
INTERPOLATION = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")
# scheme://user:password@ where the password may be a compose ${VAR:?message} (with spaces).
URL_CREDENTIALS = re.compile(r"://([^:/@\s]+):(\$\{[^}]*\}|[^@\s]+)@")

K8S_YAML = sorted([*K8S.rglob("*.yaml"), *K8S.rglob("*.yml")])
KUSTOMIZATIONS = sorted(K8S.rglob("kustomization.yaml"))


def load_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def objects(docs: list[Any], kind: str) -> dict[str, dict]:
    return {
        doc["metadata"]["name"]: doc
        for doc in docs
        if isinstance(doc, dict) and doc.get("kind") == kind and "metadata" in doc
    }


def base_docs() -> list[Any]:
    docs = []
    for entry in load_docs(BASE / "kustomization.yaml")[0]["resources"]:
        docs.extend(load_docs(BASE / entry))
    return docs


def is_secret_name(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def walk(node: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}[{index}]")


def env_map(container: dict) -> dict[str, dict]:
    return {item["name"]: item for item in container.get("env", [])}


def secret_ref(env_item: dict | None) -> dict | None:
    if env_item is None:
        return None
    return (env_item.get("valueFrom") or {}).get("secretKeyRef")


def resolve_port(port: int | str, container: dict) -> int | None:
    if isinstance(port, int):
        return port
    for item in container.get("ports", []):
        if item.get("name") == port:
            return item["containerPort"]
    return None


def runs_as_non_root(pod_spec: dict, container: dict) -> bool:
    pod_level = (pod_spec.get("securityContext") or {}).get("runAsNonRoot")
    return bool(pod_level or (container.get("securityContext") or {}).get("runAsNonRoot"))


def deployment_problems(deployment: dict, name: str) -> list[str]:
    """Everything wrong with one service's Deployment, so a failure lists all of it at once."""
    port, factory = CONTRACT[name]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    problems = []
    if len(spec["containers"]) != 1:
        return [f"{name}: expected one container, got {len(spec['containers'])}"]
    container = spec["containers"][0]

    if [p.get("containerPort") for p in container.get("ports", [])] != [port]:
        problems.append(f"{name}: containerPort is not {port}")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        http = (container.get(probe) or {}).get("httpGet") or {}
        if http.get("path") != path:
            problems.append(f"{name}: {probe} path is {http.get('path')!r}, not {path}")
        if resolve_port(http.get("port", ""), container) != port:
            problems.append(f"{name}: {probe} does not target port {port}")

    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    for resource in ("cpu", "memory"):
        if resource not in limits:
            problems.append(f"{name}: no {resource} limit")
        if resource not in requests:
            problems.append(f"{name}: no {resource} request")

    container_security = container.get("securityContext") or {}
    if not runs_as_non_root(spec, container):
        problems.append(f"{name}: runAsNonRoot is not set")
    if container_security.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{name}: root filesystem is writable")
    if container_security.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{name}: privilege escalation allowed")
    if "/tmp" not in {mount["mountPath"] for mount in container.get("volumeMounts", [])}:
        problems.append(f"{name}: read-only root without a writable /tmp")

    env = env_map(container)
    if (env.get("APP") or {}).get("value") != factory:
        problems.append(f"{name}: APP is not {factory}")
    if (env.get("PORT") or {}).get("value") != str(port):
        problems.append(f"{name}: PORT is not {port}")
    database = secret_ref(env.get("DATABASE_URL"))
    if database is None or database.get("name") != f"helpdesk-db-{name}":
        problems.append(f"{name}: DATABASE_URL does not come from Secret helpdesk-db-{name}")
    if secret_ref(env.get("HELPDESK_JWT_SECRET")) is None:
        problems.append(f"{name}: HELPDESK_JWT_SECRET does not come from a Secret")
    if not any("configMapRef" in source for source in container.get("envFrom", [])):
        problems.append(f"{name}: the shared ConfigMap is not loaded (envFrom)")

    annotations = pod["metadata"].get("annotations") or {}
    scrape = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    for key, value in scrape.items():
        if annotations.get(key) != value:
            problems.append(f"{name}: pod annotation {key} is {annotations.get(key)!r}, not {value!r}")
    if deployment["spec"].get("replicas", 2) < 1:
        problems.append(f"{name}: replicas below 1")
    return problems


def platform_problems(docs: list[Any]) -> list[str]:
    """Checks every rendering of the platform must pass (the base files or an overlay)."""
    problems = []
    deployments = objects(docs, "Deployment")
    services = objects(docs, "Service")
    pdbs = objects(docs, "PodDisruptionBudget")
    hpas = objects(docs, "HorizontalPodAutoscaler")

    for name in deployments.keys() - CONTRACT.keys():
        problems.append(f"Deployment {name} is not a process of the contract")
    for name, (port, _) in CONTRACT.items():
        deployment = deployments.get(name)
        if deployment is None:
            problems.append(f"{name}: no Deployment")
            continue
        problems += deployment_problems(deployment, name)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]

        service = services.get(name)
        if service is None:
            problems.append(f"{name}: no Service")
        else:
            ports = service["spec"]["ports"]
            if [p["port"] for p in ports] != [port]:
                problems.append(f"{name}: Service port is not {port}")
            elif resolve_port(ports[0].get("targetPort", port), container) != port:
                problems.append(f"{name}: Service targetPort does not reach container port {port}")
            selector = service["spec"].get("selector") or {}
            if not selector or selector.items() - pod_labels.items():
                problems.append(f"{name}: Service selector does not match the pods")

        pdb = pdbs.get(name)
        if pdb is None or pdb["spec"]["selector"]["matchLabels"].items() - pod_labels.items():
            problems.append(f"{name}: no PodDisruptionBudget selecting its pods")
        hpa = hpas.get(name)
        target = (hpa or {}).get("spec", {}).get("scaleTargetRef", {})
        if (target.get("kind"), target.get("name")) != ("Deployment", name):
            problems.append(f"{name}: no HorizontalPodAutoscaler for the Deployment")

    database_secrets = [
        secret_ref(env_map(d["spec"]["template"]["spec"]["containers"][0]).get("DATABASE_URL"))
        for d in deployments.values()
    ]
    names = [ref["name"] for ref in database_secrets if ref]
    if len(names) != len(set(names)):
        problems.append("two services share a database Secret (each has its own role)")

    ingresses = objects(docs, "Ingress")
    backends = [
        path["backend"]["service"]
        for ingress in ingresses.values()
        for rule in ingress["spec"].get("rules", [])
        for path in rule["http"]["paths"]
    ]
    if not backends:
        problems.append("no Ingress for the gateway")
    for backend in backends:
        if backend["name"] != "gateway" or backend["port"].get("number") != CONTRACT["gateway"][0]:
            problems.append(f"Ingress routes to {backend}, only the gateway may be exposed")

    problems += migration_job_problems(objects(docs, "Job"), deployments)
    return problems


def migration_job_problems(jobs: dict[str, dict], deployments: dict[str, dict]) -> list[str]:
    migrations = [
        job
        for job in jobs.values()
        if job["spec"]["template"]["spec"]["containers"][0].get("command") == ["helpdesk", "migrate"]
    ]
    if len(migrations) != 1:
        return ["expected exactly one Job running `helpdesk migrate`"]
    spec = migrations[0]["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = env_map(container)
    problems = []
    if (secret_ref(env.get("DATABASE_URL")) or {}).get("name") != "helpdesk-db-admin":
        problems.append("migration Job: DATABASE_URL does not come from Secret helpdesk-db-admin")
    if not runs_as_non_root(spec, container):
        problems.append("migration Job: runAsNonRoot is not set")
    if "limits" not in (container.get("resources") or {}):
        problems.append("migration Job: no resource limits")
    # The role password the Job sets must be the one inside the service's DATABASE_URL Secret.
    for name in CONTRACT:
        password = secret_ref(env.get(f"HELPDESK_{name.upper()}_DB_PASSWORD"))
        deployment = deployments.get(name)
        if password is None or deployment is None:
            problems.append(f"migration Job: no HELPDESK_{name.upper()}_DB_PASSWORD from a Secret")
            continue
        service_env = env_map(deployment["spec"]["template"]["spec"]["containers"][0])
        if password["name"] != (secret_ref(service_env.get("DATABASE_URL")) or {}).get("name"):
            problems.append(f"migration Job: {name}'s password is not from the Secret its DATABASE_URL uses")
    return problems


def literal_secret_problems(docs: list[Any], source: str) -> list[str]:
    problems = []
    for doc in docs:
        kind = doc.get("kind") if isinstance(doc, dict) else None
        if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            problems.append(f"{source}: a Secret with values is committed")
        if kind == "ConfigMap":
            for key in doc.get("data") or {}:
                if is_secret_name(key):
                    problems.append(f"{source}: ConfigMap key {key} looks secret")
        for where, node in walk(doc):
            if isinstance(node, dict) and isinstance(node.get("name"), str) and is_secret_name(node["name"]):
                if "value" in node:
                    problems.append(f"{source}{where}: {node['name']} has a literal value")
                elif "valueFrom" in node and "secretKeyRef" not in node["valueFrom"]:
                    problems.append(f"{source}{where}: {node['name']} is not read from a Secret")
            if isinstance(node, str):
                for match in URL_CREDENTIALS.finditer(node):
                    if not INTERPOLATION.match(match.group(2)):
                        problems.append(f"{source}{where}: URL with a literal password")
    return problems


# ---------------------------------------------------------------------------- the contract


def test_contract_matches_the_process_table() -> None:
    assert {spec.name: (spec.port, spec.app_factory) for spec in STACK} == CONTRACT


# ---------------------------------------------------------------------------- kubernetes files


def test_manifests_exist() -> None:
    assert BASE / "kustomization.yaml" in KUSTOMIZATIONS
    assert OVERLAYS / "dev" / "kustomization.yaml" in KUSTOMIZATIONS
    assert OVERLAYS / "production" / "kustomization.yaml" in KUSTOMIZATIONS


@pytest.mark.parametrize("path", K8S_YAML, ids=lambda p: str(p.relative_to(K8S)))
def test_every_yaml_file_parses(path: Path) -> None:
    assert load_docs(path), f"{path} holds no YAML document"


@pytest.mark.parametrize("path", K8S_YAML, ids=lambda p: str(p.relative_to(K8S)))
def test_no_literal_secrets_in_manifests(path: Path) -> None:
    assert literal_secret_problems(load_docs(path), str(path.relative_to(REPO))) == []


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.parent.relative_to(K8S)))
def test_kustomization_lists_only_existing_files_and_every_file(path: Path) -> None:
    kustomization = load_docs(path)[0]
    folder = path.parent
    listed = [*kustomization.get("resources", []), *kustomization.get("components", [])]
    listed += [patch["path"] for patch in kustomization.get("patches", []) if "path" in patch]
    listed += kustomization.get("patchesStrategicMerge", [])
    for generator in kustomization.get("configMapGenerator", []) + kustomization.get("secretGenerator", []):
        listed += [entry.split("=")[-1] for entry in generator.get("files", []) + generator.get("envs", [])]
    assert listed, f"{path} lists nothing"
    for entry in listed:
        target = (folder / entry).resolve()
        assert target.exists(), f"{path}: {entry} does not exist"
        if target.is_dir():
            assert (target / "kustomization.yaml").exists(), f"{path}: {entry} is not a kustomization"
    # The other way round: no manifest in the folder that kustomize would silently skip.
    local = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    assert local <= {Path(entry).name for entry in listed if "/" not in entry}, f"{path}: unlisted files"


def test_base_has_every_process_with_probes_ports_security_and_scaling() -> None:
    assert platform_problems(base_docs()) == []


def test_base_has_namespace_and_configmap_without_secrets() -> None:
    docs = base_docs()
    assert "helpdesk" in objects(docs, "Namespace")
    config = objects(docs, "ConfigMap")["helpdesk-config"]["data"]
    assert {"HELPDESK_ENV", "NATS_URL", "HELPDESK_JWT_ISSUER", "HELPDESK_JWT_AUDIENCE"} <= config.keys()
    assert not [key for key in config if is_secret_name(key)]


def test_gateway_knows_every_upstream_by_its_contract_port() -> None:
    gateway = objects(base_docs(), "Deployment")["gateway"]
    env = env_map(gateway["spec"]["template"]["spec"]["containers"][0])
    for name, (port, _) in CONTRACT.items():
        if name != "gateway":
            assert env[f"HELPDESK_{name.upper()}_URL"]["value"] == f"http://{name}:{port}"


def _config_patch(overlay: str) -> dict:
    docs = load_docs(OVERLAYS / overlay / "config-patch.yaml")
    return objects(docs, "ConfigMap")["helpdesk-config"]["data"]


def test_production_overlay_runs_in_production_mode_with_replicated_streams() -> None:
    config = _config_patch("production")
    assert config["HELPDESK_ENV"] == "production"
    assert config["HELPDESK_NATS_STREAM_REPLICAS"] == "3"


def test_production_overlay_keeps_at_least_two_replicas() -> None:
    kustomization = load_docs(OVERLAYS / "production" / "kustomization.yaml")[0]
    patches = kustomization["patches"]
    hpa_patches = [p for p in patches if p.get("target", {}).get("kind") == "HorizontalPodAutoscaler"]
    assert hpa_patches and all("name" not in p["target"] for p in hpa_patches), "patch every HPA"
    ops = [op for p in hpa_patches for op in load_docs(OVERLAYS / "production" / p["path"])[0]]
    minimum = [op["value"] for op in ops if op["path"] == "/spec/minReplicas" and op["op"] != "remove"]
    assert minimum and min(minimum) >= 2
    # Replicas set on a Deployment (base or overlay) would fight the HPA and must not go below 2.
    explicit = {item["name"]: item["count"] for item in kustomization.get("replicas", [])}
    for name, deployment in objects(base_docs(), "Deployment").items():
        count = explicit.get(name, deployment["spec"].get("replicas"))
        assert count is None or count >= 2, f"{name}: {count} replicas in production"


# ---------------------------------------------------------------------------- rendered overlays


def _renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(overlay: str) -> list[Any]:
    command = _renderer()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    result = subprocess.run([*command, str(OVERLAYS / overlay)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


@pytest.fixture(scope="module", params=["dev", "production"])
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Any]]:
    return request.param, render(request.param)


def test_rendered_overlay_passes_every_platform_check(rendered: tuple[str, list[Any]]) -> None:
    overlay, docs = rendered
    assert platform_problems(docs) == []
    assert literal_secret_problems(docs, f"overlays/{overlay}") == []
    for doc in docs:
        if doc["kind"] not in ("Namespace",):
            assert doc["metadata"].get("namespace") == "helpdesk", f"{doc['kind']} {doc['metadata']['name']}"


def test_rendered_production_has_two_replicas_and_settings() -> None:
    docs = render("production")
    config = objects(docs, "ConfigMap")["helpdesk-config"]["data"]
    assert config["HELPDESK_ENV"] == "production"
    assert config["HELPDESK_NATS_STREAM_REPLICAS"] == "3"
    for name, hpa in objects(docs, "HorizontalPodAutoscaler").items():
        assert hpa["spec"]["minReplicas"] >= 2, name
    for name, deployment in objects(docs, "Deployment").items():
        assert deployment["spec"].get("replicas", 2) >= 2, name
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: unpinned image {image}"


# ---------------------------------------------------------------------------- docker compose


@pytest.fixture(scope="module")
def compose() -> dict:
    docs = load_docs(COMPOSE)
    assert len(docs) == 1
    return docs[0]


def test_compose_has_backing_servers_and_a_one_shot_migration(compose: dict) -> None:
    services = compose["services"]
    assert services["postgres"]["image"].startswith("postgres:16")
    nats = services["nats"]
    assert nats["image"].startswith("nats:2.10")
    assert "-js" in nats["command"]
    volume = nats["volumes"][0].split(":")[0]
    assert volume in (compose.get("volumes") or {}), "JetStream data needs a named volume"
    migrate = services["migrate"]
    assert migrate["command"] == ["helpdesk", "migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    user = URL_CREDENTIALS.search(migrate["environment"]["DATABASE_URL"]).group(1)
    assert user == "postgres", "migrations run with the admin URL"


@pytest.mark.parametrize("name", CONTRACT)
def test_compose_runs_each_process_from_the_one_image(compose: dict, name: str) -> None:
    port, factory = CONTRACT[name]
    service = compose["services"][name]
    assert service["image"] == compose["services"]["migrate"]["image"]
    assert service.get("build"), "built from the repository Dockerfile"
    env = service["environment"]
    assert env["APP"] == factory
    assert str(env["PORT"]) == str(port)
    assert URL_CREDENTIALS.search(env["DATABASE_URL"]).group(1) == f"helpdesk_{name}"
    assert "NATS_URL" in env and "HELPDESK_JWT_SECRET" in env
    assert "/readyz" in " ".join(service["healthcheck"]["test"])
    conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
    assert conditions["postgres"] == "service_healthy"
    assert conditions["nats"] == "service_healthy"
    assert conditions["migrate"] == "service_completed_successfully"


def test_compose_gateway_reaches_every_service(compose: dict) -> None:
    env = compose["services"]["gateway"]["environment"]
    for name, (port, _) in CONTRACT.items():
        if name != "gateway":
            assert env[f"HELPDESK_{name.upper()}_URL"] == f"http://{name}:{port}"


def test_compose_every_long_running_service_has_a_healthcheck(compose: dict) -> None:
    for name, service in compose["services"].items():
        if name != "migrate":
            assert service.get("healthcheck", {}).get("test"), name


def test_compose_takes_every_secret_from_the_environment(compose: dict) -> None:
    assert literal_secret_problems([compose], "docker-compose.yml") == []
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: use the mapping form"
        for key, value in environment.items():
            if is_secret_name(key) and "URL" not in key:
                assert value is None or INTERPOLATION.match(str(value)), f"{name}: literal {key}"
            if key.endswith("DATABASE_URL"):
                password = URL_CREDENTIALS.search(value).group(2)
                assert INTERPOLATION.match(password) and ":?" in password, f"{name}: {key} password"


# ---------------------------------------------------------------------------- image


def test_dockerfile_is_multi_stage_locked_and_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", dockerfile, re.M)) >= 2
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$|^FROM python:3\.11-slim", dockerfile, re.M)
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    command = re.findall(r"^CMD .*$", dockerfile, re.M)[-1]
    # The same serve entry as the local launcher (uvloop, httptools, graceful drain, exit 0).
    for flag in ("python -m libs.common.serve", "$APP", "$PORT", "--host 0.0.0.0"):
        assert flag in command


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".helpdesk", ".git", ".env"} <= ignored
