"""The Helm chart (charts/kernel-orchestrator), rendered by Helm's real engine offline.

No cluster: the chart is linted and rendered by Helm v4's Go SDK (helm-python-sdk), and
every rendered object is validated against the official Kubernetes OpenAPI schemas
(kubernetes-validate, newest version it ships, strict: unknown fields are errors).
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from .chart_helpers import (
    CHART,
    NAMESPACE,
    NOTES,
    RELEASE,
    TEST_USERS,
    container,
    deep_merge,
    default_values,
    env_of,
    of_kind,
    one,
    render,
    render_objects,
)

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (Helm's engine) not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

FULLNAME = f"{RELEASE}-kernel-orchestrator"
#: The chart's kernelspec caps one kernel by default (requests to schedule, limits).
RESOURCE_DEFAULTS = {
    "cpu_request": "100m",
    "cpu_limit": "2",
    "memory_request": "256Mi",
    "memory_limit": "2Gi",
}
STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}

# The non-default installation the task names, in one set of values.
NON_DEFAULT: dict[str, Any] = {
    "kernels": {"namespacePerUser": True, "portForward": True},
    "ingress": {
        "enabled": True,
        "className": "nginx",
        "hosts": [{"host": "kernels.example.org", "paths": [{"path": "/", "pathType": "Prefix"}]}],
        "tls": [{"secretName": "kernels-tls", "hosts": ["kernels.example.org"]}],
    },
    "persistence": {"enabled": False},
    "auth": {"existingSecret": "my-gateway-token", "secretKey": "api.token"},
}

# Value sets every structural check runs on.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "non-default": NON_DEFAULT,
    "other-kernel-namespace": {
        "kernels": {"namespace": "kernels", "execForSignals": True},
        "networkPolicy": {
            "ingressFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hub"}}}
            ]
        },
        "persistence": {"storageClass": "-", "size": "5Gi", "annotations": {"a": "b"}},
        "service": {"type": "NodePort", "annotations": {"x": "y"}},
        "podLabels": {"team": "data"},
        "podAnnotations": {"prometheus.io/scrape": "true"},
        "server": {"extraEnv": [{"name": "FOO", "value": "bar"}], "extraArgs": ["--debug"]},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "priorityClassName": "high",
    },
    "no-kubernetes": {
        "kernels": {"kubernetesProvisioner": False},
        "kernelspecs": {
            "ssh-python": {
                "display_name": "Python (SSH)",
                "language": "python",
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "ssh-provisioner",
                        "config": {"host": "compute-1"},
                    }
                },
            }
        },
        "persistence": {"existingClaim": "kernels-db"},
        "auth": {"token": "a-token-given-in-the-values-0123"},
        "networkPolicy": {"enabled": False},
        "serviceAccount": {"create": False, "name": "gateway"},
    },
}


def rules_of(
    role: dict[str, Any],
) -> list[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]]:
    """A role's rules as (apiGroups, resources, verbs) tuples; other fields must not appear."""
    out = []
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule
        out.append((tuple(rule["apiGroups"]), tuple(rule["resources"]), tuple(rule["verbs"])))
    return out


POD_RULES = [
    (("",), ("pods",), ("create", "list", "watch", "delete")),
    (("",), ("pods/log",), ("get",)),
    (("",), ("secrets",), ("create", "delete")),
]
PORT_FORWARD_RULE = (("",), ("pods/portforward",), ("get", "create"))
EXEC_RULE = (("",), ("pods/exec",), ("get", "create"))
CLAIMS_RULE = (("",), ("persistentvolumeclaims",), ("get",))
PER_USER_RULES = [
    (("",), ("namespaces",), ("create", "get")),
    (("rbac.authorization.k8s.io",), ("rolebindings",), ("create",)),
]


# ---------------------------------------------------------------- helm lint / render


