"""The deployment files (docker-compose.yml, docker/) checked against the code they start.

One file: its parsers of the compose files and the Dockerfile serve every check. Three compose
files: docker-compose.yml (the whole stack), docker/main-host.compose.yml (added on the main
host of a deployment over several hosts: publishes the shared services on a private address)
and docker/worker-host.compose.yml (a GPU worker on another host).

No Docker engine is needed (and none is assumed): the compose file is read with PyYAML, the
Dockerfile as text, and every module, queue, management command, path and environment variable
they name is looked up in the project. ``docker compose config`` is not used: it needs the compose
plugin, which a test machine may lack.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app
from celery.beat import Scheduler
from django.conf import settings
from django.core.management import get_commands
from django.urls import resolve
from kombu.utils.imports import symbol_by_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
WAIT_FOR_DB = ROOT / "docker" / "wait_for_db.py"
MAIN_HOST_FILE = ROOT / "docker" / "main-host.compose.yml"
WORKER_HOST_FILE = ROOT / "docker" / "worker-host.compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS_FILE = ROOT / "config" / "settings.py"

APP_SERVICES = ("web", "worker-gpu", "worker-training", "worker-interactive", "worker-cpu", "beat")
INFRA_SERVICES = ("postgres", "redis", "objectstore")
GPU_SERVICES = ("worker-gpu", "worker-training")
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_float", "env_list", "env_url"}
# Variables an app container may receive although config/settings.py does not read them, with
# the file that does (DJANGO_SETTINGS_MODULE is read by Django itself).
EXTRA_ENV_READERS: dict[str, Path | None] = {
    "DJANGO_SETTINGS_MODULE": None,
    "RUN_MIGRATIONS": ENTRYPOINT,
    "STORAGE_INIT": ENTRYPOINT,
    "STORAGE_INIT_TIMEOUT": ENTRYPOINT,
    "WAIT_FOR_DB": ENTRYPOINT,
    "DB_WAIT_TIMEOUT": WAIT_FOR_DB,
}
# What an operator puts in .env: the variables compose requires with ${NAME:?message}.
HOST_ENV = {
    "DJANGO_SECRET_KEY": "test-secret-key-" + "k3y" * 20,
    "POSTGRES_PASSWORD": "testpassword",
    "REDIS_PASSWORD": "redispassword",
    "STORAGE_ACCESS_KEY_ID": "testaccesskey0123456",
    "STORAGE_SECRET_ACCESS_KEY": "testsecretkey" + "s3" * 15,
}
# ... and what a worker host's .env adds, and the main host's when it serves worker hosts.
WORKER_HOST_ENV = HOST_ENV | {"MAIN_HOST": "10.0.0.5"}
MAIN_HOST_ENV = HOST_ENV | {"PRIVATE_BIND_ADDRESS": "10.0.0.5"}
IMAGE_HEALTH_URL = "/healthz"
# The ports a worker host connects to on the main host: PostgreSQL, Redis, the object store's S3 API.
SHARED_PORTS = {"postgres": 5432, "redis": 6379, "objectstore": 8333}


# --- compose helpers -------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<braced>[^}]*)\}|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>.*))?", re.DOTALL)


def interpolate(text: str, host_env: dict[str, str]) -> str:
    """Compose's variable substitution: $$, $NAME, ${NAME}, ${NAME:-default}, ${NAME:?error} (and without ':')."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        if match.group("bare"):
            return host_env.get(match.group("bare"), "")
        braced = _BRACED.fullmatch(match.group("braced"))
        assert braced, f"unsupported interpolation {match.group(0)!r}"
        name, op, arg = braced.group("name"), braced.group("op"), braced.group("arg")
        current = host_env.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-") and missing:
            return arg
        if op in (":?", "?") and missing:
            raise KeyError(f"{name}: {arg}")
        return current or ""

    return _INTERPOLATION.sub(substitute, text)


def load_compose(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict), f"{path} is not a mapping"
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose(COMPOSE_FILE)


@pytest.fixture(scope="module")
def worker_host() -> dict[str, Any]:
    return load_compose(WORKER_HOST_FILE)


@pytest.fixture(scope="module")
def main_host() -> dict[str, Any]:
    return load_compose(MAIN_HOST_FILE)


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def service_env(compose: dict[str, Any], name: str, host_env: dict[str, str] = HOST_ENV) -> dict[str, str]:
    raw = service(compose, name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: interpolate("" if value is None else str(value), host_env) for key, value in raw.items()}


def service_command(compose: dict[str, Any], name: str, host_env: dict[str, str] = HOST_ENV) -> list[str]:
    raw = service(compose, name).get("command")
    assert raw, f"{name} has no command"
    if isinstance(raw, str):
        return shlex.split(interpolate(raw, host_env))
    return [interpolate(str(arg), host_env) for arg in raw]


