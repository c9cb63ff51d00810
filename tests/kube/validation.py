"""TEST INFRASTRUCTURE: object validation for the stand-in Kubernetes API server.

Two layers, run on every object the stand-in stores:

1. The official OpenAPI schemas of Kubernetes, through ``kubernetes-validate``
   (strict mode: an unknown field is an error).  This catches wrong types, missing
   required fields and typos.  The real API server reports these as *decoding*
   errors, so they come back as 400 BadRequest (``strict decoding error: ...``),
   except a missing required field, which the real server reports as 422.
2. The schemas say nothing about name syntax, label syntax, quantities, uniqueness
   or cross references (``Bad_Name`` is a perfectly good string to them), so a
   hand-written subset of apimachinery's / the core registry's validation runs next
   and reports 422 Invalid with the same field paths and messages as the real API.

Not a complete copy of the API server's validation: see ``SEMANTIC_CHECKS`` below for
what is covered.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import kubernetes_validate
from kubernetes.utils.quantity import parse_quantity

#: Kubernetes version whose schemas are used (the newest the package ships).
SCHEMA_VERSION = kubernetes_validate.latest_version()
SCHEMA_PACKAGE = f"kubernetes-validate {kubernetes_validate.__version__}"

SEMANTIC_CHECKS = """\
metadata: name (DNS-1123 subdomain/label, or path segment for RBAC), generateName,
  label keys and values, annotation keys and total size, ownerReferences fields;
Pod: container/initContainer names (DNS-1123 label, unique), image required, ports
  (range, IANA names, unique), env names and valueFrom (exactly one source),
  volumes (DNS-1123 label, unique, exactly one source, secret name/items/modes),
  volumeMounts (known volume, mountPath, unique), resources (quantity syntax,
  requests <= limits, extended resources integer and requests == limits),
  restartPolicy/dnsPolicy/imagePullPolicy enums, nodeSelector labels,
  securityContext ids >= 0, terminationGracePeriodSeconds/activeDeadlineSeconds;
