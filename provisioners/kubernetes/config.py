"""The Kubernetes provisioner's settings: what an operator writes in a kernelspec.

Kept apart from the provisioner's logic (``provisioner.py``) so that each reads on
its own; the provisioner class inherits these traits.
"""

from __future__ import annotations

from typing import Any

from traitlets import Bool, CaselessStrEnum, Dict, Float, Int, List, Unicode
from traitlets.config import LoggingConfigurable

DEFAULT_IMAGE = "kernel-orchestrator/kernel-python:latest"


class KubernetesConfig(LoggingConfigurable):
    """Configuration of ``kubernetes-provisioner`` kernelspecs."""

    api_url = Unicode("", config=True, help="API server URL ('' : in-cluster, else kubeconfig).")
    api_token_file = Unicode(
        "",
        config=True,
        help="With api_url: file holding the bearer token (read again as it rotates, e.g. a"
        " projected ServiceAccount token).",
    )
    api_ca_file = Unicode(
        "",
        config=True,
        help="With api_url: CA bundle that signs the API server's certificate ('' : the"
        " system's CAs).",
    )
    kubeconfig = Unicode(
        "", config=True, help="kubeconfig file ('' : $KUBECONFIG, else ~/.kube/config)."
    )
    kube_context = Unicode("", config=True, help="kubeconfig context ('' : its current one).")
    namespace = Unicode("default", config=True, help="Shared kernel namespace.")
    namespace_template = Unicode(
        "", config=True, help="Per-user namespace, e.g. 'kernels-{username}' ('' : shared)."
    )
    create_namespace = Bool(
        False, config=True, help="Create the per-user namespace (and its RoleBinding) if absent."
    )
    namespace_role = Unicode(
        "", config=True, help="ClusterRole bound in created namespaces for the orchestrator."
    )
    orchestrator_service_account = Unicode(
        "", config=True, help="namespace/name of the orchestrator's ServiceAccount."
    )
    network_policy = Bool(
        True,
        config=True,
        help="Give created namespaces a NetworkPolicy: kernel pods take ingress from the"
        " orchestrator only and send egress only to DNS and egress_allow.",
    )
    orchestrator_pod_labels = Dict(
        {"app.kubernetes.io/component": "orchestrator"},
        config=True,
        help="Labels of the orchestrator's pods (in orchestrator_service_account's"
        " namespace): the only ingress kernel pods accept.",
    )
    egress_allow: List[Any] = List(
        Dict(),
        config=True,
        help="NetworkPolicyPeer objects (as dicts, e.g. {'ipBlock': {'cidr': '10.1.0.0/16'}})"
        " kernel pods may send to besides DNS.",
    )
    image = Unicode(
        DEFAULT_IMAGE,
        config=True,
        help="Kernel image (a client may choose another within image_allowlist).",
    )
    image_allowlist = List(
        Unicode(), config=True, help="Image patterns (fnmatch) a client may choose from."
    )
    image_pull_policy = Unicode(
        "IfNotPresent", config=True, help="The pod's imagePullPolicy (Always, IfNotPresent, Never)."
    )
    image_pull_secrets = List(
        Unicode(), config=True, help="Names of Secrets in the kernel namespace for pulling."
    )
    cpu_request = Unicode("", config=True, help="CPU request, a Kubernetes quantity ('500m').")
    cpu_limit = Unicode("", config=True, help="CPU limit, a Kubernetes quantity ('2').")
    memory_request = Unicode("", config=True, help="Memory request, a quantity ('1Gi').")
    memory_limit = Unicode("", config=True, help="Memory limit, a quantity ('4Gi').")
    gpus = Int(0, config=True, help="GPUs per kernel, requested as gpu_resource.")
    gpu_resource = Unicode(
        "nvidia.com/gpu", config=True, help="The extended resource that GPUs are counted in."
    )
    extra_resources = Dict(
        config=True, help="Further extended resources: name -> quantity (limits = requests)."
    )
    node_selector = Dict(config=True, help="The pod's nodeSelector: label -> value.")
    tolerations: List[Any] = List(config=True, help="The pod's tolerations (V1Toleration).")
    affinity = Dict(config=True, help="The pod's affinity (V1Affinity as a dict).")
    priority_class_name = Unicode("", config=True, help="The pod's priorityClassName.")
    service_account_name = Unicode(
        "",
        config=True,
        help="The pod's ServiceAccount (its token is never mounted: kernels do not talk to"
        " the API server).",
    )
    volumes: List[Any] = List(config=True, help="V1Volume objects; '{username}' is substituted.")
    volume_mounts: List[Any] = List(
        config=True, help="V1VolumeMount objects; '{username}' substituted."
    )
    colocate_with_claims = Bool(
        False,
        config=True,
        help="For ReadWriteOnce claims the pod mounts (a user's home, claim-{username}):"
        " start the kernel pod on the node where a running pod (the user's server) already"
        " mounts the claim, the only node that can mount it too.",
    )
    run_as_user = Int(1000, config=True, help="uid the kernel runs as (never root).")
    run_as_group = Int(1000, config=True, help="gid the kernel runs as.")
    profiles = Dict(config=True, help="name -> settings a client picks with KERNEL_PROFILE.")
    default_profile = Unicode("", config=True, help="The profile used when a client names none.")
    environment = Dict(config=True, help="Fixed environment for the kernel.")
    env_allowlist = List(
        Unicode(), ["KERNEL_*"], config=True, help="Client variables (fnmatch) passed on."
    )
    labels = Dict(config=True, help="Extra labels on the kernel's pod.")
    annotations = Dict(config=True, help="Extra annotations on the kernel's pod.")
    startup_timeout = Float(
        120.0, config=True, help="Seconds from pod creation until the kernel must answer."
    )
    transport_encryption = Unicode(
        "", config=True, help="CurveZMQ: auto, required or disabled ('' : the manager's)."
    )
    reachability = CaselessStrEnum(
        ["pod-ip", "port-forward"],
        "pod-ip",
        config=True,
        help="pod-ip when the orchestrator runs in the cluster; port-forward (through the API"
        " server) from outside it.",
    )
