"""Print the requirements needed to build and install the project described
by a pyproject.toml *before* its sources are copied in (Docker layer caching):
[build-system].requires + [project].dependencies + the requested extras.

usage: python pyproject-reqs.py PYPROJECT [EXTRA ...]
"""

import sys

try:
    import tomllib
except ImportError:  # Python < 3.11: pip vendors tomli
    from pip._vendor import tomli as tomllib


def main() -> None:
    path, extras = sys.argv[1], " ".join(sys.argv[2:]).replace(",", " ").split()
    with open(path, "rb") as f:
        data = tomllib.load(f)
    project = data.get("project", {})
    reqs = list(data.get("build-system", {}).get("requires", ["setuptools", "wheel"]))
    reqs += project.get("dependencies", [])
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            sys.exit(f"pyproject-reqs: unknown extra {extra!r} (have: {', '.join(optional)})")
        reqs += optional[extra]
    print("\n".join(reqs))


if __name__ == "__main__":
    main()
