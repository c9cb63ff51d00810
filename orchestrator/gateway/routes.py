"""The gateway's routes: an allow-list, enforced on what Tornado actually mounted.

Jupyter Server mounts handlers from many places besides the services a gateway asks
for: the contents manager's ``/files/``, the identity provider's ``/login`` and
``/logout``, ``/api/status``, ``/api/me``, ``/api/security/csp-report``, the static
files, the events API, and whatever an extension adds through ``add_handlers``. Each
is a way for a tenant, or an unauthenticated client, to read or reach what a gateway
must not serve (``/files/users.json`` served every tenant's token).

So the gateway keeps exactly the handlers of :data:`ALLOWED_HANDLERS` and removes
every other rule from every router, whoever mounted it; what is left falls through to
Jupyter Server's 404. :func:`enforce` checks the result at start-up and refuses to
serve if anything else is still mounted.
"""

from __future__ import annotations

import typing as t

from jupyter_server.base.handlers import Template404
from tornado import routing, web

from . import handlers


def allowed_handlers() -> frozenset[type[web.RequestHandler]]:
    """The only request handlers a gateway serves: its own, and the final 404."""
    return frozenset({cls for _, cls, *_ in handlers.default_handlers} | {Template404})


def _pattern(rule: routing.Rule) -> str:
    matcher = rule.matcher
    regex = getattr(matcher, "regex", None)
    if regex is not None:
        return str(regex.pattern)
    host = getattr(matcher, "host_pattern", None)
    if host is not None:
        return f"host:{host.pattern}"
    return type(matcher).__name__


def mounted_routes(app: web.Application) -> list[tuple[str, type[t.Any]]]:
    """Every (pattern, handler class) the application routes to, in every router."""
    found: list[tuple[str, type[t.Any]]] = []

    def walk(router: routing.RuleRouter) -> None:
        for rule in router.rules:
            if isinstance(rule.target, routing.RuleRouter):
                walk(rule.target)
            elif isinstance(rule.target, type):
                found.append((_pattern(rule), rule.target))
            else:  # an application, a callable: not a handler we know how to judge
                found.append((_pattern(rule), type(rule.target)))

    walk(app.default_router)
    return found


def restrict(app: web.Application) -> list[str]:
    """Remove every rule whose handler is not allowed; the patterns removed."""
    allowed = allowed_handlers()
    removed: list[str] = []

    def prune(router: routing.RuleRouter) -> None:
        kept = []
        for rule in router.rules:
            if isinstance(rule.target, routing.RuleRouter):
                prune(rule.target)
                kept.append(rule)
            elif rule.target in allowed:
                kept.append(rule)
            else:
                removed.append(_pattern(rule))
        router.rules = kept
        if isinstance(router, routing.ReversibleRuleRouter):
            router.named_rules = {
                name: rule for name, rule in router.named_rules.items() if rule in kept
            }

    prune(app.default_router)
    return removed


class RouteError(RuntimeError):
    """A handler outside the allow-list is still mounted."""


def enforce(app: web.Application) -> list[str]:
    """Restrict ``app`` to the allowed handlers and prove it; the patterns removed."""
    removed = restrict(app)
    allowed = allowed_handlers()
    stray = [(p, cls) for p, cls in mounted_routes(app) if cls not in allowed]
    if stray:
        raise RouteError(
            "refusing to serve: routes outside the gateway's allow-list are mounted: "
            + ", ".join(f"{p} -> {cls.__module__}.{cls.__qualname__}" for p, cls in stray)
        )
    return removed
