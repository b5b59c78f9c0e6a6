#!/usr/bin/env python3
"""Offline deployment checks (`make check-deploy`, run by `make test`).

No cluster and no Docker engine are needed: everything the deployment consists
of is checked as files, with the tools scripts/bootstrap.sh installs into
.dev/venv (PyPI wheels):

  render       `kubectl kustomize` renders infra/k8s/dev and infra/k8s/prod, and
               each of them with the optional component infra/k8s/components/ingress
  schemas      every render validates against the Kubernetes schemas, unknown
               fields rejected (`kubernetes-validate --strict`), for the oldest
               and the newest Kubernetes we support; the Gateway API resources
               against the CRDs in infra/schemas (also strict); a kind neither
               knows fails
  workflows    .github/workflows/*.yml pass actionlint (with shellcheck)
  dockerfile   Dockerfile.template passes hadolint
  fleet        every service in services/*/ has, in both overlays: its
               Deployment (probes on /readyz and /healthz, requests and limits,
               non-root, read-only root filesystem, no privilege escalation, a
               termination grace period), its ClusterIP Service if it has
               routes, its image in skaffold.yaml and in the deploy workflow,
               and its route: the Gateway's listeners and the HTTPRoute's
               rules, and the Ingress of the ingress component, equal
               infra/routes.json; every store image pinned to a version that
               the deploy workflow pins to its digest
  env          the environment of every Deployment matches what its binary
               reads (`<binary> --print-env`): every required variable is set,
               every variable set is one the binary reads; secrets come from
               jwt-secret / stripe-secret; in-cluster URLs name a Service that
               exists, with that port, backed by a StatefulSet with a volume
               claim; APP_ENV is development in dev and production in prod
  secrets      no Secret is committed under infra/k8s
  ha           everything is in the namespace ticketing; in prod NATS is a
               3-node JetStream cluster, every MongoDB a 3-member replica set
               with its initiation Job, every multi-replica workload has a
               PodDisruptionBudget and is spread over nodes, every HTTP service
               a HorizontalPodAutoscaler; every container has requests and limits
  network      the NetworkPolicies, evaluated on the rendered pods: default-deny,
               each service reaches only its own store, NATS if it uses the bus
               and DNS (payments also https outside), each store accepts only
               its own service (and its peers), the gateway only reaches the
               HTTP services
  checkov      checkov passes on every render, Dockerfile.template and the
               workflows, but for the checks in infra/checks/checkov-skips.yaml,
               each with its reason

Usage: check_deploy.py [--root DIR] [--bin-dir DIR]
  --root     the repository (default: the one this file is in)
  --bin-dir  where the service binaries are (default: <cargo target dir>/debug)

Prints one line per check and `check-deploy: N passed, N failed`; exits 1 if
any check failed, naming every problem.
"""

from __future__ import annotations

import argparse
import copy
import functools
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import yaml

OVERLAYS = ("dev", "prod")
# Each overlay is also rendered with this optional component (Ingress instead
# of, or beside, the Gateway): "<overlay>+ingress".
INGRESS_COMPONENT = "infra/k8s/components/ingress"
NAMESPACE = "ticketing"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_SCHEMAS = "infra/schemas/gateway-api-v1.6.1"
GATEWAY_NAME = "ticketing"
# The label a Gateway API implementation puts on the data-plane pods of a Gateway.
GATEWAY_POD_LABEL = "gateway.networking.k8s.io/gateway-name"
# In prod: NATS nodes and MongoDB members.
PROD_NATS_NODES = 3
PROD_MONGO_MEMBERS = 3
CHECKOV_SKIPS = "infra/checks/checkov-skips.yaml"
# APP_ENV each overlay must give every service.
APP_ENV = {"dev": "development", "prod": "production"}
# The oldest Kubernetes the manifests are for (preStop `sleep` needs 1.30), and
# the newest kubernetes-validate knows (its default).
KUBERNETES_VERSIONS = ("1.30.0", None)
# Variables that must come from a Secret: name -> (secret, key).
SECRET_ENV = {
    "JWT_KEY": ("jwt-secret", "JWT_KEY"),
    "STRIPE_KEY": ("stripe-secret", "STRIPE_KEY"),
    "STRIPE_WEBHOOK_SECRET": ("stripe-secret", "STRIPE_WEBHOOK_SECRET"),
}
# In-cluster URL schemes -> the image family of the StatefulSet behind them.
STORE_IMAGES = {"mongodb": "mongo", "nats": "nats", "redis": "redis"}
SKAFFOLD_MIN_SCHEMA = (4, "beta", 11)
IMAGE_PREFIX = "ticketing/"


class CheckFailed(Exception):
    """A check that cannot go on (a tool or a file is missing)."""


@dataclass
class Service:
    name: str  # the directory under services/
    binary: str  # the binary it builds (the one `--print-env` is asked)


@dataclass
class Context:
    root: Path
    bin_dir: Path | None = None
    renders: dict[str, list[dict]] = field(default_factory=dict)
    render_texts: dict[str, str] = field(default_factory=dict)
    # "<overlay>+ingress": the overlay with the ingress component
    variants: dict[str, list[dict]] = field(default_factory=dict)
    variant_texts: dict[str, str] = field(default_factory=dict)
    print_env: dict[str, dict[str, bool]] = field(default_factory=dict)


# --- helpers -----------------------------------------------------------------


# Tools with a venv of their own in .dev (their pins conflict with the others').
OWN_VENVS = {"checkov": "checkov"}


def tool(root: Path, name: str) -> str:
    """A tool from .dev/venv/bin (bootstrap.sh), else from PATH."""
    venv = OWN_VENVS.get(name, "venv")
    candidate = root / ".dev" / venv / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    # The repository under test may be a copy (the self-tests): use the tools
    # of the repository this file is in.
    own = Path(__file__).resolve().parents[2] / ".dev" / venv / "bin" / name
    if own.exists():
        return str(own)
    raise CheckFailed(f"{name} not found in .dev/{venv}/bin or on PATH: run `make bootstrap`")


def run(argv: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 120):
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def services(root: Path) -> list[Service]:
    """Every service in services/*/ (a directory with a Cargo.toml)."""
    found = []
    for manifest in sorted((root / "services").glob("*/Cargo.toml")):
        data = tomllib.loads(manifest.read_text())
        package = data.get("package", {}).get("name", manifest.parent.name)
        bins = [b.get("name") for b in data.get("bin", [])] or [package]
        binary = manifest.parent.name if manifest.parent.name in bins else bins[0]
        found.append(Service(manifest.parent.name, binary))
    if not found:
        raise CheckFailed(f"no services found in {root / 'services'}")
    return found


def routes(root: Path) -> dict:
    return json.loads((root / "infra" / "routes.json").read_text())


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def pod_spec(workload: dict) -> dict:
    return workload.get("spec", {}).get("template", {}).get("spec", {}) or {}


def main_container(deployment: dict, name: str) -> dict | None:
    containers = pod_spec(deployment).get("containers") or []
    for container in containers:
        if container.get("name") == name:
            return container
    return containers[0] if len(containers) == 1 else None


def named_port(container: dict, port) -> int | None:
    """A probe's or Service's port (a number or a port name) as a number."""
    if isinstance(port, int):
        return port
    for entry in container.get("ports") or []:
        if entry.get("name") == port:
            return entry.get("containerPort")
    return None


def image_name(image: str) -> str:
    """`ticketing/auth:abc` / `reg/x/auth@sha256:…` → without tag or digest."""
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        image = image[: len(image) - len(last)] + last.split(":", 1)[0]
    return image


def image_tag(image: str) -> str:
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else ""


# --- checks --------------------------------------------------------------------


