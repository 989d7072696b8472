"""Build the service's container image: `python dev/image.py --tag NAME` (what `make image` runs).

The builder: Docker when an engine answers (`docker info`), otherwise buildah
(`buildah bud --isolation chroot`, which needs no daemon and no cgroup setup).

The base: the Dockerfile's BASE_IMAGE argument. With `--base IMAGE` that image is used (for
example the Dockerfile's own pinned debian:bookworm-slim, where a registry is reachable).
Without it, a stand-in for debian:bookworm-slim is made here from Debian's archive:
`debootstrap --variant=minbase bookworm` (the variant Debian's official images are made
from), slimmed the way the `-slim` images are (no documentation, manual pages or
translations, also for packages installed later), with the same APT sources. Making it
needs root and debootstrap, and takes about a minute; the root filesystem is then kept as a
tarball in `--cache-dir` (.run/image-cache), and the image made from it (`STANDIN`-digest)
is reused while that tarball stays. Without the tarball (a fresh clone, CI, `make clean`)
it is made anew.

Behind a TLS-intercepting proxy, `--ca-bundle FILE` (a PEM bundle that includes the proxy's
CA) is handed to the build as the secret `build-ca`; it is never part of an image layer.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STANDIN = "localhost/avatar-signer-base:bookworm-standin"  # -<digest of its tarball>
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# What debian:bookworm-slim's image configuration sets.
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

SOURCES = f"""\
Types: deb
URIs: {MIRROR}
Suites: {SUITE} {SUITE}-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: {SECURITY_MIRROR}
Suites: {SUITE}-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

# Paths dpkg leaves out, as in the -slim images: packages installed on top stay small too.
SLIM_EXCLUDED = [
    "/usr/share/doc/*",
    "/usr/share/groff/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
]
SLIM_KEPT = ["/usr/share/doc/*/copyright"]

APT_CONFIG = """\
// An image is built, not maintained: no caches, no translations, compressed lists.
Acquire::Languages "none";
Acquire::GzipIndexes "true";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
"""  # noqa: E501 - apt's syntax has no line continuation


class ImageError(Exception):
    """A missing tool or a failed step, said in one line."""


