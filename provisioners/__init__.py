"""Kernel provisioners: where and how a kernel process runs.

Each is a ``jupyter_client`` ``KernelProvisionerBase`` subclass registered under the
``jupyter_client.kernel_provisioners`` entry-point group, so stock Jupyter Server can
use it from a kernelspec as well as our own managers.
"""