def check_render(ctx: Context) -> list[str]:
    """`kubectl kustomize` renders both overlays, also with the ingress component."""
    kubectl = tool(ctx.root, "kubectl")
    problems = []
    for overlay in OVERLAYS:
        path = ctx.root / "infra" / "k8s" / overlay
        result = run([kubectl, "kustomize", str(path)])
        if result.returncode != 0:
            problems.append(f"infra/k8s/{overlay} does not render: {result.stderr.strip()}")
            continue
        ctx.render_texts[overlay] = result.stdout
        ctx.renders[overlay] = load_all(result.stdout)
        variant = f"{overlay}+ingress"
        with tempfile.TemporaryDirectory(prefix=".render-", dir=ctx.root / "infra" / "k8s") as tmp:
            # a kustomization beside the overlays: the overlay plus the component
            (Path(tmp) / "kustomization.yaml").write_text(
                "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
                f"resources:\n  - ../{overlay}\ncomponents:\n  - ../components/ingress\n"
            )
            result = run([kubectl, "kustomize", tmp])
        if result.returncode != 0:
            problems.append(f"infra/k8s/{overlay} with {INGRESS_COMPONENT} does not render: {result.stderr.strip()}")
            continue
        ctx.variant_texts[variant] = result.stdout
        ctx.variants[variant] = load_all(result.stdout)
    return problems


def variant_only(ctx: Context) -> dict[str, list[dict]]:
    """What each "<overlay>+ingress" render adds to or changes in its overlay's
    (the rest is checked with the overlay already)."""
    extra = {}
    for variant, docs in ctx.variants.items():
        base = ctx.renders.get(variant.split("+", 1)[0], [])
        extra[variant] = [d for d in docs if d not in base]
    return extra


def load_all(text: str) -> list[dict]:
    """The documents of a render (libyaml's parser where there is one: fast)."""
    return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d]


def ensure_rendered(ctx: Context):
    if set(ctx.renders) != set(OVERLAYS) or len(ctx.variants) != len(OVERLAYS):
        problems = check_render(ctx)
        if problems:
            raise CheckFailed("; ".join(problems))


def check_schemas(ctx: Context) -> list[str]:
    """The renders validate against the Kubernetes schemas, unknown fields rejected."""
    ensure_rendered(ctx)
    validate = tool(ctx.root, "kubernetes-validate")
    problems = []
    renders = {**ctx.renders, **variant_only(ctx)}
    schemas = gateway_api_schemas(ctx.root)
    for overlay, docs in renders.items():
        for doc in docs:
            if doc.get("apiVersion", "").split("/")[0] == GATEWAY_API_GROUP:
                problems += validate_custom(overlay, doc, schemas)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for overlay, docs in renders.items():
            paths[overlay] = Path(tmp) / overlay.replace("+", "-")
            built_in = [d for d in docs if d.get("apiVersion", "").split("/")[0] != GATEWAY_API_GROUP]
            paths[overlay].write_text(yaml.safe_dump_all(built_in, sort_keys=False))
        for version in KUBERNETES_VERSIONS:
            argv = [validate, "--strict", "--quiet", *map(str, paths.values())]
            if version:
                argv[1:1] = ["--kubernetes-version", version]
            result = run(argv)
            output = (result.stdout + result.stderr).strip()
            if result.returncode != 0 or "ERROR" in output or "Couldn't find schema" in output:
                for line in output.splitlines() or [f"kubernetes-validate: exit code {result.returncode}"]:
                    for overlay, path in paths.items():
                        line = line.replace(f"{path} ", f"{overlay}: infra/k8s/{overlay} ")
                    problems.append(line)
    return problems


def gateway_api_schemas(root: Path) -> dict[tuple[str, str], dict]:
    """{(apiVersion, kind): strict JSON schema} from the Gateway API CRDs."""
    directory = root / GATEWAY_API_SCHEMAS
    texts = tuple(path.read_text() for path in sorted(directory.glob("*.yaml")))
    return crd_schemas(texts)


