"""The deployment checks fail when the deployment is broken.

Each test copies what the checks read (infra/, skaffold.yaml,
Dockerfile.template, .dockerignore, .github/, services/*/Cargo.toml) into a
temporary directory, breaks one thing, and asserts that the check that guards
it fails with a message naming the problem. The service binaries' `--print-env`
is read once, from the real build.

Run by `make check-deploy`:
    .dev/venv/bin/python -m unittest discover -s infra/checks -p 'test_*.py'
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import unittest
from pathlib import Path

import check_deploy as cd

ROOT = Path(__file__).resolve().parents[2]
_PRINT_ENV: dict | None = None


def real_print_env() -> dict:
    global _PRINT_ENV
    if _PRINT_ENV is None:
        _PRINT_ENV = cd.read_print_env(cd.Context(root=ROOT))
    return _PRINT_ENV


class BrokenDeployment(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="check-deploy-")
        self.root = Path(self._tmp.name)
        for name in ("infra", ".github"):
            shutil.copytree(ROOT / name, self.root / name, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
        for name in ("Cargo.toml", "skaffold.yaml", "Dockerfile.template", ".dockerignore"):
            shutil.copy2(ROOT / name, self.root / name)
        for manifest in (ROOT / "services").glob("*/Cargo.toml"):
            target = self.root / manifest.relative_to(ROOT)
            target.parent.mkdir(parents=True)
            shutil.copy2(manifest, target)

    def tearDown(self):
        self._tmp.cleanup()

    # -- helpers --------------------------------------------------------------

    def edit(self, path: str, old: str, new: str, count: int = 1):
        file = self.root / path
        text = file.read_text()
        self.assertIn(old, text, f"the test expects {old!r} in {path}")
        file.write_text(text.replace(old, new, count))

    def problems(self, *checks: str) -> list[str]:
        ctx = cd.Context(root=self.root)
        ctx.print_env = dict(real_print_env())
        results = cd.run_checks(ctx, list(checks), out=io.StringIO())
        return [p for _, problems in results for p in problems]

    def assertFails(self, checks: tuple[str, ...], *patterns: str):
        problems = self.problems(*checks)
        self.assertTrue(problems, f"{checks} passed, but should have failed")
        text = "\n".join(problems)
        for pattern in patterns:
            self.assertRegex(text, pattern)

    # -- the unbroken copy passes ------------------------------------------------

    def test_the_deployment_as_committed_passes_every_check(self):
        self.assertEqual(self.problems(), [])

    # -- schemas ---------------------------------------------------------------

    def test_an_unknown_field_fails_schema_validation(self):
        self.edit(
            "infra/k8s/base/services/auth.yaml",
            "            readOnlyRootFilesystem: true\n",
            "            readOnlyRootFilesystem: true\n            readOnlyRootFileSystem: true\n",
        )
        self.assertFails(("schemas",), r"dev: .*deployment/auth.*'readOnlyRootFileSystem' was unexpected",
                         r"prod: .*deployment/auth")

    def test_a_misplaced_field_fails_schema_validation(self):
        self.edit("infra/k8s/base/ingress.yaml", "  ingressClassName: nginx\n", "  ingressClass: nginx\n")
        self.assertFails(("schemas",), r"ingress/ticketing.*'ingressClass' was unexpected")

    def test_an_overlay_that_does_not_render_fails(self):
        self.edit("infra/k8s/prod/kustomization.yaml", "  - ../base\n", "  - ../base\n  - missing.yaml\n")
        self.assertFails(("render",), r"infra/k8s/prod does not render")

    # -- environment -------------------------------------------------------------

    def test_a_missing_required_variable_fails(self):
        self.edit(
            "infra/k8s/base/services/payments.yaml",
            "            - name: JWT_KEY\n              valueFrom:\n                secretKeyRef:\n"
            "                  name: jwt-secret\n                  key: JWT_KEY\n",
            "",
        )
        self.assertFails(("env",), r"dev: Deployment payments: env JWT_KEY is required by payments .* but not set",
                         r"prod: Deployment payments: env JWT_KEY is required")

    def test_a_variable_the_binary_does_not_read_fails(self):
        self.edit(
            "infra/k8s/base/services/orders.yaml",
            "          env:\n",
            '          env:\n            - name: EXPIRATION_WINDOW\n              value: "60"\n',
        )
        self.assertFails(("env",), r"Deployment orders: env EXPIRATION_WINDOW is set but orders does not read it")

    def test_a_secret_as_a_literal_fails(self):
        self.edit(
            "infra/k8s/base/services/auth.yaml",
            "            - name: JWT_KEY\n              valueFrom:\n                secretKeyRef:\n"
            "                  name: jwt-secret\n                  key: JWT_KEY\n",
            '            - name: JWT_KEY\n              value: "not-so-secret"\n',
        )
        self.assertFails(("env",), r"Deployment auth: env JWT_KEY must come from secret jwt-secret key JWT_KEY")

    def test_production_settings_in_the_dev_overlay_fail(self):
        self.edit("infra/k8s/dev/kustomization.yaml", "- APP_ENV=development", "- APP_ENV=production")
        self.assertFails(("env",), r"dev: Deployment client: APP_ENV is 'production', the dev overlay runs 'development'")

    def test_a_shared_database_fails(self):
        self.edit("infra/k8s/base/services/orders.yaml", "mongodb://orders-mongo:27017/orders", "mongodb://auth-mongo:27017/auth")
        self.assertFails(("env",), r"Deployment orders: MONGO_URI is 'mongodb://auth-mongo:27017/auth', expected")

    def test_a_url_to_a_missing_service_fails(self):
        self.edit("infra/k8s/base/services/expiration.yaml", "redis://expiration-redis:6379", "redis://redis:6379")
        self.assertFails(("env",), r"Deployment expiration: REDIS_URL points at redis, which is not a Service")

    def test_redis_without_persistence_fails(self):
        self.edit("infra/k8s/base/data/expiration-redis.yaml", '"--appendonly", "yes", ', "")
        self.assertFails(("env",), r"StatefulSet expiration-redis: Redis without --appendonly yes")

    def test_nats_without_jetstream_fails(self):
        self.edit("infra/k8s/base/data/nats.yaml", '"-js", ', "")
        self.assertFails(("env",), r"StatefulSet nats: NATS without -js")

    # -- routes and the ingress ------------------------------------------------------

    def test_a_route_missing_from_the_ingress_fails(self):
        self.edit(
            "infra/k8s/base/ingress.yaml",
            "          - path: /api/payments/?(.*)\n            pathType: ImplementationSpecific\n"
            "            backend:\n              service:\n                name: payments\n"
            "                port:\n                  number: 3000\n",
            "",
        )
        self.assertFails(("fleet",), re.escape("dev: Ingress ticketing: no path /api/payments/?(.*) → payments"),
                         re.escape("prod: Ingress ticketing: no path /api/payments/?(.*) → payments"))

    def test_a_route_to_the_wrong_service_fails(self):
        self.edit("infra/k8s/base/ingress.yaml", "                name: orders\n", "                name: tickets\n")
        self.assertFails(("fleet",), re.escape("path /api/orders/?(.*) → tickets is not a route in infra/routes.json"))

    def test_a_route_only_in_routes_json_fails(self):
        self.edit(
            "infra/routes.json",
            '    { "prefix": "/", "service": "client"',
            '    { "prefix": "/api/admin", "service": "auth", "ingressPath": "/api/admin/?(.*)" },\n'
            '    { "prefix": "/", "service": "client"',
        )
        self.assertFails(("fleet",), re.escape("no path /api/admin/?(.*) → auth"))

    def test_a_segment_regex_in_routes_json_fails(self):
        self.edit("infra/routes.json", '"ingressPath": "/api/users/?(.*)"', '"ingressPath": "/api/users(/|$)(.*)"')
        self.assertFails(("fleet",), r"route /api/users has ingressPath")

    def test_a_backend_port_the_service_lacks_fails(self):
        self.edit("infra/k8s/base/ingress.yaml", "                name: auth\n                port:\n                  number: 3000",
                  "                name: auth\n                port:\n                  number: 80")
        self.assertFails(("fleet",), r"→ auth:\{'number': 80\}, which is not a port of a Service auth")

    # -- deployments, services, images ------------------------------------------------

    def test_a_service_without_its_deployment_fails(self):
        self.edit("infra/k8s/base/kustomization.yaml", "  - services/expiration.yaml\n", "")
        self.assertFails(("fleet",), r"dev: no Deployment expiration for services/expiration")

    def test_a_routed_service_without_its_service_fails(self):
        self.edit("infra/k8s/base/services/tickets.yaml", "kind: Service\nmetadata:\n  name: tickets\n",
                  "kind: Service\nmetadata:\n  name: tickets-api\n")
        self.assertFails(("fleet",), r"dev: no Service tickets")

    def test_a_writable_root_filesystem_fails(self):
        self.edit("infra/k8s/base/services/client.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false")
        self.assertFails(("fleet",), r"Deployment client: readOnlyRootFilesystem is not true")

    def test_a_probe_on_the_wrong_path_fails(self):
        self.edit("infra/k8s/base/services/orders.yaml", "path: /readyz", "path: /healthz")
        self.assertFails(("fleet",), r"Deployment orders: readinessProbe must be an httpGet of /readyz")

    def test_a_new_service_without_any_deployment_fails(self):
        (self.root / "services" / "refunds").mkdir()
        (self.root / "services" / "refunds" / "Cargo.toml").write_text('[package]\nname = "refunds"\n')
        self.assertFails(("fleet",), r"infra/routes.json: service refunds .* is not declared",
                         r"skaffold.yaml: no artifact ticketing/refunds", r"deploy.yml: the build matrix builds",
                         r"dev: no Deployment refunds")

    def test_an_image_missing_from_skaffold_fails(self):
        self.edit("skaffold.yaml", "    - image: ticketing/client\n", "    - image: ticketing/web\n")
        self.assertFails(("fleet",), r"skaffold.yaml: no artifact ticketing/client",
                         r"skaffold.yaml: artifact ticketing/web is not a service")

    def test_a_wrong_build_argument_fails(self):
        self.edit("skaffold.yaml", "SERVICE: payments", "SERVICE: payment")
        self.assertFails(("fleet",), r"skaffold.yaml: ticketing/payments needs buildArgs SERVICE: payments")

    def test_a_service_the_deploy_workflow_forgets_fails(self):
        self.edit(".github/workflows/deploy.yml", "SERVICES: auth tickets orders expiration payments client",
                  "SERVICES: auth tickets orders payments client")
        self.assertFails(("fleet",), r"deploy.yml: the deploy job's SERVICES are")

    # -- secrets, workflows, Dockerfile ------------------------------------------------

    def test_a_committed_secret_fails(self):
        (self.root / "infra/k8s/base/jwt-secret.yaml").write_text(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: jwt-secret\nstringData:\n  JWT_KEY: oops\n"
        )
        self.edit("infra/k8s/base/kustomization.yaml", "  - ingress.yaml\n", "  - ingress.yaml\n  - jwt-secret.yaml\n")
        self.assertFails(("secrets",), r"dev: renders Secret jwt-secret", r"infra/k8s/base/jwt-secret.yaml holds a Secret")

    def test_a_broken_workflow_fails_actionlint(self):
        self.edit(".github/workflows/test.yml", "run: make test\n", "run: make test ${{ matrix.nothing }}\n")
        self.assertFails(("workflows",), r'\.github/workflows/test\.yml:\d+:\d+: property "nothing" is not defined')

    def test_a_dockerfile_hadolint_rejects_fails(self):
        self.edit("Dockerfile.template", "FROM chef AS planner\n", "FROM chef AS planner\nRUN cd /src && ls\n")
        self.assertFails(("dockerfile",), r"hadolint: .*DL3003")

    def test_a_dockerignore_that_drops_a_workspace_member_fails(self):
        (self.root / ".dockerignore").write_text((self.root / ".dockerignore").read_text() + "services/client\n")
        self.assertFails(("dockerfile",), r".dockerignore excludes services/client/Cargo.toml, which the image build needs")

    def test_a_dockerignore_that_keeps_the_target_dir_fails(self):
        self.edit(".dockerignore", "**/target\n", "")
        self.assertFails(("dockerfile",), r".dockerignore does not exclude target")

    def test_a_root_runtime_image_fails(self):
        self.edit("Dockerfile.template", "FROM gcr.io/distroless/cc-debian12:nonroot", "FROM gcr.io/distroless/cc-debian12")
        self.assertFails(("dockerfile",), r"is not distroless :nonroot")


if __name__ == "__main__":
    unittest.main()
