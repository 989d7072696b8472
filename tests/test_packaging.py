"""What ships agrees with the code: the Dockerfile and the Kubernetes manifests are checked
against pyproject.toml, client/pyproject.toml and the server's own defaults.

hadolint and kubernetes-validate (dev/check_deploy.py, `make lint`) judge each file alone;
these tests catch the drift between files that no linter sees: a port changed in config.py
but not in the probes, a distribution renamed in pyproject but not in the image.
"""

from __future__ import annotations

import dataclasses
import email
import hashlib
import json
import re
import shlex
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from avatarsigner.contract import SERVICE_NAME
from avatarsigner_server.access import callers
from avatarsigner_server.app.server import HEALTH_SERVICES
from avatarsigner_server.commands import cli
from avatarsigner_server.settings import Settings
from doc_examples import callers_file_example
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version
from pki import Pki
from servers import access_control, settings_from

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
CLIENT_DIR = "client"

# --- the sources of truth -----------------------------------------------------------------


def _toml(path: Path) -> dict[str, Any]:
    with path.open("rb") as stream:
        return tomllib.load(stream)


def _pyproject(directory: Path) -> dict[str, Any]:
    project: dict[str, Any] = _toml(directory / "pyproject.toml")["project"]
    return project


PYPROJECT = _toml(ROOT / "pyproject.toml")
SERVER_PROJECT = _pyproject(ROOT)
CLIENT_PROJECT = _pyproject(ROOT / CLIENT_DIR)
LOCKED = {canonicalize_name(p["name"]): p for p in _toml(ROOT / "uv.lock")["package"]}
DEFAULTS = {f.name: f.default for f in dataclasses.fields(Settings)}
GRPC_PORT = DEFAULTS["grpc_port"]
METRICS_PORT = DEFAULTS["metrics_port"]


# --- a small Dockerfile reader --------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[tuple[str, str]]  # (KEYWORD, arguments)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.image}"
        return found[-1]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction; continuations joined, comment lines dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue  # comments (and parser directives) and blank lines, also mid-instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, args = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def _stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(the global ARGs' defaults, the stages); a FROM's ${ARG} is replaced by its default."""
    arguments: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, args in _instructions(text):
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            arguments[name] = default
        elif keyword == "FROM":
            words = args.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: arguments[m[1]], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image, name, []))
        else:
            assert stages, f"{keyword} before the first FROM"
            stages[-1].instructions.append((keyword, args))
    return arguments, stages


def _commands(stage: Stage) -> list[list[str]]:
    """Each simple command the stage's RUN instructions run (split at &&, ; and |)."""
    commands = []
    for run in stage.all("RUN"):
        words = shlex.split(run)
        while words and words[0].startswith("--mount"):
            words = words[1:]  # RUN's own flags
        command: list[str] = []
        for word in [*words, ";"]:
            if word in {"&&", ";", "||", "|", "then", "fi"} or word.endswith(";"):
                if word.endswith(";") and word != ";":
                    command.append(word[:-1])
                if command:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def _program(command: list[str]) -> str:
    return PurePosixPath(command[0]).name


def _run_mounts(stage: Stage) -> list[str]:
    return [
        word for run in stage.all("RUN") for word in shlex.split(run) if word.startswith("--mount")
    ]


ARGUMENTS, DOCKERFILE = _stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))
BUILDER, RUNTIME = DOCKERFILE[0], DOCKERFILE[-1]
BASE_IMAGE = re.compile(r"debian:(?P<release>[a-z]+)-slim@sha256:[0-9a-f]{64}")
# The python3 each Debian release ships (and keeps patched): what the image runs.
DEBIAN_PYTHON = {"bookworm": Version("3.11.2")}


# --- the image ----------------------------------------------------------------------------


def test_image_is_built_in_stages_from_one_slim_debian_pinned_by_digest() -> None:
    assert len(DOCKERFILE) >= 2, "multi-stage: the final image must not contain the build"
    assert BASE_IMAGE.fullmatch(ARGUMENTS["BASE_IMAGE"]), ARGUMENTS["BASE_IMAGE"]
    assert {stage.image for stage in DOCKERFILE} == {ARGUMENTS["BASE_IMAGE"]}, (
        "one base, a build argument: the environment is built for the python3 that runs it"
    )


