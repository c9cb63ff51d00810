"""kernel-orchestrator as a JupyterHub service: a fragment of ``jupyterhub_config.py``.

Load it from your own configuration (or copy it there), after setting:

* ``KERNEL_GATEWAY_URL``: where single-user servers reach the gateway
  (``http://kernel-gateway:8888``);
* ``KERNEL_GATEWAY_SERVICE_TOKEN``: the gateway's service token (at least 32 random
  characters); the gateway gets the same value as ``$JUPYTERHUB_API_TOKEN``;
* optionally ``KERNEL_GATEWAY_SERVICE_NAME`` (default ``kernel-gateway``);
* optionally ``KERNEL_GATEWAY_SERVER_SCOPES``: further scopes (space-separated) for
  each server's token, such as the ``custom:`` scopes that the gateway's kernelspec
  access, profiles, caps or ``kernel_admin_scopes`` name. The Hub gives a server's
  token only the scopes listed here (and only those the user holds), so a policy on a
  scope not listed never matches a server's requests.

Load it last, after your own ``services``, ``load_roles`` and ``Spawner.environment``
(it adds to them; an assignment after it would drop what it added)::

    c = get_config()
    ...  # your configuration
    load_subconfig("/etc/jupyterhub/kernel-gateway.py")  # this file

What it sets up:

* the service, with a least-privilege role for the gateway's own token: list users
  and their servers (to stop the kernels of stopped servers) and post activity (so
  that the idle culler keeps a server whose remote kernel works);
* the scope ``access:services!service=<name>`` for every user, and in each server's
  own token (``Spawner.server_token_scopes``): the gateway accepts only tokens that
  hold it, so a token a server holds for a visitor is refused;
* each single-user server talks to the gateway with its own token
  (``JUPYTER_GATEWAY_AUTH_TOKEN``, evaluated at spawn): kernels belong to that user and
  that server, whatever ``KERNEL_USERNAME`` says.

JupyterHub versions: ``extra_user_scopes`` is 6.0+ (before: the ``user`` role is
redefined), ``Spawner.server_token_scopes`` is 4.0+ (before: the ``server`` role is
redefined). JupyterHub 2 and 3 work the same way through those roles.
"""

import os

import jupyterhub

c = get_config()  # type: ignore[name-defined]  # noqa: F821 (JupyterHub's config loader)

_name = os.environ.get("KERNEL_GATEWAY_SERVICE_NAME", "kernel-gateway")
_access = f"access:services!service={_name}"
_version = tuple(jupyterhub.version_info[:2])

c.JupyterHub.services.append(
    {
        "name": _name,
        "api_token": os.environ["KERNEL_GATEWAY_SERVICE_TOKEN"],
        "display": False,
    }
)
c.JupyterHub.load_roles.append(
    {
        "name": f"{_name}-service",
        "description": "kernel-orchestrator: follow servers, report kernel activity",
        "scopes": ["list:users", "read:servers", "read:users:activity", "users:activity"],
        "services": [_name],
    }
)

# Every user may use the gateway (narrow this to groups with a role of your own).
if _version >= (6, 0):
    c.JupyterHub.extra_user_scopes.add(_access)
else:
    _user_roles = [
        role
        for role in (c.JupyterHub.load_roles if isinstance(c.JupyterHub.load_roles, list) else [])
        if isinstance(role, dict) and role.get("name") == "user"
    ]
    if _user_roles:  # (a role defined twice stops the Hub: add to the one there is)
        _user_roles[0]["scopes"] = [*_user_roles[0].get("scopes", ["self"]), _access]
    else:
        c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", _access]})

# Each server's own token carries it, beside what a server's token always has.
_server_scopes = [
    "access:servers!server",
    "users:activity!user",
    _access,
    *os.environ.get("KERNEL_GATEWAY_SERVER_SCOPES", "").split(),
]
if _version >= (4, 0):
    c.Spawner.server_token_scopes = _server_scopes
else:
    c.JupyterHub.load_roles.append({"name": "server", "scopes": _server_scopes})

c.Spawner.environment.update(
    {
        "JUPYTER_GATEWAY_URL": os.environ["KERNEL_GATEWAY_URL"],
        # The server's own Hub token (the Hub calls this at spawn): the gateway checks
        # it with the Hub on every request.
        "JUPYTER_GATEWAY_AUTH_TOKEN": lambda spawner: spawner.api_token,
        # Remote kernels may take a while to start (an image pull, a batch queue).
        "JUPYTER_GATEWAY_REQUEST_TIMEOUT": "120",
    }
)