def test_engine_is_helm_v4() -> None:
    assert helm.helm_sdk_version().startswith("v4."), helm.helm_sdk_version()


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_strict(variant: str) -> None:
    report = helm.lint(CHART, VARIANTS[variant] or None, strict=True, namespace=NAMESPACE)
    assert report["total_charts_linted"] == 1
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_default_render() -> None:
    objs = render_objects()
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(
        [
            "ConfigMap",
            "Deployment",
            "NetworkPolicy",
            "NetworkPolicy",
            "NetworkPolicy",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Secret",
            "Service",
            "ServiceAccount",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    for o in objs:
        if o["kind"].startswith("ValidatingAdmissionPolicy"):  # cluster-scoped
            assert "namespace" not in o["metadata"]
            assert o["metadata"]["name"] == f"{NAMESPACE}-{FULLNAME}-kernel-pods"
            continue
        assert o["metadata"]["namespace"] == NAMESPACE, o["metadata"]
        assert o["metadata"]["name"].startswith(FULLNAME)


def test_non_default_render() -> None:
    objs = render_objects(NON_DEFAULT)
    kinds = {o["kind"] for o in objs}
    assert {"ClusterRole", "ClusterRoleBinding", "Ingress"} <= kinds
    assert not kinds & {"Role", "RoleBinding", "PersistentVolumeClaim", "Secret"}
    deployment = one(objs, "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["store"] == {"name": "store", "emptyDir": {}}
    token = env_of(deployment)["KERNEL_ORCHESTRATOR_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "my-gateway-token", "key": "api.token"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_objects_validate_against_kubernetes_schemas(variant: str) -> None:
    latest = kubernetes_validate.latest_version()
    objs = render_objects(VARIANTS[variant])
    assert objs
    for o in objs:
        # Raises ValidationError (or SchemaNotFoundError for an unknown kind/apiVersion).
        validated = kubernetes_validate.validate(o, latest, strict=True)
        assert validated == ".".join(latest.split(".")[:2])


def test_kubernetes_validate_catches_mistakes() -> None:
    """The validation above is not vacuous: a typo or a wrong type fails it."""
    deployment = one(render_objects(), "Deployment")
    broken = deep_merge(deployment, {"spec": {"replicas": "one"}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)
    typo = deep_merge(deployment, {"spec": {"template": {"spec": {"serviceAcountName": "x"}}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, kubernetes_validate.latest_version(), strict=True)


def test_no_pod_security_policy() -> None:
    for variant in VARIANTS.values():
        for o in render_objects(variant):
            assert o["kind"] != "PodSecurityPolicy"
            # policy/v1 only for the PodDisruptionBudget (policy/v1beta1 is gone).
            assert not o["apiVersion"].startswith("policy/") or (
                o["kind"],
                o["apiVersion"],
            ) == ("PodDisruptionBudget", "policy/v1")


@pytest.mark.parametrize("variant", VARIANTS)
def test_standard_labels(variant: str) -> None:
    for o in render_objects(VARIANTS[variant]):
        labels = o["metadata"]["labels"]
        assert set(labels) >= STANDARD_LABELS, (o["kind"], labels)
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "kernel-orchestrator-0.1.0"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


# ---------------------------------------------------------------- values schema

KERNELSPEC = {"display_name": "X", "language": "python", "argv": ["python"]}


@pytest.mark.parametrize(
    "values, complaint",
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": -1}, "/replicaCount"),
        ({"store": {"sqlite": {}}}, "sqlite"),
        ({"podDisruptionBudget": {"maxUnavailable": 0}}, "/podDisruptionBudget/maxUnavailable"),
        ({"replicasCount": 1}, "replicasCount"),
        ({"image": {"registry": "example.org"}}, "registry"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"service": {"port": 0}}, "/service/port"),
        ({"kernels": {"portForward": "yes"}}, "/kernels/portForward"),
        ({"kernels": {"namespace": "Not_A_Namespace"}}, "/kernels/namespace"),
        ({"kernels": {"namespaceTemplate": "Users/{username}"}}, "/kernels/namespaceTemplate"),
        ({"kernelspecs": {"bad/name": KERNELSPEC}}, "bad/name"),
        ({"kernelspecs": {"x": {"display_name": "X", "language": "python"}}}, "argv"),
        ({"kernelspecs": {"x": {**KERNELSPEC, "interrupt_mode": "kill"}}}, "interrupt_mode"),
        ({"auth": {"token": "short"}}, "/auth/token"),
        ({"persistence": {"accessModes": []}}, "/persistence/accessModes"),
        ({"persistence": {"size": "lots"}}, "/persistence/size"),
        ({"resources": {"limits": {"memory": "1 GB"}}}, "/resources/limits/memory"),
        ({"ingress": {"enabled": True, "hosts": []}}, "/ingress/hosts"),
        ({"config": {"MappingKernelManager": 5}}, "/config/MappingKernelManager"),
        ({"configFileName": "config.py"}, "/configFileName"),
        ({"networkPolicy": {"ingressFrom": [{"pods": {}}]}}, "pods"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        render(values)
    assert complaint in str(failure.value)


def test_lint_reports_schema_violations() -> None:
    report = helm.lint(CHART, {"replicaCount": "two"}, strict=True)
    assert any("/replicaCount" in e for e in report["errors"]), report


def test_schema_accepts_defaults_and_variants() -> None:
    with helm.Chart.load(CHART) as chart:
        for values in VARIANTS.values():
            chart.validate_schema(deep_merge(default_values(), values))


# ---------------------------------------------------------------- RBAC: least privilege


def test_default_role_is_exactly_what_the_provisioner_needs() -> None:
    objs = render_objects()
    role = one(objs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert rules_of(role) == POD_RULES
    binding = one(objs, "RoleBinding")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    sa = one(objs, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]


LOG_RULE = POD_RULES[1]


@pytest.mark.parametrize(
    "kernels, extra",
    [
        ({"readPodLogs": False}, [LOG_RULE]),  # the log rule goes (see below)
        ({"portForward": True}, [PORT_FORWARD_RULE]),
        ({"execForSignals": True}, [EXEC_RULE]),
        ({"readClaims": True}, [CLAIMS_RULE]),
        ({"portForward": True, "execForSignals": True}, [PORT_FORWARD_RULE, EXEC_RULE]),
    ],
)
def test_role_optional_rules(kernels: dict[str, Any], extra: list[Any]) -> None:
    role = one(render_objects({"kernels": kernels}), "Role")
    if kernels.get("readPodLogs") is False:
        expected = [rule for rule in POD_RULES if rule not in extra]
    else:
        expected = POD_RULES + extra
    assert sorted(rules_of(role)) == sorted(expected)


def test_role_in_the_kernel_namespace() -> None:
    objs = render_objects({"kernels": {"namespace": "kernels"}})
    role, binding = one(objs, "Role"), one(objs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "kernels"
    assert binding["subjects"][0]["namespace"] == NAMESPACE  # the orchestrator's account
    for policy in of_kind(objs, "NetworkPolicy"):
        if policy["metadata"]["name"] != FULLNAME:
            assert policy["metadata"]["namespace"] == "kernels"
    assert one(objs, "Deployment")["metadata"]["namespace"] == NAMESPACE


def test_cluster_role_only_for_namespace_per_user() -> None:
    for name, values in VARIANTS.items():
        kinds = {o["kind"] for o in render_objects(values)}
        per_user = values.get("kernels", {}).get("namespacePerUser", False)
        assert ("ClusterRole" in kinds) == per_user, name
        assert ("ClusterRoleBinding" in kinds) == per_user, name


@pytest.mark.parametrize("port_forward", [False, True])
def test_namespace_per_user_cluster_role(port_forward: bool) -> None:
    """Cluster-wide, the orchestrator only makes namespaces, binds its kernel role and
    watches pods; pod and Secret rights come from the kernel role, which is bound in the
    namespaces it creates only, and an admission policy confines it to those."""
    objs = render_objects({"kernels": {"namespacePerUser": True, "portForward": port_forward}})
    assert not of_kind(objs, "Role") and not of_kind(objs, "RoleBinding")
    roles = {o["metadata"]["name"]: o for o in of_kind(objs, "ClusterRole")}
    cluster = roles[f"{NAMESPACE}-{FULLNAME}-kernels"]
    kernel_role = f"{NAMESPACE}-{FULLNAME}-kernel-namespace"
    rbac = "rbac.authorization.k8s.io"
    assert cluster["rules"] == [
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["create", "get"]},
        {"apiGroups": [rbac], "resources": ["rolebindings"], "verbs": ["create"]},
        {"apiGroups": [rbac], "resources": ["clusterroles"], "verbs": ["bind"],
         "resourceNames": [kernel_role]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    ]  # fmt: skip
    # The pod watch is the cluster role's: the kernel role only creates and deletes.
    expected = [(("",), ("pods",), ("create", "delete")), *POD_RULES[1:]]
    expected += [PORT_FORWARD_RULE] if port_forward else []
    expected += [(("networking.k8s.io",), ("networkpolicies",), ("create",))]
    assert sorted(rules_of(roles[kernel_role])) == sorted(expected)
    (binding,) = of_kind(objs, "ClusterRoleBinding")  # the kernel role is never bound here
    assert binding["roleRef"]["name"] == cluster["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}
    ]
    policy = one(objs, "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConditions"][0]["expression"] == (
        f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{FULLNAME}'"
    )
    # It never deletes (RBAC grants no delete): the policy need only watch creation.
    assert {op for r in policy["spec"]["matchConstraints"]["resourceRules"]
            for op in r["operations"]} == {"CREATE"}  # fmt: skip
    rules = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "kernel-orchestrator.io/kernel-namespace" in rules and kernel_role in rules
    assert one(objs, "ValidatingAdmissionPolicyBinding")["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    # The kernelspec names the role and the account the provisioner binds it for.
    spec = json.loads(one(objs, "ConfigMap")["data"]["kernelspec.python3.json"])
    config = spec["metadata"]["kernel_provisioner"]["config"]
    assert config["namespace_role"] == kernel_role
    assert config["orchestrator_service_account"] == f"{NAMESPACE}/{FULLNAME}"


ORCHESTRATOR_SA = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
KERNEL_NS_LABELS = {
    "kernel-orchestrator.io/kernel-namespace": "true",
    "pod-security.kubernetes.io/enforce": "restricted",
}
KERNEL_ROLE = f"{NAMESPACE}-{FULLNAME}-kernel-namespace"


def _ns(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


ORCHESTRATOR_SUBJECT = {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}


def _binding(
    role: str, kind: str = "ClusterRole", subjects: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "roleRef": {"kind": kind, "name": role},
        "subjects": [ORCHESTRATOR_SUBJECT] if subjects is None else subjects,
    }


# (what, operation, resource, object, oldObject, namespaceObject, allowed)
ADMISSION_CASES = [
    ("create a kernel namespace", "CREATE", "namespaces", _ns("kernels-a", KERNEL_NS_LABELS),
     None, None, True),
    ("create an unlabelled namespace", "CREATE", "namespaces", _ns("evil", {}), None, None, False),
    ("create one without PodSecurity", "CREATE", "namespaces",
     _ns("k", {"kernel-orchestrator.io/kernel-namespace": "true"}), None, None, False),
    ("bind the kernel role in a kernel namespace", "CREATE", "rolebindings", _binding(KERNEL_ROLE),
     None, _ns("kernels-a", KERNEL_NS_LABELS), True),
    ("bind the kernel role in kube-system", "CREATE", "rolebindings", _binding(KERNEL_ROLE),
     None, _ns("kube-system", {}), False),
    ("bind cluster-admin in a kernel namespace", "CREATE", "rolebindings",
     _binding("cluster-admin"),
     None, _ns("kernels-a", KERNEL_NS_LABELS), False),
    ("bind a namespace Role of the same name", "CREATE", "rolebindings",
     _binding(KERNEL_ROLE, "Role"), None, _ns("kernels-a", KERNEL_NS_LABELS), False),
    ("bind the kernel role to a user's account", "CREATE", "rolebindings",
     _binding(KERNEL_ROLE, subjects=[{"kind": "ServiceAccount", "name": "default",
                                      "namespace": "kernels-a"}]),
     None, _ns("kernels-a", KERNEL_NS_LABELS), False),
    ("bind the kernel role to a user", "CREATE", "rolebindings",
     _binding(KERNEL_ROLE, subjects=[{"kind": "User", "name": FULLNAME}]),
     None, _ns("kernels-a", KERNEL_NS_LABELS), False),
    ("bind the kernel role to itself and another", "CREATE", "rolebindings",
     _binding(KERNEL_ROLE, subjects=[ORCHESTRATOR_SUBJECT, {"kind": "Group",
                                                             "name": "system:authenticated"}]),
     None, _ns("kernels-a", KERNEL_NS_LABELS), False),
    ("bind the kernel role to no one", "CREATE", "rolebindings",
     _binding(KERNEL_ROLE, subjects=[]), None, _ns("kernels-a", KERNEL_NS_LABELS), False),
    ("create a kernel pod in a kernel namespace", "CREATE", "pods", {"metadata": {}},
     None, _ns("kernels-a", KERNEL_NS_LABELS), True),
    ("create a pod where PodSecurity is not enforced", "CREATE", "pods", {"metadata": {}},
     None, _ns("kube-system", {}), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("labels", "allowed"),
    [
        ({"pod-security.kubernetes.io/enforce": "restricted"}, True),
        ({"pod-security.kubernetes.io/enforce": "privileged"}, False),
        ({}, False),
    ],
)
def test_one_kernel_namespace_gets_kernel_pods_only_if_restricted(
    labels: dict[str, str], allowed: bool
) -> None:
    """Default mode: the orchestrator's Role may create pods in the kernel namespace;
    its admission policy holds it to a namespace that enforces PodSecurity restricted,
    so a compromised orchestrator makes no privileged pod."""
    celpy = pytest.importorskip("celpy")
    (policy,) = of_kind(render_objects(), "ValidatingAdmissionPolicy")
    spec = policy["spec"]
    assert spec["matchConstraints"]["resourceRules"][0]["resources"] == ["pods"]
    env = celpy.Environment()
    activation = {
        "request": celpy.json_to_cel(
            {"operation": "CREATE", "resource": {"resource": "pods"},
             "userInfo": {"username": ORCHESTRATOR_SA}}
        ),
        "object": celpy.json_to_cel({"metadata": {}}),
        "namespaceObject": celpy.json_to_cel(_ns("jupyter-kernels", labels)),
    }  # fmt: skip
    (condition,) = spec["matchConditions"]
    assert env.program(env.compile(condition["expression"])).evaluate(activation)
    (rule,) = spec["validations"]
    assert bool(env.program(env.compile(rule["expression"])).evaluate(activation)) == allowed
    assert (
        "label the kernel namespace pod-security.kubernetes.io/enforce=restricted"
        in (rule["message"])
    )
    (binding,) = of_kind(render_objects(), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }


@pytest.mark.parametrize(
    "what, operation, resource, obj, old, namespace, allowed",
    ADMISSION_CASES,
    ids=[case[0] for case in ADMISSION_CASES],
)
def test_admission_policy_confines_the_orchestrator(
    what: str,
    operation: str,
    resource: str,
    obj: Any,
    old: Any,
    namespace: Any,
    allowed: bool,
) -> None:
    """The rendered policy's own CEL, evaluated (cel-python) on the requests the
    orchestrator's account might make."""
    celpy = pytest.importorskip("celpy")
    objs = render_objects({"kernels": {"namespacePerUser": True}})
    spec = one(objs, "ValidatingAdmissionPolicy")["spec"]
    env = celpy.Environment()
    request = {"operation": operation, "resource": {"resource": resource}}
    activation = {
        name: celpy.json_to_cel(value)
        for name, value in {
            "request": {**request, "userInfo": {"username": ORCHESTRATOR_SA}},
            "object": obj,
            "oldObject": old,
            "namespaceObject": namespace,
        }.items()
    }

    def holds(expression: str) -> bool:
        return bool(env.program(env.compile(expression)).evaluate(activation))

    (condition,) = spec["matchConditions"]
    assert holds(condition["expression"])
    failed = [v["message"] for v in spec["validations"] if not holds(v["expression"])]
    assert (not failed) == allowed, (what, failed)
    # Anyone else's requests are not this policy's business.
    activation["request"] = celpy.json_to_cel({**request, "userInfo": {"username": "alice"}})
    assert not holds(condition["expression"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_wildcards_no_cluster_admin(variant: str) -> None:
    values = deep_merge(VARIANTS[variant], {"kernels": {"execForSignals": True}})
    if not values["kernels"].get("kubernetesProvisioner", True):
        values = VARIANTS[variant]
    for o in render_objects(values):
        if o["kind"] in ("Role", "ClusterRole"):
            assert "aggregationRule" not in o
            for rule in o["rules"]:
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    assert not any("*" in item for item in rule.get(field, [])), rule
                assert "nonResourceURLs" not in rule
                assert not {"escalate", "impersonate"} & set(rule["verbs"]), rule
                if "bind" in rule["verbs"]:  # only the kernel role, by name
                    assert rule["resourceNames"] == [f"{NAMESPACE}-{FULLNAME}-kernel-namespace"]
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert o["roleRef"]["name"] not in ("cluster-admin", "admin", "edit")
            assert o["roleRef"]["name"].startswith(FULLNAME) or o["roleRef"]["name"].startswith(
                f"{NAMESPACE}-{FULLNAME}"
            )


def test_no_kubernetes_provisioner_no_api_access() -> None:
    objs = render_objects(VARIANTS["no-kubernetes"])
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "gateway"
    assert not of_kind(objs, "ServiceAccount")  # serviceAccount.create: false

    objs = render_objects({"kernels": {"kubernetesProvisioner": False}})
    assert one(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert not of_kind(objs, "NetworkPolicy")[1:]  # the orchestrator's policy only


def test_service_account_token_only_with_kubernetes_provisioner() -> None:
    objs = render_objects()
    assert one(objs, "ServiceAccount")["automountServiceAccountToken"] is True
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is True
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount")["metadata"]["name"]


def test_rbac_create_false() -> None:
    kinds = {o["kind"] for o in render_objects({"rbac": {"create": False}})}
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


# ---------------------------------------------------------------- Deployment


def test_deployment_single_replica_recreate_and_probes() -> None:
    deployment = one(render_objects(), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert spec["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "kernel-orchestrator",
        "app.kubernetes.io/instance": RELEASE,
        "app.kubernetes.io/component": "orchestrator",
    }
    labels = spec["template"]["metadata"]["labels"]
    assert labels.items() >= spec["selector"]["matchLabels"].items()
    c = container(deployment)
    assert c["image"] == "kernel-orchestrator/orchestrator:0.1.0"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"][:4] == ["kernel-orchestrator", "serve", "--ip", "0.0.0.0"]
    assert c["ports"] == [{"name": "http", "containerPort": 8888, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert c["resources"]["limits"]["memory"] == "1Gi"


def test_replicas_need_an_external_postgresql_store() -> None:
    with pytest.raises(Exception, match="replicaCount > 1 needs an external PostgreSQL store"):
        render_objects({"replicaCount": 3})
    objs = render_objects(
        {"replicaCount": 3, "store": {"postgresql": {"existingSecret": "kernels-db"}}}
    )
    deployment = one(objs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    # Rolling, pod by pod: every replica serves every kernel, none is ever the only copy.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    env = env_of(deployment)
    # The URL (with its password) comes from the Secret: it is in no value or pod spec.
    assert env["KERNEL_ORCHESTRATOR_STORE"] == {
        "name": "KERNEL_ORCHESTRATOR_STORE",
        "valueFrom": {"secretKeyRef": {"name": "kernels-db", "key": "url"}},
    }
    assert not of_kind(objs, "PersistentVolumeClaim")
    mounts = {m["name"] for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert "store" not in mounts and "store" not in volumes
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": spec["selector"]["matchLabels"]},
    }
    for obj in objs:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)


def test_the_database_ca_is_mounted_for_verify_full() -> None:
    objs = render_objects(
        {"store": {"postgresql": {"existingSecret": "kernels-db", "caSecret": "db-ca"}}}
    )
    deployment = one(objs, "Deployment")
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["db-ca"]["mountPath"] == "/etc/kernel-orchestrator/db-ca"
    assert mounts["db-ca"]["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["db-ca"]["secret"] == {
        "secretName": "db-ca",
        "items": [{"key": "ca.crt", "path": "ca.crt"}],
    }
    for obj in objs:
        kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
    plain = one(render_objects(), "Deployment")
    assert "db-ca" not in {m["name"] for m in container(plain)["volumeMounts"]}


def test_sqlite_store_keeps_recreate_and_a_pdb_that_allows_eviction() -> None:
    objs = render_objects()
    assert one(objs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not of_kind(
        render_objects({"podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget"
    )


def test_replicas_zero_allowed() -> None:
    assert one(render_objects({"replicaCount": 0}), "Deployment")["spec"]["replicas"] == 0


def test_security_context() -> None:
    deployment = one(render_objects(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 1000
    assert psc["fsGroup"] == 1000
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    csc = container(deployment)["securityContext"]
    assert csc["runAsNonRoot"] is True
    assert csc["runAsUser"] == 1000
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc.get("privileged", False) is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    # A read-only root needs a writable /tmp, and Jupyter's writable dirs must be there.
    mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    env = env_of(deployment)
    for var in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR"):
        assert env[var]["value"].startswith("/tmp/"), var


def test_store_on_the_persistent_volume() -> None:
    objs = render_objects()
    deployment = one(objs, "Deployment")
    env = env_of(deployment)
    assert env["KERNEL_ORCHESTRATOR_STORE"]["value"] == "sqlite:////data/kernels.db"
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["store"]["mountPath"] == "/data"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = one(objs, "PersistentVolumeClaim")
    assert volumes["store"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]


@pytest.mark.parametrize(
    "storage_class, expected", [("fast-ssd", "fast-ssd"), ("-", ""), ("", None)]
)
def test_storage_class(storage_class: str, expected: str | None) -> None:
    claim = one(
        render_objects({"persistence": {"storageClass": storage_class}}), "PersistentVolumeClaim"
    )
    assert claim["spec"].get("storageClassName") == expected


def test_existing_claim() -> None:
    objs = render_objects({"persistence": {"existingClaim": "kernels-db"}})
    assert not of_kind(objs, "PersistentVolumeClaim")
    volumes = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "kernels-db"}} in volumes


def test_kernelspecs_and_config_mounted() -> None:
    objs = render_objects()
    deployment = one(objs, "Deployment")
    configmap = one(objs, "ConfigMap")
    env = env_of(deployment)
    jupyter_path = env["JUPYTER_PATH"]["value"]
    mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
    assert mounts["jupyter"]["mountPath"] == jupyter_path
    assert mounts["jupyter"]["readOnly"] is True
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "jupyter"
    )
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    files = {item["path"]: configmap["data"][item["key"]] for item in volume["configMap"]["items"]}
    # jupyter_client finds kernelspecs at <JUPYTER_PATH entry>/kernels/<name>/kernel.json.
    spec = json.loads(files["kernels/python3/kernel.json"])
    provisioner = spec["metadata"]["kernel_provisioner"]
    assert provisioner["provisioner_name"] == "kubernetes-provisioner"
    assert provisioner["config"]["image"] == "kernel-orchestrator/kernel-python:latest"
    assert provisioner["config"]["namespace"] == NAMESPACE  # filled in by the chart
    assert spec["argv"][-2:] == ["-f", "{connection_file}"]
    # The config file sits in JUPYTER_CONFIG_PATH and is the values' config, as JSON.
    config_dir = env["JUPYTER_CONFIG_PATH"]["value"]
    relative = config_dir.removeprefix(jupyter_path).strip("/")
    config = json.loads(files[f"{relative}/jupyter_server_config.json"])
    assert config == default_values()["config"]
    assert config["MappingKernelManager"]["cull_idle_timeout"] == 3600


def test_kernelspec_namespace_follows_kernels_namespace_unless_given() -> None:
    values = {
        "kernels": {"namespace": "kernels"},
        "kernelspecs": {
            "pinned": {
                **KERNELSPEC,
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "kubernetes-provisioner",
                        "config": {"image": "img:1", "namespace": "elsewhere"},
                    }
                },
            },
            "plain": KERNELSPEC,
        },
    }
    data = one(render_objects(values), "ConfigMap")["data"]
    specs = {
        key.split(".")[1]: json.loads(text)
        for key, text in data.items()
        if key.startswith("kernelspec.")
    }
    assert set(specs) == {"python3", "pinned", "plain"}
    assert specs["python3"]["metadata"]["kernel_provisioner"]["config"]["namespace"] == "kernels"
    assert specs["pinned"]["metadata"]["kernel_provisioner"]["config"]["namespace"] == "elsewhere"
    assert specs["plain"] == KERNELSPEC  # not a Kubernetes spec: untouched


def test_kernelspec_namespace_per_user() -> None:
    values = {
        "kernels": {"namespacePerUser": True, "namespaceTemplate": "nb-{username}"},
        "kernelspecs": {
            "own": {
                **KERNELSPEC,
                "metadata": {
                    "kernel_provisioner": {
                        "provisioner_name": "kubernetes-provisioner",
                        "config": {"namespace_template": "x-{username}", "create_namespace": False},
                    }
                },
            }
        },
    }
    data = one(render_objects(values), "ConfigMap")["data"]
    config = json.loads(data["kernelspec.python3.json"])["metadata"]["kernel_provisioner"]["config"]
    assert config["namespace_template"] == "nb-{username}"
    assert config["create_namespace"] is True
    own = json.loads(data["kernelspec.own.json"])["metadata"]["kernel_provisioner"]["config"]
    assert own["namespace_template"] == "x-{username}"
    assert own["create_namespace"] is False
    # Without namespacePerUser, nothing of the kind is added.
    data = one(render_objects(), "ConfigMap")["data"]
    config = json.loads(data["kernelspec.python3.json"])["metadata"]["kernel_provisioner"]["config"]
    assert set(config) == {"image", "namespace", *RESOURCE_DEFAULTS}
    assert {k: config[k] for k in RESOURCE_DEFAULTS} == RESOURCE_DEFAULTS


def test_kernelspec_removed_with_null() -> None:
    objs = render_objects({"kernelspecs": {"python3": None, "other": KERNELSPEC}})
    data = one(objs, "ConfigMap")["data"]
    assert sorted(data) == ["jupyter_server_config.json", "kernelspec.other.json"]
    volume = one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"][0]
    assert [i["path"] for i in volume["configMap"]["items"]] == [
        "config/jupyter_server_config.json",
        "kernels/other/kernel.json",
    ]


def checksum(values: dict[str, Any] | None = None) -> str:
    deployment = one(render_objects(values), "Deployment")
    value: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", value)
    return value


def test_checksum_rolls_the_pod_on_config_changes() -> None:
    base = checksum()
    assert checksum() == base  # deterministic
    assert checksum({"kernelspecs": {"r": {**KERNELSPEC, "language": "R"}}}) != base
    image = {"metadata": {"kernel_provisioner": {"config": {"image": "img:2"}}}}
    assert checksum({"kernelspecs": {"python3": image}}) != base
    assert checksum({"config": {"MappingKernelManager": {"cull_idle_timeout": 60}}}) != base
    # Unrelated to the ConfigMap: no roll.
    assert checksum({"resources": {"limits": {"memory": "2Gi"}}}) == base


def test_pod_labels_and_annotations_cannot_break_the_selector() -> None:
    values = {
        "podLabels": {"app.kubernetes.io/component": "other", "team": "data"},
        "podAnnotations": {"checksum/config": "forged", "x": "y"},
    }
    deployment = one(render_objects(values), "Deployment")
    meta = deployment["spec"]["template"]["metadata"]
    assert meta["labels"]["app.kubernetes.io/component"] == "orchestrator"
    assert meta["labels"]["team"] == "data"
    assert meta["annotations"]["checksum/config"] == checksum()
    assert meta["annotations"]["x"] == "y"


# ---------------------------------------------------------------- token Secret


def test_no_token_is_made_up() -> None:
    """Users get their own tokens (a users file Secret, mounted 0440); there is no admin
    token unless one is given, and nothing at all renders without either."""
    objs = render_objects()
    (secret,) = of_kind(objs, "Secret")
    assert secret["metadata"]["name"] == f"{FULLNAME}-users"
    users = json.loads(base64.b64decode(secret["data"]["users.json"]))
    assert users == {"users": TEST_USERS}
    deployment = one(objs, "Deployment")
    assert "KERNEL_ORCHESTRATOR_TOKEN" not in env_of(deployment)
    args = container(deployment)["args"]
    assert args[args.index("--users-file") + 1] == "/etc/kernel-orchestrator/users/users.json"
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "users"
    )
    assert volume["secret"]["secretName"] == f"{FULLNAME}-users"
    assert volume["secret"]["defaultMode"] == 0o440

    import helm_python

    with pytest.raises(helm_python.HelmError) as failure:
        render(users=False)
    assert "set auth.users or auth.existingUsersSecret" in str(failure.value)
    assert "the chart makes up no shared token" in str(failure.value)


def test_existing_users_secret_and_admin_token() -> None:
    objs = render_objects(
        {"auth": {"existingUsersSecret": "hub-users", "existingSecret": "admin-token"}}
    )
    assert not of_kind(objs, "Secret")
    deployment = one(objs, "Deployment")
    assert env_of(deployment)["KERNEL_ORCHESTRATOR_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "admin-token",
        "key": "token",
    }
    volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "users"
    )
    assert volume["secret"]["secretName"] == "hub-users"


def test_token_from_values() -> None:
    objs = render_objects({"auth": {"token": "0123456789abcdef-given"}})
    secret = one(objs, "Secret")
    assert base64.b64decode(secret["data"]["token"]).decode() == "0123456789abcdef-given"
    assert "--users-file" not in container(one(objs, "Deployment"))["args"]


HUB_VALUES = {
    "hub": {
        "enabled": True,
        "apiUrl": "http://hub.jhub.svc:8081/hub/api",
        "existingTokenSecret": "hub",
    },
    "kernels": {"namespace": "jhub-kernels"},
}


def test_hub_mode_takes_the_hubs_users_and_token() -> None:
    """Hub mode: ``--hub``, the Hub's API URL and the service token from z2jh's hub
    Secret, the label z2jh's hub NetworkPolicy admits; no users file, no made-up token."""
    objs = render_objects(HUB_VALUES, users=False)
    assert not of_kind(objs, "Secret")
    deployment = one(objs, "Deployment")
    assert "--hub" in container(deployment)["args"]
    assert "--users-file" not in container(deployment)["args"]
    env = env_of(deployment)
    assert env["JUPYTERHUB_API_URL"]["value"] == "http://hub.jhub.svc:8081/hub/api"
    assert env["JUPYTERHUB_SERVICE_NAME"]["value"] == "kernel-gateway"
    assert env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hub",
        "key": "hub.services.kernel-gateway.apiToken",
    }
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["hub.jupyter.org/network-access-hub"] == "true"
    assert "hub.jupyter.org/network-access-hub" not in deployment["spec"]["selector"]["matchLabels"]
    assert "--hub" not in container(one(render_objects(), "Deployment"))["args"]


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"hub": {"enabled": True}}, "hub.enabled needs hub.apiUrl and hub.existingTokenSecret"),
        (
            {**HUB_VALUES, "auth": {"users": TEST_USERS}},
            "hub.enabled and auth.users / auth.existingUsersSecret exclude each other",
        ),
        (
            {"hub": HUB_VALUES["hub"]},
            "kernel pods must not run in the Hub's namespace",
        ),
    ],
)
def test_hub_mode_refuses_half_a_setup(values: dict[str, Any], complaint: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmError) as failure:
        render(values, users=False)
    assert complaint in str(failure.value)


# ---------------------------------------------------------------- Service, Ingress, policies


def test_service() -> None:
    service = one(render_objects(), "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8888, "targetPort": "http", "protocol": "TCP"}
    ]
    deployment = one(render_objects(), "Deployment")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_ingress() -> None:
    ingress = one(render_objects(NON_DEFAULT), "Ingress")
    assert ingress["apiVersion"] == "networking.k8s.io/v1"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["kernels.example.org"], "secretName": "kernels-tls"}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "kernels.example.org"
    assert rule["http"]["paths"] == [
        {
            "path": "/",
            "pathType": "Prefix",
            "backend": {"service": {"name": FULLNAME, "port": {"name": "http"}}},
        }
    ]


def test_network_policies() -> None:
    objs = render_objects()
    policies = {p["metadata"]["name"]: p for p in of_kind(objs, "NetworkPolicy")}
    selector = one(objs, "Deployment")["spec"]["selector"]["matchLabels"]

    orchestrator = policies.pop(FULLNAME)["spec"]
    assert orchestrator["podSelector"] == {"matchLabels": selector}
    assert orchestrator["policyTypes"] == ["Ingress"]
    assert orchestrator["ingress"] == [{"ports": [{"protocol": "TCP", "port": "http"}]}]

    kernel_selectors = []
    for policy in policies.values():
        spec = policy["spec"]
        kernel_selectors.append(spec["podSelector"])
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["egress"] == [
            {
                "to": [{"namespaceSelector": {}}],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
            }
        ]
        assert spec["ingress"] == [
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
                        },
                        "podSelector": {"matchLabels": selector},
                    }
                ]
            }
        ]
    assert sorted(kernel_selectors, key=json.dumps) == sorted(
        [
            {"matchLabels": {"app.kubernetes.io/component": "kernel"}},
            {"matchExpressions": [{"key": "kernel-orchestrator.kernel-id", "operator": "Exists"}]},
        ],
        key=json.dumps,
    )
    # The orchestrator pod is never selected as a kernel.
    assert selector["app.kubernetes.io/component"] == "orchestrator"


def test_orchestrator_policy_with_peers() -> None:
    peers = VARIANTS["other-kernel-namespace"]["networkPolicy"]["ingressFrom"]
    objs = render_objects(VARIANTS["other-kernel-namespace"])
    policy = next(p for p in of_kind(objs, "NetworkPolicy") if p["metadata"]["name"] == FULLNAME)
    assert policy["spec"]["ingress"] == [
        {"ports": [{"protocol": "TCP", "port": "http"}], "from": peers}
    ]


# ---------------------------------------------------------------- NOTES


def test_notes_default() -> None:
    notes = render()[NOTES]
    assert f"kubectl port-forward --namespace {NAMESPACE} service/{FULLNAME} 8888:8888" in notes
    assert f"in the users file (Secret {FULLNAME}-users, key users.json)" in notes
    notes = render({"auth": {"token": "0123456789abcdef-given"}})[NOTES]
    assert (
        f"kubectl get secret --namespace {NAMESPACE} {FULLNAME}-token"
        ' -o jsonpath="{.data.token}" | base64 -d' in notes
    )
    assert 'jupyter server --gateway-url="$KO_URL" --GatewayClient.auth_token="$KO_TOKEN"' in notes
    assert "export KO_URL=http://127.0.0.1:8888" in notes
    assert "WARNING" not in notes
    assert "{{" not in notes and "<no value>" not in notes


def test_notes_non_default() -> None:
    notes = render(NON_DEFAULT)[NOTES]
    assert "export KO_URL=https://kernels.example.org\n" in notes
    assert "port-forward" not in notes
    assert 'my-gateway-token -o jsonpath="{.data.api\\.token}"' in notes
    assert "WARNING: persistence.enabled is false" in notes
    assert "admission policy confines it" in notes
    assert "<no value>" not in notes
