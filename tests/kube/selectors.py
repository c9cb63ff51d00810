"""TEST INFRASTRUCTURE: label and field selectors, and object patches, for the
stand-in Kubernetes API server (tests/kube/apiserver.py).

Label selectors follow apimachinery's grammar: ``a=b``, ``a==b``, ``a!=b``,
``a in (x,y)``, ``a notin (x,y)``, ``a`` (exists), ``!a`` (does not exist),
comma separated.  Field selectors support ``=``, ``==`` and ``!=`` on the fields
the real API server indexes for each resource (others are a 400 like there).

Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and an approximation of
strategic merge patch (lists of the usual built-in types merged by their merge key,
``$patch: delete|replace``, ``$deleteFromPrimitiveList/``, finalizers as a set).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from .validation import is_label_value, is_qualified_name


class SelectorError(ValueError):
    """An unparsable selector (a 400 BadRequest on the real API server)."""


class PatchError(ValueError):
    """A patch that can't be applied (422 on the real API server)."""


# ------------------------------------------------------------ label selectors
@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        has = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and value in self.values
        # "!=" and "notin" match objects without the label too
        return not has or value not in self.values


_TOKEN = re.compile(r"\s*(\(|\)|,|!=|==|=|!|[^\s(),=!]+)")


def parse_label_selector(text: str | None) -> list[Requirement]:
    """Parse a label selector string; an empty one selects everything."""
    if not text or not text.strip():
        return []
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m:
            raise SelectorError(f"unable to parse requirement: {text[pos:]!r}")
        tokens.append(m.group(1))
        pos = m.end()
    reqs: list[Requirement] = []
    i = 0

    def key_at(j: int) -> str:
        if j >= len(tokens) or tokens[j] in ("(", ")", ",", "=", "==", "!=", "!"):
            raise SelectorError(
                f"unable to parse requirement: found '{tokens[j] if j < len(tokens) else ''}', "
                "expected: identifier"
            )
        errs = is_qualified_name(tokens[j])
        if errs:
            raise SelectorError(
                f'unable to parse requirement: invalid label key "{tokens[j]}": {"; ".join(errs)}'
            )
        return tokens[j]

    while i < len(tokens):
        if tokens[i] == "!":
            reqs.append(Requirement(key_at(i + 1), "!"))
            i += 2
        else:
            key = key_at(i)
            i += 1
            if i >= len(tokens) or tokens[i] == ",":
                reqs.append(Requirement(key, "exists"))
            elif tokens[i] in ("=", "==", "!="):
                op = "!=" if tokens[i] == "!=" else "="
                value = (
                    tokens[i + 1]
                    if i + 1 < len(tokens) and tokens[i + 1] not in (",", "(", ")")
                    else ""
                )
                if value and is_label_value(value):
                    raise SelectorError(
                        f'unable to parse requirement: invalid label value: "{value}"'
                    )
                reqs.append(Requirement(key, op, (value,)))
                i += 2 if value else 1
            elif tokens[i] in ("in", "notin"):
                op = tokens[i]
                if i + 1 >= len(tokens) or tokens[i + 1] != "(":
                    raise SelectorError("unable to parse requirement: found '', expected: '('")
                j = i + 2
                values: list[str] = []
                while j < len(tokens) and tokens[j] != ")":
                    if tokens[j] != ",":
                        values.append(tokens[j])
                    j += 1
                if j >= len(tokens):
                    raise SelectorError("unable to parse requirement: found '', expected: ')'")
                reqs.append(Requirement(key, op, tuple(values)))
                i = j + 1
            else:
                raise SelectorError(
                    f"unable to parse requirement: found '{tokens[i]}', expected: in, notin, "
                    "=, ==, !=, ',' or end of string"
                )
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(
                    f"unable to parse requirement: found '{tokens[i]}', expected: ','"
                )
            i += 1
    return reqs