def run(*command: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("+", " ".join(command), flush=True)
    return subprocess.run(command, check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def _quiet(*command: str) -> bool:
    try:
        result = subprocess.run(command, capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def pick_builder() -> str:
    if shutil.which("docker") and _quiet("docker", "info"):
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    raise ImageError(
        "no image builder: install buildah (apt-get install buildah) or run a Docker engine"
    )


def image_exists(builder: str, name: str) -> bool:
    command = ["docker", "image", "inspect"] if builder == "docker" else ["buildah", "inspect"]
    kind = [] if builder == "docker" else ["--type", "image"]
    return subprocess.run([*command, *kind, name], capture_output=True, check=False).returncode == 0


# --- the Debian stand-in ------------------------------------------------------------------


def _slim(rootfs: Path) -> None:
    """Make a debootstrap tree look like debian:bookworm-slim."""
    dpkg = ["# Like the -slim images: no documentation, manual pages or translations."]
    dpkg += [f"path-exclude {path}" for path in SLIM_EXCLUDED]
    dpkg += [f"path-include {path}" for path in SLIM_KEPT]
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text("\n".join(dpkg) + "\n")
    (rootfs / "etc/apt/apt.conf.d/slim").write_text(APT_CONFIG)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
    for pattern in SLIM_EXCLUDED:
        for path in rootfs.glob(pattern.lstrip("/")):
            if path.parent.name == "doc" and path.is_dir() and not path.is_symlink():
                for item in path.iterdir():  # each package keeps its copyright file
                    if item.name != "copyright":
                        _remove(item)
            else:
                _remove(path)
    # What debootstrap downloaded and logged: the image needs none of it.
    leftovers = ["var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/bootstrap.log"]
    leftovers += ["var/lib/apt/lists/*_*"]
    for pattern in leftovers:
        for path in rootfs.glob(pattern):
            path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def make_rootfs_tarball(tarball: Path) -> None:
    if os.geteuid() != 0:
        raise ImageError("making the Debian base needs root (debootstrap), or pass --base IMAGE")
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise ImageError("no debootstrap: apt-get install debootstrap (or pass --base IMAGE)")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix=".rootfs-") as scratch:
        rootfs = Path(scratch) / "rootfs"
        run(debootstrap, "--variant=minbase", SUITE, str(rootfs), MIRROR, stdout=subprocess.DEVNULL)
        _slim(rootfs)
        partial = Path(scratch) / tarball.name
        run(
            "tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(partial),
            "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*", ".",
        )  # fmt: skip
        partial.replace(tarball)


@contextlib.contextmanager
def _working_container() -> Iterator[str]:
    container = run("buildah", "from", "scratch", stdout=subprocess.PIPE).stdout.strip()
    try:
        yield container
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)


def import_rootfs(builder: str, tarball: Path, name: str) -> None:
    if builder == "docker":
        run(
            "docker", "import", "--change", f"ENV PATH={BASE_PATH}",
            "--change", 'CMD ["bash"]', str(tarball), name,
        )  # fmt: skip
        return
    with _working_container() as container:
        mountpoint = run("buildah", "mount", container, stdout=subprocess.PIPE).stdout.strip()
        run("tar", "--numeric-owner", "--xattrs", "-C", mountpoint, "-xpf", str(tarball))
        run("buildah", "umount", container)
        run("buildah", "config", "--env", f"PATH={BASE_PATH}", "--cmd", "bash", container)
        run("buildah", "commit", "--quiet", container, name, stdout=subprocess.DEVNULL)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def standin_base(builder: str, cache_dir: Path) -> str:
    """The stand-in's name, which ends in its tarball's digest. The tarball in `cache_dir`
    is the cache: without it (a fresh clone, CI, `make clean`) the base is made anew; with
    it, the image made from it is reused (several checkouts on one machine keep theirs)."""
    tarball = cache_dir / f"debian-{SUITE}-minbase-slim.tar"
    if not tarball.exists():
        print(f"base: making a Debian {SUITE} stand-in with debootstrap (about a minute)")
        make_rootfs_tarball(tarball)
    name = f"{STANDIN}-{_sha256(tarball)[:12]}"
    if image_exists(builder, name):
        print(f"base: {name}, from {tarball} (kept)")
    else:
        import_rootfs(builder, tarball, name)
    return name


# --- the service image --------------------------------------------------------------------


def build(builder: str, tag: str, base: str, ca_bundle: Path | None) -> None:
    args = ["--build-arg", f"BASE_IMAGE={base}", "--tag", tag, "--file", "Dockerfile"]
    if ca_bundle is not None:
        args += ["--secret", f"id=build-ca,src={ca_bundle}"]
    if builder == "docker":
        env = os.environ | {"DOCKER_BUILDKIT": "1"}
        run("docker", "build", *args, ".", cwd=ROOT, env=env)
    else:
        # chroot isolation: no container runtime or cgroup setup needed to run the steps;
        # --layers keeps each step's result, so a rebuild redoes only what changed.
        run("buildah", "bud", "--isolation", "chroot", "--layers", *args, ".", cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tag", default="localhost/avatar-signer:dev")
    parser.add_argument("--base", help="base image (default: a local Debian stand-in)")
    parser.add_argument("--ca-bundle", type=Path, help="PEM bundle trusted while building")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".run" / "image-cache")
    options = parser.parse_args(argv)
    ca_bundle: Path | None = options.ca_bundle
    try:
        if ca_bundle is not None and not ca_bundle.is_file():
            raise ImageError(f"--ca-bundle {ca_bundle}: no such file")
        builder = pick_builder()
        base = options.base or standin_base(builder, options.cache_dir)
        build(builder, options.tag, base, ca_bundle)
    except ImageError as error:
        print(f"image: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"image: {error.cmd[0]} failed with status {error.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