def option(args: list[str], *names: str) -> str | None:
    """The value of a command-line option given as ``--name value``, ``--name=value`` or ``-n value``."""
    for index, arg in enumerate(args):
        for name in names:
            if arg == name and index + 1 < len(args):
                return args[index + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def healthcheck_text(definition: dict[str, Any]) -> str:
    test = definition.get("healthcheck", {}).get("test")
    return " ".join(test) if isinstance(test, list) else str(test or "")


def volume_targets(definition: dict[str, Any]) -> dict[str, str]:
    """Mount target -> source for a service's volumes (short or long syntax)."""
    targets = {}
    for volume in definition.get("volumes") or []:
        if isinstance(volume, str):
            parts = volume.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        else:
            source, target = volume.get("source", ""), volume["target"]
        targets[target.rstrip("/")] = source
    return targets


def celery_services(compose: dict[str, Any]) -> list[str]:
    return [name for name in APP_SERVICES if service_command(compose, name)[0] == "celery"]


def gpu_device_ids(definition: dict[str, Any], host_env: dict[str, str] = HOST_ENV) -> list[str]:
    """The NVIDIA GPUs a service reserves. A ``count`` is what Docker makes of it: the first
    ``count`` cards (NVIDIA_VISIBLE_DEVICES=0,...,count-1), whichever container asks."""
    ids: list[str] = []
    for device in definition["deploy"]["resources"]["reservations"]["devices"]:
        if device.get("driver") != "nvidia" or "gpu" not in device.get("capabilities", []):
            continue
        assert not ("count" in device and "device_ids" in device), "count and device_ids exclude each other"
        if "device_ids" in device:
            ids += [interpolate(str(device_id), host_env) for device_id in device["device_ids"]]
        else:
            ids += [str(index) for index in range(int(device.get("count", 0)))]
    return ids


def weed_flags(args: list[str]) -> dict[str, str]:
    """SeaweedFS's ``-name=value`` options (a bare ``-name`` is "true")."""
    flags = {}
    for arg in args:
        if arg.startswith("-"):
            key, _, value = arg.lstrip("-").partition("=")
            flags[key] = value if _ else "true"
    return flags


def load_settings(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """The settings a container with exactly ``env`` (plus PATH, and a scratch var dir instead
    of /data/var) gets, loaded in a child process."""
    env = env | {"PATH": os.environ.get("PATH", ""), "PLATFORM_VAR_DIR": str(tmp_path / "var")}
    script = (
        "import json, django\n"
        "django.setup()\n"
        "from django.conf import settings as s\n"
        "storage = s.STORAGES['default']\n"
        "print(json.dumps({'debug': s.DEBUG, 'engine': s.DATABASES['default']['ENGINE'],"
        " 'db_host': s.DATABASES['default']['HOST'], 'broker': s.CELERY_BROKER_URL,"
        " 'results': s.CELERY_RESULT_BACKEND, 'cache': s.CACHES['default']['BACKEND'],"
        " 'cache_location': s.CACHES['default'].get('LOCATION'),"
        " 'storage': storage['BACKEND'], 'storage_options': storage.get('OPTIONS', {}),"
        " 'model_cache': str(s.MODEL_CACHE_DIR), 'secure_cookies': s.SESSION_COOKIE_SECURE,"
        " 'device': s.INFERENCE_DEVICE, 'hosts': s.ALLOWED_HOSTS}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


# --- Dockerfile helpers ----------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path} ends with a continuation line"
    return instructions


def dockerfile_stages(path: Path) -> list[tuple[str, list[tuple[str, str]]]]:
    """[(stage name or image, instructions of that stage)], in order."""
    stages: list[tuple[str, list[tuple[str, str]]]] = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else words[0]
            stages.append((name, []))
        elif stages:
            stages[-1][1].append((keyword, rest))
    return stages


def copy_parts(rest: str) -> tuple[dict[str, str], list[str], str]:
    """Flags, sources and destination of a COPY/ADD instruction (shell or JSON form)."""
    words = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    flags = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    if words and words[0].startswith("["):
        words = json.loads(" ".join(words))
    assert len(words) >= 2, f"COPY {rest!r} needs a source and a destination"
    return flags, words[:-1], words[-1]


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for word in shlex.split(rest):
                key, _, value = word.partition("=")
                values[key] = value
    return values


def dockerignore_patterns() -> list[str]:
    if not DOCKERIGNORE.exists():
        return []
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored_by_dockerignore(relative: str) -> bool:
    """Rough .dockerignore matching (enough for the project's simple patterns, '!' re-includes)."""
    relative = relative.strip("/").removeprefix("./")
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in dockerignore_patterns():
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        candidates = [pattern, pattern.removeprefix("**/")] if pattern.startswith("**/") else [pattern]
        if any(fnmatch.fnmatchcase(prefix, candidate) for prefix in prefixes for candidate in candidates) or (
            pattern.startswith("**/") and any(fnmatch.fnmatchcase(part, candidates[1]) for part in parts)
        ):
            ignored = not negate
    return ignored


def settings_env_calls() -> list[ast.Call]:
    tree = ast.parse(SETTINGS_FILE.read_text())
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ENV_HELPERS
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ]


def settings_env_names() -> set[str]:
    return {call.args[0].value for call in settings_env_calls()}  # type: ignore[attr-defined]


def settings_required_names() -> set[str]:
    """Names read without a default (env_str/env_url raise when such a variable is unset)."""
    required = set()
    for call in settings_env_calls():
        default = (
            call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "default"), None)
        )
        if default is None or (isinstance(default, ast.Constant) and default.value is None):
            required.add(call.args[0].value)  # type: ignore[attr-defined]
    # Has a default of "" but _secret_key() refuses it when DJANGO_DEBUG is off.
    required.add("DJANGO_SECRET_KEY")
    return required


