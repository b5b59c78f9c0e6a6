#!/usr/bin/env python3
"""Offline deployment checks (`make check-deploy`, run by `make test`).

No cluster and no Docker engine are needed: everything the deployment consists
of is checked as files, with the tools scripts/bootstrap.sh installs into
.dev/venv (PyPI wheels):

  render       `kubectl kustomize` renders infra/k8s/dev and infra/k8s/prod
  schemas      both renders validate against the Kubernetes schemas, unknown
               fields rejected (`kubernetes-validate --strict`), for the oldest
               and the newest Kubernetes we support
  workflows    .github/workflows/*.yml pass actionlint (with shellcheck)
  dockerfile   Dockerfile.template passes hadolint
  fleet        every service in services/*/ has, in both overlays: its
               Deployment (probes on /readyz and /healthz, requests and limits,
               non-root, read-only root filesystem, no privilege escalation, a
               termination grace period), its ClusterIP Service if it has
               routes, its image in skaffold.yaml and in the deploy workflow,
               and its ingress route: the Ingress paths and backends equal
               infra/routes.json
  env          the environment of every Deployment matches what its binary
               reads (`<binary> --print-env`): every required variable is set,
               every variable set is one the binary reads; secrets come from
               jwt-secret / stripe-secret; in-cluster URLs name a Service that
               exists, with that port, backed by a StatefulSet with a volume
               claim; APP_ENV is development in dev and production in prod
  secrets      no Secret is committed under infra/k8s

Usage: check_deploy.py [--root DIR] [--bin-dir DIR]
  --root     the repository (default: the one this file is in)
  --bin-dir  where the service binaries are (default: <cargo target dir>/debug)

Prints one line per check and `check-deploy: N passed, N failed`; exits 1 if
any check failed, naming every problem.
"""

from __future__ import annotations

import argparse
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

import yaml

OVERLAYS = ("dev", "prod")
# APP_ENV each overlay must give every service.
APP_ENV = {"dev": "development", "prod": "production"}
# The oldest Kubernetes the manifests are for (preStop `sleep` needs 1.30), and
# the newest kubernetes-validate knows (its default).
KUBERNETES_VERSIONS = ("1.30.0", None)
# Variables that must come from a Secret: name -> (secret, key).
SECRET_ENV = {"JWT_KEY": ("jwt-secret", "JWT_KEY"), "STRIPE_KEY": ("stripe-secret", "STRIPE_KEY")}
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
    print_env: dict[str, dict[str, bool]] = field(default_factory=dict)


# --- helpers -----------------------------------------------------------------


def tool(root: Path, name: str) -> str:
    """A tool from .dev/venv/bin (bootstrap.sh), else from PATH."""
    candidate = root / ".dev" / "venv" / "bin" / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    # The repository under test may be a copy (the self-tests): use the tools
    # of the repository this file is in.
    own = Path(__file__).resolve().parents[2] / ".dev" / "venv" / "bin" / name
    if own.exists():
        return str(own)
    raise CheckFailed(f"{name} not found in .dev/venv/bin or on PATH: run `make bootstrap`")


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
    """`kubectl kustomize` renders both overlays."""
    kubectl = tool(ctx.root, "kubectl")
    problems = []
    for overlay in OVERLAYS:
        path = ctx.root / "infra" / "k8s" / overlay
        result = run([kubectl, "kustomize", str(path)])
        if result.returncode != 0:
            problems.append(f"infra/k8s/{overlay} does not render: {result.stderr.strip()}")
            continue
        ctx.render_texts[overlay] = result.stdout
        ctx.renders[overlay] = [d for d in yaml.safe_load_all(result.stdout) if d]
    return problems


def ensure_rendered(ctx: Context):
    if set(ctx.renders) != set(OVERLAYS):
        problems = check_render(ctx)
        if problems:
            raise CheckFailed("; ".join(problems))


def check_schemas(ctx: Context) -> list[str]:
    """The renders validate against the Kubernetes schemas, unknown fields rejected."""
    ensure_rendered(ctx)
    validate = tool(ctx.root, "kubernetes-validate")
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for overlay in OVERLAYS:
            paths[overlay] = Path(tmp) / overlay
            paths[overlay].write_text(ctx.render_texts[overlay])
        for version in KUBERNETES_VERSIONS:
            argv = [validate, "--strict", "--quiet", *map(str, paths.values())]
            if version:
                argv[1:1] = ["--kubernetes-version", version]
            result = run(argv)
            output = (result.stdout + result.stderr).strip()
            if result.returncode != 0 or "ERROR" in output:
                for line in output.splitlines() or [f"kubernetes-validate: exit code {result.returncode}"]:
                    for overlay, path in paths.items():
                        line = line.replace(f"{path} ", f"{overlay}: infra/k8s/{overlay} ")
                    problems.append(line)
    return problems


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
    """Deployments, Services, the Ingress, skaffold.yaml and the workflows cover every service."""
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
        problems += check_ingress(overlay, docs, table, svcs)
    return problems


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
    for needle in ("kubectl apply -k infra/k8s/prod", "kubectl rollout status", "kustomize edit set image"):
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
        problems += check_store_url(where, name, value, url, services_by_name, statefulsets, service.name)
    return problems


def check_store_url(where, name, value, url, services_by_name, statefulsets, service_name) -> list[str]:
    """An in-cluster store URL names a Service with that port, backed by a
    StatefulSet of the right image that keeps its data on a volume claim."""
    problems = []
    host, port = url.hostname, url.port
    if url.scheme == "mongodb":
        expected = f"mongodb://{service_name}-mongo:27017/{service_name}"
        if value != expected:
            problems.append(f"{where}: {name} is {value!r}, expected {expected!r} (its own MongoDB and database)")
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
    if family == "mongo" and image_tag(image).split("-")[0] != "7":
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


CHECKS = [
    ("render", check_render),
    ("schemas", check_schemas),
    ("workflows", check_workflows),
    ("dockerfile", check_dockerfile),
    ("secrets", check_no_secrets),
    ("fleet", check_fleet),
    ("env", check_env),
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