@pytest.mark.parametrize("project", [SERVER_PROJECT, CLIENT_PROJECT], ids=["server", "client"])
def test_image_python_satisfies_requires_python(project: dict[str, Any]) -> None:
    match = BASE_IMAGE.fullmatch(ARGUMENTS["BASE_IMAGE"])
    assert match
    python = DEBIAN_PYTHON[match["release"]]
    assert python in SpecifierSet(project["requires-python"]), (
        f"{project['name']} requires Python {project['requires-python']}, the image has {python}"
    )


def test_both_stages_install_debians_python3_and_the_runtime_nothing_else() -> None:
    for stage in (BUILDER, RUNTIME):
        installs = [c for c in _commands(stage) if c[:2] == ["apt-get", "install"]]
        assert len(installs) == 1
        packages = {word for word in installs[0][2:] if not word.startswith("-")}
        assert "python3" in packages
        if stage is RUNTIME:
            assert packages == {"python3"}, "no compiler, no pip, no uv at run time"


def test_build_stage_installs_exactly_the_lock_without_the_dev_group() -> None:
    syncs = [c for c in _commands(BUILDER) if _program(c) == "uv"]
    assert syncs, "uv installs the environment"
    for command in syncs:
        assert command[1] == "sync", f"only `uv sync` (never `uv pip`, `uv add`): {command}"
        assert {"--frozen", "--no-dev"} <= set(command), command
    assert "--no-editable" in syncs[-1], "the image holds the projects, not links to /src"
    assert "--no-install-workspace" not in syncs[-1]
    assert not [c for c in _commands(BUILDER) if _program(c) in {"pip", "pip3"}]
    # pip runs once, inside dev/install_uv.py: the uv that uv.lock pins, hash-checked.
    (bootstrap,) = [c for c in _commands(BUILDER) if c[-1].endswith("install_uv.py")]
    assert (ROOT / "dev" / PurePosixPath(bootstrap[-1]).name).is_file()
    assert "uv" in LOCKED


def test_runtime_copies_the_built_environment_and_runs_no_installer() -> None:
    env = dict(word.split("=", 1) for args in BUILDER.all("ENV") for word in shlex.split(args))
    environment = env["UV_PROJECT_ENVIRONMENT"]
    copies = [shlex.split(args) for args in RUNTIME.all("COPY")]
    assert copies == [[f"--from={BUILDER.name}", environment, environment]]
    programs = {_program(c) for c in _commands(RUNTIME)}
    assert not programs & {"pip", "pip3", "uv", "python", "python3"}, programs
    path = dict(word.split("=", 1) for args in RUNTIME.all("ENV") for word in shlex.split(args))[
        "PATH"
    ]
    assert path.split(":")[0] == f"{environment}/bin", "avatar-signer and python from the venv"


def test_build_ca_reaches_the_build_only_as_a_secret_mount() -> None:
    """Behind a TLS-intercepting proxy the build needs its CA, and no layer may keep it."""
    for stage in DOCKERFILE:
        for mount in _run_mounts(stage):
            if "type=secret" in mount:
                assert "id=build-ca" in mount
        names = {word.split("=", 1)[0] for args in stage.all("ENV") for word in shlex.split(args)}
        assert not names & {"SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"}
        assert not any("build-ca" in args for args in stage.all("COPY") + stage.all("ADD"))
    assert [m for m in _run_mounts(BUILDER) if "type=secret" in m], "the build reads a CA"


def test_server_takes_the_client_from_this_repository_never_from_an_index() -> None:
    """uv through the workspace, pip through the file URL the build backend expands: nobody
    looks `avatar-signer-client` up on an index, where anyone could publish that name."""
    client = canonicalize_name(CLIENT_PROJECT["name"])
    (requirement,) = [
        req
        for req in map(Requirement, SERVER_PROJECT["dependencies"])
        if canonicalize_name(req.name) == client
    ]
    assert requirement.url == f"file:///${{PROJECT_ROOT}}/{CLIENT_DIR}"
    uv = PYPROJECT["tool"]["uv"]
    assert uv["sources"][CLIENT_PROJECT["name"]] == {"workspace": True}
    assert uv["workspace"]["members"] == [CLIENT_DIR]
    assert LOCKED[client]["source"] == {"editable": CLIENT_DIR}
    assert LOCKED[client]["version"] == CLIENT_PROJECT["version"]