# --- compose: services, health checks, start order ---------------------------------------------


def test_compose_has_the_services_volumes_and_health_checks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(APP_SERVICES + INFRA_SERVICES) <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "pg_isready" in healthcheck_text(services["postgres"])
    assert "redis-cli" in healthcheck_text(services["redis"]) and "ping" in healthcheck_text(services["redis"])
    assert IMAGE_HEALTH_URL in healthcheck_text(services["web"])

    declared = set(compose.get("volumes") or {})
    assert "/var/lib/postgresql/data" in volume_targets(services["postgres"]), "the database needs a volume"
    for name, definition in services.items():
        for target, source in volume_targets(definition).items():
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared named volume {source!r} at {target}"


def test_every_app_service_has_its_own_health_check_or_disables_the_images(compose: dict[str, Any]) -> None:
    # The image's HEALTHCHECK probes the web port: a worker or beat inheriting it would be "unhealthy".
    for name in APP_SERVICES:
        check = service(compose, name).get("healthcheck")
        assert check and (check.get("disable") is True or check.get("test")), f"{name} needs a healthcheck entry"
    for name in celery_services(compose):
        args = service_command(compose, name)
        if "worker" not in args:
            continue
        node = option(args, "-n", "--hostname")
        assert node and node.endswith("@%h"), f"{name}: name the worker <prefix>@%h"
        prefix = node.split("@")[0]
        assert f"-d {prefix}@$HOSTNAME" in interpolate(healthcheck_text(service(compose, name)), {}), (
            f"{name}'s healthcheck must ping its own node {prefix}@$HOSTNAME"
        )


def test_services_start_after_healthy_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in APP_SERVICES:
        depends = service(compose, name).get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: use the long depends_on form with conditions"
        for needed in INFRA_SERVICES:
            assert depends.get(needed, {}).get("condition") == "service_healthy", f"{name} must wait for {needed}"
        if name != "web":
            # web applies the migrations (RUN_MIGRATIONS) before it reports healthy.
            assert depends.get("web", {}).get("condition") == "service_healthy", f"{name} must wait for migrations"
        for needed, spec in depends.items():
            if spec.get("condition") == "service_healthy":
                check = services[needed].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), f"{needed} has no healthcheck to wait for"


@pytest.mark.parametrize("variable", ["RUN_MIGRATIONS", "STORAGE_INIT"])
def test_only_web_runs_migrations_and_prepares_the_bucket(compose: dict[str, Any], variable: str) -> None:
    flags = {name: service_env(compose, name).get(variable, "false").lower() for name in APP_SERVICES}
    assert flags.pop("web") == "true"
    assert all(value in {"false", "0", "no", "off", ""} for value in flags.values()), flags


# --- compose commands point at real code -------------------------------------------------------


def test_web_runs_gunicorn_on_the_wsgi_application(compose: dict[str, Any]) -> None:
    args = service_command(compose, "web")
    assert args[0] == "gunicorn"
    targets = [arg for arg in args[1:] if ":" in arg and not arg.startswith("-")]
    assert targets == ["config.wsgi:application"]
    module_name, attribute = targets[0].split(":")
    assert callable(getattr(__import__(module_name, fromlist=[attribute]), attribute))
    assert settings.WSGI_APPLICATION == targets[0].replace(":", ".")

    bind = option(args, "--bind", "-b")
    assert bind and bind.rsplit(":", 1)[1] == "8000"
    assert "http://127.0.0.1:8000" in healthcheck_text(service(compose, "web"))
    assert any(str(port).endswith(":8000") for port in service(compose, "web").get("ports", []))
    assert "127.0.0.1" in service_env(compose, "web")["DJANGO_ALLOWED_HOSTS"].split(","), (
        "the health check requests http://127.0.0.1:8000, so that host must be allowed"
    )


