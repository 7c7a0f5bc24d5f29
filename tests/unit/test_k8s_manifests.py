"""deploy/k8s parses, every Kustomize reference exists, and every Deployment runs a real service with
probes on the port its settings use."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from shared.settings import Settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"


def load_all(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_every_manifest_parses() -> None:
    files = list(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in load_all(path):
            # Helm values (deploy/k8s/nats/values.yaml) and promtool's alert tests (alerts-test.yaml)
            # are neither a manifest nor a kustomization.
            assert "kind" in doc or "resources" in doc or path.name in ("values.yaml", "alerts-test.yaml"), (
                path
            )


def test_kustomizations_reference_existing_files() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        (doc,) = load_all(kustomization)
        for resource in doc["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


def test_deployments_run_real_services_with_probes_on_their_ports() -> None:
    settings = Settings()
    deployments = [
        doc
        for path in (K8S / "base").glob("*.yaml")
        for doc in load_all(path)
        if doc.get("kind") == "Deployment"
    ]
    assert {d["metadata"]["name"] for d in deployments} == {
        "cnx-issuer",
        "cnx-validator",
        "cnx-rotator",
        "cnx-notifier",
    }
    for deployment in deployments:
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        module = container["command"][-1]
        assert importlib.util.find_spec(module) is not None, module
        service = module.rsplit(".", 1)[-1]
        assert container["ports"][0]["containerPort"] == settings.port(service)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


SERVICES = ("issuer", "validator", "rotator", "notifier")


def test_nats_values_hold_the_permissions_make_up_runs() -> None:
    """The Helm chart's authorization is the table of shared/natsidentities.py, user for user, and no
    user is let in without a password (no `no_auth_user`)."""
    from shared.natsidentities import IDENTITY_NAMES, PERMISSIONS

    (values,) = load_all(K8S / "nats" / "values.yaml")
    authorization = values["config"]["merge"]["authorization"]
    assert "no_auth_user" not in authorization and "no_auth_user" not in values["config"]["merge"]
    users = {user["user"]: user for user in authorization["users"]}
    assert set(users) == set(IDENTITY_NAMES)
    env = values["container"]["env"]
    for name, user in users.items():
        assert user["permissions"] == PERMISSIONS[name].server_config(), name
        variable = f"{name.upper()}_PASSWORD"
        assert user["password"] == f"<< ${variable} >>"
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "nats-identities", "key": name}
    assert values["config"]["nats"]["tls"]["enabled"] is True
    assert values["config"]["jetstream"]["enabled"] is True and values["config"]["cluster"]["replicas"] == 3


def test_each_service_connects_as_itself_over_tls() -> None:
    (shared_config, *_) = load_all(K8S / "base" / "config.yaml")
    settings = Settings(
        deployment="production",
        nats_url=shared_config["data"]["CNX_NATS_URL"],
        nats_tls_ca=shared_config["data"]["CNX_NATS_TLS_CA"],
        peppers="x" * 40,
        encryption_keys="eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHg=",
    )
    assert settings.nats_tls  # production would refuse it otherwise
    for service in SERVICES:
        (deployment, *_) = load_all(K8S / "base" / f"{service}.yaml")
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert env["CNX_NATS_USER"]["value"] == service
        secret = env["CNX_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": f"cnx-nats-{service}", "key": "password"}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert shared_config["data"]["CNX_NATS_TLS_CA"].startswith(mounts["nats-ca"] + "/")
        assert volumes["nats-ca"]["configMap"]["name"] == "cnx-nats-ca"
    secrets = {doc["metadata"]["name"] for doc in load_all(K8S / "base" / "nats-secrets.example.yaml")}
    assert {f"cnx-nats-{service}" for service in SERVICES} | {"cnx-nats-ca"} <= secrets


def test_only_our_pods_and_platform_namespaces_reach_nats() -> None:
    (policy,) = load_all(K8S / "nats" / "networkpolicy.yaml")
    assert policy["kind"] == "NetworkPolicy" and policy["metadata"]["namespace"] == "nats"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    client_rules = [r for r in policy["spec"]["ingress"] if {"port": 4222, "protocol": "TCP"} in r["ports"]]
    (rule,) = client_rules
    ours, platform = rule["from"]
    (pods,) = ours["podSelector"]["matchExpressions"]
    assert set(pods["values"]) == {f"cnx-{service}" for service in SERVICES}
    assert "cnx-keys" in ours["namespaceSelector"]["matchExpressions"][0]["values"]
    assert platform == {"namespaceSelector": {"matchLabels": {"cloudnexus.io/platform": "true"}}}
    for other in policy["spec"]["ingress"]:
        assert other is rule or {"port": 4222, "protocol": "TCP"} not in other["ports"]