def test_lock_takes_every_other_package_from_pypi_with_hashes() -> None:
    local = {canonicalize_name(p["name"]) for p in (SERVER_PROJECT, CLIENT_PROJECT)}
    for name, package in LOCKED.items():
        if name in local:
            continue
        assert package["source"] == {"registry": "https://pypi.org/simple"}, name
        files = [*package.get("wheels", []), *([package["sdist"]] if "sdist" in package else [])]
        assert files and all(f["hash"].startswith("sha256:") for f in files), name


def test_built_server_wheel_names_this_checkouts_client_for_pip(tmp_path: Path) -> None:
    """What `pip install .` sees: the wheel's metadata points at ./client by absolute file URL
    (built here with uv, which runs the same build backend pip would)."""
    uv = Path(sys.executable).parent / "uv"
    result = subprocess.run(
        [str(uv), "build", "--wheel", "--no-sources", "--out-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("avatar_signer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(name))
    requires = map(Requirement, metadata.get_all("Requires-Dist", []))
    client = [r for r in requires if r.name == CLIENT_PROJECT["name"]]
    assert [r.url for r in client] == [(ROOT / CLIENT_DIR).as_uri()]


def test_image_exposes_exactly_the_default_grpc_and_metrics_ports() -> None:
    exposed = {int(port.split("/")[0]) for args in RUNTIME.all("EXPOSE") for port in args.split()}
    assert exposed == {GRPC_PORT, METRICS_PORT}


def test_image_entrypoint_is_the_server_console_script_serving() -> None:
    entrypoint = json.loads(RUNTIME.last("ENTRYPOINT"))
    assert entrypoint == ["avatar-signer"]
    assert SERVER_PROJECT["scripts"]["avatar-signer"] == "avatarsigner_server.commands.cli:main"
    command = json.loads(RUNTIME.last("CMD"))
    assert cli.build_parser().parse_args(command).command == "serve"


def test_image_runs_as_a_numeric_non_root_user_the_deployment_expects() -> None:
    uid = RUNTIME.last("USER").split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    pod = _pod_spec()
    assert pod["securityContext"]["runAsUser"] == int(uid)
    assert _container()["securityContext"]["runAsUser"] == int(uid)


def test_image_bakes_in_no_settings_or_secrets() -> None:
    env_names = {word.split("=", 1)[0] for args in RUNTIME.all("ENV") for word in shlex.split(args)}
    assert not any(name.startswith(("S3_", "AWS_", "TLS_", "CALLERS")) for name in env_names)
    assert not RUNTIME.all("ARG"), "build arguments end up in the image history"


# --- the Kubernetes manifests -----------------------------------------------------------------


def _manifest(name: str) -> list[dict[str, Any]]:
    with (MANIFESTS / name).open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def _pod_spec() -> dict[str, Any]:
    (deployment,) = _manifest("deployment.yaml")
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def _container() -> dict[str, Any]:
    (container,) = _pod_spec()["containers"]
    return dict(container)


def _env() -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in _container().get("env", [])}


def _health_port() -> int:
    return int(_env()["HEALTH_PORT"]["value"])


PROBES = ["startupProbe", "livenessProbe", "readinessProbe"]


@pytest.mark.parametrize("probe", PROBES)
def test_probe_asks_a_health_service_the_server_registers(probe: str) -> None:
    grpc_probe = _container()[probe]["grpc"]
    assert grpc_probe["port"] == _health_port()
    assert grpc_probe.get("service", "") in HEALTH_SERVICES


