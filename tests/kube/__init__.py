"""TEST INFRASTRUCTURE for the Kubernetes provisioner's tests (no real cluster runs here).

* :mod:`tests.kube.apiserver` — :class:`StandInApiServer`, a stateful stand-in for the
  Kubernetes API server that the official ``kubernetes`` client talks to over HTTP;
* :mod:`tests.kube.podrunner` — :class:`PodRunner`, a one-node scheduler + kubelet that
  runs the stand-in's pods as real containers on the local Docker Engine;
* :mod:`tests.kube.validation` — schema (kubernetes-validate) + semantic validation;
* :mod:`tests.kube.selectors` — label/field selectors and patch semantics;
* :mod:`tests.kube.fixtures` — pytest fixtures ``kube_standin`` and ``kube_pod_runner``.
"""
