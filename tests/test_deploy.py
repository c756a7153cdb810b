"""The deployment files agree with the code: Dockerfile, docker-compose.yml, .env.example and
deploy/prometheus.yml are read and checked here without Docker, Redis or object storage.

Only the last test needs a tool: it runs ``docker compose config`` (or the older
``docker-compose config``, which ``make test`` installs from Debian)."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import ENV_PREFIX, Settings
from shared.storage import create_object_store

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
GUNICORN_CONF = ROOT / "ingress" / "gunicorn_conf.py"

#: The services built from this project's image; they read the settings.
APP_SERVICES = ("ingress", "worker")
#: Where dramatiq's Prometheus middleware serves by default.
WORKER_METRICS_PORT = 9191

#: ``${NAME}``, ``${NAME:-default}``, ``${NAME-default}``, ``${NAME:?error}``, ``${NAME?error}``;
#: not ``$${NAME}``, which compose leaves to the container's shell as ``${NAME}``.
INTERPOLATION = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
#: ``NAME=value`` in a dotenv file, or ``#NAME=value`` for one shown but commented out.
ENV_ASSIGNMENT = re.compile(r"(?P<commented>#?)(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)")
DURATION_PART = re.compile(r"(?P<amount>\d+(?:\.\d+)?)(?P<unit>ms|us|h|m|s)")
DURATION_UNITS_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}


# --- reading the files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    document = yaml.safe_load(compose_text)
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = compose["services"]
    return declared


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """Every variable .env.example shows, set or commented out, with its value."""
    return parse_env_file(ENV_EXAMPLE.read_text(), commented_out=True)


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def parse_env_file(text: str, *, commented_out: bool = False) -> dict[str, str]:
    """``NAME=value`` lines of a dotenv file, and with ``commented_out`` also ``#NAME=value``
    lines (a prose comment starts with ``# ``); a name given twice is an error."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        match = ENV_ASSIGNMENT.fullmatch(line.strip())
        if match is None or (match["commented"] and not commented_out):
            assert not line.strip() or line.startswith("#"), f".env.example: not NAME=value: {line!r}"
            continue
        assert match["name"] not in values, f".env.example gives {match['name']} twice"
        values[match["name"]] = match["value"]
    return values


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def interpolate(value: str, environ: Mapping[str, str]) -> str:
    """Compose's variable substitution for the forms this project uses."""

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"]
        current = environ.get(name)
        if op is None:
            return current or ""
        unset = current is None or (op.startswith(":") and current == "")
        if op.endswith("?"):
            assert not unset, f"${{{name}}} is required: {arg}"
            return current or ""
        return arg if unset else (current or "")

    return INTERPOLATION.sub(substitute, value)


def environment_of(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's ``environment``, in its mapping or its list form."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.partition("=") for item in environment)
        return {name: (value if sep else None) for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in environment.items()}


def command_of(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def depends_on(service: Mapping[str, Any]) -> dict[str, str | None]:
    """The services ``service`` waits for, each with its condition (None for the list form)."""
    targets = service.get("depends_on") or {}
    if isinstance(targets, list):
        return dict.fromkeys(targets)
    return {name: (spec or {}).get("condition") for name, spec in targets.items()}


def healthcheck_test(service: Mapping[str, Any]) -> list[str] | None:
    """The command of a service's healthcheck; None when it has none or it is disabled."""
    healthcheck = service.get("healthcheck") or {}
    test = healthcheck.get("test")
    if healthcheck.get("disable") or not test or test == ["NONE"]:
        return None
    return shlex.split(test) if isinstance(test, str) else [str(part) for part in test]


def healthcheck_python_code(test: list[str]) -> str | None:
    """The program of a ``["CMD", "python", "-c", CODE]`` healthcheck, else None."""
    if len(test) == 4 and test[0] == "CMD" and test[1].startswith("python") and test[2] == "-c":
        return test[3]
    return None


def duration_s(value: str) -> float:
    """A compose duration (``2m``, ``1m30s``, ``90s``) in seconds."""
    parts = list(DURATION_PART.finditer(str(value)))
    assert parts, f"not a duration: {value!r}"
    assert "".join(part[0] for part in parts) == str(value), f"not a duration: {value!r}"
    return sum(float(part["amount"]) * DURATION_UNITS_S[part["unit"]] for part in parts)


def setting_field(variable: str) -> str:
    assert variable.startswith(ENV_PREFIX), variable
    return variable[len(ENV_PREFIX) :].lower()


def mjhook_variables(names: Iterator[str] | set[str] | dict[str, Any]) -> set[str]:
    return {name for name in names if name.startswith(ENV_PREFIX)}


def parsed_default(field: str, raw: str) -> Any:
    """The value the settings give ``field`` when its variable is ``raw``."""
    return getattr(Settings.from_env({f"{ENV_PREFIX}{field.upper()}": raw}), field)


def named_volume_mounts(service: Mapping[str, Any]) -> set[str]:
    """Volumes of ``service`` that are named volumes rather than host paths."""
    sources = set()
    for volume in service.get("volumes") or []:
        source = volume["source"] if isinstance(volume, dict) else str(volume).split(":", 1)[0]
        if not source.startswith((".", "/", "~")):
            sources.add(source)
    return sources


def module_tree(module: str) -> ast.Module:
    """A module's syntax tree, found on the import path but not imported (it reads settings)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module!r}"
    assert spec.origin, f"module {module!r} has no source"
    return ast.parse(Path(spec.origin).read_text())


def top_level_names(module: str) -> set[str]:
    """Names a module assigns or defines at its top level."""
    tree = module_tree(module)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
        elif isinstance(node, ast.AnnAssign | ast.AugAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def declares_dramatiq_actor(module: str) -> bool:
    for node in ast.walk(module_tree(module)):
        if isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                target = decorator.func if isinstance(decorator, ast.Call) else decorator
                if ast.unparse(target) in {"dramatiq.actor", "actor"}:
                    return True
    return False


def entry_point_problems(argv: list[str]) -> list[str]:
    """What is wrong with a service command: a module, attribute or file that does not exist."""
    program = Path(argv[0]).name
    problems = []
    if program == "gunicorn":
        target = next(arg for arg in argv[1:] if ":" in arg and not arg.startswith("-"))
        module, _, attribute = target.partition(":")
        if importlib.util.find_spec(module) is None:
            problems.append(f"gunicorn: no module {module}")
        elif attribute not in top_level_names(module):
            problems.append(f"gunicorn: {module} defines no {attribute}")
        if "-c" in argv and not (ROOT / argv[argv.index("-c") + 1]).is_file():
            problems.append(f"gunicorn: no config file {argv[argv.index('-c') + 1]}")
    elif program == "dramatiq" or argv[:3] == ["python", "-m", "workers"]:
        # `python -m workers` is dramatiq with mjhook's logging (workers/__main__.py)
        arguments = argv[1:] if program == "dramatiq" else argv[3:]
        modules = [arg for arg in arguments if not arg.startswith("-") and not arg.isdigit()]
        module = modules[0]
        if importlib.util.find_spec(module) is None:
            problems.append(f"dramatiq: no module {module}")
        elif not declares_dramatiq_actor(module):
            problems.append(f"dramatiq: {module} declares no actor")
    else:
        problems.append(f"unexpected program {argv[0]!r}")
    return problems


def dockerfile_exec_form(arguments: str) -> list[str]:
    value = yaml.safe_load(arguments)  # a JSON array is a YAML flow sequence
    assert isinstance(value, list), f"not exec form: {arguments}"
    return [str(part) for part in value]


# --- the compose file ---------------------------------------------------------------------------


def test_compose_declares_the_stack(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= {"redis", "minio", "ingress", "worker", "prometheus"}
    assert services["redis"]["image"].startswith("redis:7")
    # Pinned, from quay.io: Docker Hub no longer serves minio/minio
    assert services["minio"]["image"].startswith("quay.io/minio/minio:RELEASE.")
    for name in APP_SERVICES:
        assert services[name]["build"] == ".", f"{name} is not built from this project"
    assert services["ingress"]["image"] == services["worker"]["image"], "one image for both roles"


def test_every_mjhook_variable_in_compose_is_a_settings_field(
    compose_text: str, services: dict[str, dict[str, Any]]
) -> None:
    referenced = mjhook_variables({match["name"] for match in INTERPOLATION.finditer(compose_text)})
    for service in services.values():
        referenced |= mjhook_variables(environment_of(service))
    unknown = sorted(name for name in referenced if setting_field(name) not in Settings.model_fields)
    assert not unknown, f"not settings fields (Settings.from_env rejects them): {unknown}"


def test_app_services_pass_every_setting(services: dict[str, dict[str, Any]]) -> None:
    expected = {f"{ENV_PREFIX}{field.upper()}" for field in Settings.model_fields}
    for name in APP_SERVICES:
        passed = mjhook_variables(environment_of(services[name]))
        assert passed == expected, (
            f"{name}: missing {sorted(expected - passed)}, extra {sorted(passed - expected)}"
        )


#: Settings whose compose default is the stack's own, not the settings' default.
STACK_DEFAULTS = {
    # Presigned links must name MinIO as the host reaches it, not as http://minio:9000.
    "MJHOOK_S3_PUBLIC_ENDPOINT": "http://127.0.0.1:9000",
}


def test_compose_defaults_are_the_settings_defaults(services: dict[str, dict[str, Any]]) -> None:
    defaults = Settings()
    for name in APP_SERVICES:
        for variable, value in environment_of(services[name]).items():
            match = INTERPOLATION.fullmatch(value or "")
            if not variable.startswith(ENV_PREFIX) or match is None or match["name"] != variable:
                continue
            if variable in STACK_DEFAULTS:
                assert match["arg"] == STACK_DEFAULTS[variable], f"{name}: {variable}"
                continue
            field = setting_field(variable)
            assert match["op"] == ":-", f"{name}: {variable} has no default"
            assert parsed_default(field, match["arg"]) == getattr(defaults, field), (
                f"{name}: the default of {variable} ({match['arg']!r}) is not the settings' default"
            )


#: What the stack cannot do without: MinIO's root password, the app's MinIO password (the stack's
#: S3 secret) and Redis's.
STACK_SECRETS = {
    "MINIO_ROOT_PASSWORD": "a-password-of-the-operator",
    "MINIO_APP_PASSWORD": "the-app-s-own-password",
    "REDIS_PASSWORD": "redis0secret",
}


@pytest.mark.parametrize(
    "environ_source", ["a .env with the passwords alone", ".env.example, every line uncommented"]
)
def test_app_environment_makes_valid_settings_wired_to_the_stack(
    services: dict[str, dict[str, Any]], env_example: dict[str, str], environ_source: str
) -> None:
    environ = {**(env_example if environ_source.startswith(".env.example") else {}), **STACK_SECRETS}
    for name in APP_SERVICES:
        resolved = {
            variable: interpolate(value, environ)
            for variable, value in environment_of(services[name]).items()
            if value is not None
        }
        settings = Settings.from_env(resolved)
        assert urlsplit(settings.redis_url).hostname == "redis"
        assert urlsplit(settings.redis_url).password == STACK_SECRETS["REDIS_PASSWORD"]
        assert urlsplit(settings.s3_endpoint).hostname == "minio"
        assert urlsplit(settings.s3_endpoint).port == 9000
        setup_env = {
            key: interpolate(value or "", environ)
            for key, value in environment_of(services["minio-setup"]).items()
        }
        # The app's own user, which minio-setup makes; never MinIO's root (MinIO refuses a user
        # named as the root, and the root key would open every bucket to a compromised worker).
        assert settings.s3_access_key == setup_env["APP_USER"] != ""
        assert settings.s3_secret_key == setup_env["APP_PASSWORD"] == STACK_SECRETS["MINIO_APP_PASSWORD"]
        assert settings.s3_bucket == setup_env["BUCKET"]
        assert settings.s3_access_key != setup_env["MINIO_ROOT_USER"]
        assert settings.s3_secret_key != setup_env["MINIO_ROOT_PASSWORD"]


def test_presigned_links_of_the_stack_name_minio_where_the_host_reaches_it(
    services: dict[str, dict[str, Any]],
) -> None:
    """Under `docker compose up` with no .env, the links GET /tasks/{taskId} and the dashboard
    hand out name MinIO's port published on the host: they named http://minio:9000, which only
    the stack's own network resolves (every browser and host script failed on them)."""
    resolved = {
        variable: interpolate(value, STACK_SECRETS)
        for variable, value in environment_of(services["ingress"]).items()
        if value is not None
    }
    settings = Settings.from_env(resolved)
    published = {interpolate(port, {}) for port in services["minio"]["ports"]}
    link = urlsplit(
        create_object_store(settings, endpoint=settings.s3_public_endpoint).presigned_url(
            "tasks/t1/0.png", expires_s=60
        )
    )
    assert link.hostname not in services
    assert f"{link.hostname}:{link.port}:9000" in published


def test_depends_on_targets_are_healthchecked(services: dict[str, dict[str, Any]]) -> None:
    """Each service waits for what it needs to be healthy, or for a one-shot service (one that
    is not restarted) to have succeeded."""
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if services[target].get("restart") == "no":
                assert condition == "service_completed_successfully", f"{name} starts before {target} ends"
                continue
            assert healthcheck_test(services[target]), f"{name} waits for {target}, which has no healthcheck"
            assert condition == "service_healthy", f"{name} starts before {target} is healthy"
    assert set(depends_on(services["ingress"])) >= {"redis"}
    # Acknowledging needs Redis alone: the ingress must not wait for MinIO to start
    assert "minio-setup" not in depends_on(services["ingress"])
    assert set(depends_on(services["worker"])) >= {"redis", "minio", "minio-setup"}


def test_state_lives_in_named_volumes(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name in ("redis", "minio", "ingress"):
        mounted = named_volume_mounts(services[name])
        assert mounted, f"{name} keeps its data in the container only"
        assert mounted <= declared, f"{name} mounts undeclared volumes {sorted(mounted - declared)}"
    # The ingress's spool (callbacks acknowledged while Redis was away) is on its volume
    spool_dir = environment_of(services["ingress"])["MJHOOK_SPOOL_DIR"]
    assert spool_dir in {volume.split(":")[1] for volume in services["ingress"]["volumes"]}


def test_the_stack_needs_its_passwords_and_publishes_no_redis(services: dict[str, dict[str, Any]]) -> None:
    """MinIO's root password has no default (minioadmin ran unchanged), nor has the app's MinIO
    password (the stack's S3 secret), nor has Redis's (it took no password: anything on the
    stack's network could fill or empty the queue)."""
    for variable, users in (
        ("MINIO_ROOT_PASSWORD", ("minio", "minio-setup")),
        ("MINIO_APP_PASSWORD", ("minio-setup", *APP_SERVICES)),
        ("REDIS_PASSWORD", APP_SERVICES),
    ):
        for name in users:
            values = environment_of(services[name]).values()
            password = next(value for value in values if variable in (value or ""))
            with pytest.raises(AssertionError, match=rf"{variable}.* is required"):
                interpolate(password, {})
    redis_command = [interpolate(part, STACK_SECRETS) for part in command_of(services["redis"])]
    assert redis_command[1:3] == ["--requirepass", STACK_SECRETS["REDIS_PASSWORD"]]
    # The healthcheck's redis-cli authenticates (REDISCLI_AUTH), or it never sees PONG
    assert interpolate(environment_of(services["redis"])["REDISCLI_AUTH"], STACK_SECRETS) == "redis0secret"
    assert "ports" not in services["redis"], "Redis reachable from beyond the stack"


def test_the_ingress_healthcheck_stays_healthy_while_the_spool_takes_callbacks(
    services: dict[str, dict[str, Any]],
) -> None:
    """While Redis is away the spool acknowledges callbacks durably: a healthcheck on /readyz
    would turn the ingress unhealthy then, and a proxy routing by health stop sending them."""
    probe = " ".join(healthcheck_test(services["ingress"]) or [])
    assert "/healthz" in probe
    assert "/readyz" not in probe


def test_redis_persists_and_never_evicts(services: dict[str, dict[str, Any]]) -> None:
    command = " ".join(command_of(services["redis"]))
    assert "--appendonly yes" in command
    assert "--appendfsync always" in command  # an acknowledged callback is on disk
    assert "--maxmemory-policy noeviction" in command
    assert "--maxmemory ${REDIS_MAXMEMORY:-" in command  # full, it refuses writes: never OOM-killed
    assert command_of(services["redis"])[-2:] == ["--save", ""]  # the AOF alone: no snapshot forks
    assert "redis-cli" in " ".join(healthcheck_test(services["redis"]) or [])


def test_worker_scales_and_drains(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker, "a fixed name prevents --scale worker=N"
    assert "ports" not in worker, "a fixed host port prevents --scale worker=N"
    grace_s = duration_s(worker["stop_grace_period"])
    assert grace_s >= 60, "in-flight tasks need time to finish on stop"
    command = command_of(worker)
    if "--worker-shutdown-timeout" in command:
        shutdown_ms = int(command[command.index("--worker-shutdown-timeout") + 1])
        # dramatiq requeues what it prefetched after its timeout: time for it before Docker kills it
        assert shutdown_ms / 1000 + 15 <= grace_s, "dramatiq must requeue before Docker kills it"


def test_ingress_outlives_gunicorn_graceful_timeout(services: dict[str, dict[str, Any]]) -> None:
    tree = ast.parse(GUNICORN_CONF.read_text())
    graceful = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "graceful_timeout" for t in node.targets)
    )
    assert duration_s(services["ingress"]["stop_grace_period"]) > graceful


def test_services_run_real_entry_points(
    services: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    commands = {name: command_of(services[name]) for name in APP_SERVICES}
    commands["Dockerfile CMD"] = dockerfile_exec_form(
        next(arguments for keyword, arguments in reversed(dockerfile) if keyword == "CMD")
    )
    assert commands["ingress"][:2] == ["gunicorn", "ingress.wsgi:app"]
    assert commands["worker"][:4] == ["python", "-m", "workers", "workers.tasks"]
    assert commands["Dockerfile CMD"] == commands["ingress"], "the image's default is the ingress"
    problems = [
        f"{name}: {problem}" for name, argv in commands.items() for problem in entry_point_problems(argv)
    ]
    assert not problems, problems


def test_ingress_listens_where_it_is_published(services: dict[str, dict[str, Any]]) -> None:
    command = command_of(services["ingress"])
    assert command[command.index("-b") + 1] == "0.0.0.0:8000"
    assert any(str(port).endswith(":8000") for port in services["ingress"]["ports"])


def test_python_healthchecks_compile(
    services: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    tests = {name: test for name, service in services.items() if (test := healthcheck_test(service))}
    docker_healthcheck = next(arguments for keyword, arguments in dockerfile if keyword == "HEALTHCHECK")
    tests["Dockerfile"] = ["CMD", *dockerfile_exec_form(docker_healthcheck.split(" CMD ", 1)[1])]
    programs = {name: code for name, test in tests.items() if (code := healthcheck_python_code(test))}
    assert set(programs) >= {"ingress", "worker", "Dockerfile"}
    for name, code in programs.items():
        compile(code, f"<healthcheck of {name}>", "exec")


def test_healthchecks_probe_real_ingress_routes(
    services: dict[str, dict[str, Any]], dockerfile: list[tuple[str, str]]
) -> None:
    routes = "\n".join(path.read_text() for path in (ROOT / "ingress").glob("*.py"))
    docker_healthcheck = next(arguments for keyword, arguments in dockerfile if keyword == "HEALTHCHECK")
    probes = {
        "Dockerfile": docker_healthcheck,
        "ingress": " ".join(healthcheck_test(services["ingress"]) or []),
    }
    for name, probe in probes.items():
        match = re.search(r"http://127\.0\.0\.1:8000(/[a-z]+)", probe)
        assert match, f"{name}: the healthcheck does not probe the ingress"
        assert f'"{match[1]}"' in routes, f"{name}: the ingress has no route {match[1]}"


def test_worker_healthcheck_tells_live_workers_from_none(services: dict[str, dict[str, Any]]) -> None:
    """Run the worker's healthcheck here, with the module name swapped for a unique marker so that
    processes of anyone else on this machine cannot sway it."""
    code = healthcheck_python_code(healthcheck_test(services["worker"]) or [])
    module = "workers.tasks"
    assert module in command_of(services["worker"])
    assert code is not None, "the worker's healthcheck is not a python program"
    assert f'b"{module}"' in code, "the healthcheck does not look for the worker module"
    marker = f"mjhook-test-{uuid.uuid4().hex}"
    probe = code.replace(f'b"{module}"', f'b"{marker}"')

    def healthcheck_exit_code() -> int:
        return subprocess.run([sys.executable, "-c", probe], timeout=30, check=False).returncode

    assert healthcheck_exit_code() == 1, "healthy with no worker process"
    # Like dramatiq's main process and a forked worker process: the marker is one of their arguments.
    sleepers = [
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker]) for _ in range(2)
    ]
    try:
        assert healthcheck_exit_code() == 0, "unhealthy although worker processes run"
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_prometheus_scrapes_ingress_and_every_worker(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert prometheus.get("profiles") == ["metrics"], "Prometheus must be optional"
    mounts = [str(volume) for volume in prometheus["volumes"]]
    assert any(mount.startswith("./deploy/prometheus.yml:") for mount in mounts)

    config = yaml.safe_load(PROMETHEUS_FILE.read_text())
    static_targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert "ingress:8000" in static_targets
    dns_targets = {
        (name, sd["port"])
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert ("worker", WORKER_METRICS_PORT) in dns_targets, "scaled workers must each be scraped"
    for host in {target.split(":")[0] for target in static_targets} | {name for name, _ in dns_targets}:
        assert host in services, f"Prometheus scrapes unknown service {host}"


# --- .env.example -------------------------------------------------------------------------------


def test_env_example_lists_exactly_the_settings_fields(env_example: dict[str, str]) -> None:
    listed = {setting_field(name) for name in mjhook_variables(env_example)}
    fields = set(Settings.model_fields)
    assert listed == fields, f"missing {sorted(fields - listed)}, not settings {sorted(listed - fields)}"


def test_env_example_gives_the_settings_defaults(env_example: dict[str, str]) -> None:
    defaults = Settings()
    for name in mjhook_variables(env_example):
        field = setting_field(name)
        assert parsed_default(field, env_example[name]) == getattr(defaults, field), (
            f"{name}={env_example[name]} is not the default"
        )


def test_env_example_explains_every_variable() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if ENV_ASSIGNMENT.fullmatch(line):
            assert number > 0, f"no comment above {line!r}"
            assert lines[number - 1].startswith("# "), f"no comment above {line!r}"


def test_env_example_copied_as_is_changes_no_setting() -> None:
    """honcho (``make up``) lets .env override what scripts/up.sh exports, and compose wires its
    own services: a .env copied from the example must leave every setting to them."""
    active = mjhook_variables(parse_env_file(ENV_EXAMPLE.read_text()))
    assert not active, f"set in .env.example, comment them out: {sorted(active)}"


def test_env_example_documents_every_variable_compose_reads(
    compose_text: str, env_example: dict[str, str]
) -> None:
    referenced = {match["name"] for match in INTERPOLATION.finditer(compose_text)}
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= set(env_example)
    assert referenced <= set(env_example), f"not in .env.example: {sorted(referenced - set(env_example))}"


# --- the image ----------------------------------------------------------------------------------


def test_dockerfile_builds_a_slim_unprivileged_image(dockerfile: list[tuple[str, str]]) -> None:
    keywords = [keyword for keyword, _ in dockerfile]
    assert dockerfile[0] == ("FROM", "python:3.11-slim")
    users = [arguments for keyword, arguments in dockerfile if keyword == "USER"]
    assert users, "no USER: the processes would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert keywords.index("USER") < keywords.index("CMD")
    healthcheck = next(arguments for keyword, arguments in dockerfile if keyword == "HEALTHCHECK")
    assert healthcheck.upper() != "NONE"
    assert " CMD " in f" {healthcheck} "
    runs = " ".join(arguments for keyword, arguments in dockerfile if keyword == "RUN")
    installs_project = re.search(r"pip install (-c constraints\.txt )?\.(\s|$)", runs)
    assert installs_project, "the project is not installed from pyproject.toml"
    assert "[dev]" not in runs, "dev extras do not belong in the image"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = {line.strip().rstrip("/") for line in DOCKERIGNORE.read_text().splitlines()}
    assert {".git", ".venv", ".data", ".env", ".pytest_cache"} <= ignored


# --- with the compose tool, where installed -------------------------------------------------------


def compose_command() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose``, whichever is installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    command = compose_command()
    if command is None:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed: `make test` installs it")
    compose_vars = set(parse_env_file(ENV_EXAMPLE.read_text()))
    # The developer's own settings must not leak into the check.
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(ENV_PREFIX) and key not in compose_vars and key != "COMPOSE_PROFILES"
    }

    arguments = ["--env-file", str(ENV_EXAMPLE), "--profile", "metrics", "-f", str(COMPOSE_FILE), "config"]

    def config(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *arguments],
            capture_output=True,
            text=True,
            env=environ,
            cwd=ROOT,
            timeout=120,
            check=False,
        )

    # .env.example copied as it is: no password, no stack; each password refused without the other
    for missing in STACK_SECRETS:
        refused = config({**environ, **STACK_SECRETS, missing: ""})
        assert refused.returncode != 0
        assert f"set {missing} in .env" in refused.stderr
    result = config({**environ, **STACK_SECRETS})
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)["services"]
    assert set(resolved) >= {"redis", "minio", "ingress", "worker", "prometheus"}
    for name in APP_SERVICES:
        environment = {
            key: value for key, value in environment_of(resolved[name]).items() if value is not None
        }
        Settings.from_env(environment)


def procfile_commands() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    entries = (line.split(":", 1) for line in lines if line.strip() and not line.startswith("#"))
    commands = {name.strip(): shlex.split(command) for name, command in entries}
    return {name: argv[1:] if argv[:1] == ["exec"] else argv for name, argv in commands.items()}


def without_addresses(argv: list[str]) -> list[str]:
    """The command with its listen address left out (loopback locally, all interfaces in compose)."""
    return [arg for i, arg in enumerate(argv) if arg != "-b" and (i == 0 or argv[i - 1] != "-b")]


@pytest.mark.parametrize(("process", "service"), [("ingress", "ingress"), ("worker", "worker")])
def test_make_up_runs_the_same_commands_as_compose(
    services: dict[str, dict[str, Any]], process: str, service: str
) -> None:
    assert without_addresses(procfile_commands()[process]) == without_addresses(services[service]["command"])


def test_make_ups_redis_persists_like_composes() -> None:
    redis_argv = procfile_commands()["redis"]
    for flag, value in (
        ("--appendonly", "yes"),
        ("--appendfsync", "always"),
        ("--maxmemory-policy", "noeviction"),
        ("--save", ""),
    ):
        assert redis_argv[redis_argv.index(flag) + 1] == value


def test_the_image_copies_every_package_the_project_installs() -> None:
    # `pip install .` in the image finds only what was copied: a missing package breaks imports
    # (the `mjhook` CLI imports the simulator, for one).
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package}/ {package}/" in dockerfile, package
