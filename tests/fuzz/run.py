#!/usr/bin/env python3
"""Fuzzes every API service of a running fleet through its ingress (`make fuzz`).

Run inside `dev fleet`, which provides BASE_URL (the ingress) and
AUTH_URL, TICKETS_URL, ORDERS_URL, PAYMENTS_URL (each service's own port, the
only place its /openapi.json is served). For each service, schemathesis loads
the service's OpenAPI document and sends what it generates from it — valid and
invalid bodies, parameters, headers and tokens (`--mode all`), in the
examples, coverage and fuzzing phases — through the ingress, signed in as a
fresh user (the bearer token of a real sign-up; the `session` cookie it may
generate itself), and checks every answer:

  not_a_server_error   no 5xx, ever
  errors_shape         every 4xx is {"errors":[{"message","field"?}]} (hooks.py)

Bounded: FUZZ_MAX_EXAMPLES cases per operation and phase (default 100),
FUZZ_MAX_TIME seconds per service (default 120). Reports (JUnit) go to
.dev/fuzz/. Exits non-zero if any service had a failure.
"""

import base64
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCHEMATHESIS = ROOT / ".dev" / "venv" / "bin" / "schemathesis"
REPORTS = ROOT / ".dev" / "fuzz"
SERVICES = ["auth", "tickets", "orders", "payments"]
CHECKS = "not_a_server_error,errors_shape"


def env(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"fuzz: {name} is not set: run me through `dev fleet -- {sys.argv[0]}` (make fuzz)")
    return value.rstrip("/")


def sign_up(base_url):
    """A fresh user's JWT, from the session cookie a real sign-up sets."""
    email = f"fuzz-{uuid.uuid4().hex[:12]}@example.com"
    request = urllib.request.Request(
        f"{base_url}/api/users/signup",
        data=json.dumps({"email": email, "password": "fuzz-password"}).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        cookies = response.headers.get_all("set-cookie") or []
    session = next(c.split(";")[0].split("=", 1)[1] for c in cookies if c.startswith("session="))
    return json.loads(base64.b64decode(session))["jwt"]


def fuzz(service, base_url, token):
    schema = f"{env(service.upper() + '_URL')}/openapi.json"
    command = [
        str(SCHEMATHESIS),
        "--no-color",
        "run",
        schema,
        "--url", base_url,
        "--checks", os.environ.get("FUZZ_CHECKS", CHECKS),
        "--mode", "all",
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", os.environ.get("FUZZ_MAX_EXAMPLES", "100"),
        "--request-timeout", "10",
        "--header", f"Authorization: Bearer {token}",
        "--seed", os.environ.get("FUZZ_SEED", "20240501"),
        "--generation-database", "none",
        "--report", "junit",
        "--report-junit-path", str(REPORTS / f"{service}.xml"),
        "--warnings", "off",
    ]
    started = time.monotonic()
    result = subprocess.run(command, env={**os.environ, "SCHEMATHESIS_HOOKS": str(HERE / "hooks.py")})
    return result.returncode, time.monotonic() - started


def main():
    base_url = env("BASE_URL")
    only = [s for s in sys.argv[1:]] or SERVICES
    REPORTS.mkdir(parents=True, exist_ok=True)
    token = sign_up(base_url)
    outcomes = []
    for service in only:
        print(f"==> fuzz: {service} ({env(service.upper() + '_URL')}/openapi.json through {base_url})", flush=True)
        code, took = fuzz(service, base_url, token)
        outcomes.append((service, code, took))
    print("\n==> fuzz: summary")
    for service, code, took in outcomes:
        print(f"    {service:<9} {'ok' if code == 0 else 'FAILED'}  {took:6.1f}s")
    sys.exit(0 if all(code == 0 for _, code, _ in outcomes) else 1)


if __name__ == "__main__":
    main()
