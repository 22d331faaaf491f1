"""Build every service's image and smoke-test it: `make images` (python -m deploy.images).

`build` makes every image from deploy/Dockerfile, naming the service in its `SERVICE` build
argument, with a Docker engine when one answers, otherwise podman (the Debian packages, installed
here when missing). When the Dockerfile's base image (`python:3.11-slim-bookworm`) cannot be
pulled, it builds a base from Debian's own repositories with mmdebstrap, imports it into podman,
and passes it through the Dockerfile's `PYTHON_IMAGE` build argument. That base is cached, keyed
by everything that makes it: as a tarball in var/images/ (what CI caches) and as a podman image.

`smoke` runs each image the way Kubernetes does (read-only root, /tmp a tmpfs, UID 10001):
the API must answer /healthz, and a worker (the consumer; accounts' outbox relay) must pass the
liveness probe's heartbeat check, against the local PostgreSQL and RabbitMQ (its own databases
and vhost). It prints each image's size.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import requests

from devtools.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "images"
SERVICES = ("accounts", "inventory", "checkout", "notifications")
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
UPSTREAM_BASE = "docker.io/library/python:3.11-slim-bookworm"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# What podman needs on Debian: runc rather than crun, which cannot set rlimits on some hosts.
HOST_PACKAGES = ("podman", "buildah", "runc", "mmdebstrap", "uidmap", "fuse-overlayfs", "slirp4netns",
                 "netavark", "aardvark-dns")

# The base made from Debian: the Dockerfile needs python (python-is-python3), venv, the CA
# certificates, and groupadd/useradd (passwd, not in minbase).
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "passwd")
DEBIAN_MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
# documentation, manual pages and translations have no reader in a container
DEBIAN_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
)

# Written to var/images/ and given to podman through CONTAINERS_CONF: runc, ulimits below this
# host's hard limits (podman's defaults are above them, and a runtime cannot raise them), and the
# host's network (builds fetch from PyPI, smoke tests reach the local servers; a bridge would need
# iptables and a kernel that lets netavark use it).
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
netns = "host"

[engine]
runtime = "runc"

[network]
network_backend = "netavark"
"""


def log(message: str) -> None:
    print(f"[images] {message}", flush=True)


def run(*argv: str, check: bool = True, capture: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, timeout=timeout,
                          stdout=subprocess.PIPE if capture else None, stderr=subprocess.PIPE if capture else None)


# --- the engine ------------------------------------------------------------------------------

def docker_answers() -> bool:
    return bool(shutil.which("docker")) and run("docker", "info", check=False, capture=True).returncode == 0


def missing_host_packages() -> list[str]:
    missing = []
    for package in HOST_PACKAGES:
        status = run("dpkg-query", "-W", "-f=${Status}", package, check=False, capture=True).stdout
        if "install ok installed" not in status:
            missing.append(package)
    return missing


