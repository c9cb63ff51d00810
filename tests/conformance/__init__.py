"""The provisioner conformance suite: the same lifecycle tests for every provisioner.

A provisioner joins by adding one :class:`~tests.conformance.backends.Backend` to
``backends.BACKENDS`` (and, if it needs infrastructure, a branch in the ``backend``
fixture). Per-provisioner test files keep only what is specific to one provisioner.
"""