@pytest.mark.parametrize("probe", PROBES)
def test_probe_uses_the_plaintext_health_port_not_the_tls_grpc_port(probe: str) -> None:
    """Kubelet's gRPC probes cannot do TLS: on the TLS gRPC port every probe would fail."""
    assert "TLS_CERT_FILE" in _env(), "the gRPC port is TLS in the shipped Deployment"
    assert _health_port() not in {GRPC_PORT, METRICS_PORT}
    assert _container()[probe]["grpc"]["port"] != GRPC_PORT


def test_server_reads_the_health_port_the_deployment_sets() -> None:
    assert DEFAULTS["health_port"] is None, "off by default: the Deployment must set it"
    assert settings_from(HEALTH_PORT=str(_health_port())).health_port == _health_port()


def test_readiness_follows_the_avatar_signer_service_and_liveness_the_server() -> None:
    assert _container()["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert _container()["livenessProbe"]["grpc"].get("service", "") == ""


def test_container_ports_are_the_config_defaults() -> None:
    ports = {port["name"]: port["containerPort"] for port in _container()["ports"]}
    assert ports == {"grpc": GRPC_PORT, "metrics": METRICS_PORT, "health": _health_port()}
    assert not {"GRPC_PORT", "METRICS_PORT"} & set(_env()), "ports come from the defaults"


def test_services_and_network_policy_use_the_container_ports() -> None:
    named = {port["name"] for port in _container()["ports"]}
    for name in ("service.yaml", "service-headless.yaml"):
        (service,) = _manifest(name)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in named
            assert port["targetPort"] != "health", "the plaintext health port is for the kubelet"
    (policy,) = _manifest("networkpolicy.yaml")
    admitted = {port["port"] for rule in policy["spec"]["ingress"] for port in rule["ports"]}
    assert admitted == {GRPC_PORT, METRICS_PORT}


def _prestop_seconds(prestop: dict[str, Any]) -> float:
    if "sleep" in prestop:
        return float(prestop["sleep"]["seconds"])
    command = " ".join(prestop["exec"]["command"])
    match = re.search(r"sleep\D*(\d+(?:\.\d+)?)", command)
    assert match, f"cannot read the preStop wait from {command!r}"
    return float(match[1])


def test_termination_grace_outlasts_prestop_and_drain() -> None:
    drain = float(
        _env().get("SHUTDOWN_GRACE_SECONDS", {}).get("value", DEFAULTS["shutdown_grace_seconds"])
    )
    prestop = _prestop_seconds(
        _container().get("lifecycle", {}).get("preStop", {"sleep": {"seconds": 0}})
    )
    assert _pod_spec()["terminationGracePeriodSeconds"] > prestop + drain


def test_each_identity_reads_only_its_own_secret_from_files() -> None:
    env = _env()
    for plain in ("S3_UPLOAD_KEY", "S3_UPLOAD_SECRET", "S3_READ_KEY", "S3_READ_SECRET"):
        assert plain not in env, f"{plain}: credentials as files, never in the environment"
    mounts = {mount["mountPath"]: mount for mount in _container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in _pod_spec()["volumes"]}
    examples = {secret["metadata"]["name"]: secret for secret in _manifest("secrets.example.yaml")}
    for prefix, secret_name in (
        ("S3_UPLOAD", "avatar-signer-uploader"),
        ("S3_READ", "avatar-signer-reader"),
    ):
        for suffix in ("KEY_FILE", "SECRET_FILE"):
            path = PurePosixPath(env[f"{prefix}_{suffix}"]["value"])
            mount = mounts[str(path.parent)]
            assert mount.get("readOnly") is True
            secret = volumes[mount["name"]]["secret"]
            assert secret["secretName"] == secret_name
            (item,) = [i for i in secret["items"] if i["path"] == path.name]
            assert item["key"] in examples[secret_name]["stringData"]


def test_network_policy_admits_grpc_only_from_labelled_pods_of_allowed_namespaces() -> None:
    (policy,) = _manifest("networkpolicy.yaml")
    (deployment,) = _manifest("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    peers: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "a rule without `from` admits every source"
        assert rule.get("ports"), "a rule without `ports` admits every port"
        for port in rule["ports"]:
            peers.setdefault(port["port"], []).extend(rule["from"])
    # The health port has no rule: only the kubelet, on the pod's own node, needs it, and a
    # NetworkPolicy always admits traffic from that node.
    assert set(peers) == {GRPC_PORT, METRICS_PORT}
    for peer in peers[GRPC_PORT]:
        # Both selectors in the same peer (AND); either one alone would admit far more.
        assert set(peer) == {"namespaceSelector", "podSelector"}, peer
        namespaces = peer["namespaceSelector"]
        assert namespaces.get("matchLabels") or namespaces.get("matchExpressions"), (
            "an empty namespaceSelector admits every namespace"
        )
        assert peer["podSelector"]["matchLabels"] == {"avatar-signer/caller": "true"}
    assert peers[METRICS_PORT] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_network_policy_lets_the_pod_out_only_for_dns_sts_s3_and_pod_identity() -> None:
    """Signing needs no network: egress is DNS to the cluster resolver, HTTPS to public
    addresses (STS, S3), and the EKS Pod Identity agent; nothing else in the cluster."""
    (policy,) = _manifest("networkpolicy.yaml")
    assert "Egress" in policy["spec"]["policyTypes"], "without it egress is not restricted"
    by_port: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for rule in policy["spec"]["egress"]:
        assert rule.get("to"), "a rule without `to` lets the pod reach every destination"
        assert rule.get("ports"), "a rule without `ports` opens every port"
        for port in rule["ports"]:
            by_port.setdefault((port["port"], port["protocol"]), []).extend(rule["to"])
    assert set(by_port) == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (80, "TCP")}
    for dns in (by_port[(53, "UDP")], by_port[(53, "TCP")]):
        assert dns == [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                },
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
            }
        ]
    private = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
    (v4,) = [p["ipBlock"] for p in by_port[(443, "TCP")] if "." in p["ipBlock"]["cidr"]]
    assert v4["cidr"] == "0.0.0.0/0" and private <= set(v4["except"])
    (v6,) = [p["ipBlock"] for p in by_port[(443, "TCP")] if ":" in p["ipBlock"]["cidr"]]
    assert {"fc00::/7", "fe80::/10"} <= set(v6["except"])
    assert {p["ipBlock"]["cidr"] for p in by_port[(80, "TCP")]} == {
        "169.254.170.23/32",
        "fd00:ec2::23/128",
    }


