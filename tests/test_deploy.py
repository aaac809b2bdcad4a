"""The deployment files (deploy/kubernetes/*.yaml, compose.yaml, Dockerfile) against the code.

No docker or kubectl runs here: every manifest is parsed with PyYAML and cross-checked with
what jwtmcp really accepts and serves, so that a renamed flag, variable, port or route makes
a test fail instead of a deployment. What is checked (docs/deploying-replicas.md):

- every ``JWTMCP_*`` variable set exists in the code; every ``jwtmcp`` command line (the
  containers' ``command``/``args`` after the Dockerfile's entrypoint, ``sh -c`` scripts
  included) is accepted by the real argparse parser of ``jwtmcp/cli.py``;
- the issuer's ``--port`` = its containerPort = the Service's targetPort = the probes'
  port; the probe path is a route the issuer app serves (GET on a real server on loopback),
  and it answers 200 while degraded, which the probes rely on;
- 3 replicas, a PodDisruptionBudget of minAvailable 2 selecting the Deployment's pods;
- the Redis URL's host and port = the Redis Service's name and port = redis-server's port,
  and jwtmcp's own store parser accepts the URL;
- every Secret/ConfigMap referenced (and its keys) exists; non-root, read-only root
  filesystem, no privilege escalation, resource requests;
- compose.yaml: the same variables, flags and ports, healthchecks on a real route.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import re
import shlex
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import jwt
import pytest
import yaml

import jwtmcp
from jwtmcp.cli import build_parser
from jwtmcp.clients import add_client
from jwtmcp.issuer import create_app
from jwtmcp.keys import init_ring, rotate_ring
from jwtmcp.server import ENV_PREFIX, ServerLimits
from jwtmcp.store import open_store
from tests.custody_support import AWS_TEST_ENV, moto_server
from tests.support import serve_app

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE_FILE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

Doc = dict[str, Any]


# --- reading the files ----------------------------------------------------------------------


def k8s_documents() -> list[Doc]:
    """Every Kubernetes object in deploy/kubernetes/*.yaml (the kustomization excluded)."""
    docs: list[Doc] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_object(kind: str, name: str) -> Doc:
    found = [d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name} in {K8S_DIR}, found {len(found)}"
    return found[0]


def compose() -> Doc:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) per Dockerfile instruction, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_entrypoint() -> list[str]:
    entry = [rest for word, rest in dockerfile_instructions() if word == "ENTRYPOINT"]
    assert len(entry) == 1, "the Dockerfile needs exactly one ENTRYPOINT"
    value = json.loads(entry[0])
    assert isinstance(value, list)
    return [str(v) for v in value]


def compose_value(text: str) -> str:
    """A compose.yaml string after compose's interpolation: ``${NAME:-default}`` with its
    default (the test environment sets none of them), ``$$`` as ``$``."""
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", text)
    assert not re.search(r"(?<!\$)\$\{", text), f"a compose variable without a default: {text}"
    return text.replace("$$", "$")


# --- what the code knows ----------------------------------------------------------------------


def code_env_names() -> set[str]:
    """The ``JWTMCP_*`` variables jwtmcp reads: every string constant of the package that is
    exactly such a name (docstrings aside), and ServerLimits' ``JWTMCP_<FIELD>`` names."""
    names = {ENV_PREFIX + f.name.upper() for f in fields(ServerLimits)}
    for path in (ROOT / "jwtmcp").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = set()
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                docstrings.add(id(body[0].value))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and re.fullmatch(r"JWTMCP_[A-Z0-9_]+", node.value)
            ):
                names.add(node.value)
    return names


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """``argv`` (after ``jwtmcp``) through the real parser; a refusal fails with its message."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"jwtmcp refuses {shlex.join(argv)}: {stderr.getvalue().strip()}")


def jwtmcp_invocations(argv: list[str]) -> list[list[str]]:
    """Every ``jwtmcp`` command line in a container's argv: the argv itself, or the
    commands of an ``sh -c`` script (split at ``&&``, ``||``, ``;`` and ``|``)."""
    if argv and Path(argv[0]).name == "jwtmcp":
        return [argv[1:]]
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        found = []
        for line in argv[2].splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token in ("&&", "||", ";", "|", "&"):
                    if command and Path(command[0]).name == "jwtmcp":
                        found.append(command[1:])
                    command = []
                else:
                    command.append(token)
        return found
    return []


def container_argv(container: Doc, *, compose_service: bool = False) -> list[str]:
    """What a container runs: its entrypoint (the Dockerfile's for the jwtmcp image unless
    overridden) followed by its command/args, in Kubernetes' or compose's terms."""
    if compose_service:
        entry, cmd = container.get("entrypoint"), container.get("command")
    else:
        entry, cmd = container.get("command"), container.get("args")
    image = str(container.get("image", ""))
    if entry is None:
        entry = dockerfile_entrypoint() if image.startswith("jwtmcp:") else []
    out = [str(v) for v in [*entry, *(cmd or [])]]
    return [compose_value(v) for v in out] if compose_service else out


# --- the Kubernetes issuer ----------------------------------------------------------------


def issuer_deployment() -> Doc:
    return k8s_object("Deployment", "jwtmcp-issuer")


def pod_spec(workload: Doc) -> Doc:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def issuer_container() -> Doc:
    serving = [
        c
        for c in pod_spec(issuer_deployment())["containers"]
        if any(inv[:1] == ["serve"] for inv in jwtmcp_invocations(container_argv(c)))
    ]
    assert len(serving) == 1, "the Deployment needs one container running `jwtmcp serve`"
    return serving[0]


def serve_args() -> argparse.Namespace:
    (argv,) = [
        a for a in jwtmcp_invocations(container_argv(issuer_container())) if a[:1] == ["serve"]
    ]
    return parse_cli(argv)


def container_port(container: Doc, port: int | str) -> int:
    """A port given by number or by the name of one of the container's ports."""
    for entry in container.get("ports", []):
        if port in (entry["containerPort"], entry.get("name")):
            return int(entry["containerPort"])
    pytest.fail(f"container {container['name']} has no port {port!r}")


def selects(selector: Doc, labels: Doc) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_values(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def expand_k8s_env(container: Doc, name: str, **values: str) -> str:
    """``$(VAR)`` references in the value of ``name`` replaced by ``values`` (Kubernetes
    expands only variables defined earlier in the list)."""
    earlier: list[str] = []
    for entry in container.get("env", []):
        if entry["name"] == name:
            text = str(entry.get("value", ""))
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", text):
                assert ref in earlier, f"{name} refers to $({ref}), not defined before it"
                text = text.replace(f"$({ref})", values.get(ref, "x"))
            return text
        earlier.append(entry["name"])
    pytest.fail(f"container {container['name']} does not set {name}")


@pytest.fixture(scope="module")
def issuer_app_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The real issuer app on loopback over a fresh ring, re-reading its files at every
    request; (its URL, the ring directory)."""
    where = tmp_path_factory.mktemp("deploy")
    init_ring(where / "keys")
    (where / "clients.json").write_text('{"version": 1, "clients": {}}\n')
    app = create_app(
        issuer_url="https://auth.example.com",
        keys_dir=where / "keys",
        clients_file=where / "clients.json",
        store=where / "state.db",
        reload_interval=0,
    )
    with serve_app(app) as url:
        yield url, where / "keys"


def test_manifests_parse_and_name_their_kind() -> None:
    docs = k8s_documents()
    assert docs, f"no manifests in {K8S_DIR}"
    for doc in docs:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files, "kustomization.yaml must list every manifest file"


def test_k8s_environment_names_exist_in_the_code() -> None:
    known = code_env_names()
    for workload in k8s_documents():
        if workload["kind"] not in ("Deployment", "StatefulSet", "CronJob", "Job"):
            continue
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            used = {e["name"] for e in container.get("env", [])}
            unknown = {n for n in used if n.startswith("JWTMCP_")} - known
            assert not unknown, f"{workload['metadata']['name']}: jwtmcp reads no {unknown}"


def test_k8s_jwtmcp_command_lines_are_accepted_by_the_cli() -> None:
    seen = 0
    for workload in k8s_documents():
        if workload["kind"] not in ("Deployment", "StatefulSet", "CronJob", "Job"):
            continue
        spec = pod_spec(workload)
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for argv in jwtmcp_invocations(container_argv(container)):
                parse_cli(argv)
                seen += 1
    assert seen >= 1


def test_k8s_issuer_runs_three_replicas_listening_on_all_interfaces() -> None:
    assert issuer_deployment()["spec"]["replicas"] == 3
    args = serve_args()
    assert args.host == "0.0.0.0"
    assert urlsplit(args.issuer).scheme == "https"


def test_k8s_container_port_is_the_serve_port() -> None:
    ports = [p["containerPort"] for p in issuer_container()["ports"]]
    assert ports == [serve_args().port]


def test_k8s_service_target_port_is_the_serve_port() -> None:
    deployment = issuer_deployment()
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [
        s
        for s in k8s_documents()
        if s["kind"] == "Service" and selects(s["spec"]["selector"], labels)
    ]
    assert len(services) == 1, "one Service must select the issuer's pods"
    for port in services[0]["spec"]["ports"]:
        assert container_port(issuer_container(), port["targetPort"]) == serve_args().port


def test_k8s_probes_use_the_serve_port() -> None:
    container = issuer_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert container_port(container, get["port"]) == serve_args().port, probe


def test_k8s_probe_path_is_served_by_the_issuer(issuer_app_url: tuple[str, Path]) -> None:
    url, _ = issuer_app_url
    container = issuer_container()
    probes = ("startupProbe", "readinessProbe", "livenessProbe")
    paths = {container[p]["httpGet"]["path"] for p in probes if p in container}
    for path in paths:
        answer = httpx2.get(url + path, timeout=10)
        assert answer.status_code == 200, path
        assert answer.json()["status"] == "ok", path


def test_probe_path_answers_200_while_the_issuer_is_degraded(
    issuer_app_url: tuple[str, Path],
) -> None:
    # The liveness probe must not restart a replica whose ring failed to reload: it keeps
    # serving the last good ring, and a restart would fail on the broken file.
    url, keys = issuer_app_url
    path = issuer_container()["livenessProbe"]["httpGet"]["path"]
    state = keys / "ring.json"
    good = state.read_text()
    state.write_text("{not json")
    try:
        answer = httpx2.get(url + path, timeout=10)
        assert answer.json()["status"] == "degraded"
        assert answer.status_code == 200
    finally:
        state.write_text(good)


def test_k8s_pdb_keeps_two_of_the_issuer_pods() -> None:
    deployment = issuer_deployment()
    pdbs = [d for d in k8s_documents() if d["kind"] == "PodDisruptionBudget"]
    assert len(pdbs) == 1
    spec = pdbs[0]["spec"]
    assert spec["minAvailable"] == 2
    assert spec["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert selects(
        spec["selector"]["matchLabels"], deployment["spec"]["template"]["metadata"]["labels"]
    )


def test_k8s_deployment_selector_matches_its_pods() -> None:
    deployment = issuer_deployment()
    assert selects(
        deployment["spec"]["selector"]["matchLabels"],
        deployment["spec"]["template"]["metadata"]["labels"],
    )


def redis_server_port(argv: list[str]) -> int:
    """The ``--port`` redis-server is started with in a container's argv or script."""
    words = shlex.split(" ".join(argv[2:]) if argv[:2] == ["sh", "-c"] else " ".join(argv))
    assert "redis-server" in words, f"no redis-server in {argv}"
    after = words[words.index("redis-server") :]
    assert "--port" in after, "start redis-server with an explicit --port"
    return int(after[after.index("--port") + 1])


def test_k8s_redis_url_names_the_redis_service_and_port() -> None:
    url = expand_k8s_env(issuer_container(), "JWTMCP_STORE", REDIS_PASSWORD="pw")
    parts = urlsplit(url)
    assert parts.scheme in ("redis", "rediss")
    service = k8s_object("Service", str(parts.hostname))
    ports = [p for p in service["spec"]["ports"] if p["port"] == (parts.port or 6379)]
    assert len(ports) == 1, f"Service {parts.hostname} has no port {parts.port}"
    (redis,) = [
        w
        for w in k8s_documents()
        if w["kind"] in ("StatefulSet", "Deployment")
        and selects(service["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"])
    ]
    (container,) = pod_spec(redis)["containers"]
    target = container_port(container, ports[0]["targetPort"])
    assert target == redis_server_port(container_argv(container))


def test_k8s_redis_url_is_accepted_by_the_store() -> None:
    url = expand_k8s_env(issuer_container(), "JWTMCP_STORE", REDIS_PASSWORD="pw")
    open_store(url).close()  # parses the URL; connects only on first use


def test_k8s_secrets_and_config_maps_referenced_exist_with_their_keys() -> None:
    def keys_of(kind: str, name: str) -> set[str]:
        obj = k8s_object(kind, name)
        return set(obj.get("data") or {}) | set(obj.get("stringData") or {})

    for workload in k8s_documents():
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = pod_spec(workload)
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                keys_of("Secret", volume["secret"]["secretName"])
            if "configMap" in volume:
                keys_of("ConfigMap", volume["configMap"]["name"])
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in keys_of("Secret", ref["name"]), entry["name"]
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    keys_of("Secret", source["secretRef"]["name"])
            mounted = {m["name"] for m in container.get("volumeMounts", [])}
            assert mounted <= {v["name"] for v in spec.get("volumes", [])} | {
                t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])
            }


def test_k8s_issuer_files_are_laid_out_by_the_init_container() -> None:
    # The issuer locks beside clients.json/users.json and may write registration.key: its
    # paths must be on a writable emptyDir that the init container fills from the mounts.
    spec = pod_spec(issuer_deployment())
    env = env_values(issuer_container())
    mounts = {m["mountPath"]: m["name"] for m in issuer_container()["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    script = "\n".join(
        " ".join(c.get("command", []) + c.get("args", [])) for c in spec["initContainers"]
    )
    sources = {
        m["mountPath"]: volumes[m["name"]]
        for c in spec["initContainers"]
        for m in c["volumeMounts"]
    }
    wanted = {
        env["JWTMCP_KEYS"] + "/ring.json": ("configMap", "ring.json"),
        env["JWTMCP_KEYS"] + "/registration.key": ("secret", "registration.key"),
        env["JWTMCP_CLIENTS"]: ("secret", "clients.json"),
        env["JWTMCP_USERS"]: ("secret", "users.json"),
    }
    for path, (kind, key) in wanted.items():
        (mount,) = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
        assert "emptyDir" in volumes[mounts[mount]], f"{path} is not on a writable emptyDir"
        match = re.search(rf"(\S+) {re.escape(path)}\n", script + "\n")
        assert match, f"the init container does not create {path}"
        source = match.group(1)
        (src_mount,) = [m for m in sources if source.startswith(m.rstrip("/") + "/")]
        volume = sources[src_mount]
        assert kind in volume, f"{source} is not from a {kind}"
        name = volume[kind].get("name") or volume[kind].get("secretName")
        k8s_kind = "ConfigMap" if kind == "configMap" else "Secret"
        obj = k8s_object(k8s_kind, name)
        assert source.endswith("/" + key)
        assert key in set(obj.get("data") or {}) | set(obj.get("stringData") or {})


def test_k8s_containers_run_non_root_read_only_without_escalation() -> None:
    for workload in k8s_documents():
        if workload["kind"] not in ("Deployment", "StatefulSet"):
            continue
        spec = pod_spec(workload)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert container["resources"]["requests"], container["name"]


def test_k8s_issuer_runs_as_the_dockerfile_user_with_the_package_version() -> None:
    (user,) = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    uid = int(user.split(":")[0])
    spec = pod_spec(issuer_deployment())
    assert spec["securityContext"]["runAsUser"] == uid
    for container in [*spec["initContainers"], *spec["containers"]]:
        assert container["image"] == f"jwtmcp:{jwtmcp.__version__}", container["name"]


# --- the Dockerfile -----------------------------------------------------------------------


def test_dockerfile_installs_extras_that_exist() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    runs = " ".join(rest for word, rest in dockerfile_instructions() if word == "RUN")
    (wanted,) = re.findall(r"pip install '\.\[([a-z0-9,-]+)\]'", runs)
    assert {"redis", "kms"} <= set(wanted.split(","))
    assert set(wanted.split(",")) <= set(extras)


def test_dockerfile_runs_jwtmcp_serve_as_a_non_root_user_on_the_served_port() -> None:
    instructions = dockerfile_instructions()
    (user,) = [rest for word, rest in instructions if word == "USER"]
    assert int(user.split(":")[0]) != 0
    (cmd,) = [json.loads(rest) for word, rest in instructions if word == "CMD"]
    args = parse_cli(cmd)
    assert args.func.__name__ == "cmd_serve"
    (exposed,) = [int(rest) for word, rest in instructions if word == "EXPOSE"]
    assert exposed == args.port == serve_args().port
    env_names = set(
        re.findall(
            r"\b(JWTMCP_[A-Z0-9_]+)=",
            " ".join(rest for word, rest in instructions if word == "ENV"),
        )
    )
    assert env_names <= code_env_names()


# --- compose.yaml -------------------------------------------------------------------------


def compose_services() -> dict[str, Doc]:
    services = compose()["services"]
    assert isinstance(services, dict)
    return services


def compose_issuers() -> dict[str, Doc]:
    return {
        name: s
        for name, s in compose_services().items()
        if any(
            a[:1] == ["serve"] for a in jwtmcp_invocations(container_argv(s, compose_service=True))
        )
    }


def compose_serve_args(service: Doc) -> argparse.Namespace:
    (argv,) = [
        a
        for a in jwtmcp_invocations(container_argv(service, compose_service=True))
        if a[:1] == ["serve"]
    ]
    return parse_cli(argv)


def compose_env(service: Doc) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: compose_value(str(v)) for k, v in env.items()}


def test_compose_runs_several_issuer_replicas_from_the_dockerfile() -> None:
    issuers = compose_issuers()
    assert len(issuers) >= 2
    for name, service in issuers.items():
        assert service.get("build") == ".", f"{name} must build the Dockerfile at the top"
    assert len({compose_serve_args(s).issuer for s in issuers.values()}) == 1, (
        "every replica must name the same issuer URL"
    )


def test_compose_environment_names_exist_in_the_code() -> None:
    known = code_env_names()
    for name, service in compose_services().items():
        unknown = {n for n in compose_env(service) if n.startswith("JWTMCP_")} - known
        assert not unknown, f"{name}: jwtmcp reads no {unknown}"


def test_compose_jwtmcp_command_lines_are_accepted_by_the_cli() -> None:
    seen = 0
    for service in compose_services().values():
        for argv in jwtmcp_invocations(container_argv(service, compose_service=True)):
            parse_cli(argv)
            seen += 1
    assert seen >= 3


def test_compose_issuers_use_the_kubernetes_variables_and_flags() -> None:
    k8s_names = {n for n in env_values(issuer_container()) if n.startswith("JWTMCP_")}
    k8s_args = serve_args()
    for name, service in compose_issuers().items():
        names = {n for n in compose_env(service) if n.startswith("JWTMCP_")}
        # the connection limit is for the ingress controller in front, which compose lacks
        assert names == k8s_names - {"JWTMCP_MAX_CONNECTIONS_PER_CLIENT"}, name
        args = compose_serve_args(service)
        assert (args.host, args.port) == (k8s_args.host, k8s_args.port), name
        assert compose_env(service)["JWTMCP_KEYS"] == env_values(issuer_container())["JWTMCP_KEYS"]


def test_compose_published_ports_reach_the_serve_port() -> None:
    for name, service in compose_issuers().items():
        port = compose_serve_args(service).port
        published = [str(p).rsplit(":", 1)[-1] for p in service.get("ports", [])]
        assert published == [str(port)], name


def test_compose_healthchecks_get_a_served_path_on_the_serve_port(
    issuer_app_url: tuple[str, Path],
) -> None:
    url, _ = issuer_app_url
    for name, service in compose_issuers().items():
        check = " ".join(service["healthcheck"]["test"])
        (target,) = re.findall(r"http://[^'\"\s]+", check)
        parts = urlsplit(target)
        assert parts.port == compose_serve_args(service).port, name
        assert httpx2.get(url + parts.path, timeout=10).status_code == 200, name


def test_compose_redis_url_names_the_redis_service_and_port() -> None:
    services = compose_services()
    for name, service in compose_issuers().items():
        url = compose_env(service)["JWTMCP_STORE"]
        parts = urlsplit(url)
        assert parts.hostname in services, f"{name}: no service {parts.hostname}"
        redis = services[str(parts.hostname)]
        assert redis_server_port(container_argv(redis, compose_service=True)) == parts.port
        open_store(url).close()
        password = compose_env(redis)["REDIS_PASSWORD"]
        assert parts.password == password, f"{name}: the Redis password differs"


def test_compose_keys_init_writes_the_ring_the_issuers_read() -> None:
    services = compose_services()
    inits = [
        (name, a)
        for name, s in services.items()
        for a in jwtmcp_invocations(container_argv(s, compose_service=True))
        if a[:2] == ["keys", "init"]
    ]
    assert len(inits) == 1
    name, argv = inits[0]
    args = parse_cli(argv)
    for issuer, service in compose_issuers().items():
        assert compose_env(service)["JWTMCP_KEYS"] == args.keys, issuer
        assert service["depends_on"][name]["condition"] == "service_completed_successfully"
    assert args.backend == "kms"
    endpoint = urlsplit(args.kms_endpoint_url)
    kms = services[str(endpoint.hostname)]
    command = [str(c) for c in kms["command"]]
    assert int(command[command.index("-p") + 1]) == endpoint.port


def test_compose_healthchecks_exist_for_every_long_running_service() -> None:
    for name, service in compose_services().items():
        if service.get("restart") == "no":
            continue
        assert service.get("healthcheck", {}).get("test"), name


# --- the pod's file layout, run for real ------------------------------------------------------


def publish(volume: Path, files: dict[str, bytes], mode: int) -> None:
    """Write ``files`` into ``volume`` as the kubelet does for a ConfigMap or Secret: a new
    hidden directory, the ``..data`` symlink renamed over to it, one ``name -> ..data/name``
    symlink per key. A second call is an update of the object."""
    stamp = volume / f"..{len(list(volume.glob('..[0-9]*')))}"
    stamp.mkdir(parents=True)
    for name, body in files.items():
        (stamp / name).write_bytes(body)
        (stamp / name).chmod(mode)
    (volume / "..data_tmp").symlink_to(stamp.name)
    (volume / "..data_tmp").replace(volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")


def test_k8s_layout_serves_a_kms_ring_and_picks_up_a_rotated_config_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The init container's own script, re-rooted under tmp_path, over ConfigMap and Secret
    # volumes written as the kubelet writes them; then the issuer on those paths signs with
    # KMS (moto on loopback) and, after the ConfigMap is updated with a rotated ring, signs
    # with the new active key without a restart.

    for name, value in AWS_TEST_ENV.items():
        monkeypatch.setenv(name, value)
    spec = pod_spec(issuer_deployment())
    (init,) = spec["initContainers"]
    argv = container_argv(init)
    assert argv[:2] == ["sh", "-c"]
    root = tmp_path / "pod"
    script = argv[2].replace("/etc/jwtmcp/", f"{root}/etc/jwtmcp/")
    script = script.replace("/var/lib/jwtmcp", f"{root}/var/lib/jwtmcp")
    env = {
        k: v.replace("/var/lib/jwtmcp", f"{root}/var/lib/jwtmcp")
        for k, v in env_values(issuer_container()).items()
    }
    mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    (ring_volume,) = [n for n in mounts if "configMap" in volumes[n]]
    (files_volume,) = [n for n in mounts if "secret" in volumes[n]]

    private = tmp_path / "operator"  # the operator's private copy
    with moto_server(tmp_path / "moto.log") as (endpoint, _):
        init_ring(private / "ring", backend="kms", backend_settings={"endpoint_url": endpoint})
        _, secret = add_client(
            private / "clients.json", "svc", tools=["*"], audiences=["https://mcp.example/mcp"]
        )
        publish(
            Path(f"{root}{mounts[ring_volume]}"),
            {"ring.json": (private / "ring" / "ring.json").read_bytes()},
            volumes[ring_volume]["configMap"]["defaultMode"],
        )
        publish(
            Path(f"{root}{mounts[files_volume]}"),
            {
                "registration.key": b"A" * 43 + b"\n",
                "clients.json": (private / "clients.json").read_bytes(),
                "users.json": b'{"version": 1, "users": {}}\n',
            },
            volumes[files_volume]["secret"]["defaultMode"],
        )
        (root / "var/lib/jwtmcp").mkdir(parents=True)  # the emptyDir
        subprocess.run(["sh", "-c", script], check=True, timeout=30)
        app = create_app(
            issuer_url="https://auth.example.com",
            keys_dir=env["JWTMCP_KEYS"],
            clients_file=env["JWTMCP_CLIENTS"],
            users_file=env["JWTMCP_USERS"],
            store=tmp_path / "state.db",
            reload_interval=0,
        )
        form = {"grant_type": "client_credentials", "resource": "https://mcp.example/mcp"}
        with serve_app(app) as url:
            health = httpx2.get(url + "/healthz", timeout=10).json()
            assert (health["status"], health["client_count"]) == ("ok", 1)
            first = health["active_kid"]
            answer = httpx2.post(url + "/token", data=form, auth=("svc", secret), timeout=30)
            assert answer.status_code == 200, answer.text

            ring = rotate_ring(private / "ring")
            publish(
                Path(f"{root}{mounts[ring_volume]}"),
                {"ring.json": (private / "ring" / "ring.json").read_bytes()},
                volumes[ring_volume]["configMap"]["defaultMode"],
            )
            health = httpx2.get(url + "/healthz", timeout=10).json()
            assert health["status"] == "ok"
            assert (health["active_kid"], health["ring_revision"]) == (ring.active.kid, 2)
            assert ring.active.kid != first
            answer = httpx2.post(url + "/token", data=form, auth=("svc", secret), timeout=30)
            token = answer.json()["access_token"]
            assert jwt.get_unverified_header(token)["kid"] == ring.active.kid


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (``512Mi``) or a redis-server size (``384mb``) in bytes."""
    units = {"ki": 1024, "mi": 1024**2, "gi": 1024**3, "kb": 1024, "mb": 1024**2, "gb": 1024**3,
             "k": 1000, "m": 1000**2, "g": 1000**3}
    text = quantity.strip().lower()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * units[unit])
    return int(text)


def test_k8s_redis_refuses_writes_before_its_container_is_oom_killed() -> None:
    """``noeviction`` only acts under a ``maxmemory``: without one Redis grows until the
    container's memory limit OOM-kills it, and with AOF on it replays the same data into the
    same limit (a crash loop: every sign-in down). With a maxmemory below the limit a full
    Redis refuses writes, which the issuer answers with 503 + Retry-After."""
    (redis,) = [w for w in k8s_documents() if w["kind"] == "StatefulSet"]
    (container,) = pod_spec(redis)["containers"]
    argv = container_argv(container)
    words = shlex.split(" ".join(argv[2:]) if argv[:2] == ["sh", "-c"] else " ".join(argv))
    after = words[words.index("redis-server") :]
    assert after[after.index("--maxmemory-policy") + 1] == "noeviction"
    assert "--maxmemory" in after, "redis-server needs --maxmemory for noeviction to act"
    maxmemory = _bytes(after[after.index("--maxmemory") + 1])
    limit = _bytes(container["resources"]["limits"]["memory"])
    # Headroom for the AOF rewrite's fork (copy-on-write) and Redis's own overhead.
    assert 0 < maxmemory <= 0.8 * limit, (maxmemory, limit)
