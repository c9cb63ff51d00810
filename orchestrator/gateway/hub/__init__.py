"""The gateway as a JupyterHub service: the Hub's users, groups and servers are its tenants.

* ``identity``: every request's Hub token is checked with the Hub (``/hub/api/user``,
  through JupyterHub's own ``HubAuth``); the caller is the Hub user, and the server the
  token was issued to. ``tokens`` caches the answers briefly, by a digest of the token.
* ``api``: the gateway's own, least-privilege service token, for the two things the
  Hub must be asked or told in bulk: ``lifetime`` stops the kernels of servers the Hub
  stopped (and of users it deleted), and posts the activity of busy kernels so that
  the Hub's idle culler does not stop a server whose remote kernel is working.

Import order: ``tokens`` and ``api`` know nothing of the gateway; ``identity`` builds
on ``tokens``; ``lifetime`` on ``api`` and the kernel manager.
"""