@functools.lru_cache(maxsize=4)
def crd_schemas(texts: tuple[str, ...]) -> dict[tuple[str, str], dict]:
    schemas = {}
    for text in texts:
        for crd in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    schema = strict_schema(version["schema"]["openAPIV3Schema"])
                    schema["properties"]["metadata"] = OBJECT_META
                    schemas[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    if not schemas:
        raise CheckFailed(f"no CustomResourceDefinitions in {GATEWAY_API_SCHEMAS}")
    return schemas


# What a rendered object's metadata may hold (the CRDs say only `type: object`).
OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict_schema(schema):
    """A CRD's structural schema with unknown fields rejected, as the API
    server's strict field validation does (it would prune them otherwise)."""
    schema = copy.deepcopy(schema)

    def visit(node):
        if isinstance(node, dict):
            if (
                node.get("type") == "object"
                and "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            if node.get("nullable") and "type" in node:
                node["type"] = [node["type"], "null"]
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def validate_custom(overlay: str, doc: dict, schemas: dict) -> list[str]:
    key = (doc.get("apiVersion"), doc.get("kind"))
    where = f"{overlay}: {str(doc.get('kind')).lower()}/{(doc.get('metadata') or {}).get('name')}"
    schema = schemas.get(key)
    if schema is None:
        return [f"{where}: no schema for {key[0]} {key[1]} in {GATEWAY_API_SCHEMAS}"]
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{where}: {'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    ]


def check_workflows(ctx: Context) -> list[str]:
    """The workflows pass actionlint (which runs shellcheck on `run:` steps)."""
    actionlint = tool(ctx.root, "actionlint")
    workflows = sorted((ctx.root / ".github" / "workflows").glob("*.y*ml"))
    if not workflows:
        return ["no workflows in .github/workflows"]
    env = dict(os.environ)
    # shellcheck from the same venv
    env["PATH"] = f"{Path(actionlint).parent}{os.pathsep}{env.get('PATH', '')}"
    result = run(
        [actionlint, "-no-color", *[str(w.relative_to(ctx.root)) for w in workflows]],
        cwd=ctx.root,
        env=env,
    )
    if result.returncode != 0:
        lines = [l for l in (result.stdout + result.stderr).splitlines() if re.match(r"^\S.*:\d+:\d+: ", l)]
        return lines or [f"actionlint failed: {(result.stdout + result.stderr).strip()}"]
    return []


def check_dockerfile(ctx: Context) -> list[str]:
    """Dockerfile.template passes hadolint and builds one service by SERVICE."""
    dockerfile = ctx.root / "Dockerfile.template"
    if not dockerfile.exists():
        return ["Dockerfile.template is missing"]
    problems = []
    result = run([tool(ctx.root, "hadolint"), "--no-color", str(dockerfile)], cwd=ctx.root)
    if result.returncode != 0:
        problems += [f"hadolint: {l}" for l in (result.stdout + result.stderr).strip().splitlines()]
    text = dockerfile.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    if not re.search(r"^ARG SERVICE\b", text, flags=re.M):
        problems.append("Dockerfile.template: no `ARG SERVICE` (the service is chosen by that build argument)")
    if not re.search(r'--bin "?\$\{?SERVICE\}?"?', text):
        problems.append('Dockerfile.template: does not build `--bin "${SERVICE}"`')
    if "cargo chef cook" not in text:
        problems.append("Dockerfile.template: no cargo-chef dependency layer (`cargo chef cook`)")
    if not froms or not froms[-1].startswith("gcr.io/distroless/") or "nonroot" not in froms[-1]:
        problems.append(f"Dockerfile.template: the runtime image {froms[-1] if froms else None!r} is not distroless :nonroot")
    if not (ctx.root / ".dockerignore").exists():
        problems.append(".dockerignore is missing")
    else:
        patterns = dockerignore_patterns(ctx.root / ".dockerignore")
        for must in (".git", ".dev", "target"):
            if not docker_ignored(patterns, must):
                problems.append(f".dockerignore does not exclude {must}")
        for needed in build_inputs(ctx.root):
            if docker_ignored(patterns, needed):
                problems.append(f".dockerignore excludes {needed}, which the image build needs")
    return problems


def dockerignore_patterns(path: Path) -> list[tuple[bool, re.Pattern]]:
    """(exception?, regex) per line, as Docker reads .dockerignore."""
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        line = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(line):
            if line.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif line.startswith("**", i):
                regex += ".*"
                i += 2
            elif line[i] == "*":
                regex += "[^/]*"
                i += 1
            elif line[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(line[i])
                i += 1
        patterns.append((negated, re.compile(regex + r"\Z")))
    return patterns


def docker_ignored(patterns: list[tuple[bool, re.Pattern]], path: str) -> bool:
    """Whether Docker leaves `path` out of the context: the last pattern that
    matches the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, regex in patterns:
        if any(regex.match(c) for c in candidates):
            ignored = not negated
    return ignored


def build_inputs(root: Path) -> list[str]:
    """What `cargo build` in the image reads: the workspace manifests, every
    member's manifest and sources, and the files compiled in."""
    workspace = tomllib.loads((root / "Cargo.toml").read_text()) if (root / "Cargo.toml").exists() else {}
    inputs = ["Cargo.toml", "Cargo.lock", "infra/routes.json"]
    for member in workspace.get("workspace", {}).get("members", []):
        for path in sorted(root.glob(member)) or [root / member]:
            relative = path.relative_to(root).as_posix()
            inputs.append(f"{relative}/Cargo.toml")
            inputs += [f"{relative}/{d}" for d in ("src", "templates", "static") if (path / d).exists()]
    return inputs


def check_no_secrets(ctx: Context) -> list[str]:
    """No Secret in the renders, and no Secret manifest under infra/k8s."""
    ensure_rendered(ctx)
    problems = []
    for overlay in OVERLAYS:
        for name in by_kind(ctx.renders[overlay], "Secret"):
            problems.append(f"{overlay}: renders Secret {name}: secrets are created in the cluster, never committed")
    for path in sorted((ctx.root / "infra" / "k8s").rglob("*")):
        if path.suffix in (".yaml", ".yml") and re.search(r"^kind:\s*Secret\s*$", path.read_text(), flags=re.M):
            problems.append(f"{path.relative_to(ctx.root)} holds a Secret: never commit secrets")
        if path.name.startswith("kustomization") and "secretGenerator" in path.read_text():
            problems.append(f"{path.relative_to(ctx.root)} has a secretGenerator: never commit secrets")
    return problems


def read_print_env(ctx: Context) -> dict[str, dict[str, bool]]:
    """`<binary> --print-env` of every service: {name: required}."""
    if ctx.print_env:
        return ctx.print_env
    bin_dir = ctx.bin_dir
    if bin_dir is None:
        result = run(["cargo", "metadata", "--no-deps", "--format-version", "1"], cwd=ctx.root)
        if result.returncode != 0:
            raise CheckFailed(f"cargo metadata failed: {result.stderr.strip()}")
        bin_dir = Path(json.loads(result.stdout)["target_directory"]) / "debug"
    for service in services(ctx.root):
        binary = bin_dir / service.binary
        if not binary.exists():
            raise CheckFailed(f"{binary} not found: run `cargo build --workspace --bins` first")
        result = run([str(binary), "--print-env"], env={"PATH": os.environ.get("PATH", "")}, timeout=30)
        if result.returncode != 0:
            raise CheckFailed(f"{service.binary} --print-env failed ({result.returncode}): {result.stderr.strip()}")
        variables = {}
        for line in result.stdout.splitlines():
            match = re.fullmatch(r"([A-Z][A-Z0-9_]*) (required|optional)", line.strip())
            if not match:
                raise CheckFailed(f"{service.binary} --print-env printed {line!r}, not `NAME required|optional`")
            variables[match[1]] = variables.get(match[1], False) or match[2] == "required"
        if not variables:
            raise CheckFailed(f"{service.binary} --print-env printed no variables")
        ctx.print_env[service.name] = variables
    return ctx.print_env


def check_fleet(ctx: Context) -> list[str]:
    """Deployments, Services, the Gateway's routes, skaffold.yaml and the workflows cover every service."""
    ensure_rendered(ctx)
    table = routes(ctx.root)
    fleet = services(ctx.root)
    names = [s.name for s in fleet]
    problems = []

    # routes.json
    declared = set(table.get("services", {}))
    for name in names:
        if name not in declared:
            problems.append(f"infra/routes.json: service {name} (services/{name}) is not declared")
    for name in sorted(declared - set(names)):
        problems.append(f"infra/routes.json: declares {name}, which is not in services/")
    for route in table["routes"]:
        prefix = route["prefix"]
        expected = "/?(.*)" if prefix == "/" else f"{prefix}/?(.*)"
        if route["ingressPath"] != expected:
            problems.append(
                f"infra/routes.json: route {prefix} has ingressPath {route['ingressPath']!r}, "
                f"expected {expected!r} (the nginx regex that matches like the local ingress)"
            )
    routed = {r["service"] for r in table["routes"]}

    problems += check_skaffold(ctx, fleet)
    problems += check_deploy_workflow(ctx, names)

    for overlay in OVERLAYS:
        docs = ctx.renders[overlay]
        deployments = by_kind(docs, "Deployment")
        svcs = by_kind(docs, "Service")
        for name in sorted(set(deployments) - set(names)):
            problems.append(f"{overlay}: Deployment {name} is not a service in services/")
        for service in fleet:
            name = service.name
            port = table.get("services", {}).get(name, {}).get("containerPort")
            deployment = deployments.get(name)
            if deployment is None:
                problems.append(f"{overlay}: no Deployment {name} for services/{name}")
                continue
            problems += check_deployment(overlay, deployment, name, port)
            if name in routed:
                problems += check_service(overlay, svcs.get(name), deployment, name, port)
        problems += check_gateway(overlay, docs, table, svcs)
        problems += check_store_images(ctx, overlay, docs)
    for variant, docs in ctx.variants.items():
        problems += check_ingress(variant, docs, table, by_kind(docs, "Service"))
    return problems


def check_gateway(overlay: str, docs: list[dict], table: dict, svcs: dict[str, dict]) -> list[str]:
    """One Gateway for the host (http and https with a certificate) and
    HTTPRoutes whose rules are exactly the routes of infra/routes.json."""
    gateways = [d for d in docs if d.get("kind") == "Gateway"]
    if len(gateways) != 1:
        return [f"{overlay}: expected one Gateway, found {len(gateways)}"]
    gateway = gateways[0]
    name = gateway["metadata"]["name"]
    where = f"{overlay}: Gateway {name}"
    problems = []
    listeners = {l.get("name"): l for l in (gateway.get("spec") or {}).get("listeners") or []}
    for listener_name, port, protocol in (("http", 80, "HTTP"), ("https", 443, "HTTPS")):
        listener = listeners.get(listener_name)
        if listener is None:
            problems.append(f"{where}: no listener {listener_name} ({protocol} on {port})")
            continue
        if (listener.get("port"), listener.get("protocol"), listener.get("hostname")) != (port, protocol, table["host"]):
            problems.append(
                f"{where}: listener {listener_name} is {listener.get('protocol')} on {listener.get('port')} for "
                f"{listener.get('hostname')}, expected {protocol} on {port} for {table['host']}"
            )
        if protocol == "HTTPS" and not ((listener.get("tls") or {}).get("certificateRefs")):
            problems.append(f"{where}: listener https has no tls.certificateRefs (the site's certificate)")
    routes_ = [d for d in docs if d.get("kind") == "HTTPRoute"]
    if not routes_:
        return problems + [f"{overlay}: no HTTPRoute"]
    actual = []
    for route in routes_:
        rwhere = f"{overlay}: HTTPRoute {route['metadata']['name']}"
        spec = route.get("spec") or {}
        parents = {(p.get("name"), p.get("sectionName")) for p in spec.get("parentRefs") or []}
        for parent, section in sorted(parents, key=str):
            if parent != name or (section is not None and section not in listeners):
                problems.append(f"{rwhere}: parentRef {parent}/{section} is not a listener of Gateway {name}")
        if not ({(name, "http"), (name, "https")} <= parents or (name, None) in parents):
            problems.append(f"{rwhere}: parentRefs {sorted(parents, key=str)} do not attach it to both listeners of Gateway {name}")
        if spec.get("hostnames") != [table["host"]]:
            problems.append(f"{rwhere}: hostnames {spec.get('hostnames')}, expected [{table['host']}]")
        for rule in spec.get("rules") or []:
            backends = rule.get("backendRefs") or []
            matches = rule.get("matches") or []
            if len(backends) != 1 or len(matches) != 1 or set(matches[0]) != {"path"}:
                problems.append(f"{rwhere}: a rule must have one path match and one backend, has {matches} → {backends}")
                continue
            path, backend = matches[0]["path"], backends[0]
            if path.get("type") != "PathPrefix":
                problems.append(f"{rwhere}: match {path} is not a PathPrefix")
            target = backend.get("name")
            if service_port(svcs.get(target), {"number": backend.get("port")}) is None:
                problems.append(f"{rwhere}: {path.get('value')} → {target}:{backend.get('port')}, which is not a port of a Service {target}")
            actual.append((path.get("value"), target, backend.get("port")))
    ports = {n: s.get("containerPort") for n, s in table.get("services", {}).items()}
    expected = [(r["prefix"], r["service"], ports.get(r["service"])) for r in table["routes"]]
    for route in expected:
        if route not in actual:
            problems.append(f"{overlay}: no HTTPRoute rule PathPrefix {route[0]} → {route[1]}:{route[2]} (infra/routes.json)")
    for route in actual:
        if route not in expected:
            problems.append(f"{overlay}: HTTPRoute rule {route[0]} → {route[1]}:{route[2]} is not a route in infra/routes.json")
    return problems


def check_store_images(ctx: Context, overlay: str, docs: list[dict]) -> list[str]:
    """Every image that is not ours is pinned to an exact version, and the
    deploy workflow pins it to its digest (THIRD_PARTY_IMAGES)."""
    problems = []
    workflow = ctx.root / ".github" / "workflows" / "deploy.yml"
    data = yaml.safe_load(workflow.read_text()) if workflow.exists() else {}
    deploy_env = (((data or {}).get("jobs") or {}).get("deploy") or {}).get("env") or {}
    pinned = set(str(deploy_env.get("THIRD_PARTY_IMAGES", "")).split())
    for doc in docs:
        for container in pod_containers(doc):
            image = container.get("image", "")
            if image_name(image).startswith(IMAGE_PREFIX):
                continue
            where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
            if not re.fullmatch(r"\d+\.\d+\.\d+(-[a-z0-9]+)?", image_tag(image)):
                problems.append(f"{where}: image {image} is not pinned to an exact version (x.y.z)")
            if image.split("@", 1)[0] not in pinned:
                problems.append(
                    f"{where}: image {image} is not in THIRD_PARTY_IMAGES of deploy.yml's deploy job "
                    "(which pins it to its digest)"
                )
    return problems


def pod_containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def check_deployment(overlay: str, deployment: dict, name: str, port: int | None) -> list[str]:
    where = f"{overlay}: Deployment {name}"
    problems = []
    spec = pod_spec(deployment)
    container = main_container(deployment, name)
    if container is None:
        return [f"{where}: no container named {name}"]
    image = container.get("image", "")
    if image_name(image) != f"{IMAGE_PREFIX}{name}" or image_tag(image):
        problems.append(
            f"{where}: image {image!r}, expected {IMAGE_PREFIX}{name} (skaffold and the deploy workflow substitute it)"
        )
    ports = {p.get("containerPort") for p in container.get("ports") or []}
    if port not in ports:
        problems.append(f"{where}: does not expose containerPort {port} (infra/routes.json)")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (container.get(probe) or {}).get("httpGet") or {}
        if get.get("path") != path or named_port(container, get.get("port")) != port:
            problems.append(f"{where}: {probe} must be an httpGet of {path} on port {port}, is {container.get(probe)!r}")
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if not (resources.get(kind) or {}).get(resource):
                problems.append(f"{where}: no {resource} in resources.{kind}")
    pod_security = spec.get("securityContext") or {}
    security = container.get("securityContext") or {}
    if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True):
        problems.append(f"{where}: not runAsNonRoot")
    if security.get("readOnlyRootFilesystem") is not True:
        problems.append(f"{where}: readOnlyRootFilesystem is not true")
    if security.get("allowPrivilegeEscalation") is not False:
        problems.append(f"{where}: allowPrivilegeEscalation is not false")
    if not spec.get("terminationGracePeriodSeconds"):
        problems.append(f"{where}: no terminationGracePeriodSeconds (graceful termination)")
    return problems


def check_service(overlay: str, svc: dict | None, deployment: dict, name: str, port: int | None) -> list[str]:
    where = f"{overlay}: Service {name}"
    if svc is None:
        return [f"{overlay}: no Service {name} (it has routes in infra/routes.json)"]
    problems = []
    spec = svc.get("spec") or {}
    if spec.get("type", "ClusterIP") != "ClusterIP" or spec.get("clusterIP") == "None":
        problems.append(f"{where}: must be a ClusterIP Service")
    selector = spec.get("selector") or {}
    labels = (deployment["spec"]["template"].get("metadata") or {}).get("labels") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        problems.append(f"{where}: selector {selector} does not select the pods of Deployment {name} ({labels})")
    container = main_container(deployment, name) or {}
    if not any(named_port(container, p.get("targetPort", p.get("port"))) == port for p in spec.get("ports") or []):
        problems.append(f"{where}: no port targets containerPort {port}")
    return problems


def service_port(svc: dict | None, backend_port: dict) -> int | None:
    """The Service port an Ingress backend names (by number or by name)."""
    if svc is None:
        return None
    for p in (svc.get("spec") or {}).get("ports") or []:
        if backend_port.get("number") == p.get("port") or (
            backend_port.get("name") and backend_port.get("name") == p.get("name")
        ):
            return p.get("port")
    return None


def check_ingress(overlay: str, docs: list[dict], table: dict, svcs: dict[str, dict]) -> list[str]:
    """The Ingress of the ingress component: the paths of infra/routes.json."""
    ingresses = [d for d in docs if d.get("kind") == "Ingress"]
    if len(ingresses) != 1:
        return [f"{overlay}: expected one Ingress, found {len(ingresses)}"]
    ingress = ingresses[0]
    where = f"{overlay}: Ingress {ingress['metadata']['name']}"
    problems = []
    if ingress.get("apiVersion") != "networking.k8s.io/v1":
        problems.append(f"{where}: apiVersion {ingress.get('apiVersion')}, expected networking.k8s.io/v1")
    spec = ingress.get("spec") or {}
    if spec.get("ingressClassName") != "nginx":
        problems.append(f"{where}: ingressClassName is {spec.get('ingressClassName')!r}, expected nginx")
    annotations = ingress["metadata"].get("annotations") or {}
    if annotations.get("nginx.ingress.kubernetes.io/use-regex") != "true":
        problems.append(f"{where}: needs the annotation nginx.ingress.kubernetes.io/use-regex: \"true\"")
    rules = spec.get("rules") or []
    if [r.get("host") for r in rules] != [table["host"]]:
        problems.append(f"{where}: hosts {[r.get('host') for r in rules]}, expected one rule for {table['host']}")
    if spec.get("defaultBackend"):
        problems.append(f"{where}: has a defaultBackend; the catch-all route is the client's /?(.*)")
    actual = []
    for rule in rules:
        for path in (rule.get("http") or {}).get("paths") or []:
            backend = (path.get("backend") or {}).get("service") or {}
            if path.get("pathType") != "ImplementationSpecific":
                problems.append(f"{where}: path {path.get('path')} has pathType {path.get('pathType')}, expected ImplementationSpecific")
            name = backend.get("name")
            port = service_port(svcs.get(name), backend.get("port") or {})
            if port is None:
                problems.append(f"{where}: path {path.get('path')} → {name}:{backend.get('port')}, which is not a port of a Service {name}")
            actual.append((path.get("path"), name))
    expected = [(r["ingressPath"], r["service"]) for r in table["routes"]]
    for route in table["routes"]:
        if (route["ingressPath"], route["service"]) not in actual:
            problems.append(
                f"{where}: no path {route['ingressPath']} → {route['service']} "
                f"(the route {route['prefix']} → {route['service']} in infra/routes.json)"
            )
    for path, service in actual:
        if (path, service) not in expected:
            problems.append(f"{where}: path {path} → {service} is not a route in infra/routes.json")
    if not problems and actual != expected:
        problems.append(f"{where}: paths in order {actual}, infra/routes.json has {expected}")
    return problems


def check_skaffold(ctx: Context, fleet: list[Service]) -> list[str]:
    path = ctx.root / "skaffold.yaml"
    if not path.exists():
        return ["skaffold.yaml is missing"]
    config = yaml.safe_load(path.read_text()) or {}
    problems = []
    match = re.fullmatch(r"skaffold/v(\d+)(?:(alpha|beta)(\d+))?", str(config.get("apiVersion")))
    stage = {"alpha": 0, "beta": 1, None: 2}
    if not match or (int(match[1]), stage[match[2]], int(match[3] or 0)) < (
        SKAFFOLD_MIN_SCHEMA[0], stage[SKAFFOLD_MIN_SCHEMA[1]], SKAFFOLD_MIN_SCHEMA[2]
    ):
        problems.append(f"skaffold.yaml: apiVersion {config.get('apiVersion')!r} is older than skaffold/v4beta11")
    build = config.get("build") or {}
    if (build.get("local") or {}).get("push") is not False:
        problems.append("skaffold.yaml: build.local.push must be false (local cluster)")
    artifacts = {a.get("image"): a for a in build.get("artifacts") or []}
    for service in fleet:
        image = f"{IMAGE_PREFIX}{service.name}"
        artifact = artifacts.pop(image, None)
        if artifact is None:
            problems.append(f"skaffold.yaml: no artifact {image} for services/{service.name}")
            continue
        docker = artifact.get("docker") or {}
        if docker.get("dockerfile") != "Dockerfile.template" or artifact.get("context", ".") not in (".", "./"):
            problems.append(f"skaffold.yaml: {image} must build Dockerfile.template with context .")
        if (docker.get("buildArgs") or {}).get("SERVICE") != service.binary:
            problems.append(f"skaffold.yaml: {image} needs buildArgs SERVICE: {service.binary}")
    for image in artifacts:
        problems.append(f"skaffold.yaml: artifact {image} is not a service in services/")
    paths = ((config.get("manifests") or {}).get("kustomize") or {}).get("paths")
    if paths != ["infra/k8s/dev"]:
        problems.append(f"skaffold.yaml: manifests.kustomize.paths is {paths}, expected [infra/k8s/dev]")
    if "kubectl" not in (config.get("deploy") or {}):
        problems.append("skaffold.yaml: deploy.kubectl is missing")
    return problems


def check_deploy_workflow(ctx: Context, names: list[str]) -> list[str]:
    """deploy.yml builds every service's image and waits for every Deployment."""
    path = ctx.root / ".github" / "workflows" / "deploy.yml"
    if not path.exists():
        return [".github/workflows/deploy.yml is missing"]
    workflow = yaml.safe_load(path.read_text()) or {}
    jobs = workflow.get("jobs") or {}
    problems = []
    built = set(((jobs.get("build") or {}).get("strategy") or {}).get("matrix", {}).get("service") or [])
    if built != set(names):
        problems.append(f"deploy.yml: the build matrix builds {sorted(built)}, the services are {sorted(names)}")
    rolled = set(str(((jobs.get("deploy") or {}).get("env") or {}).get("SERVICES", "")).split())
    if rolled != set(names):
        problems.append(f"deploy.yml: the deploy job's SERVICES are {sorted(rolled)}, the services are {sorted(names)}")
    text = path.read_text()
    for needle in ("kubectl apply -k infra/k8s/prod", "rollout status", "kustomize edit set image",
                   "imagetools inspect", "@${digest}"):
        if needle not in text:
            problems.append(f"deploy.yml: no `{needle}`")
    return problems


def check_env(ctx: Context) -> list[str]:
    """Each Deployment's environment: required ⊆ set ⊆ read, and the values make sense."""
    ensure_rendered(ctx)
    table = routes(ctx.root)
    reads = read_print_env(ctx)
    problems = []
    for overlay in OVERLAYS:
        docs = ctx.renders[overlay]
        deployments = by_kind(docs, "Deployment")
        config_maps = by_kind(docs, "ConfigMap")
        for service in services(ctx.root):
            deployment = deployments.get(service.name)
            if deployment is None:
                continue  # check_fleet reports it
            container = main_container(deployment, service.name) or {}
            problems += check_container_env(
                overlay, service, container, reads[service.name], config_maps, docs,
                table.get("services", {}).get(service.name, {}).get("containerPort"),
            )
    return problems


def check_container_env(overlay, service, container, reads, config_maps, docs, port) -> list[str]:
    where = f"{overlay}: Deployment {service.name}"
    binary = service.binary
    problems = []
    if container.get("envFrom"):
        problems.append(f"{where}: envFrom hides which variables are set; list them under env")
    entries = container.get("env") or []
    names = [e.get("name") for e in entries]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{where}: env {name} is set twice")
    for name in sorted(n for n, required in reads.items() if required and n not in names):
        problems.append(f"{where}: env {name} is required by {binary} (`{binary} --print-env`) but not set")
    for name in [n for n in names if n not in reads]:
        problems.append(
            f"{where}: env {name} is set but {binary} does not read it "
            f"(`{binary} --print-env`: {', '.join(reads)})"
        )

    values = {}
    for entry in entries:
        name = entry.get("name")
        source = entry.get("valueFrom") or {}
        if "value" in entry:
            values[name] = str(entry["value"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = (config_maps.get(ref.get("name")) or {}).get("data") or {}
            if ref.get("key") in data:
                values[name] = str(data[ref["key"]])
            elif not ref.get("optional"):
                problems.append(f"{where}: env {name} refers to ConfigMap {ref.get('name')} key {ref.get('key')}, which is not rendered")
        if name in SECRET_ENV:
            secret, key = SECRET_ENV[name]
            ref = source.get("secretKeyRef") or {}
            if (ref.get("name"), ref.get("key")) != (secret, key) or ref.get("optional"):
                problems.append(f"{where}: env {name} must come from secret {secret} key {key}")

    if "APP_ENV" in reads and values.get("APP_ENV") != APP_ENV[overlay]:
        problems.append(f"{where}: APP_ENV is {values.get('APP_ENV')!r}, the {overlay} overlay runs {APP_ENV[overlay]!r}")
    if "PORT" in values and values["PORT"] != str(port):
        problems.append(f"{where}: PORT is {values['PORT']}, its containerPort is {port} (infra/routes.json)")

    services_by_name = by_kind(docs, "Service")
    statefulsets = list(by_kind(docs, "StatefulSet").values())
    for name, value in values.items():
        url = urlsplit(value)
        if url.scheme not in STORE_IMAGES:
            continue
        if url.scheme == "mongodb":
            problems += check_mongo_url(where, name, value, service.name, services_by_name, statefulsets)
            continue
        problems += check_store_url(where, name, value, url, services_by_name, statefulsets, service.name)
    if "NATS_STREAM_REPLICAS" in reads and "NATS_URL" in values:
        nats = by_kind(docs, "StatefulSet").get("nats") or {}
        nodes = (nats.get("spec") or {}).get("replicas", 1)
        replicas = values.get("NATS_STREAM_REPLICAS", "1")
        if replicas != str(nodes):
            problems.append(
                f"{where}: NATS_STREAM_REPLICAS is {replicas}, NATS runs {nodes} node(s): "
                "the stream must be kept on every node"
            )
    return problems


def check_mongo_url(where, name, value, service_name, services_by_name, statefulsets) -> list[str]:
    """MONGO_URI names the service's own database: its standalone server, or
    every member of its replica set, the set, and majority write concern."""
    db = f"{service_name}-mongo"
    problems = []
    match = re.fullmatch(r"mongodb://([^/?]+)/([^?]*)(?:\?(.*))?", value)
    if not match:
        return [f"{where}: {name} is {value!r}, not a mongodb:// URL"]
    hosts = match[1].split(",")
    params = dict(p.split("=", 1) for p in (match[3] or "").split("&") if "=" in p)
    if match[2] != service_name:
        problems.append(f"{where}: {name} is {value!r}: database {match[2]!r}, expected its own {service_name!r}")
    statefulset = next((s for s in statefulsets if s["metadata"]["name"] == db), None)
    if statefulset is None or db not in services_by_name:
        return problems + [f"{where}: {name} is {value!r}: no StatefulSet and Service {db} (its own MongoDB)"]
    members = statefulset["spec"].get("replicas", 1)
    container = (pod_spec(statefulset).get("containers") or [{}])[0]
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    repl_set = args[args.index("--replSet") + 1] if "--replSet" in args[:-1] else None
    if repl_set is None:
        expected = f"mongodb://{db}:27017/{service_name}"
        if value != expected:
            problems.append(f"{where}: {name} is {value!r}, expected {expected!r} (its own MongoDB and database)")
    else:
        expected_hosts = [f"{db}-{i}.{db}:27017" for i in range(members)]
        if sorted(hosts) != expected_hosts:
            problems.append(f"{where}: {name} names {hosts}, expected every member of the replica set: {expected_hosts}")
        if params.get("replicaSet") != repl_set:
            problems.append(f"{where}: {name} has replicaSet={params.get('replicaSet')}, the set is {repl_set!r}")
        if params.get("w") != "majority":
            problems.append(f"{where}: {name} does not ask for majority write concern (w=majority)")
    problems += check_store_url(where, name, f"mongodb://{db}:27017/{service_name}", urlsplit(f"mongodb://{db}:27017"),
                                services_by_name, statefulsets, service_name)
    return problems


def check_store_url(where, name, value, url, services_by_name, statefulsets, service_name) -> list[str]:
    """An in-cluster store URL names a Service with that port, backed by a
    StatefulSet of the right image that keeps its data on a volume claim."""
    problems = []
    host, port = url.hostname, url.port
    svc = services_by_name.get(host or "")
    if svc is None:
        return problems + [f"{where}: {name} points at {host}, which is not a Service in the render"]
    if not any(p.get("port") == port for p in (svc.get("spec") or {}).get("ports") or []):
        problems.append(f"{where}: {name} uses port {port}, which Service {host} does not expose")
    selector = (svc.get("spec") or {}).get("selector") or {}
    backing = [
        s for s in statefulsets
        if selector and all((s["spec"]["template"].get("metadata") or {}).get("labels", {}).get(k) == v for k, v in selector.items())
    ]
    if len(backing) != 1:
        return problems + [f"{where}: {name} → Service {host} is not backed by exactly one StatefulSet"]
    statefulset = backing[0]
    sts = f"StatefulSet {statefulset['metadata']['name']}"
    spec = statefulset["spec"]
    container = (spec["template"]["spec"].get("containers") or [{}])[0]
    image = container.get("image", "")
    family = STORE_IMAGES[url.scheme]
    if image_name(image).rsplit("/", 1)[-1] != family:
        problems.append(f"{where}: {name} → {sts} runs {image}, expected a {family} image")
    args = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    if family == "mongo" and image_tag(image).split("-")[0].split(".")[0] != "7":
        problems.append(f"{sts}: image {image}, expected mongo:7")
    if family == "redis":
        if image_tag(image).split("-")[0].split(".")[0] != "7":
            problems.append(f"{sts}: image {image}, expected redis:7")
        if "--appendonly" not in args or args[args.index("--appendonly") + 1 : args.index("--appendonly") + 2] != ["yes"]:
            problems.append(f"{sts}: Redis without --appendonly yes loses scheduled expirations on restart")
    if family == "nats":
        version = re.match(r"(\d+)\.(\d+)", image_tag(image))
        if not version or (int(version[1]), int(version[2])) < (2, 10):
            problems.append(f"{sts}: image {image}, expected nats:2.10 or newer")
        if not {"-js", "--jetstream"} & set(args):
            problems.append(f"{sts}: NATS without -js (JetStream)")
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates") or []}
    mounts = {m.get("name"): m.get("mountPath") for m in container.get("volumeMounts") or []}
    if not claims or not claims & set(mounts):
        problems.append(f"{sts}: its data is not on a volume claim (volumeClaimTemplates mounted in the container)")
    if family == "nats" and "--store_dir" in args:
        store = args[args.index("--store_dir") + 1] if args.index("--store_dir") + 1 < len(args) else ""
        if not any(store == p or store.startswith(p.rstrip("/") + "/") for n, p in mounts.items() if n in claims):
            problems.append(f"{sts}: the JetStream store {store} is not on a volume claim")
    return problems


# --- high availability ---------------------------------------------------------

WORKLOAD_KINDS = ("Deployment", "StatefulSet")
CLUSTER_SCOPED = {"Namespace"}


def check_ha(ctx: Context) -> list[str]:
    """The namespace, and in prod a data plane that survives losing a node."""
    ensure_rendered(ctx)
    problems = []
    for overlay, docs in {**ctx.renders, **ctx.variants}.items():
        names = [d["metadata"]["name"] for d in docs if d.get("kind") == "Namespace"]
        if names != [NAMESPACE]:
            problems.append(f"{overlay}: renders the Namespace(s) {names}, expected exactly {NAMESPACE}")
        for doc in docs:
            if doc.get("kind") not in CLUSTER_SCOPED and doc["metadata"].get("namespace") != NAMESPACE:
                problems.append(f"{overlay}: {doc['kind']} {doc['metadata']['name']} is not in the namespace {NAMESPACE}")
            for container in pod_containers(doc):
                resources = container.get("resources") or {}
                for kind in ("requests", "limits"):
                    for resource in ("cpu", "memory"):
                        if not (resources.get(kind) or {}).get(resource):
                            problems.append(
                                f"{overlay}: {doc['kind']} {doc['metadata']['name']} container {container.get('name')}: "
                                f"no {resource} in resources.{kind}"
                            )
        problems += check_disruption(overlay, docs)
    problems += check_prod_data_plane(ctx, ctx.renders["prod"])
    return problems


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions) selects `labels`.
    An absent selector selects nothing, an empty one everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def template_labels(doc: dict) -> dict:
    return ((doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}


def check_disruption(overlay: str, docs: list[dict]) -> list[str]:
    """Every workload of several replicas: a PodDisruptionBudget that lets at
    most one go at a time, spread over nodes (hard for StatefulSets of a
    quorum), and an HPA for HTTP services in prod is checked elsewhere."""
    problems = []
    pdbs = by_kind(docs, "PodDisruptionBudget").values()
    for doc in docs:
        if doc.get("kind") not in WORKLOAD_KINDS or (doc.get("spec") or {}).get("replicas", 1) < 2:
            continue
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        labels = template_labels(doc)
        budgets = [p for p in pdbs if selects((p.get("spec") or {}).get("selector"), labels)]
        if len(budgets) != 1:
            problems.append(f"{where}: runs {doc['spec']['replicas']} replicas but has {len(budgets)} PodDisruptionBudgets (expected 1)")
        elif budgets[0]["spec"].get("maxUnavailable") != 1:
            problems.append(f"{where}: its PodDisruptionBudget must have maxUnavailable: 1")
        spec = pod_spec(doc)
        by_node = [
            c for c in spec.get("topologySpreadConstraints") or []
            if c.get("topologyKey") == "kubernetes.io/hostname" and selects(c.get("labelSelector"), labels)
        ]
        anti = [
            t for t in ((spec.get("affinity") or {}).get("podAntiAffinity") or {}).get(
                "requiredDuringSchedulingIgnoredDuringExecution") or []
            if t.get("topologyKey") == "kubernetes.io/hostname" and selects(t.get("labelSelector"), labels)
        ]
        if doc["kind"] == "StatefulSet" and not anti:
            problems.append(f"{where}: no required podAntiAffinity on kubernetes.io/hostname (two members on one node lose the quorum with it)")
        if doc["kind"] == "Deployment" and not by_node and not anti:
            problems.append(f"{where}: not spread over nodes (topologySpreadConstraints on kubernetes.io/hostname)")
    return problems


def check_prod_data_plane(ctx: Context, docs: list[dict]) -> list[str]:
    problems = []
    statefulsets = by_kind(docs, "StatefulSet")
    services_ = by_kind(docs, "Service")
    # NATS: a JetStream cluster of PROD_NATS_NODES, each naming all the routes
    nats = statefulsets.get("nats")
    if nats is None:
        problems.append("prod: no StatefulSet nats")
    else:
        spec = nats["spec"]
        container = (pod_spec(nats).get("containers") or [{}])[0]
        args = [str(a) for a in container.get("args") or []]
        if spec.get("replicas") != PROD_NATS_NODES:
            problems.append(f"prod: StatefulSet nats runs {spec.get('replicas')} node(s), expected a cluster of {PROD_NATS_NODES}")
        if "--cluster" not in args or "--cluster_name" not in args:
            problems.append("prod: StatefulSet nats: no --cluster / --cluster_name (not a cluster)")
        routes_arg = args[args.index("--routes") + 1] if "--routes" in args[:-1] else ""
        expected = {f"nats://nats-{i}.nats:6222" for i in range(spec.get("replicas") or 0)}
        if set(routes_arg.split(",")) != expected:
            problems.append(f"prod: StatefulSet nats: --routes {routes_arg!r}, expected every node: {sorted(expected)}")
        if "--name" not in args or "$(POD_NAME)" not in args:
            problems.append("prod: StatefulSet nats: every node needs its own stable --name $(POD_NAME)")
        if not spec.get("volumeClaimTemplates"):
            problems.append("prod: StatefulSet nats: no volume claim per node")
        svc = services_.get("nats") or {}
        if not any(p.get("port") == 6222 for p in (svc.get("spec") or {}).get("ports") or []):
            problems.append("prod: Service nats does not expose the cluster port 6222")
    # MongoDB: replica sets with their initiation Job
    jobs = by_kind(docs, "Job")
    for name, statefulset in sorted(statefulsets.items()):
        container = (pod_spec(statefulset).get("containers") or [{}])[0]
        if image_name(container.get("image", "")).rsplit("/", 1)[-1] != "mongo":
            continue
        args = [str(a) for a in container.get("args") or []]
        if statefulset["spec"].get("replicas") != PROD_MONGO_MEMBERS:
            problems.append(f"prod: StatefulSet {name} runs {statefulset['spec'].get('replicas')} member(s), expected a replica set of {PROD_MONGO_MEMBERS}")
        repl_set = args[args.index("--replSet") + 1] if "--replSet" in args[:-1] else None
        if repl_set != name:
            problems.append(f"prod: StatefulSet {name}: no --replSet {name}")
        job = jobs.get(f"{name}-init")
        script = " ".join(str(a) for c in pod_containers(job or {}) for a in (c.get("command") or []) + (c.get("args") or []))
        if job is None or "rs.initiate" not in script or "NotYetInitialized" not in script:
            problems.append(f"prod: no Job {name}-init that initiates the replica set {name} once (rs.initiate unless initiated)")
        else:
            for i in range(statefulset["spec"].get("replicas") or 0):
                if f"{name}-{i}.{name}:27017" not in script:
                    problems.append(f"prod: Job {name}-init does not name the member {name}-{i}.{name}:27017")
        if not ((services_.get(name) or {}).get("spec") or {}).get("publishNotReadyAddresses"):
            problems.append(f"prod: Service {name}: publishNotReadyAddresses must be true (members find each other before they are ready)")
    # HPAs for the HTTP services
    hpas = {((h.get("spec") or {}).get("scaleTargetRef") or {}).get("name"): h for h in by_kind(docs, "HorizontalPodAutoscaler").values()}
    for route in {r["service"] for r in routes(ctx.root)["routes"]}:
        hpa = hpas.get(route)
        if hpa is None:
            problems.append(f"prod: no HorizontalPodAutoscaler for Deployment {route}")
        elif (hpa["spec"].get("minReplicas") or 1) < 2:
            problems.append(f"prod: HorizontalPodAutoscaler {hpa['metadata']['name']}: minReplicas must be 2 or more")
    for name, deployment in by_kind(docs, "Deployment").items():
        if (deployment.get("spec") or {}).get("replicas", 1) < 2:
            problems.append(f"prod: Deployment {name} runs one replica: losing its node stops it")
    return problems


# --- network policies ------------------------------------------------------------

# Who else is on the network, besides the rendered pods: (name, namespace, labels, ip).
CLUSTER_DNS = ("kube-dns", "kube-system", {"k8s-app": "kube-dns"}, "10.96.0.10")
GATEWAY_POD = ("gateway", NAMESPACE, {GATEWAY_POD_LABEL: GATEWAY_NAME}, "10.244.9.1")
INGRESS_CONTROLLER = ("ingress-nginx-controller", "ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"}, "10.244.9.2")
STRIPE = ("stripe (outside the cluster)", None, None, "54.187.174.169")


@dataclass
class Pod:
    name: str
    namespace: str | None
    labels: dict | None  # None: not a pod (an address outside the cluster)
    ip: str
    ports: dict = field(default_factory=dict)  # port name -> number


def network_pods(docs: list[dict], with_ingress_controller: bool) -> list[Pod]:
    found = []
    for i, doc in enumerate(d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "Job")):
        ports = {p.get("name"): p.get("containerPort") for c in pod_containers(doc) for p in c.get("ports") or [] if p.get("name")}
        found.append(Pod(doc["metadata"]["name"], doc["metadata"].get("namespace"), template_labels(doc), f"10.244.1.{i + 1}", ports))
    extra = [CLUSTER_DNS, GATEWAY_POD, STRIPE] + ([INGRESS_CONTROLLER] if with_ingress_controller else [])
    found += [Pod(name, ns, labels, ip) for name, ns, labels, ip in extra]
    return found


def peer_matches(peer: dict, policy_ns: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        address = ipaddress.ip_address(pod.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        ) and pod.labels is None  # pod IPs are 10.244/16: only outside addresses are meant
    if pod.labels is None:
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace}):
            return False
    elif pod.namespace != policy_ns:
        return False
    return selects(peer.get("podSelector", {}), pod.labels)


def port_matches(ports: list[dict] | None, target: Pod, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        if entry.get("protocol", "TCP") != protocol:
            continue
        value = entry.get("port")
        if value is None or value == port or (isinstance(value, str) and target.ports.get(value) == port):
            return True
    return False


def allowed(policies: list[dict], source: Pod, target: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether `source` may open a connection to `target`:port under the policies."""
    def side(pod: Pod, direction: str) -> list[dict] | None:
        if pod.labels is None:
            return None  # outside the cluster: no policy of ours applies
        chosen = [
            p for p in policies
            if p["metadata"].get("namespace") == pod.namespace
            and selects((p.get("spec") or {}).get("podSelector", {}), pod.labels)
            and direction in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
        ]
        return chosen or None

    egress = side(source, "Egress")
    if egress is not None and not any(
        (not rule.get("to") or any(peer_matches(peer, p["metadata"].get("namespace"), target) for peer in rule["to"]))
        and port_matches(rule.get("ports"), target, port, protocol)
        for p in egress for rule in p["spec"].get("egress") or []
    ):
        return False
    ingress = side(target, "Ingress")
    if ingress is not None and not any(
        (not rule.get("from") or any(peer_matches(peer, p["metadata"].get("namespace"), source) for peer in rule["from"]))
        and port_matches(rule.get("ports"), target, port, protocol)
        for p in ingress for rule in p["spec"].get("ingress") or []
    ):
        return False
    return True


def check_network(ctx: Context) -> list[str]:
    """NetworkPolicies: default-deny, then only what each piece needs."""
    ensure_rendered(ctx)
    table = routes(ctx.root)
    reads = read_print_env(ctx)
    fleet = [s.name for s in services(ctx.root)]
    routed = {r["service"] for r in table["routes"]}
    ports = {n: s.get("containerPort") for n, s in table.get("services", {}).items()}
    problems = []
    for overlay, docs in {**ctx.renders, **ctx.variants}.items():
        policies = list(by_kind(docs, "NetworkPolicy").values())
        if not any(
            (p["spec"].get("podSelector") or {}) == {} and set(p["spec"].get("policyTypes") or []) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")
            for p in policies
        ):
            problems.append(f"{overlay}: no default-deny NetworkPolicy (every pod, Ingress and Egress, no rules)")
        with_controller = overlay.endswith("+ingress")
        pods = network_pods(docs, with_controller)
        by_name = {p.name: p for p in pods}
        gateway = by_name[GATEWAY_POD[0]]
        stripe = by_name[STRIPE[0]]
        dns = by_name[CLUSTER_DNS[0]]
        entry = [gateway] + ([by_name[INGRESS_CONTROLLER[0]]] if with_controller else [])
        # the stores: StatefulSets, by their port
        stores = {}
        for doc in by_kind(docs, "StatefulSet").values():
            container = (pod_spec(doc).get("containers") or [{}])[0]
            family = image_name(container.get("image", "")).rsplit("/", 1)[-1]
            store_port = {"mongo": 27017, "redis": 6379, "nats": 4222}.get(family)
            if store_port:
                stores[doc["metadata"]["name"]] = (family, store_port)
        for store, (family, store_port) in sorted(stores.items()):
            target = by_name[store]
            if family == "nats":
                expected = {s for s in fleet if "NATS_URL" in reads.get(s, {})}
            elif family == "mongo":
                owner = store.removesuffix("-mongo")
                expected = {owner, store} | ({f"{store}-init"} if f"{store}-init" in by_name else set())
            else:
                expected = {store.split("-")[0], store}
            # a pod of a set stands for all of them: `store` → itself is a peer's link
            actual = {p.name for p in pods if allowed(policies, p, target, store_port)}
            if family != "mongo":
                expected.discard(store)
            for name in sorted(actual - expected):
                problems.append(f"{overlay}: {name} may reach {store}:{store_port}, which only {', '.join(sorted(expected))} may")
            for name in sorted(expected - actual):
                problems.append(f"{overlay}: {name} cannot reach {store}:{store_port}")
        if "nats" in stores and by_name["nats"].ports.get("cluster"):
            nats = by_name["nats"]
            if not allowed(policies, nats, nats, 6222):
                problems.append(f"{overlay}: the NATS nodes cannot reach each other on the cluster port 6222")
            others = [p.name for p in pods if p is not nats and allowed(policies, p, nats, 6222)]
            if others:
                problems.append(f"{overlay}: {', '.join(others)} may reach the NATS cluster port 6222")
        for name in fleet:
            pod = by_name.get(name)
            if pod is None:
                continue
            port = ports.get(name)
            sources = {p.name for p in pods if p is not pod and allowed(policies, p, pod, port)}
            expected = {p.name for p in entry} if name in routed else set()
            for source in sorted(sources - expected):
                problems.append(f"{overlay}: {source} may reach {name}:{port}" + (", only the gateway may" if name in routed else ""))
            for source in sorted(expected - sources):
                problems.append(f"{overlay}: {source} cannot reach {name}:{port}")
            if allowed(policies, pod, stripe, 443) != (name == "payments"):
                problems.append(f"{overlay}: {name} {'cannot' if name == 'payments' else 'may'} reach https outside the cluster"
                                + (" (Stripe)" if name == "payments" else ", which only payments (Stripe) may"))
        for pod in pods:
            if pod.labels is not None and pod.namespace == NAMESPACE and not allowed(policies, pod, dns, 53, "UDP"):
                problems.append(f"{overlay}: {pod.name} cannot ask the cluster DNS (kube-dns, UDP 53)")
        for target in pods:
            if target.labels is None or target.namespace != NAMESPACE or target.name in routed:
                continue
            for port in sorted(set(target.ports.values())):
                if allowed(policies, gateway, target, port):
                    problems.append(f"{overlay}: the gateway may reach {target.name}:{port}, it must reach only the HTTP services")
        if "client" in by_name and not any(allowed(policies, by_name["client"], p, 80) for p in entry):
            problems.append(f"{overlay}: the client cannot reach the APIs through the gateway (port 80)")
    return problems


# --- checkov -------------------------------------------------------------------------


def checkov_skips(root: Path) -> tuple[dict[str, str], list[str]]:
    path = root / CHECKOV_SKIPS
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    problems = []
    if not isinstance(data, dict):
        return {}, [f"{CHECKOV_SKIPS} is missing or not a mapping of check id → reason"]
    for check_id, reason in data.items():
        if not re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", str(check_id)):
            problems.append(f"{CHECKOV_SKIPS}: {check_id!r} is not a checkov check id")
        if not isinstance(reason, str) or len(reason.split()) < 4 or "\n" in reason.strip():
            problems.append(f"{CHECKOV_SKIPS}: {check_id} needs a one-line reason")
    return data, problems


def check_checkov(ctx: Context) -> list[str]:
    """checkov finds nothing in the renders, Dockerfile.template and the workflows but the justified skips."""
    ensure_rendered(ctx)
    checkov = tool(ctx.root, "checkov")
    skips, problems = checkov_skips(ctx.root)
    with tempfile.TemporaryDirectory() as tmp:
        scan = Path(tmp)
        for overlay, text in ctx.render_texts.items():
            (scan / f"{overlay}.yaml").write_text(text)
        for variant, docs in variant_only(ctx).items():
            (scan / f"{variant.replace('+', '-')}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        # checkov knows a Dockerfile by its name
        shutil.copy2(ctx.root / "Dockerfile.template", scan / "Dockerfile")
        workflows = scan / ".github" / "workflows"
        shutil.copytree(ctx.root / ".github" / "workflows", workflows)
        argv = [checkov, "--directory", str(scan), "--framework", "kubernetes", "dockerfile", "github_actions",
                "--output", "json", "--quiet", "--compact", "--skip-download"]
        if skips:
            argv += ["--skip-check", ",".join(skips)]
        env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
        result = run(argv, env=env, timeout=600)
        try:
            reports = json.loads(result.stdout)
        except json.JSONDecodeError:
            return problems + [f"checkov did not report (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-2000:]}"]
        if isinstance(reports, dict):
            reports = [reports]
        seen = set()
        for report in reports:
            for failed in (report.get("results") or {}).get("failed_checks") or []:
                resource = failed.get("resource", "")
                file = str(failed.get("file_path", "")).lstrip("/")
                seen.add(failed["check_id"])
                problems.append(f"checkov {failed['check_id']} {file} {resource}: {failed.get('check_name')}")
    return problems


CHECKS = [
    ("render", check_render),
    ("schemas", check_schemas),
    ("workflows", check_workflows),
    ("dockerfile", check_dockerfile),
    ("secrets", check_no_secrets),
    ("fleet", check_fleet),
    ("env", check_env),
    ("ha", check_ha),
    ("network", check_network),
    ("checkov", check_checkov),
]


def run_checks(ctx: Context, names: list[str] | None = None, out=sys.stdout) -> list[tuple[str, list[str]]]:
    results = []
    for name, check in CHECKS:
        if names and name not in names:
            continue
        try:
            problems = check(ctx)
        except CheckFailed as error:
            problems = [str(error)]
        doc = (check.__doc__ or "").strip().splitlines()[0]
        print(f"check-deploy: {name:<10} {'ok' if not problems else 'FAILED'}  {doc}", file=out)
        for problem in problems:
            print(f"    - {problem}", file=out)
        results.append((name, problems))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--bin-dir", type=Path)
    parser.add_argument("checks", nargs="*", help=f"only these: {', '.join(n for n, _ in CHECKS)}")
    args = parser.parse_args(argv)
    ctx = Context(root=args.root.resolve(), bin_dir=args.bin_dir)
    results = run_checks(ctx, args.checks)
    failed = sum(1 for _, problems in results if problems)
    print(f"check-deploy: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
