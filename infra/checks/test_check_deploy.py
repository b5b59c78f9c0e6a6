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
import yaml

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
        self.edit("infra/k8s/components/ingress/ingress.yaml", "  ingressClassName: nginx\n", "  ingressClass: nginx\n")
        self.assertFails(("schemas",), r"dev\+ingress: .*ingress/ticketing.*'ingressClass' was unexpected")

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
            "infra/k8s/components/ingress/ingress.yaml",
            "          - path: /api/payments/?(.*)\n            pathType: ImplementationSpecific\n"
            "            backend:\n              service:\n                name: payments\n"
            "                port:\n                  number: 3000\n",
            "",
        )
        self.assertFails(("fleet",), re.escape("dev+ingress: Ingress ticketing: no path /api/payments/?(.*) → payments"),
                         re.escape("prod+ingress: Ingress ticketing: no path /api/payments/?(.*) → payments"))

    def test_a_route_to_the_wrong_service_fails(self):
        self.edit("infra/k8s/components/ingress/ingress.yaml", "                name: orders\n", "                name: tickets\n")
        self.assertFails(("fleet",), re.escape("path /api/orders/?(.*) → tickets is not a route in infra/routes.json"))

    def test_a_route_only_in_routes_json_fails(self):
        self.edit(
            "infra/routes.json",
            '    { "prefix": "/", "service": "client"',
            '    { "prefix": "/api/admin", "service": "auth", "ingressPath": "/api/admin/?(.*)" },\n'
            '    { "prefix": "/", "service": "client"',
        )
        self.assertFails(("fleet",), re.escape("no path /api/admin/?(.*) → auth"),
                         re.escape("dev: no HTTPRoute rule PathPrefix /api/admin → auth:3000"))

    def test_a_segment_regex_in_routes_json_fails(self):
        self.edit("infra/routes.json", '"ingressPath": "/api/users/?(.*)"', '"ingressPath": "/api/users(/|$)(.*)"')
        self.assertFails(("fleet",), r"route /api/users has ingressPath")

    def test_a_backend_port_the_service_lacks_fails(self):
        self.edit("infra/k8s/components/ingress/ingress.yaml", "                name: auth\n                port:\n                  number: 3000",
                  "                name: auth\n                port:\n                  number: 80")
        self.assertFails(("fleet",), r"→ auth:\{'number': 80\}, which is not a port of a Service auth")

    # -- deployments, services, images ------------------------------------------------

    def test_a_service_without_its_deployment_fails(self):
        self.edit("infra/k8s/base/kustomization.yaml", "  - services/expiration.yaml\n", "")
        self.edit("infra/k8s/prod/kustomization.yaml", "  - name: expiration\n    count: 2\n", "")
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
        self.edit("infra/k8s/base/kustomization.yaml", "  - gateway.yaml\n", "  - gateway.yaml\n  - jwt-secret.yaml\n")
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

    # -- the Gateway API edge ----------------------------------------------------------

    def test_a_route_missing_from_the_httproute_fails(self):
        self.edit(
            "infra/k8s/base/gateway.yaml",
            "    - matches:\n        - path:\n            type: PathPrefix\n            value: /api/orders\n"
            "      backendRefs:\n        - name: orders\n          port: 3000\n",
            "",
        )
        self.assertFails(("fleet",), re.escape("dev: no HTTPRoute rule PathPrefix /api/orders → orders:3000"),
                         re.escape("prod: no HTTPRoute rule PathPrefix /api/orders → orders:3000"))

    def test_an_httproute_rule_to_the_wrong_service_fails(self):
        self.edit("infra/k8s/base/gateway.yaml", "        - name: payments\n", "        - name: orders\n")
        self.assertFails(("fleet",), re.escape("HTTPRoute rule /api/payments → orders:3000 is not a route in infra/routes.json"))

    def test_a_gateway_without_https_fails(self):
        self.edit("infra/k8s/base/gateway.yaml", "    - name: https\n", "    - name: secure\n")
        self.assertFails(("fleet",), r"dev: Gateway ticketing: no listener https",
                         r"dev: HTTPRoute ticketing: parentRef ticketing/https is not a listener of Gateway ticketing")

    def test_an_unknown_field_in_the_httproute_fails_the_crd_schema(self):
        self.edit("infra/k8s/base/gateway.yaml", "  hostnames:\n", "  hostname: ticketing.dev\n  hostnames:\n")
        self.assertFails(("schemas",), r"dev: httproute/ticketing: spec: Additional properties are not allowed \('hostname' was unexpected\)")

    def test_a_wrong_value_in_the_gateway_fails_the_crd_schema(self):
        self.edit("infra/k8s/base/gateway.yaml", "      port: 443\n", "      port: 0\n")
        self.assertFails(("schemas",), r"gateway/ticketing: spec\.listeners\.1\.port: 0 is less than the minimum of 1")

    def test_a_kind_without_a_schema_fails(self):
        self.edit("infra/k8s/base/gateway.yaml", "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute",
                  "apiVersion: gateway.networking.k8s.io/v1alpha9\nkind: HTTPRoute")
        self.assertFails(("schemas",), r"httproute/ticketing: no schema for gateway.networking.k8s.io/v1alpha9 HTTPRoute")

    # -- high availability ------------------------------------------------------------

    def test_a_stream_at_one_replica_in_prod_fails(self):
        self.edit("infra/k8s/prod/kustomization.yaml", "- NATS_STREAM_REPLICAS=3", "- NATS_STREAM_REPLICAS=1")
        self.assertFails(("env",), r"prod: Deployment orders: NATS_STREAM_REPLICAS is 1, NATS runs 3 node\(s\)")

    def test_nats_that_is_not_a_cluster_in_prod_fails(self):
        self.edit("infra/k8s/prod/ha/nats.yaml", "  replicas: 3\n", "  replicas: 1\n")
        self.assertFails(("ha",), r"prod: StatefulSet nats runs 1 node\(s\), expected a cluster of 3",
                         re.escape("prod: StatefulSet nats: --routes"))

    def test_nats_nodes_on_one_machine_fail(self):
        self.edit("infra/k8s/prod/ha/nats.yaml", "            - topologyKey: kubernetes.io/hostname\n",
                  "            - topologyKey: topology.kubernetes.io/zone\n")
        self.assertFails(("ha",), r"prod: StatefulSet nats: no required podAntiAffinity on kubernetes.io/hostname")

    def test_a_mongodb_without_its_replica_set_fails(self):
        self.edit("infra/k8s/prod/ha/orders-mongo.yaml", '["--bind_ip_all", "--replSet", "orders-mongo"]', '["--bind_ip_all"]')
        self.assertFails(("ha", "env"), r"prod: StatefulSet orders-mongo: no --replSet orders-mongo",
                         re.escape("prod: Deployment orders: MONGO_URI is"))

    def test_a_replica_set_nobody_initiates_fails(self):
        self.edit("infra/k8s/prod/kustomization.yaml", "  - ha/payments-mongo-init.yaml\n", "")
        self.assertFails(("ha",), r"prod: no Job payments-mongo-init that initiates the replica set payments-mongo")

    def test_a_connection_string_without_majority_writes_fails(self):
        self.edit("infra/k8s/prod/ha/tickets-mongo.yaml", "?replicaSet=tickets-mongo&w=majority", "?replicaSet=tickets-mongo")
        self.assertFails(("env",), r"prod: Deployment tickets: MONGO_URI does not ask for majority write concern")

    def test_a_connection_string_missing_a_member_fails(self):
        self.edit("infra/k8s/prod/ha/auth-mongo.yaml", "auth-mongo-2.auth-mongo:27017/auth", "auth-mongo-1.auth-mongo:27017/auth")
        self.assertFails(("env",), r"prod: Deployment auth: MONGO_URI names .* expected every member")

    def test_a_multi_replica_workload_without_a_disruption_budget_fails(self):
        self.edit("infra/k8s/prod/pdbs.yaml", "      app.kubernetes.io/name: expiration\n", "      app.kubernetes.io/name: expiration-old\n")
        self.assertFails(("ha",), r"prod: Deployment expiration: runs 2 replicas but has 0 PodDisruptionBudgets")

    def test_an_http_service_without_an_autoscaler_fails(self):
        self.edit("infra/k8s/prod/hpas.yaml", "    name: payments\n", "    name: payment\n")
        self.assertFails(("ha",), r"prod: no HorizontalPodAutoscaler for Deployment payments")

    def test_a_deployment_not_spread_over_nodes_fails(self):
        self.edit("infra/k8s/base/services/client.yaml", "          topologyKey: kubernetes.io/hostname\n",
                  "          topologyKey: kubernetes.io/os\n")
        self.assertFails(("ha",), r"prod: Deployment client: not spread over nodes")

    def test_objects_outside_the_namespace_fail(self):
        self.edit("infra/k8s/prod/kustomization.yaml", "namespace: ticketing\n", "")
        self.assertFails(("ha",), r"prod: PodDisruptionBudget auth is not in the namespace ticketing")

    def test_a_container_without_limits_fails(self):
        self.edit("infra/k8s/prod/ha/orders-mongo-init.yaml", "            limits:\n              cpu: 200m\n", "            limits:\n")
        self.assertFails(("ha",), r"prod: Job orders-mongo-init container init: no cpu in resources.limits")

    def test_a_floating_store_image_fails(self):
        self.edit("infra/k8s/base/data/expiration-redis.yaml", "image: redis:7.4.1", "image: redis:7")
        self.assertFails(("fleet",), r"dev: StatefulSet expiration-redis: image redis:7 is not pinned to an exact version",
                         r"image redis:7 is not in THIRD_PARTY_IMAGES")

    def test_a_store_image_the_deploy_workflow_does_not_pin_fails(self):
        self.edit(".github/workflows/deploy.yml", "THIRD_PARTY_IMAGES: mongo:7.0.14 ", "THIRD_PARTY_IMAGES: mongo:7.0.15 ")
        self.assertFails(("fleet",), r"prod: Job auth-mongo-init: image mongo:7.0.14 is not in THIRD_PARTY_IMAGES")

    # -- network policies -----------------------------------------------------------------

    def policies(self) -> str:
        return "infra/k8s/base/network-policies.yaml"

    def test_a_service_allowed_to_reach_another_services_database_fails(self):
        # tickets may send to orders-mongo, and orders-mongo takes tickets
        self.edit_policy("tickets", lambda spec: spec["egress"].append(
            {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "orders-mongo"}}}]}))
        self.edit_policy("orders-mongo", lambda spec: spec["ingress"][0]["from"][0]["podSelector"][
            "matchExpressions"][0]["values"].append("tickets"))
        self.assertFails(("network",), r"dev: tickets may reach orders-mongo:27017, which only orders, orders-mongo may",
                         r"prod: tickets may reach orders-mongo:27017, which only orders, orders-mongo, orders-mongo-init may")

    def test_a_database_that_takes_anyone_who_asks_fails(self):
        # the other side alone: a database without its own restriction is open
        # to every pod that may send to it (here: none yet) — and to tickets,
        # once tickets' egress lets it
        self.edit_policy("tickets", lambda spec: spec["egress"].append(
            {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "auth-mongo"}}}]}))
        self.assertEqual(self.problems("network"), [], "auth-mongo still refuses tickets")
        self.edit_policy("auth-mongo", lambda spec: spec["ingress"][0].update({"from": [{"podSelector": {}}]}))
        self.assertFails(("network",), r"dev: tickets may reach auth-mongo:27017, which only auth, auth-mongo may")

    def test_without_default_deny_fails(self):
        self.edit(self.policies(), "  name: default-deny\n", "  name: default-deny\n  labels: {}\n")  # still there
        self.assertEqual(self.problems("network"), [])
        self.edit(self.policies(), "  podSelector: {}\n  policyTypes:\n  - Ingress\n  - Egress\n",
                  "  podSelector: {}\n  policyTypes:\n  - Ingress\n")
        self.assertFails(("network",), r"dev: no default-deny NetworkPolicy", r"prod\+ingress: no default-deny NetworkPolicy")

    def test_the_gateway_reaching_nats_fails(self):
        self.edit(self.policies(),
                  "        - key: app.kubernetes.io/name\n          operator: In\n          values:\n          - tickets\n          - orders\n          - expiration\n          - payments\n",
                  "        - key: app.kubernetes.io/name\n          operator: In\n          values:\n          - tickets\n          - orders\n          - expiration\n          - payments\n    - podSelector:\n        matchLabels:\n          gateway.networking.k8s.io/gateway-name: ticketing\n")
        self.edit(self.policies(), "          - payments\n          - client\n    ports:\n    - protocol: TCP\n      port: 3000\n",
                  "          - payments\n          - client\n    ports:\n    - protocol: TCP\n      port: 3000\n  - to:\n    - podSelector:\n        matchLabels:\n          app.kubernetes.io/name: nats\n")
        self.assertFails(("network",), r"dev: gateway may reach nats:4222, which only expiration, orders, payments, tickets may",
                         r"the gateway may reach nats:4222, it must reach only the HTTP services")

    def edit_policy(self, name: str, change):
        """Applies `change` to the NetworkPolicy `name` in network-policies.yaml."""
        file = self.root / self.policies()
        docs = list(yaml.safe_load_all(file.read_text()))
        matching = [d for d in docs if d and d["metadata"]["name"] == name]
        self.assertEqual(len(matching), 1, f"one NetworkPolicy {name}")
        change(matching[0]["spec"])
        file.write_text(yaml.safe_dump_all(docs, sort_keys=False))

    def test_a_service_reachable_by_another_service_fails(self):
        # tickets may send to auth, and auth takes anyone in the namespace
        self.edit_policy("tickets", lambda spec: spec["egress"].append(
            {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "auth"}}}]}))
        self.edit_policy("auth", lambda spec: spec["ingress"][0].update({"from": [{"podSelector": {}}]}))
        self.assertFails(("network",), r"dev: tickets may reach auth:3000, only the gateway may")

    def test_payments_without_stripe_egress_and_others_with_it_fail(self):
        self.edit(self.policies(), "      cidr: 0.0.0.0/0\n", "      cidr: 10.0.0.0/8\n")
        self.assertFails(("network",), r"dev: payments cannot reach https outside the cluster \(Stripe\)")

    def test_a_nats_client_that_cannot_reach_nats_fails(self):
        self.edit(self.policies(),
                  "          operator: In\n          values:\n          - tickets\n          - orders\n          - expiration\n          - payments\n",
                  "          operator: In\n          values:\n          - tickets\n          - orders\n          - payments\n")
        self.assertFails(("network",), r"dev: expiration cannot reach nats:4222")

    # -- checkov ----------------------------------------------------------------------------

    def test_a_privileged_container_fails_checkov(self):
        self.edit("infra/k8s/base/services/tickets.yaml", "            allowPrivilegeEscalation: false\n",
                  "            allowPrivilegeEscalation: false\n            privileged: true\n")
        self.assertFails(("checkov",), r"checkov CKV_K8S_16 dev\.yaml Deployment\.ticketing\.tickets")

    def test_a_workflow_checkov_rejects_fails(self):
        self.edit(".github/workflows/test.yml", "permissions:\n  contents: read\n", "permissions: write-all\n")
        self.assertFails(("checkov",), r"checkov CKV\S*GHA\S* \.github/workflows/test\.yml")

    def test_a_skip_without_a_reason_fails(self):
        file = self.root / "infra/checks/checkov-skips.yaml"
        file.write_text(file.read_text() + "CKV_K8S_16: ok\n")
        self.assertFails(("checkov",), r"checkov-skips.yaml: CKV_K8S_16 needs a one-line reason")


if __name__ == "__main__":
    unittest.main()