def test_celery_commands_name_the_app_queues_and_scheduler(compose: dict[str, Any]) -> None:
    assert set(celery_services(compose)) == {
        "worker-gpu",
        "worker-training",
        "worker-interactive",
        "worker-cpu",
        "beat",
    }
    known_queues = {queue.name for queue in find_app("config").conf.task_queues}
    assert {"default", "gpu", "training", "interactive"} <= known_queues
    consumed: set[str] = set()
    for name in celery_services(compose):
        args = service_command(compose, name)
        app_name = option(args, "-A", "--app")
        assert app_name, f"{name}: celery needs -A"
        app = find_app(app_name)
        assert isinstance(app, Celery)
        assert app is symbol_by_name("config.celery:app")
        if "worker" in args:
            queues = set((option(args, "-Q", "--queues") or "").split(","))
            assert queues <= known_queues, f"{name} consumes unknown queues {queues - known_queues}"
            consumed |= queues
        if "beat" in args:
            scheduler = option(args, "-S", "--scheduler")
            assert scheduler == settings.CELERY_BEAT_SCHEDULER == "django_celery_beat.schedulers:DatabaseScheduler"
            assert issubclass(symbol_by_name(scheduler), Scheduler)
    assert consumed == known_queues, f"no worker consumes {known_queues - consumed}"


def test_clicks_have_a_worker_and_queue_of_their_own(compose: dict[str, Any]) -> None:
    """The maps a click waits for (issue #13) are computed on the ``interactive`` queue, which
    only its own worker consumes, here and in bin/run: never behind pre-segmentation or training."""
    from inference import tasks

    assert tasks.image_maps.queue == "interactive"
    for name in celery_services(compose):
        args = service_command(compose, name)
        if "worker" not in args:
            continue
        queues = set((option(args, "-Q", "--queues") or "").split(","))
        if name == "worker-interactive":
            assert queues == {"interactive"} and option(args, "--concurrency") == "1"
        else:
            assert "interactive" not in queues, f"{name} must not take the clicks' tasks"
    run = (ROOT / "bin" / "run").read_text()
    workers = re.findall(r'"(\w+)=(nice -n \d+ )?celery -A config worker -Q (\S+) ', run)
    assert ("interactive", "", "interactive") in workers, "the clicks' worker runs at normal priority"
    others = [(name, nice, queues) for name, nice, queues in workers if name != "interactive"]
    assert others and all("interactive" not in queues and nice for _, nice, queues in others), (
        "the batch workers yield the CPU to clicks"
    )


def test_gpu_worker_reserves_one_nvidia_gpu_and_runs_one_task_at_a_time(compose: dict[str, Any]) -> None:
    gpu = service(compose, "worker-gpu")
    args = service_command(compose, "worker-gpu")
    assert option(args, "-Q", "--queues") == "gpu"
    assert option(args, "-c", "--concurrency") == "1"
    assert option(args, "--prefetch-multiplier") == "1"
    assert service_env(compose, "worker-gpu")["INFERENCE_DEVICE"] == "cuda"

    # One card each, GPU 0 unless the operator picks another (one card per worker on a host with several).
    assert gpu_device_ids(gpu) == ["0"]
    assert gpu_device_ids(gpu, HOST_ENV | {"GPU_WORKER_DEVICE": "1"}) == ["1"]
    training = service(compose, "worker-training")
    assert gpu_device_ids(training) == ["0"]
    assert gpu_device_ids(training, HOST_ENV | {"TRAINING_WORKER_DEVICE": "1"}) == ["1"]

    # The CUDA build of torch comes from PyPI; the CPU index must not be used for this image, and
    # the GPU image needs its own tag or the CPU and GPU builds overwrite each other.
    assert "/cpu" not in gpu["build"]["args"]["TORCH_INDEX_URL"]
    gpu_image = interpolate(gpu["image"], HOST_ENV)
    assert interpolate(training["image"], HOST_ENV) == gpu_image
    for name in APP_SERVICES:
        if name not in GPU_SERVICES:
            assert interpolate(service(compose, name)["image"], HOST_ENV) != gpu_image
            assert service_env(compose, name).get("INFERENCE_DEVICE", "auto") in {"auto", "cpu"}


# --- compose environment vs. the settings -----------------------------------------------------


def test_every_environment_variable_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    read = settings_env_names()
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "STORAGE_URL", "PLATFORM_VAR_DIR"} <= read
    for variable, reader in EXTRA_ENV_READERS.items():
        if reader is not None:
            assert variable in reader.read_text(), f"{variable} is whitelisted but {reader.name} does not read it"
    for name in APP_SERVICES:
        unknown = set(service_env(compose, name)) - read - set(EXTRA_ENV_READERS)
        assert not unknown, f"{name} sets variables nothing reads: {sorted(unknown)}"


def test_required_settings_are_provided_and_secrets_have_no_default(compose: dict[str, Any]) -> None:
    required = settings_required_names()
    for name in APP_SERVICES:
        env = service_env(compose, name)
        assert env.get("DJANGO_DEBUG", "").lower() in {"false", "0", "no", "off"}, f"{name} must run with DEBUG off"
        missing = {variable for variable in required if not env.get(variable)}
        assert not missing, f"{name} lacks required settings {sorted(missing)}"
        assert env["DJANGO_SETTINGS_MODULE"] == "config.settings"
        raw = service(compose, name)["environment"]["DJANGO_SECRET_KEY"]
        assert re.fullmatch(r"\$\{DJANGO_SECRET_KEY:\?[^}]+\}", raw), "the secret key must be required, not defaulted"
        # Without the operator's .env, compose must refuse to start rather than use a weak value.
        with pytest.raises(KeyError):
            service_env(compose, name, host_env={})


