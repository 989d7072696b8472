"""The built image, run the way deploy/kubernetes/deployment.yaml runs it (`make image-test`).

podman (or Docker) runs IMAGE (`make image` builds it) with what the Deployment's container
spec says, read from the manifest: its user and group, a read-only root filesystem, every
capability dropped, no privilege escalation, its memory and CPU limits, its settings as
environment variables and its volumes as read-only mounted files (Secret and ConfigMap
modes, group-owned by the fsGroup) plus the writable emptyDir at /tmp. Only the network
differs: the host's, so that the container reaches the SeaweedFS this test starts on
127.0.0.1, with every port moved to a free one on 127.0.0.1.

Then, through the container's own service: health, reflection (grpcurl list), a real
CreateUploadUrl -> PUT -> CreateDownloadUrl -> GET round trip over TLS with a caller's
token, the Deployment's preStop command, SIGTERM, and what the container wrote.

The figures for docs/image.md (size, packages, start-up inside and outside the container)
are printed and written to .run/image-figures.json; no test asserts a duration.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import leaks
import pytest
import run as make_run
import seaweed_s3
import yaml
from avatarsigner import AvatarSignerClient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pki import Pki
from servers import free_port, wait_serving

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
IMAGE = os.environ.get("IMAGE", "localhost/avatar-signer:dev")
FIGURES = ROOT / ".run" / "image-figures.json"
SERVICE = "avatarsigner.v1.AvatarSigner"
START_TIMEOUT = 90.0  # seconds to SERVING before the test gives up (not a measurement)
INSTALL_HINT = "apt-get install podman runc (as root), or run a Docker engine"
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+)-----END CERTIFICATE-----")


# --- the container engine -------------------------------------------------------------------


@dataclass
class Engine:
    """podman or docker, with the flags this machine needs to run a container at all."""

    name: str
    global_args: list[str] = field(default_factory=list)
    run_args: list[str] = field(default_factory=list)

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        result = self.run(*args, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"{self.name} {args[0]} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.name, *self.global_args, *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def logs(self, container: str) -> str:
        """What the container wrote to stderr (the server's JSON lines) and stdout."""
        result = self.run("logs", container)
        return result.stderr + result.stdout


def _engine() -> Engine:
    if shutil.which("podman"):
        engine = Engine("podman")
        # crun, podman's default runtime on Debian 12, refuses hosts whose cgroup v2 hierarchy
        # holds controllers beside cgroup v1 ("hybrid"); runc runs there too.
        if shutil.which("runc"):
            engine.global_args = ["--runtime", "runc"]
        # Explicit limits below any host's: podman otherwise raises them, which a root
        # without CAP_SYS_RESOURCE (as on some CI virtual machines) may not do.
        engine.run_args = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
        # Docker adds no tmpfs to a read-only container; podman does unless told not to.
        engine.run_args += ["--read-only-tmpfs=false"]
        return engine
    if shutil.which("docker") and subprocess.run(
        ["docker", "info"], capture_output=True, check=False
    ).returncode == 0:  # fmt: skip
        return Engine("docker")
    pytest.fail(f"no container engine to run the image: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def engine() -> Engine:
    found = _engine()
    exists = ["image", "exists", IMAGE] if found.name == "podman" else ["image", "inspect", IMAGE]
    if subprocess.run([found.name, *exists], capture_output=True, check=False).returncode:
        pytest.fail(f"no image {IMAGE}: build it with `make image`")
    return found


# --- what the Deployment says -----------------------------------------------------------------


def _manifest(name: str) -> list[dict[str, Any]]:
    with (MANIFESTS / name).open(encoding="utf-8") as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


(DEPLOYMENT,) = _manifest("deployment.yaml")
POD: dict[str, Any] = DEPLOYMENT["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]
(CONFIG_MAP,) = _manifest("configmap.yaml")
ENV: dict[str, dict[str, Any]] = {entry["name"]: entry for entry in CONTAINER["env"]}


def _quantity(value: str) -> str:
    """A Kubernetes memory quantity as podman/docker write it ("256Mi" -> "256m")."""
    number, unit = re.fullmatch(r"(\d+)([KMG]i)", value).groups()  # type: ignore[union-attr]
    return number + unit[0].lower()


def security_args() -> list[str]:
    """The container's securityContext and limits as `run` flags."""
    context = CONTAINER["securityContext"]
    args = ["--user", f"{context['runAsUser']}:{context['runAsGroup']}"]
    if "fsGroup" in POD["securityContext"]:
        args += ["--group-add", str(POD["securityContext"]["fsGroup"])]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    args += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
    limits = CONTAINER["resources"]["limits"]
    return [*args, "--memory", _quantity(limits["memory"]), "--cpus", str(limits["cpu"])]


@dataclass
class Deployed:
    """One way of running the server: its environment, ports and files."""

    env: dict[str, str]
    grpc_port: int
    health_port: int
    volumes: dict[str, Path]  # mountPath -> host folder
    token: str
    ca_file: Path
    user_id: str = "image-test-user"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def health_target(self) -> str:
        return f"127.0.0.1:{self.health_port}"


def _write(folder: Path, files: Mapping[str, bytes], mode: int, group: int | None) -> None:
    """Files as the kubelet mounts a Secret or ConfigMap: root-owned, `mode`, the fsGroup."""
    folder.mkdir(parents=True)
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        path.chmod(mode)
        if group is not None and os.geteuid() == 0:
            os.chown(path, 0, group)


def _volume_files(volume: dict[str, Any], data: Mapping[str, bytes]) -> dict[str, bytes]:
    source = volume.get("secret") or volume["configMap"]
    items = source.get("items") or [{"key": key, "path": key} for key in data]
    return {item["path"]: data[item["key"]] for item in items}


def deploy(
    folder: Path,
    verified_s3: tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]],
    pki: Pki,
) -> Deployed:
    """The Deployment's volumes as host folders and its environment with this test's values."""
    s3, identities = verified_s3
    token = secrets.token_urlsafe(32)
    leaks.remember(token)
    callers = (
        '[[caller]]\nname = "image-test"\n'
        f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n'
        'allow = ["CreateUploadUrl", "ConfirmUpload", "CreateDownloadUrl", '
        '"BatchCreateDownloadUrls"]\n'
    )
    server_cert = pki.server()
    data: dict[str, dict[str, bytes]] = {
        f"avatar-signer-{identity}": {
            "access-key-id": user.access_key_id.encode(),
            "secret-access-key": user.secret_access_key.encode(),
        }
        for identity, user in identities.items()
    }
    data |= {
        "avatar-signer-tls": {
            "tls.crt": server_cert.cert_pem,
            "tls.key": server_cert.key_pem,
            "ca.crt": pki.ca_pem,
        },
        "avatar-signer-callers": {"callers.toml": callers.encode()},
    }
    fs_group = POD["securityContext"].get("fsGroup")
    volumes = {volume["name"]: volume for volume in POD["volumes"]}
    mounted: dict[str, Path] = {}
    for mount in CONTAINER["volumeMounts"]:
        volume = volumes[mount["name"]]
        host = folder / mount["name"]
        if "emptyDir" in volume:
            host.mkdir(parents=True)
            host.chmod(0o1777)  # as writable as an emptyDir is
        else:
            source = volume.get("secret") or volume["configMap"]
            name = source.get("secretName") or source["name"]
            files = _volume_files(volume, data[name])
            _write(host, files, source.get("defaultMode", 0o644), fs_group)
        mounted[mount["mountPath"]] = host

    config = CONFIG_MAP["data"]
    env = {}
    for name, entry in ENV.items():
        if "value" in entry:
            env[name] = entry["value"]
        else:
            env[name] = config[entry["valueFrom"]["configMapKeyRef"]["key"]]
    grpc_port, health_port = free_port(), free_port()
    env |= {
        # The host's network: everything on 127.0.0.1, on ports free on this machine.
        "GRPC_HOST": "127.0.0.1",
        "GRPC_PORT": str(grpc_port),
        "METRICS_PORT": str(free_port()),
        "HEALTH_PORT": str(health_port),
        # The test's S3 instead of the ConfigMap's bucket.
        "S3_ENDPOINT_URL": s3.endpoint_url,
        "AWS_REGION": s3.region,
        "S3_BUCKET": s3.bucket,
    }
    return Deployed(env, grpc_port, health_port, mounted, token, pki.ca_file)


# --- running it ---------------------------------------------------------------------------------


@dataclass
class Running:
    name: str
    deployed: Deployed
    started_in: float  # seconds from `run` to SERVING


def _health(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(response.status)


def run_args(engine: Engine, deployed: Deployed) -> list[str]:
    """`run` flags for a container of the Deployment's pod on the host's network."""
    args = ["--network", "host", *engine.run_args, *security_args()]
    for key, value in deployed.env.items():
        args += ["--env", f"{key}={value}"]
    read_only = {m["mountPath"]: m.get("readOnly", False) for m in CONTAINER["volumeMounts"]}
    for path, host in deployed.volumes.items():
        args += ["--volume", f"{host}:{path}:{'ro' if read_only[path] else 'rw'}"]
    return args


def start_container(engine: Engine, deployed: Deployed, name: str) -> Running:
    began = time.monotonic()
    engine(
        "run", "--detach", "--name", name, *run_args(engine, deployed), IMAGE, *CONTAINER["args"]
    )
    try:
        wait_serving(deployed.health_target, began + START_TIMEOUT)
    except AssertionError:
        pytest.fail(f"the container did not become SERVING:\n{engine.logs(name)}")
    return Running(name, deployed, time.monotonic() - began)


def start_outside(deployed: Deployed) -> float:
    """The same settings and files, the `avatar-signer` of this checkout's venv: seconds to
    SERVING, then SIGTERM."""
    env = dict(deployed.env)
    for variable, value in deployed.env.items():
        for path, host in deployed.volumes.items():
            if value.startswith(path + "/"):
                env[variable] = str(host / PurePosixPath(value).relative_to(path))
    command = Path(sys.executable).parent / "avatar-signer"
    began = time.monotonic()
    process = subprocess.Popen(
        [str(command), *CONTAINER["args"]],
        env=os.environ | env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_serving(deployed.health_target, began + START_TIMEOUT)
        elapsed = time.monotonic() - began
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    return elapsed


def record(**figures: object) -> None:
    FIGURES.parent.mkdir(exist_ok=True)
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps(known | figures, indent=2) + "\n")


@pytest.fixture(scope="module")
def running(
    engine: Engine,
    tmp_path_factory: pytest.TempPathFactory,
    verified_s3: tuple[seaweed_s3.LocalS3, dict[str, seaweed_s3.Identity]],
) -> Iterator[Running]:
    folder = tmp_path_factory.mktemp("deployed")
    pki = Pki(folder / "pki")
    outside = start_outside(deploy(folder / "outside", verified_s3, pki))
    deployed = deploy(folder / "container", verified_s3, pki)
    name = f"avatar-signer-image-test-{os.getpid()}"
    engine("rm", "--force", name, check=False)
    try:
        container = start_container(engine, deployed, name)
        record(
            startup_seconds_outside=round(outside, 2),
            startup_seconds_inside=round(container.started_in, 2),
        )
        yield container
    finally:
        engine("rm", "--force", name, check=False)


@dataclass
class Stopped:
    exit_code: int
    logs: str
    changes: list[str]
    tmp_files: list[str]


@pytest.fixture(scope="module")
def stopped(engine: Engine, running: Running) -> Stopped:
    """SIGTERM, as the kubelet sends it after the preStop hook: the container gets what the
    pod's grace leaves after the preStop sleep, then the engine kills it (exit code 137)."""
    status = engine("exec", running.name, "python", "-c", "print(open('/proc/1/status').read())")
    peak = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
    assert peak, status
    record(server_peak_rss_mib=round(int(peak[1]) / 1024, 1))
    grace = int(POD["terminationGracePeriodSeconds"] - _prestop_seconds())
    engine("stop", "--time", str(grace), running.name, timeout=grace + 60)
    state = json.loads(engine("inspect", "--format", "{{json .State}}", running.name))
    logs = engine.logs(running.name)
    changes = engine("diff", running.name).splitlines()
    tmp = running.deployed.volumes["/tmp"]
    return Stopped(
        int(state["ExitCode"]),
        logs,
        [line.strip() for line in changes if line.strip()],
        sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*")),
    )


def _prestop_seconds() -> float:
    command = " ".join(CONTAINER["lifecycle"]["preStop"]["exec"]["command"])
    match = re.search(r"sleep\D*(\d+(?:\.\d+)?)", command)
    assert match, command
    return float(match[1])


def _in_image(engine: Engine, program: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A program run in a fresh container of the image, as its user, read-only."""
    options = ["--rm", *engine.run_args, "--read-only", "--network", "none"]
    return engine.run("run", *options, "--entrypoint", program, IMAGE, *args)


# --- the image ----------------------------------------------------------------------------------


def test_image_runs_as_the_deployments_user_with_the_server_command(engine: Engine) -> None:
    (config,) = json.loads(engine("image", "inspect", IMAGE))
    settings = config.get("Config") or config["config"]
    context = CONTAINER["securityContext"]
    assert settings["User"] == f"{context['runAsUser']}:{context['runAsGroup']}"
    assert settings["Entrypoint"] == ["avatar-signer"]
    result = _in_image(engine, "id", "-u")
    assert result.stdout.strip() == str(context["runAsUser"]), result.stderr


def test_image_has_no_installer_or_compiler(engine: Engine) -> None:
    code = (
        "import shutil, importlib.util as u\n"
        "tools = ['pip', 'pip3', 'uv', 'gcc', 'cc', 'c++', 'make', 'ld']\n"
        "print([t for t in tools if shutil.which(t)])\n"
        "print([m for m in ('pip', 'setuptools', 'uv', 'wheel') if u.find_spec(m)])\n"
    )
    result = _in_image(engine, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "[]"], result.stdout
    assert _in_image(engine, "python", "-m", "ensurepip").returncode != 0


def test_image_figures(engine: Engine) -> None:
    (config,) = json.loads(engine("image", "inspect", IMAGE))
    size = int(config.get("Size") or config["size"])
    packages = _in_image(engine, "dpkg-query", "--show", "--showformat", "${Package}\n")
    assert packages.returncode == 0, packages.stderr
    record(image=IMAGE, image_bytes=size, debian_packages=len(packages.stdout.split()))


def test_build_ca_is_not_in_the_image(engine: Engine) -> None:
    """The CA bundle `make image` passed as a build secret (IMAGE_CA_BUNDLE): none of its
    certificates is in any file of the image, except the public roots that packages ship in
    their own bundles (botocore's cacert.pem, grpc's roots.pem)."""
    bundle = os.environ.get("IMAGE_CA_BUNDLE")
    if not bundle:
        pytest.skip("no IMAGE_CA_BUNDLE: the image was built without a build secret")
    script = (
        "import os, re, sys\n"
        f"pem = re.compile({PEM.pattern!r})\n"
        "for top in ('/etc', '/opt', '/usr', '/var', '/root', '/home', '/srv'):\n"
        "    for d, _, files in os.walk(top):\n"
        "        for f in files:\n"
        "            p = os.path.join(d, f)\n"
        "            try: data = open(p, 'rb').read()\n"
        "            except OSError: continue\n"
        "            for body in pem.findall(data): print(p, b''.join(body.split()).decode())\n"
    )
    result = _in_image(engine, "python", "-c", script)
    assert result.returncode == 0, result.stderr
    found: dict[str, set[str]] = {}
    for line in result.stdout.splitlines():
        path, body = line.split(" ", 1)
        found.setdefault(body, set()).add(path)
    package_bundles = re.compile(r"/site-packages/.+\.pem$")  # from the locked, hashed wheels
    shipped = {body for body, paths in found.items() if any(map(package_bundles.search, paths))}
    build = {b"".join(body.split()).decode() for body in PEM.findall(Path(bundle).read_bytes())}
    assert build, f"{bundle}: no certificate in it"
    leaked = {path for body in build - shipped for path in found.get(body, ())}
    assert not leaked, f"a certificate of the build's CA bundle is in the image: {leaked}"


# --- the running container ------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["", SERVICE])
def test_health_port_serves_the_probes(running: Running, service: str) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    assert _health(running.deployed.health_target, service) == serving


def test_round_trip_through_the_container_over_tls(running: Running) -> None:
    """Upload URL, PUT, ConfirmUpload (the verifier reads and publishes from inside the
    container), download: the bytes the service stored."""
    deployed = running.deployed
    credentials = grpc.ssl_channel_credentials(deployed.ca_file.read_bytes())
    image = make_run.sample_png(24, 24)
    with AvatarSignerClient(
        deployed.grpc_target,
        channel_credentials=credentials,
        metadata={"authorization": f"Bearer {deployed.token}"},
        timeout=30,
    ) as client:
        result = client.upload(deployed.user_id, image)
        download = client.create_download_url(deployed.user_id)
    assert result.confirmation is not None and result.confirmation.width == 24
    with urllib.request.urlopen(download.url, timeout=30) as response:
        assert response.read() == image  # a PNG without metadata is stored as it came
    assert download.key == result.key


def test_grpcurl_lists_the_services_over_tls(running: Running) -> None:
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl, "grpcurl is not installed (make install)"
    result = subprocess.run(
        [grpcurl, "-cacert", str(running.deployed.ca_file), running.deployed.grpc_target, "list"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {SERVICE, "grpc.health.v1.Health"} <= set(result.stdout.split())


def test_check_command_proves_the_iam_split_from_a_container(
    engine: Engine, running: Running
) -> None:
    """`avatar-signer check` (boto3 and botocore's data files) in a second container of the
    same pod spec, against the same S3."""
    result = engine.run("run", "--rm", *run_args(engine, running.deployed), IMAGE, "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stdout, result.stdout


def test_prestop_command_runs_in_the_container(engine: Engine, running: Running) -> None:
    """The kubelet execs it as the container's user before SIGTERM: it must exist there."""
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    result = engine.run("exec", running.name, *command)
    assert result.returncode == 0, result.stderr


def test_sigterm_exits_0_within_the_grace(stopped: Stopped) -> None:
    assert stopped.exit_code == 0, stopped.logs[-2000:]


def test_logs_are_json_lines_without_errors_or_secrets(stopped: Stopped) -> None:
    lines = [line for line in stopped.logs.splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert not [r for r in records if r["level"] in {"ERROR", "CRITICAL"}], lines
    assert leaks.find(lines) == []


def test_nothing_written_outside_the_mounted_temp_dir(stopped: Stopped) -> None:
    """The root filesystem is read-only, so the only changes an engine may report are the
    mount points it made for the volumes; /tmp (the emptyDir) stays empty too."""
    # Debian's /var/run is a link to /run: a mount there lands under /run.
    mount_points = {
        re.sub(r"^/var/run/", "/run/", m["mountPath"]) for m in CONTAINER["volumeMounts"]
    }
    parents = {str(p) for m in mount_points for p in PurePosixPath(m).parents}
    changed = {line.split(maxsplit=1)[1] for line in stopped.changes}
    assert changed <= mount_points | parents, stopped.changes
    assert stopped.tmp_files == []


def test_print_figures(stopped: Stopped, capsys: pytest.CaptureFixture[str]) -> None:
    figures = json.loads(FIGURES.read_text())
    with capsys.disabled():
        print(f"\nimage figures ({FIGURES.relative_to(ROOT)}): {json.dumps(figures)}")
    assert {"image_bytes", "startup_seconds_inside", "startup_seconds_outside"} <= set(figures)
