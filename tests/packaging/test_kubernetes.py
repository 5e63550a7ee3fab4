"""packaging/kubernetes/: valid against the Kubernetes schemas (offline, strict: a misspelt
field fails), and holding the promises a production deployment needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from steward.config import load_config

MANIFESTS = Path(__file__).resolve().parents[2] / "packaging" / "kubernetes"
VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))


def _resources() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def test_manifests_validate_strictly() -> None:
    files = sorted(str(p) for p in MANIFESTS.glob("*.yaml"))
    assert len(files) >= 5
    result = subprocess.run([VALIDATE, "--strict", "--quiet", *files], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_deployment_keeps_its_promises(tmp_path: Path) -> None:
    found = _resources()
    sts = found["StatefulSet/steward"]
    pod = sts["spec"]["template"]["spec"]
    main = next(c for c in pod["containers"] if c["name"] == "steward")
    assert sts["spec"]["replicas"] >= 2
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    home = next(e["value"] for e in main["env"] if e["name"] == "STEWARD_HOME")
    assert any(m["name"] == "data" and m["mountPath"] == home for m in main["volumeMounts"])

    # The ConfigMap's steward.toml is valid, and the probes and grace period agree with it.
    (tmp_path / "steward.toml").write_text(found["ConfigMap/steward-config"]["data"]
                                           ["steward.toml"])
    server = load_config(tmp_path, env={}).server
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["admin"] == server.admin_port and ports["http"] == server.port
    assert server.admin_host == "0.0.0.0" and server.host == "0.0.0.0"
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + server.drain_timeout

    # Non-root, read-only root filesystem, nothing to escalate with.
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["containers"] + pod["initContainers"]:
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]

    # The master key and the database URL come from the Secret, never the ConfigMap.
    secret = found["Secret/steward-secrets"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in main["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert {"STEWARD_MASTER_KEY", "STEWARD_DATABASE__URL"} <= refs.keys()
    assert all(r["name"] == "steward-secrets" and r["key"] in secret["stringData"]
               for r in refs.values())

    # The Service and the disruption budget select these pods.
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert found["Service/steward"]["spec"]["selector"].items() <= labels.items()
    assert sts["spec"]["serviceName"] in {name.split("/")[1] for name in found
                                          if name.startswith("Service/")}
    pdb = found["PodDisruptionBudget/steward"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["minAvailable"] < sts["spec"]["replicas"]