def _mounted(variable: str) -> tuple[dict[str, Any], str]:
    """(the volume, the file name in it) of the file a setting names; the mount is read-only."""
    path = PurePosixPath(_env()[variable]["value"])
    mounts = {mount["mountPath"]: mount for mount in _container()["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in _pod_spec()["volumes"]}
    mount = mounts[str(path.parent)]
    assert mount.get("readOnly") is True, f"{variable}: mount it read-only"
    assert "subPath" not in mount, f"{variable}: a subPath mount never sees updates"
    return volumes[mount["name"]], path.name


def _shipped_callers_toml() -> str:
    volume, name = _mounted("CALLERS_FILE")
    (config_map,) = _manifest("configmap-callers.yaml")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (item,) = [i for i in volume["configMap"]["items"] if i["path"] == name]
    text: str = config_map["data"][item["key"]]
    return text


def test_deployment_runs_with_a_callers_file_and_tls() -> None:
    env = _env()
    for variable in ("CALLERS_FILE", "TLS_CERT_FILE", "TLS_KEY_FILE"):
        assert variable in env, f"without {variable} the service is open or in cleartext"
    _shipped_callers_toml()


def test_tls_files_come_from_one_kubernetes_tls_secret() -> None:
    names = {"TLS_CERT_FILE": "tls.crt", "TLS_KEY_FILE": "tls.key", "TLS_CLIENT_CA_FILE": "ca.crt"}
    secrets = set()
    for variable, key in names.items():
        if variable not in _env():
            continue  # mutual TLS is opt-in
        volume, filename = _mounted(variable)
        assert filename == key, f"{variable}: cert-manager names it {key}"
        secret = volume["secret"]
        assert key in [i["key"] for i in secret.get("items", [{"key": key}])]
        secrets.add(secret["secretName"])
    (secret_name,) = secrets
    examples = {secret["metadata"]["name"]: secret for secret in _manifest("secrets.example.yaml")}
    example = examples[secret_name]
    assert example["type"] == "kubernetes.io/tls"
    assert {"tls.crt", "tls.key"} <= set(example["stringData"])


def _commented_certificate() -> dict[str, Any]:
    """The cert-manager Certificate that secrets.example.yaml shows, commented out."""
    lines = (MANIFESTS / "secrets.example.yaml").read_text(encoding="utf-8").splitlines()
    start = lines.index("# apiVersion: cert-manager.io/v1")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    certificate: dict[str, Any] = yaml.safe_load("\n".join(block))
    return certificate


def test_certificate_example_makes_the_tls_secret_for_the_names_callers_dial() -> None:
    certificate = _commented_certificate()
    assert certificate["kind"] == "Certificate"
    volume, _ = _mounted("TLS_CERT_FILE")
    assert certificate["spec"]["secretName"] == volume["secret"]["secretName"]
    assert "server auth" in certificate["spec"]["usages"]
    namespace = certificate["metadata"]["namespace"]
    dns_names = set(certificate["spec"]["dnsNames"])
    for name in ("service.yaml", "service-headless.yaml"):
        (service,) = _manifest(name)
        service_name = service["metadata"]["name"]
        for suffix in ("svc", "svc.cluster.local"):
            assert f"{service_name}.{namespace}.{suffix}" in dns_names


def test_shipped_callers_file_is_valid_and_its_placeholders_let_no_one_in() -> None:
    table = callers.parse(tomllib.loads(_shipped_callers_toml()))
    assert table.callers
    # Published tokens must not work: the docs' example hashes, and obvious placeholders.
    published = callers.parse(tomllib.loads(callers_file_example())).by_token_sha256
    guesses = ["", "token", "changeme", "REPLACE_ME", "placeholder", "secret"]
    guesses += [f"example-{c.name}-token" for c in table.callers]
    for caller in table.callers:
        assert caller.token_sha256 not in published, f"{caller.name}: the docs' example hash"
        assert caller.token_sha256 not in {hashlib.sha256(g.encode()).hexdigest() for g in guesses}


def test_shipped_configuration_starts_without_a_security_warning(tmp_path: Path) -> None:
    """The Deployment's callers file, TLS settings and a real certificate: no warning at all
    (open service, cleartext tokens, unchecked client certificates)."""
    callers_file = tmp_path / "callers.toml"
    callers_file.write_text(_shipped_callers_toml(), encoding="utf-8")
    pki = Pki(tmp_path / "pki")
    cert = pki.server()
    files = {
        "CALLERS_FILE": callers_file,
        "TLS_CERT_FILE": cert.cert_file,
        "TLS_KEY_FILE": cert.key_file,
        "TLS_CLIENT_CA_FILE": pki.ca_file,
    }
    env = {name: str(path) for name, path in files.items() if name in _env()}
    assert access_control(settings_from(**env)).startup_warnings() == []


def test_kustomization_lists_every_manifest_except_the_secrets_example() -> None:
    (kustomization,) = _manifest("kustomization.yaml")
    present = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == present - {"secrets.example.yaml"}


# --- the client distribution stands alone ---------------------------------------------------

CLIENT_ALLOWED = {"grpcio", "protobuf", "grpcio-health-checking", "grpcio-status"}


def test_client_distribution_depends_only_on_grpc_and_protobuf() -> None:
    client = tomllib.loads((ROOT / "client" / "pyproject.toml").read_text())
    names = {canonicalize_name(Requirement(r).name) for r in client["project"]["dependencies"]}
    assert names <= CLIENT_ALLOWED, names - CLIENT_ALLOWED


@pytest.mark.slow
def test_client_imports_without_any_server_dependency() -> None:
    import subprocess
    import sys

    blocked = ["boto3", "botocore", "avatarsigner_server", "grpc_reflection", "uvloop"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import avatarsigner, avatarsigner.cli, avatarsigner.client\n"
        "from avatarsigner.v1 import avatar_signer_pb2, avatar_signer_pb2_grpc\n"
        "print(avatarsigner.AvatarSignerClient.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AvatarSignerClient"