def install_podman() -> None:
    """Install podman and its helpers from Debian when any is missing (idempotent)."""
    missing = missing_host_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"podman is needed and these Debian packages are missing: {' '.join(missing)}; "
                 "run `make images` as root or install them (apt-get install ...).")
    log(f"installing {' '.join(missing)} ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)


@dataclass
class Engine:
    command: str  # "docker" or "podman"

    def __call__(self, *args: str, check: bool = True, capture: bool = False,
                 timeout: float | None = None) -> subprocess.CompletedProcess:
        return run(self.command, *args, check=check, capture=capture, timeout=timeout)

    def has_image(self, name: str) -> bool:
        return self("image", "inspect", name, check=False, capture=True).returncode == 0

    def image_size(self, name: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", name, capture=True).stdout.strip())


def engine() -> Engine:
    """Docker when an engine answers; otherwise podman, configured for this host."""
    if docker_answers():
        return Engine("docker")
    install_podman()
    VAR.mkdir(parents=True, exist_ok=True)
    conf = VAR / "containers.conf"
    if not conf.exists() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    os.environ["CONTAINERS_CONF"] = str(conf)
    return Engine("podman")


# --- the base image --------------------------------------------------------------------------

def debian_base_key() -> str:
    """A digest of everything the Debian base is made from: a change makes a new base."""
    recipe = json.dumps([DEBIAN_SUITE, DEBIAN_PACKAGES, DEBIAN_MIRRORS, DEBIAN_DPKG_OPTIONS])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def debian_base(eng: Engine) -> str:
    """The base made from Debian's repositories, built once per recipe and cached."""
    key = debian_base_key()
    tag = f"localhost/floodgate-base:{DEBIAN_SUITE}-{key}"
    if eng.has_image(tag):
        log(f"base: {tag} (cached)")
        return tag
    tarball = VAR / f"base-{DEBIAN_SUITE}-{key}.tar"
    if not tarball.exists():
        log(f"base: mmdebstrap {DEBIAN_SUITE} minbase + {', '.join(DEBIAN_PACKAGES)} ...")
        started = time.monotonic()
        partial = tarball.with_suffix(".tar.partial")
        run("mmdebstrap", "--quiet", "--variant=minbase", "--format=tar", f"--include={','.join(DEBIAN_PACKAGES)}",
            *(f"--dpkgopt={option}" for option in DEBIAN_DPKG_OPTIONS),
            DEBIAN_SUITE, str(partial), *DEBIAN_MIRRORS)
        partial.rename(tarball)
        log(f"base: made {tarball.name} in {time.monotonic() - started:.0f} s")
    eng("import",
        "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", "ENV LANG=C.UTF-8",
        "--change", 'CMD ["python3"]',
        str(tarball), tag, capture=True)
    log(f"base: imported {tag}")
    # older recipes' tarballs are dead weight (CI restores only the current key)
    for stale in VAR.glob(f"base-{DEBIAN_SUITE}-*.tar"):
        if stale != tarball:
            stale.unlink()
    return tag


def base_image(eng: Engine, choice: str) -> str:
    """The PYTHON_IMAGE to build on: the Dockerfile's own when it can be had, else Debian's."""
    if choice == "debian":
        return debian_base(eng)
    if eng.has_image(UPSTREAM_BASE):
        return UPSTREAM_BASE
    pulled = eng("pull", UPSTREAM_BASE, check=False, capture=True, timeout=300).returncode == 0
    if pulled:
        return UPSTREAM_BASE
    if choice == "upstream":
        sys.exit(f"{UPSTREAM_BASE} cannot be pulled")
    log(f"base: {UPSTREAM_BASE} cannot be pulled; using a base made from Debian")
    return debian_base(eng)


# --- build -----------------------------------------------------------------------------------

def image_name(service: str, tag: str) -> str:
    return f"localhost/floodgate/{service}:{tag}"


def build(eng: Engine, base: str, tag: str, services: tuple[str, ...]) -> dict[str, float]:
    """Build each service's image on `base`; the seconds each took."""
    seconds = {}
    for service in services:
        log(f"building {image_name(service, tag)} on {base} ...")
        started = time.monotonic()
        args = ["build", "--file", str(DOCKERFILE), "--tag", image_name(service, tag),
                "--build-arg", f"SERVICE={service}", "--build-arg", f"PYTHON_IMAGE={base}", "--network", "host"]
        if HOST_CA_BUNDLE.exists():
            args += ["--secret", f"id=ca-bundle,src={HOST_CA_BUNDLE}"]
        if eng.command == "podman":
            args += ["--pull=never" if base.startswith("localhost/") else "--pull=missing", "--layers"]
        subprocess.run([eng.command, *args, str(ROOT)], check=True, cwd=ROOT,
                       env=dict(os.environ, DOCKER_BUILDKIT="1"))
        seconds[service] = time.monotonic() - started
    return seconds


# --- smoke test ------------------------------------------------------------------------------

WORKERS = {
    "accounts": ["-m", "services.accounts", "relay"],
    "inventory": ["-m", "services.inventory", "consumer"],
    "checkout": ["-m", "services.checkout", "consumer"],
    "notifications": ["-m", "services.notifications", "consumer"],
}


class SmokeFailure(Exception):
    pass


@dataclass
class Smoke:
    eng: Engine
    tag: str
    env: dict[str, str]  # service-independent: AMQP_URL, ...
    postgres_url: str
    database_prefix: str
    timeout: float = 90.0

    def container_args(self, service: str, name: str, extra_env: dict[str, str]) -> list[str]:
        env = dict(self.env, DATABASE_URL=f"{self.postgres_url}/{self.database_prefix}_{service}", **extra_env)
        return ["--name", name, "--read-only", "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--user", "10001:10001",
                "--network", "host", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                *(arg for key, value in env.items() for arg in ("--env", f"{key}={value}"))]

    def oneshot(self, service: str, *python_args: str) -> None:
        name = f"floodgate-smoke-{service}-{os.getpid()}-once"
        result = self.eng("run", "--rm", *self.container_args(service, name, {}), "--entrypoint", "python",
                          image_name(service, self.tag), *python_args, check=False, capture=True, timeout=self.timeout)
        if result.returncode != 0:
            raise SmokeFailure(f"{service}: python {' '.join(python_args)} exited {result.returncode}:\n"
                               f"{result.stdout}{result.stderr}")

    @contextmanager
    def container(self, service: str, role: str, extra_env: dict[str, str], *command: str) -> Iterator[str]:
        name = f"floodgate-smoke-{service}-{role}-{os.getpid()}"
        self.eng("rm", "--force", name, check=False, capture=True)
        self.eng("run", "--detach", *self.container_args(service, name, extra_env), *command, capture=True)
        try:
            yield name
        except SmokeFailure as failure:
            logs = self.eng("logs", name, check=False, capture=True)
            raise SmokeFailure(f"{failure}\n--- {name} logs ---\n{logs.stdout}{logs.stderr}") from None
        finally:
            self.eng("rm", "--force", *(("--time", "5") if self.eng.command == "podman" else ()), name,
                     check=False, capture=True)

    def running(self, name: str) -> bool:
        state = self.eng("inspect", "--format", "{{.State.Running}}", name, check=False, capture=True).stdout
        return state.strip() == "true"

    def poll(self, name: str, what: str, check) -> float:
        """Call `check()` until it is true; the seconds that took. Fails at the deadline, or as
        soon as the container has exited."""
        started = time.monotonic()
        while not check():
            if not self.running(name):
                raise SmokeFailure(f"{name} exited before {what}")
            if time.monotonic() - started > self.timeout:
                raise SmokeFailure(f"{name}: no {what} within {self.timeout:.0f} s")
            time.sleep(0.25)
        return time.monotonic() - started

    def api(self, service: str) -> float:
        port = free_port()
        image = image_name(service, self.tag)
        with self.container(service, "api", {"BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "1"}, image) as name:
            def healthy() -> bool:
                try:
                    return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                except requests.RequestException:
                    return False
            return self.poll(name, "200 from /healthz", healthy)

    def worker(self, service: str) -> float:
        image = image_name(service, self.tag)
        with self.container(service, "worker", {"HEARTBEAT_FILE": "/tmp/heartbeat"},
                            "--entrypoint", "python", image, *WORKERS[service]) as name:
            def beating() -> bool:
                # the liveness probe's own command, as the kubelet runs it (readiness's tighter limit)
                probe = self.eng("exec", name, "python", "-m", "shared.heartbeat", "/tmp/heartbeat",
                                 "--max-age", "20", check=False, capture=True, timeout=30)
                return probe.returncode == 0
            return self.poll(name, "passing heartbeat check", beating)


def smoke(eng: Engine, tag: str, services: tuple[str, ...]) -> bool:
    """Smoke-test each image; print a line per image; True when every one passed."""
    sys.path.insert(0, str(ROOT))
    from devtools import broker
    from devtools.stack import ensure_local_servers

    postgres_url = os.environ.get("POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432")
    amqp_url = os.environ.get("AMQP_URL")
    vhost = None
    if "POSTGRES_URL" not in os.environ or not amqp_url:
        ensure_local_servers()
    if not amqp_url:
        # its own vhost: a consumer here must not take messages from a `make run` stack's queues
        vhost, amqp_url = broker.private_vhost("floodgate-images")
    env = {"AMQP_URL": amqp_url, "BACKGROUND_NICENESS": "0"}
    test = Smoke(eng, tag, env, postgres_url.rstrip("/"), "floodgate_images")
    passed = True
    try:
        for service in services:
            size = eng.image_size(image_name(service, tag))
            try:
                test.oneshot(service, "-m", f"services.{service}", "migrate", "--create-database")
                healthz = test.api(service)
                heartbeat = test.worker(service)
            except (SmokeFailure, subprocess.TimeoutExpired) as failure:
                passed = False
                print(f"FAIL {image_name(service, tag)}  {size / 1e6:.0f} MB\n{failure}", flush=True)
                continue
            print(f"ok   {image_name(service, tag):<40} {size / 1e6:5.0f} MB   /healthz 200 after {healthz:4.1f} s   "
                  f"{' '.join(WORKERS[service][1:2])} heartbeat ok after {heartbeat:4.1f} s", flush=True)
    finally:
        if vhost:
            broker.delete_vhost(vhost)
    return passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("steps", nargs="*", choices=("build", "smoke"), default=["build", "smoke"])
    parser.add_argument("--tag", default="local")
    parser.add_argument("--base", choices=("auto", "upstream", "debian"), default="auto",
                        help="auto: the Dockerfile's base when it can be pulled, else one made from Debian")
    parser.add_argument("--service", action="append", choices=SERVICES, help="only these (repeatable)")
    args = parser.parse_args()
    services = tuple(args.service or SERVICES)
    started = time.monotonic()
    eng = engine()
    log(f"engine: {eng.command}")
    if "build" in args.steps:
        base = base_image(eng, args.base)
        seconds = build(eng, base, args.tag, services)
        for service in services:
            log(f"{image_name(service, args.tag):<40} built in {seconds[service]:5.1f} s, "
                f"{eng.image_size(image_name(service, args.tag)) / 1e6:.0f} MB")
    ok = True
    if "smoke" in args.steps:
        ok = smoke(eng, args.tag, services)
    log(f"{' + '.join(args.steps)}: {time.monotonic() - started:.0f} s{'' if ok else ', FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