def labels_match(reqs: list[Requirement], obj: dict[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(r.matches(labels) for r in reqs)


# ------------------------------------------------------------ field selectors
COMMON_FIELDS = ("metadata.name", "metadata.namespace")
FIELDS_BY_KIND = {
    "Pod": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "Event": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
    "Secret": ("type",),
    "Namespace": ("status.phase",),
}


def parse_field_selector(text: str | None, kind: str) -> list[tuple[str, str, str]]:
    if not text or not text.strip():
        return []
    allowed = COMMON_FIELDS + FIELDS_BY_KIND.get(kind, ())
    out = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*", part)
        if not m:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{part}'")
        field, op, value = m.groups()
        if field not in allowed:
            raise SelectorError(f"field label not supported: {field}")
        out.append((field, "!=" if op == "!=" else "=", value))
    return out


def _field_value(obj: dict[str, Any], field: str) -> str:
    if field == "source":
        return str((obj.get("source") or {}).get("component") or "")
    cur: Any = obj
    for part in field.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    if isinstance(cur, bool):
        return str(cur).lower()
    return "" if cur is None else str(cur)


def fields_match(reqs: list[tuple[str, str, str]], obj: dict[str, Any]) -> bool:
    for field, op, value in reqs:
        actual = _field_value(obj, field)
        if (actual == value) != (op == "="):
            return False
    return True


# --------------------------------------------------------------------- patches
def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "imagePullSecrets": "name",
    "containerStatuses": "name",
    "initContainerStatuses": "name",
    "volumeMounts": "mountPath",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "podIPs": "ip",
}
SET_LISTS = {"finalizers"}


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """An approximation of strategic merge patch for the built-in types we serve."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field) or [] if v not in value]
            continue
        if key.startswith("$"):
            continue  # $setElementOrder, $retainKeys: ordering/pruning hints only
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(key, result[key], value)
        else:
            merged = strategic_merge_patch(result.get(key), value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(field: str, current: list[Any], patch: list[Any]) -> list[Any]:
    if field in SET_LISTS:
        return current + [v for v in patch if v not in current]
    key = MERGE_KEYS.get(field)
    if field == "ports" and current and isinstance(current[0], dict):
        key = "containerPort" if "containerPort" in current[0] else "port"
    if key is None or not all(isinstance(v, dict) for v in current + patch):
        if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
            return [v for v in patch if not (isinstance(v, dict) and "$patch" in v)]
        return copy.deepcopy(patch)
    out = [copy.deepcopy(v) for v in current]
    for item in patch:
        if item.get("$patch") == "replace":
            return [copy.deepcopy(v) for v in patch if "$patch" not in v]
        idx = next((i for i, v in enumerate(out) if v.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
        elif idx is None:
            out.append(copy.deepcopy(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    cur = doc
    for p in parts:
        if isinstance(cur, dict) and p in cur:
            cur = cur[p]
        elif isinstance(cur, list) and p.isdigit() and int(p) < len(cur):
            cur = cur[int(p)]
        else:
            raise PatchError(f"path /{'/'.join(parts)} not found")
    return cur


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch."""
    if not isinstance(ops, list):
        raise PatchError("json patch must be a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op.get("op")
        parts = _pointer(op.get("path", ""))
        if kind in ("add", "replace", "test", "remove") and not parts and kind != "test":
            if kind == "remove":
                raise PatchError("cannot remove the root")
            doc = copy.deepcopy(op.get("value"))
            continue
        if kind == "test":
            if _walk(doc, parts) != op.get("value"):
                raise PatchError(f"testing value /{'/'.join(parts)} failed")
            continue
        if kind in ("move", "copy"):
            src = _pointer(op.get("from", ""))
            value = copy.deepcopy(_walk(doc, src))
            if kind == "move":
                doc = json_patch(doc, [{"op": "remove", "path": op["from"]}])
            doc = json_patch(doc, [{"op": "add", "path": op["path"], "value": value}])
            continue
        parent = _walk(doc, parts[:-1])
        last = parts[-1]
        if kind == "add":
            if isinstance(parent, list):
                if last == "-":
                    parent.append(copy.deepcopy(op.get("value")))
                elif last.isdigit() and int(last) <= len(parent):
                    parent.insert(int(last), copy.deepcopy(op.get("value")))
                else:
                    raise PatchError(f"index {last} out of range")
            elif isinstance(parent, dict):
                parent[last] = copy.deepcopy(op.get("value"))
            else:
                raise PatchError(f"cannot add to /{'/'.join(parts[:-1])}")
        elif kind in ("remove", "replace"):
            _walk(doc, parts)  # must exist
            if isinstance(parent, list):
                if kind == "remove":
                    parent.pop(int(last))
                else:
                    parent[int(last)] = copy.deepcopy(op.get("value"))
            elif kind == "remove":
                del parent[last]
            else:
                parent[last] = copy.deepcopy(op.get("value"))
        else:
            raise PatchError(f"unknown json patch operation {kind!r}")
    return doc