@pytest.mark.parametrize("name", APP_SERVICES)
def test_settings_load_with_the_compose_environment(compose: dict[str, Any], name: str, tmp_path: Path) -> None:
    env = service_env(compose, name)
    assert env["PLATFORM_VAR_DIR"] == image_env(dockerfile_stages(DOCKERFILE)[-1][1])["PLATFORM_VAR_DIR"], (
        "static files are collected into $PLATFORM_VAR_DIR/static at build time; run time must use the same path"
    )
    loaded = load_settings(env, tmp_path)
    assert loaded["debug"] is False
    assert loaded["engine"] == "django.db.backends.postgresql" and loaded["db_host"] == "postgres"
    for url in (loaded["broker"], loaded["results"], loaded["cache_location"]):
        parsed = urlparse(url)
        assert parsed.scheme == "redis" and parsed.hostname == "redis" and parsed.password == HOST_ENV["REDIS_PASSWORD"]
    assert loaded["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert loaded["storage"] == "storages.backends.s3.S3Storage"
    options = loaded["storage_options"]
    assert (options["bucket_name"], options["location"]) == ("cytoplatform", "files")
    assert options["endpoint_url"] == "http://objectstore:8333" and options["addressing_style"] == "path"
    assert options["access_key"] == HOST_ENV["STORAGE_ACCESS_KEY_ID"]
    assert options["default_acl"] is None and options["querystring_auth"] is True
    assert loaded["model_cache"] == env["MODEL_CACHE_DIR"]
    assert loaded["secure_cookies"] is True
    assert loaded["device"] == ("cuda" if name in GPU_SERVICES else "auto")
    assert "127.0.0.1" in loaded["hosts"]


def test_every_app_service_keeps_its_files_in_the_object_store(compose: dict[str, Any]) -> None:
    store_port = int(weed_flags(service_command(compose, "objectstore"))["s3.port"])
    for name in APP_SERVICES:
        env = service_env(compose, name)
        storage_url = urlparse(env["STORAGE_URL"])
        assert storage_url.scheme == "s3" and storage_url.netloc == "cytoplatform", f"{name}: {env['STORAGE_URL']}"
        assert env["STORAGE_URL"] == service_env(compose, "web")["STORAGE_URL"], f"{name} uses another bucket"
        endpoint = urlparse(env["STORAGE_ENDPOINT_URL"])
        assert (endpoint.scheme, endpoint.hostname, endpoint.port) == ("http", "objectstore", store_port), name
        assert env["STORAGE_ACCESS_KEY_ID"] == HOST_ENV["STORAGE_ACCESS_KEY_ID"]
        assert env["STORAGE_SECRET_ACCESS_KEY"] == HOST_ENV["STORAGE_SECRET_ACCESS_KEY"]
        raw = service(compose, name)["environment"]
        for secret in ("STORAGE_ACCESS_KEY_ID", "STORAGE_SECRET_ACCESS_KEY"):
            assert re.fullmatch(rf"\$\{{{secret}:\?[^}}]+\}}", raw[secret]), f"{name}: {secret} must be required"
        assert "MEDIA_ROOT" not in env, f"{name}: files are in the bucket, not under MEDIA_ROOT"
        assert service(compose, name)["depends_on"]["objectstore"]["condition"] == "service_healthy"
    assert "media" not in (compose.get("volumes") or {}), "the shared media volume is gone"


def test_no_volume_is_shared_between_services_and_static_files_are_not_hidden(compose: dict[str, Any]) -> None:
    mounted_by: dict[str, set[str]] = {}
    for name in APP_SERVICES:
        env = service_env(compose, name)
        targets = volume_targets(service(compose, name))
        static_root = env["PLATFORM_VAR_DIR"].rstrip("/") + "/static"
        for target, source in targets.items():
            assert not (static_root + "/").startswith(target + "/"), f"{name}: a volume at {target} hides {static_root}"
            # A host folder could be shared as well as a named volume; the workers may be elsewhere.
            assert source and not source.startswith((".", "/", "~")), f"{name} mounts a host path {source!r}"
            mounted_by.setdefault(source, set()).add(name)
        if name in GPU_SERVICES:
            # The services that run models keep their cache of model files between restarts.
            assert env["MODEL_CACHE_DIR"] in targets, f"{name}: a volume of its own at {env['MODEL_CACHE_DIR']}"
    shared = {source: sorted(names) for source, names in mounted_by.items() if len(names) > 1}
    assert not shared, f"volumes mounted by several services: {shared}"
    for name in APP_SERVICES:
        if name != "web":
            common = set(volume_targets(service(compose, "web")).values()) & set(
                volume_targets(service(compose, name)).values()
            )
            assert not common, f"web and {name} both mount {common}"
    # A fresh named volume copies the ownership of the image's folder: it must exist there.
    runtime_runs = " ".join(rest for keyword, rest in dockerfile_stages(DOCKERFILE)[-1][1] if keyword == "RUN")
    for name in GPU_SERVICES:
        assert service_env(compose, name)["MODEL_CACHE_DIR"] in runtime_runs, "mkdir it in the Dockerfile"


def test_object_store_is_private_persistent_and_checked(compose: dict[str, Any]) -> None:
    store = service(compose, "objectstore")
    repository, _, tag = store["image"].rpartition(":")
    assert repository == "chrislusf/seaweedfs" and re.fullmatch(r"\d+\.\d+", tag), "pin a SeaweedFS release"
    args = service_command(compose, "objectstore")
    flags = weed_flags(args)
    assert args[0] == "server" and flags.get("s3") == "true"
    assert flags["s3.autoCreateBucket"] == "false"  # storage_init creates the one bucket
    port = int(flags["s3.port"])

    # Not published by docker-compose.yml (docker/main-host.compose.yml does, on a private address).
    assert not store.get("ports"), "the object store must not be published by default"
    assert "/data" in volume_targets(store), "its data needs a volume"
    assert volume_targets(store)["/data"] in (compose.get("volumes") or {})
    check = store["healthcheck"]
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck_text(store) and not check.get("disable")

    # The S3 identities: the platform's credentials only; no anonymous identity, so unsigned
    # requests are refused.
    (mount,) = store["configs"]
    assert mount["target"] == flags["s3.config"]
    content = compose["configs"][mount["source"]]["content"]
    identities = json.loads(interpolate(content, HOST_ENV))["identities"]
    assert [identity["name"] for identity in identities if identity["name"] == "anonymous"] == []
    assert len(identities) == 1 and identities[0]["credentials"] == [
        {"accessKey": HOST_ENV["STORAGE_ACCESS_KEY_ID"], "secretKey": HOST_ENV["STORAGE_SECRET_ACCESS_KEY"]}
    ]
    assert {"Admin", "Read", "List", "Write"} <= set(identities[0]["actions"])  # Admin: create the bucket
    with pytest.raises(KeyError):
        interpolate(content, {})


def test_web_health_check_requests_healthz_which_the_urls_serve(compose: dict[str, Any]) -> None:
    from core.views import healthz

    paths = re.findall(r"http://127\.0\.0\.1:8000(/[^'\" ]*)", healthcheck_text(service(compose, "web")))
    assert paths == [IMAGE_HEALTH_URL]
    assert resolve(IMAGE_HEALTH_URL).func is healthz


# --- several hosts: docker/main-host.compose.yml and docker/worker-host.compose.yml ----------


def test_main_host_file_publishes_only_the_shared_services_on_a_private_address(
    compose: dict[str, Any], main_host: dict[str, Any]
) -> None:
    assert set(main_host["services"]) == set(SHARED_PORTS)
    assert set(main_host) == {"services"}, "it only adds ports to docker-compose.yml's services"
    web_env = service_env(compose, "web")
    inside = {
        "postgres": urlparse(web_env["DATABASE_URL"]).port,
        "redis": urlparse(web_env["CELERY_BROKER_URL"]).port,
        "objectstore": urlparse(web_env["STORAGE_ENDPOINT_URL"]).port,
    }
    for name, port in SHARED_PORTS.items():
        definition = main_host["services"][name]
        assert set(definition) == {"ports"}, f"{name}: only ports"
        (published,) = definition["ports"]
        assert published.startswith("${PRIVATE_BIND_ADDRESS:?"), f"{name}: bind to the required private address"
        assert interpolate(published, MAIN_HOST_ENV) == f"10.0.0.5:{port}:{port}"
        with pytest.raises(KeyError):
            interpolate(published, HOST_ENV)
        assert inside[name] == port, f"{name}: the app containers use port {inside[name]}"
        assert not service(compose, name).get("ports"), f"docker-compose.yml must not publish {name}"


def test_worker_host_runs_one_gpu_worker_like_the_main_hosts(
    compose: dict[str, Any], worker_host: dict[str, Any]
) -> None:
    assert set(worker_host["services"]) == {"worker-gpu"}, "a worker host runs no beat, web or other worker"
    worker = service(worker_host, "worker-gpu")
    args = service_command(worker_host, "worker-gpu", WORKER_HOST_ENV)
    assert args[:4] == ["celery", "-A", "config", "worker"]
    assert find_app(option(args, "-A") or "") is symbol_by_name("config.celery:app")
    assert option(args, "-Q", "--queues") == "gpu", "only the gpu queue"
    assert option(args, "-c", "--concurrency") == "1" and option(args, "--prefetch-multiplier") == "1"
    assert option(args, "-n", "--hostname") == "gpu@%h"
    assert "-d gpu@$HOSTNAME" in interpolate(healthcheck_text(worker), {})

    assert gpu_device_ids(worker, WORKER_HOST_ENV) == ["0"]
    assert gpu_device_ids(worker, WORKER_HOST_ENV | {"GPU_DEVICE": "3"}) == ["3"]
    main_gpu = service(compose, "worker-gpu")
    assert interpolate(worker["image"], WORKER_HOST_ENV) == interpolate(main_gpu["image"], HOST_ENV)
    assert worker["build"]["args"] == main_gpu["build"]["args"]
    context = (WORKER_HOST_FILE.parent / worker["build"]["context"]).resolve()
    assert context == ROOT and (context / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert not worker.get("ports")
    for target, source in volume_targets(worker).items():
        assert source in (worker_host.get("volumes") or {}), f"undeclared volume {source!r} at {target}"


def test_worker_host_environment_is_read_by_the_settings_and_points_at_the_main_host(
    compose: dict[str, Any], worker_host: dict[str, Any], tmp_path: Path
) -> None:
    env = service_env(worker_host, "worker-gpu", WORKER_HOST_ENV)
    unknown = set(env) - settings_env_names() - set(EXTRA_ENV_READERS)
    assert not unknown, f"the worker host sets variables nothing reads: {sorted(unknown)}"
    missing = {variable for variable in settings_required_names() if not env.get(variable)}
    assert not missing, f"the worker host lacks required settings {sorted(missing)}"
    with pytest.raises(KeyError, match="MAIN_HOST"):
        service_env(worker_host, "worker-gpu", HOST_ENV)
    raw = service(worker_host, "worker-gpu")["environment"]["DJANGO_SECRET_KEY"]
    assert re.fullmatch(r"\$\{DJANGO_SECRET_KEY:\?[^}]+\}", raw)

    # The same services as the main host's containers use, reached at MAIN_HOST on the published ports.
    main = service_env(compose, "worker-gpu")
    for variable, service_name in (
        ("DATABASE_URL", "postgres"),
        ("CELERY_BROKER_URL", "redis"),
        ("CELERY_RESULT_BACKEND", "redis"),
        ("CACHE_URL", "redis"),
        ("STORAGE_ENDPOINT_URL", "objectstore"),
    ):
        here, there = urlparse(env[variable]), urlparse(main[variable])
        assert (here.hostname, here.port) == ("10.0.0.5", SHARED_PORTS[service_name]), variable
        assert (here.scheme, here.username, here.password, here.path) == (
            there.scheme,
            there.username,
            there.password,
            there.path,
        ), f"{variable} differs from the main host's beyond the host"
    for variable in (
        "STORAGE_URL",
        "STORAGE_ACCESS_KEY_ID",
        "STORAGE_SECRET_ACCESS_KEY",
        "DJANGO_SECRET_KEY",
        "DJANGO_DEBUG",
        "PLATFORM_VAR_DIR",
        "MODEL_CACHE_DIR",
        "GPU_TASK_SOFT_TIME_LIMIT",
        "GPU_TASK_TIME_LIMIT",
        "INFERENCE_DEVICE",
    ):
        assert env[variable] == main[variable], f"{variable} differs from the main host's worker-gpu"
    assert env["MODEL_CACHE_DIR"] in volume_targets(service(worker_host, "worker-gpu"))

    loaded = load_settings(env, tmp_path)
    assert loaded["debug"] is False and loaded["db_host"] == "10.0.0.5"
    assert urlparse(loaded["broker"]).hostname == "10.0.0.5"
    assert loaded["storage"] == "storages.backends.s3.S3Storage"
    assert loaded["storage_options"]["endpoint_url"] == "http://10.0.0.5:8333"
    assert loaded["device"] == "cuda"


# --- Dockerfile and entrypoint -----------------------------------------------------------------


def test_dockerfile_copy_sources_exist_and_are_not_ignored() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    stage_names = {stage_name for stage_name, _ in stages}
    checked = 0
    for _, stage in stages:
        for keyword, rest in stage:
            if keyword not in {"COPY", "ADD"}:
                continue
            flags, sources, _ = copy_parts(rest)
            if "from" in flags:
                assert flags["from"] in stage_names, f"COPY --from={flags['from']} names no stage"
                continue
            for source in sources:
                assert list(ROOT.glob(source.rstrip("/"))) or source.rstrip("/") in {".", ""}, f"{source} is missing"
                assert not ignored_by_dockerignore(source), (
                    f".dockerignore excludes {source}, which the Dockerfile copies"
                )
                checked += 1
    assert checked >= 5
    for required in ("requirements.txt", "manage.py", "config"):
        assert not ignored_by_dockerignore(required)
    for heavy in (".git", "var", "frontend/node_modules"):
        assert ignored_by_dockerignore(heavy), f".dockerignore should exclude {heavy}"


def test_runtime_stage_copies_the_code_and_the_built_frontend() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    frontend_stage = next((name for name, stage in stages if any("npm run build" in rest for _, rest in stage)), None)
    assert frontend_stage, "a stage must build the frontend"
    base_images = [rest.split()[0] for keyword, rest in dockerfile_instructions(DOCKERFILE) if keyword == "FROM"]
    assert any(image.startswith("node:20") for image in base_images)
    assert "python:3.11-slim" in DOCKERFILE.read_text()
    if (ROOT / "frontend" / "package.json").exists():
        assert "build" in json.loads((ROOT / "frontend" / "package.json").read_text())["scripts"]

    _, runtime = stages[-1]
    copied = set()
    frontend_dist_copied = False
    for keyword, rest in runtime:
        if keyword != "COPY":
            continue
        flags, sources, destination = copy_parts(rest)
        if flags.get("from") == frontend_stage:
            frontend_dist_copied = frontend_dist_copied or (
                sources[0].rstrip("/").endswith("frontend/dist") and destination.rstrip("/").endswith("frontend/dist")
            )
        elif "from" not in flags:
            copied |= {source.rstrip("/") for source in sources}
    assert frontend_dist_copied, "the runtime stage must copy frontend/dist from the frontend stage"
    assert settings.FRONTEND_DIST.relative_to(settings.BASE_DIR) == Path("frontend/dist")

    local_packages = {app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()}
    needed = local_packages | {"config", "manage.py", "docker"}
    assert "." in copied or needed <= copied, f"the runtime stage does not copy {sorted(needed - copied)}"


def test_runtime_stage_collects_static_runs_as_non_root_and_checks_health() -> None:
    _, runtime = dockerfile_stages(DOCKERFILE)[-1]
    runs = [rest for keyword, rest in runtime if keyword == "RUN"]
    collect = [rest for rest in runs if "manage.py collectstatic" in rest]
    assert collect and "DJANGO_SECRET_KEY=" in collect[0] and "--noinput" in collect[0]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    healthchecks = [rest for keyword, rest in runtime if keyword == "HEALTHCHECK"]
    assert healthchecks and f"127.0.0.1:8000{IMAGE_HEALTH_URL}" in healthchecks[-1]

    entrypoints = [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage needs an ENTRYPOINT"
    assert json.loads(entrypoints[-1])[0].endswith("docker/entrypoint.sh")


def test_torch_is_installed_from_a_selectable_index() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", text, re.MULTILINE)
    assert '--index-url "$TORCH_INDEX_URL"' in text
    pins = re.findall(r"^(torch|torchvision)==\S+$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert set(pins) == {"torch", "torchvision"}


def test_runtime_requirements_keep_what_the_services_run() -> None:
    # The Dockerfile drops everything from the development marker on; the servers must come before it.
    marker = re.search(r"sed '/\^(?P<marker>[^/]+)/,\$d'", DOCKERFILE.read_text())
    assert marker, "expected the Dockerfile to strip the development requirements with sed"
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    start = next(
        (i for i, line in enumerate(requirements) if line.startswith(marker.group("marker"))), len(requirements)
    )
    runtime = {
        re.split(r"[=<>\[ ]", line, maxsplit=1)[0].lower() for line in requirements[:start] if line[:1].isalnum()
    }
    needed = {"django", "gunicorn", "celery", "django-celery-beat", "psycopg", "redis", "whitenoise", "torch"}
    assert needed <= runtime, f"missing from the runtime part of requirements.txt: {sorted(needed - runtime)}"


def test_entrypoint_is_executable_and_its_management_commands_exist() -> None:
    assert os.access(ENTRYPOINT, os.X_OK), "chmod +x docker/entrypoint.sh"
    text = ENTRYPOINT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert 'exec "$@"' in text
    syntax = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False)
    assert syntax.returncode == 0, syntax.stderr

    named = set(re.findall(r"manage\.py\"?\s+([a-z_]+)", text + DOCKERFILE.read_text()))
    assert {"migrate", "collectstatic"} <= named
    missing = named - set(get_commands())
    assert not missing, f"unknown management commands: {sorted(missing)}"


def _run_entrypoint(tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "PLATFORM_VAR_DIR": str(tmp_path / "var"),
        "RUN_MIGRATIONS": "false",
        **extra,
    }
    return subprocess.run(
        [str(ENTRYPOINT), "python", "-c", "print('command started')"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_entrypoint_waits_for_the_database_then_execs_the_command(tmp_path: Path) -> None:
    # The embedded SQLite default is always reachable.
    started = _run_entrypoint(tmp_path, DB_WAIT_TIMEOUT="10")
    assert started.returncode == 0, started.stderr
    assert "command started" in started.stdout
    assert "migrations" not in started.stdout

    # Nothing listens on port 1: the entrypoint gives up and never starts the command.
    refused = _run_entrypoint(tmp_path, DATABASE_URL="postgres://user:pw@127.0.0.1:1/db", DB_WAIT_TIMEOUT="1")
    assert refused.returncode != 0
    assert "command started" not in refused.stdout
    assert "database not reachable" in refused.stderr


def test_entrypoint_prepares_the_storage_before_the_migrations(tmp_path: Path) -> None:
    text = ENTRYPOINT.read_text()
    assert text.index('manage.py" storage_init') < text.index('manage.py" migrate')
    # With local storage (no STORAGE_URL) the command has nothing to do and the start goes on.
    started = _run_entrypoint(tmp_path, STORAGE_INIT="true", DB_WAIT_TIMEOUT="10")
    assert started.returncode == 0, started.stderr
    assert "nothing to do" in started.stdout and "command started" in started.stdout
