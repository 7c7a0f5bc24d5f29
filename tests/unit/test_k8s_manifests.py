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
            assert "kind" in doc or "resources" in doc, path


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
