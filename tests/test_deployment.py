"""The deployment files (docker-compose.yml, docker/) checked against the code they start.

One file of ~600 lines: its parsers of the compose file and the Dockerfile serve every check.

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

import pytest
import yaml
from celery import Celery
from celery.app.utils import find_app
from celery.beat import Scheduler
from django.conf import settings
from django.core.management import get_commands
from kombu.utils.imports import symbol_by_name

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
WAIT_FOR_DB = ROOT / "docker" / "wait_for_db.py"
DOCKERIGNORE = ROOT / ".dockerignore"
SETTINGS_FILE = ROOT / "config" / "settings.py"

APP_SERVICES = ("web", "worker-gpu", "worker-training", "worker-cpu", "beat")
INFRA_SERVICES = ("postgres", "redis")
ENV_HELPERS = {"env_str", "env_bool", "env_int", "env_float", "env_list", "env_url"}
# Variables an app container may receive although config/settings.py does not read them, with
# the file that does (DJANGO_SETTINGS_MODULE is read by Django itself).
EXTRA_ENV_READERS: dict[str, Path | None] = {
    "DJANGO_SETTINGS_MODULE": None,
    "RUN_MIGRATIONS": ENTRYPOINT,
    "WAIT_FOR_DB": ENTRYPOINT,
    "DB_WAIT_TIMEOUT": WAIT_FOR_DB,
}
# What an operator puts in .env: the variables compose requires with ${NAME:?message}.
HOST_ENV = {"DJANGO_SECRET_KEY": "test-secret-key-" + "k3y" * 20, "POSTGRES_PASSWORD": "testpassword"}
IMAGE_HEALTH_URL = "/api/v1/schema"


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


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with COMPOSE_FILE.open() as handle:
        data = yaml.safe_load(handle)
    assert isinstance(data, dict)
    return data


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    return compose["services"][name]


def service_env(compose: dict[str, Any], name: str, host_env: dict[str, str] = HOST_ENV) -> dict[str, str]:
    raw = service(compose, name).get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {key: interpolate("" if value is None else str(value), host_env) for key, value in raw.items()}


def service_command(compose: dict[str, Any], name: str) -> list[str]:
    raw = service(compose, name).get("command")
    assert raw, f"{name} has no command"
    if isinstance(raw, str):
        return shlex.split(interpolate(raw, HOST_ENV))
    return [interpolate(str(arg), HOST_ENV) for arg in raw]


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


def test_only_web_runs_migrations(compose: dict[str, Any]) -> None:
    flags = {name: service_env(compose, name).get("RUN_MIGRATIONS", "false").lower() for name in APP_SERVICES}
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
    assert set(celery_services(compose)) == {"worker-gpu", "worker-training", "worker-cpu", "beat"}
    known_queues = {queue.name for queue in find_app("config").conf.task_queues}
    assert {"default", "gpu", "training"} <= known_queues
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


def test_gpu_worker_reserves_one_nvidia_gpu_and_runs_one_task_at_a_time(compose: dict[str, Any]) -> None:
    gpu = service(compose, "worker-gpu")
    args = service_command(compose, "worker-gpu")
    assert option(args, "-Q", "--queues") == "gpu"
    assert option(args, "-c", "--concurrency") == "1"
    assert option(args, "--prefetch-multiplier") == "1"
    assert service_env(compose, "worker-gpu")["INFERENCE_DEVICE"] == "cuda"

    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        device.get("driver") == "nvidia"
        and int(device.get("count", 0)) == 1
        and "gpu" in device.get("capabilities", [])
        for device in devices
    ), devices

    # The CUDA build of torch comes from PyPI; the CPU index must not be used for this image, and
    # the GPU image needs its own tag or the CPU and GPU builds overwrite each other.
    assert "/cpu" not in gpu["build"]["args"]["TORCH_INDEX_URL"]
    gpu_image = interpolate(gpu["image"], HOST_ENV)
    assert interpolate(service(compose, "worker-training")["image"], HOST_ENV) == gpu_image
    for name in APP_SERVICES:
        if name not in ("worker-gpu", "worker-training"):
            assert interpolate(service(compose, name)["image"], HOST_ENV) != gpu_image
            assert service_env(compose, name).get("INFERENCE_DEVICE", "auto") in {"auto", "cpu"}


# --- compose environment vs. the settings -----------------------------------------------------


def test_every_environment_variable_is_read_by_the_settings(compose: dict[str, Any]) -> None:
    read = settings_env_names()
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "CELERY_BROKER_URL", "MEDIA_ROOT", "PLATFORM_VAR_DIR"} <= read
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
    # Only the service's own variables (plus PATH), and a scratch var dir instead of /data/var.
    env |= {"PATH": os.environ.get("PATH", ""), "PLATFORM_VAR_DIR": str(tmp_path / "var")}
    script = (
        "import json, django\n"
        "django.setup()\n"
        "from django.conf import settings as s\n"
        "print(json.dumps({'debug': s.DEBUG, 'engine': s.DATABASES['default']['ENGINE'],"
        " 'db_host': s.DATABASES['default']['HOST'], 'broker': s.CELERY_BROKER_URL,"
        " 'results': s.CELERY_RESULT_BACKEND, 'cache': s.CACHES['default']['BACKEND'],"
        " 'media': str(s.MEDIA_ROOT), 'secure_cookies': s.SESSION_COOKIE_SECURE,"
        " 'device': s.INFERENCE_DEVICE, 'hosts': s.ALLOWED_HOSTS}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["debug"] is False
    assert loaded["engine"] == "django.db.backends.postgresql" and loaded["db_host"] == "postgres"
    assert loaded["broker"].startswith("redis://redis:") and loaded["results"].startswith("redis://redis:")
    assert loaded["cache"] == "django.core.cache.backends.redis.RedisCache"
    assert loaded["media"] == "/data/media"
    assert loaded["secure_cookies"] is True
    assert loaded["device"] == ("cuda" if name in ("worker-gpu", "worker-training") else "auto")
    assert "127.0.0.1" in loaded["hosts"]


def test_media_is_shared_and_static_files_are_not_hidden_by_a_volume(compose: dict[str, Any]) -> None:
    sources = set()
    for name in APP_SERVICES:
        env = service_env(compose, name)
        targets = volume_targets(service(compose, name))
        static_root = env["PLATFORM_VAR_DIR"].rstrip("/") + "/static"
        for target in targets:
            assert not (static_root + "/").startswith(target + "/"), f"{name}: a volume at {target} hides {static_root}"
        if name != "beat":
            assert env["MEDIA_ROOT"] in targets, f"{name} needs the media volume at {env['MEDIA_ROOT']}"
            sources.add(targets[env["MEDIA_ROOT"]])
    assert len(sources) == 1, f"web and the workers must share one media volume, got {sources}"


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