Secret: data keys, base64 payloads, 1 MiB size, immutable;
Role: rules (verbs, apiGroups/resources required); RoleBinding: roleRef, subjects;
Namespace: DNS-1123 label; Service: ports, selector; ConfigMap: keys."""

DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN = DNS1123_LABEL + r"(\." + DNS1123_LABEL + r")*"
QUALIFIED_NAME = r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE = r"(" + QUALIFIED_NAME + r")?"
CONFIG_KEY = r"[-._a-zA-Z0-9]+"
ENV_VAR_NAME = r"[-._a-zA-Z][-._a-zA-Z0-9]*"
QUANTITY = r"[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"

MSG_LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
    "or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  "
    "or '123-abc', regex used for validation is '" + DNS1123_LABEL + "')"
)
MSG_SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
    "'-' or '.', and must start and end with an alphanumeric character (e.g. "
    "'example.com', regex used for validation is '" + DNS1123_SUBDOMAIN + "')"
)
MSG_QNAME = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', "
    "regex used for validation is '" + QUALIFIED_NAME + "')"
)
MSG_LABEL_VALUE = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', "
    "'_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  "
    "or 'my_value',  or '12345', regex used for validation is '" + LABEL_VALUE + "')"
)
MSG_CONFIG_KEY = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
    "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '"
    + CONFIG_KEY
    + "')"
)
MSG_ENV = (
    "a valid environment variable name must consist of alphabetic characters, digits, "
    "'_', '-', or '.', and must not start with a digit (e.g. 'my.env-name',  or "
    "'MY_ENV.NAME',  or 'MyEnvName1', regex used for validation is '" + ENV_VAR_NAME + "')"
)
MSG_QUANTITY = "must match the regex " + QUANTITY.replace("\\", "")

STANDARD_RESOURCES = {"cpu", "memory", "ephemeral-storage", "storage", "pods"}


@dataclass
class Cause:
    """One field error, in the shape of a metav1.StatusCause."""

    reason: str
    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class DecodeError(Exception):
    """What the real API server reports as 400 BadRequest (a body it can't decode)."""


# ------------------------------------------------------------------ field errors
def _quote(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return json.dumps(value, sort_keys=True)


def invalid(field: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", field, f"Invalid value: {_quote(value)}: {detail}")


def required(field: str, detail: str = "") -> Cause:
    return Cause("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))


def duplicate(field: str, value: Any) -> Cause:
    return Cause("FieldValueDuplicate", field, f"Duplicate value: {_quote(value)}")


def not_supported(field: str, value: Any, supported: Iterable[str]) -> Cause:
    values = ", ".join(json.dumps(s) for s in supported)
    return Cause(
        "FieldValueNotSupported",
        field,
        f"Unsupported value: {_quote(value)}: supported values: {values}",
    )


def forbidden(field: str, detail: str) -> Cause:
    return Cause("FieldValueForbidden", field, f"Forbidden: {detail}")


def too_long(field: str, limit: int) -> Cause:
    return Cause("FieldValueTooLong", field, f"Too long: may not be more than {limit} bytes")


# ---------------------------------------------------------------- string checks
def is_dns1123_label(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(DNS1123_LABEL, value):
        errs.append(MSG_LABEL)
    return errs


def is_dns1123_subdomain(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not re.fullmatch(DNS1123_SUBDOMAIN, value):
        errs.append(MSG_SUBDOMAIN)
    return errs


def is_path_segment_name(value: Any) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{c}'" for c in "/%" if c in value]


def is_qualified_name(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    parts = value.split("/")
    if len(parts) > 2:
        return [
            "a qualified name " + MSG_QNAME.replace("name part ", "") + " with an optional "
            "DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    errs = []
    name = parts[-1]
    if len(parts) == 2:
        prefix = parts[0]
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += ["prefix part " + e for e in is_dns1123_subdomain(prefix)]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if name and not re.fullmatch(QUALIFIED_NAME, name):
        errs.append(MSG_QNAME)
    return errs


def is_label_value(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not re.fullmatch(LABEL_VALUE, value):
        errs.append(MSG_LABEL_VALUE)
    return errs


def is_config_key(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not re.fullmatch(CONFIG_KEY, value):
        errs.append(MSG_CONFIG_KEY)
    if value == ".":
        errs.append("must not be '.'")
    elif value == "..":
        errs.append("must not be '..'")
    elif value.startswith(".."):
        errs.append("must not start with '..'")
    return errs


def is_iana_svc_name(value: Any) -> list[str]:
    if not isinstance(value, str):
        return ["must be a string"]
    errs = []
    if len(value) > 15:
        errs.append("must be no more than 15 characters")
    if not re.fullmatch(r"[-a-z0-9]+", value):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if "--" in value:
        errs.append("must not contain consecutive hyphens")
    if not re.search(r"[a-z]", value):
        errs.append("must contain at least one letter (a-z)")
    if value.startswith("-") or value.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def quantity_value(value: Any) -> Decimal | None:
    """The value of a Quantity (string or number), or None if it isn't one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return Decimal(str(value))
    if not isinstance(value, str) or not re.fullmatch(QUANTITY, value):
        return None
    try:
        return Decimal(parse_quantity(value))
    except (ValueError, ArithmeticError):
        return None


# ------------------------------------------------------------------ schemas
def schema_check(obj: dict[str, Any]) -> list[Cause]:
    """Validate against the official schemas; decode-class errors raise DecodeError."""
    try:
        kubernetes_validate.validate(obj, SCHEMA_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = _json_path(list(e.absolute_path))
        if e.validator == "required":
            missing = re.match(r"'([^']+)' is a required property", e.message)
            name = missing.group(1) if missing else "?"
            return [required(f"{path}.{name}" if path else name)]
        if e.validator == "additionalProperties":
            unknown = re.findall(r"'([^']+)'", e.message.split("(")[-1])
            fields = ", ".join(f'unknown field "{path + "." if path else ""}{u}"' for u in unknown)
            raise DecodeError(f"strict decoding error: {fields}") from None
        raise DecodeError(
            f"json: cannot unmarshal {_json_type(e.instance)} into Go struct field "
            f"{path or '.'} ({e.message})"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as e:
        raise DecodeError(e.message) from None
    return []


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "bool"}.get(
        type(value), "number" if isinstance(value, (int, float)) else "null"
    )


def _json_path(parts: list[Any]) -> str:
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out


# ---------------------------------------------------------------- semantics
def validate_metadata(
    meta: dict[str, Any], *, namespaced: bool, name_rule: str = "subdomain"
) -> list[Cause]:
    errs: list[Cause] = []
    name = meta.get("name")
    gen = meta.get("generateName")
    check = {
        "subdomain": is_dns1123_subdomain,
        "label": is_dns1123_label,
        "path": is_path_segment_name,
    }[name_rule]
    if not name and not gen:
        errs.append(required("metadata.name", "name or generateName is required"))
    if name:
        errs += [invalid("metadata.name", name, m) for m in check(name)]
    if gen and not name:
        # the generated suffix is lower-case alphanumeric, so check a sample name
        errs += [invalid("metadata.generateName", gen, m) for m in check(gen + "abcde")]
    if namespaced:
        ns = meta.get("namespace")
        if not ns:
            errs.append(required("metadata.namespace"))
        else:
            errs += [invalid("metadata.namespace", ns, m) for m in is_dns1123_label(ns)]
    elif meta.get("namespace"):
        errs.append(forbidden("metadata.namespace", "not allowed on this type"))
    errs += validate_labels(meta.get("labels") or {}, "metadata.labels")
    annotations = meta.get("annotations") or {}
    for key in annotations:
        errs += [invalid("metadata.annotations", key, m) for m in is_qualified_name(key.lower())]
    if sum(len(k) + len(v or "") for k, v in annotations.items()) > 256 * 1024:
        errs.append(too_long("metadata.annotations", 256 * 1024))
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        path = f"metadata.ownerReferences[{i}]"
        for field in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(field):
                errs.append(required(f"{path}.{field}"))
    return errs


def validate_labels(labels: dict[str, Any], path: str) -> list[Cause]:
    errs: list[Cause] = []
    for key, value in labels.items():
        errs += [invalid(path, key, m) for m in is_qualified_name(key)]
        errs += [invalid(path, value, m) for m in is_label_value(value)]
    return errs


def validate_pod(pod: dict[str, Any]) -> list[Cause]:
    spec = pod.get("spec") or {}
    errs: list[Cause] = []
    volumes = spec.get("volumes") or []
    vol_names: set[str] = set()
    for i, vol in enumerate(volumes):
        path = f"spec.volumes[{i}]"
        name = vol.get("name", "")
        if not name:
            errs.append(required(f"{path}.name"))
        else:
            errs += [invalid(f"{path}.name", name, m) for m in is_dns1123_label(name)]
            if name in vol_names:
                errs.append(duplicate(f"{path}.name", name))
            vol_names.add(name)
        sources = [k for k in vol if k != "name"]
        if not sources:
            errs.append(required(path, "must specify a volume type"))
        elif len(sources) > 1:
            errs.append(
                forbidden(f"{path}.{sources[1]}", "may not specify more than 1 volume type")
            )
        if "secret" in vol:
            errs += validate_secret_volume(vol["secret"] or {}, f"{path}.secret")
    if not spec.get("containers"):
        errs.append(required("spec.containers"))
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            errs += validate_container(c, f"spec.{group}[{i}]", vol_names, seen)
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in ("Always", "OnFailure", "Never"):
        errs.append(not_supported("spec.restartPolicy", policy, ["Always", "OnFailure", "Never"]))
    dns = spec.get("dnsPolicy")
    dns_ok = ["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"]
    if dns is not None and dns not in dns_ok:
        errs.append(not_supported("spec.dnsPolicy", dns, dns_ok))
    errs += validate_labels(spec.get("nodeSelector") or {}, "spec.nodeSelector")
    for field in ("terminationGracePeriodSeconds",):
        if (spec.get(field) or 0) < 0:
            errs.append(invalid(f"spec.{field}", spec[field], "must be greater than or equal to 0"))
    ads = spec.get("activeDeadlineSeconds")
    if ads is not None and ads <= 0:
        errs.append(invalid("spec.activeDeadlineSeconds", ads, "must be between 1 and 2147483647"))
    errs += validate_security_context(spec.get("securityContext") or {}, "spec.securityContext")
    if spec.get("serviceAccountName"):
        errs += [
            invalid("spec.serviceAccountName", spec["serviceAccountName"], m)
            for m in is_dns1123_subdomain(spec["serviceAccountName"])
        ]
    if spec.get("hostname"):
        errs += [
            invalid("spec.hostname", spec["hostname"], m)
            for m in is_dns1123_label(spec["hostname"])
        ]
    return errs


def validate_security_context(sc: dict[str, Any], path: str) -> list[Cause]:
    errs = []
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        value = sc.get(field)
        if value is not None and not 0 <= value <= 2147483647:
            errs.append(
                invalid(f"{path}.{field}", value, "must be between 0 and 2147483647, inclusive")
            )
    for i, gid in enumerate(sc.get("supplementalGroups") or []):
        if not 0 <= gid <= 2147483647:
            errs.append(
                invalid(
                    f"{path}.supplementalGroups[{i}]",
                    gid,
                    "must be between 0 and 2147483647, inclusive",
                )
            )
    return errs


def validate_secret_volume(src: dict[str, Any], path: str) -> list[Cause]:
    errs: list[Cause] = []
    if not src.get("secretName"):
        errs.append(required(f"{path}.secretName"))
    else:
        errs += [
            invalid(f"{path}.secretName", src["secretName"], m)
            for m in is_dns1123_subdomain(src["secretName"])
        ]
    mode = src.get("defaultMode")
    if mode is not None and not 0 <= mode <= 0o777:
        errs.append(
            invalid(
                f"{path}.defaultMode",
                mode,
                "must be a number between 0 and 0777 (octal), both inclusive",
            )
        )
    paths: set[str] = set()
    for i, item in enumerate(src.get("items") or []):
        ipath = f"{path}.items[{i}]"
        if not item.get("key"):
            errs.append(required(f"{ipath}.key"))
        p = item.get("path", "")
        if not p:
            errs.append(required(f"{ipath}.path"))
        elif p.startswith("/"):
            errs.append(invalid(f"{ipath}.path", p, "must be a relative path"))
        elif ".." in p.split("/"):
            errs.append(invalid(f"{ipath}.path", p, "must not contain '..'"))
        elif p.startswith(".."):
            errs.append(invalid(f"{ipath}.path", p, "must not start with '..'"))
        if p in paths:
            errs.append(duplicate(f"{ipath}.path", p))
        paths.add(p)
        m = item.get("mode")
        if m is not None and not 0 <= m <= 0o777:
            errs.append(
                invalid(
                    f"{ipath}.mode",
                    m,
                    "must be a number between 0 and 0777 (octal), both inclusive",
                )
            )
    return errs


def validate_container(
    c: dict[str, Any], path: str, volumes: set[str], seen: set[str]
) -> list[Cause]:
    errs: list[Cause] = []
    name = c.get("name", "")
    if not name:
        errs.append(required(f"{path}.name"))
    else:
        errs += [invalid(f"{path}.name", name, m) for m in is_dns1123_label(name)]
        if name in seen:
            errs.append(duplicate(f"{path}.name", name))
        seen.add(name)
    if not (c.get("image") or "").strip():
        errs.append(required(f"{path}.image"))
    ipp = c.get("imagePullPolicy")
    if ipp is not None and ipp not in ("Always", "IfNotPresent", "Never"):
        errs.append(
            not_supported(f"{path}.imagePullPolicy", ipp, ["Always", "IfNotPresent", "Never"])
        )
    port_names: set[str] = set()
    for i, port in enumerate(c.get("ports") or []):
        ppath = f"{path}.ports[{i}]"
        cp = port.get("containerPort")
        if cp is None or not 1 <= cp <= 65535:
            errs.append(
                invalid(f"{ppath}.containerPort", cp, "must be between 1 and 65535, inclusive")
            )
        if port.get("name"):
            errs += [
                invalid(f"{ppath}.name", port["name"], m) for m in is_iana_svc_name(port["name"])
            ]
            if port["name"] in port_names:
                errs.append(duplicate(f"{ppath}.name", port["name"]))
            port_names.add(port["name"])
        proto = port.get("protocol")
        if proto is not None and proto not in ("TCP", "UDP", "SCTP"):
            errs.append(not_supported(f"{ppath}.protocol", proto, ["SCTP", "TCP", "UDP"]))
    for i, env in enumerate(c.get("env") or []):
        epath = f"{path}.env[{i}]"
        ename = env.get("name", "")
        if not ename:
            errs.append(required(f"{epath}.name"))
        elif not re.fullmatch(ENV_VAR_NAME, ename):
            errs.append(invalid(f"{epath}.name", ename, MSG_ENV))
        vf = env.get("valueFrom")
        if vf is not None:
            sources = [k for k, v in vf.items() if v is not None]
            if len(sources) != 1:
                errs.append(
                    invalid(
                        f"{epath}.valueFrom",
                        "",
                        "may not have more than one field specified at a time",
                    )
                )
            if env.get("value"):
                errs.append(
                    invalid(
                        f"{epath}.valueFrom", "", "may not be specified when `value` is not empty"
                    )
                )
            for ref in ("secretKeyRef", "configMapKeyRef"):
                if ref in vf:
                    r = vf[ref] or {}
                    if not r.get("name"):
                        errs.append(required(f"{epath}.valueFrom.{ref}.name"))
                    if not r.get("key"):
                        errs.append(required(f"{epath}.valueFrom.{ref}.key"))
                    else:
                        errs += [
                            invalid(f"{epath}.valueFrom.{ref}.key", r["key"], m)
                            for m in is_config_key(r["key"])
                        ]
    mounts: set[str] = set()
    for i, vm in enumerate(c.get("volumeMounts") or []):
        mpath = f"{path}.volumeMounts[{i}]"
        vname = vm.get("name", "")
        if not vname:
            errs.append(required(f"{mpath}.name"))
        elif vname not in volumes:
            errs.append(Cause("FieldValueNotFound", f"{mpath}.name", f"Not found: {_quote(vname)}"))
        mp = vm.get("mountPath", "")
        if not mp:
            errs.append(required(f"{mpath}.mountPath"))
        elif mp in mounts:
            errs.append(invalid(f"{mpath}.mountPath", mp, "must be unique"))
        mounts.add(mp)
    errs += validate_resources(c.get("resources") or {}, f"{path}.resources")
    errs += validate_security_context(c.get("securityContext") or {}, f"{path}.securityContext")
    return errs


def validate_resources(res: dict[str, Any], path: str) -> list[Cause]:
    errs: list[Cause] = []
    values: dict[str, dict[str, Decimal]] = {"limits": {}, "requests": {}}
    for kind in ("limits", "requests"):
        for rname, q in (res.get(kind) or {}).items():
            rpath = f"{path}.{kind}[{rname}]"
            errs += [invalid(f"{path}.{kind}", rname, m) for m in is_qualified_name(rname)]
            v = quantity_value(q)
            if v is None:
                errs.append(invalid(rpath, q, MSG_QUANTITY))
                continue
            if v < 0:
                errs.append(invalid(rpath, q, "must be greater than or equal to 0"))
            if (
                rname not in STANDARD_RESOURCES
                and not rname.startswith("hugepages-")
                and v != v.to_integral_value()
            ):
                errs.append(invalid(rpath, q, "must be an integer"))
            values[kind][rname] = v
    for rname, req in values["requests"].items():
        lim = values["limits"].get(rname)
        extended = "/" in rname and not rname.startswith("kubernetes.io/")
        if extended and lim is None:
            errs.append(
                forbidden(f"{path}.limits", "Limit must be set for non overcommitable resources")
            )
        if lim is not None and req > lim:
            errs.append(
                invalid(
                    f"{path}.requests",
                    res["requests"][rname],
                    f"must be less than or equal to {rname} limit of {res['limits'][rname]}",
                )
            )
        if extended and lim is not None and req != lim:
            errs.append(
                invalid(
                    f"{path}.requests",
                    res["requests"][rname],
                    f"must be equal to {rname} limit of {res['limits'][rname]}",
                )
            )
    return errs


def validate_secret(secret: dict[str, Any]) -> list[Cause]:
    errs: list[Cause] = []
    total = 0
    for key, value in (secret.get("data") or {}).items():
        errs += [invalid("data", key, m) for m in is_config_key(key)]
        total += len(base64.b64decode(value or ""))
    if total > 1024 * 1024:
        errs.append(too_long("data", 1024 * 1024))
    return errs


def decode_secret_data(data: dict[str, Any]) -> None:
    """The real server decodes []byte fields; bad base64 is a 400 there."""
    for key, value in (data or {}).items():
        if value is None:
            continue
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise DecodeError(f"illegal base64 data in data[{key}]") from None


def validate_configmap(cm: dict[str, Any]) -> list[Cause]:
    errs: list[Cause] = []
    for field in ("data", "binaryData"):
        for key in cm.get(field) or {}:
            errs += [invalid(field, key, m) for m in is_config_key(key)]
    return errs


def validate_role(role: dict[str, Any]) -> list[Cause]:
    errs: list[Cause] = []
    for i, rule in enumerate(role.get("rules") or []):
        path = f"rules[{i}]"
        if not rule.get("verbs"):
            errs.append(required(f"{path}.verbs", "verbs must contain at least one value"))
        if rule.get("nonResourceURLs"):
            errs.append(
                invalid(
                    f"{path}.nonResourceURLs",
                    rule["nonResourceURLs"],
                    "namespaced rules cannot apply to non-resource URLs",
                )
            )
            continue
        if not rule.get("apiGroups"):
            errs.append(
                required(f"{path}.apiGroups", "resource rules must supply at least one api group")
            )
        if not rule.get("resources"):
            errs.append(
                required(f"{path}.resources", "resource rules must supply at least one resource")
            )
    return errs


def validate_rolebinding(rb: dict[str, Any]) -> list[Cause]:
    errs: list[Cause] = []
    ref = rb.get("roleRef") or {}
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        errs.append(
            not_supported(
                "roleRef.apiGroup", ref.get("apiGroup", ""), ["rbac.authorization.k8s.io"]
            )
        )
    if ref.get("kind") not in ("Role", "ClusterRole"):
        errs.append(not_supported("roleRef.kind", ref.get("kind", ""), ["Role", "ClusterRole"]))
    if not ref.get("name"):
        errs.append(required("roleRef.name"))
    else:
        errs += [invalid("roleRef.name", ref["name"], m) for m in is_path_segment_name(ref["name"])]
    for i, subj in enumerate(rb.get("subjects") or []):
        path = f"subjects[{i}]"
        kind = subj.get("kind")
        if not subj.get("name"):
            errs.append(required(f"{path}.name"))
        if kind == "ServiceAccount":
            if subj.get("apiGroup"):
                errs.append(not_supported(f"{path}.apiGroup", subj["apiGroup"], [""]))
            if subj.get("name"):
                errs += [
                    invalid(f"{path}.name", subj["name"], m)
                    for m in is_dns1123_subdomain(subj["name"])
                ]
        elif kind in ("User", "Group"):
            if subj.get("apiGroup") != "rbac.authorization.k8s.io":
                errs.append(
                    not_supported(
                        f"{path}.apiGroup", subj.get("apiGroup", ""), ["rbac.authorization.k8s.io"]
                    )
                )
        else:
            errs.append(not_supported(f"{path}.kind", kind, ["ServiceAccount", "User", "Group"]))
    return errs


def validate_service(svc: dict[str, Any]) -> list[Cause]:
    spec = svc.get("spec") or {}
    errs: list[Cause] = []
    stype = spec.get("type", "ClusterIP")
    if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errs.append(
            not_supported(
                "spec.type", stype, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]
            )
        )
    ports = spec.get("ports") or []
    if not ports and stype != "ExternalName" and spec.get("clusterIP") != "None":
        errs.append(required("spec.ports"))
    names: set[str] = set()
    for i, p in enumerate(ports):
        path = f"spec.ports[{i}]"
        if not 1 <= (p.get("port") or 0) <= 65535:
            errs.append(
                invalid(f"{path}.port", p.get("port"), "must be between 1 and 65535, inclusive")
            )
        if len(ports) > 1 and not p.get("name"):
            errs.append(required(f"{path}.name"))
        if p.get("name"):
            errs += [invalid(f"{path}.name", p["name"], m) for m in is_dns1123_label(p["name"])]
            if p["name"] in names:
                errs.append(duplicate(f"{path}.name", p["name"]))
            names.add(p["name"])
        tp = p.get("targetPort")
        if isinstance(tp, int) and not 1 <= tp <= 65535:
            errs.append(invalid(f"{path}.targetPort", tp, "must be between 1 and 65535, inclusive"))
        elif isinstance(tp, str):
            errs += [invalid(f"{path}.targetPort", tp, m) for m in is_iana_svc_name(tp)]
    errs += validate_labels(spec.get("selector") or {}, "spec.selector")
    return errs


KIND_CHECKS = {
    "Pod": validate_pod,
    "Secret": validate_secret,
    "ConfigMap": validate_configmap,
    "Role": validate_role,
    "RoleBinding": validate_rolebinding,
    "Service": validate_service,
}

NAME_RULES = {"Namespace": "label", "Role": "path", "RoleBinding": "path", "Service": "label"}


def validate(obj: dict[str, Any], *, namespaced: bool) -> list[Cause]:
    """Every 422-class error of ``obj``; raises DecodeError for 400-class ones."""
    kind = obj.get("kind", "")
    if kind == "Secret":
        decode_secret_data(obj.get("data") or {})
    causes = schema_check(obj)
    if causes:
        return causes
    meta = obj.get("metadata") or {}
    causes = validate_metadata(
        meta, namespaced=namespaced, name_rule=NAME_RULES.get(kind, "subdomain")
    )
    check = KIND_CHECKS.get(kind)
    if check is not None:
        causes += check(obj)
    return causes
