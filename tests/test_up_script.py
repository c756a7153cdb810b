"""`make up` / `make demo` (Makefile, scripts/up.sh, Procfile, scripts/demo_load.sh) as a newcomer
meets them. scripts/up.sh runs in a copy of the files it reads, with a stub `honcho` that records
its arguments and the environment it was given, and exits: nothing of the stack starts. Every run
names a private Redis (or a port where nothing answers): none probes the shared one on 6379."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
#: A URL where no Redis answers (nothing listens on port 1).
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"


def stub(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """What scripts/up.sh reads, copied: the scripts, Procfile, Makefile, and a `.venv/bin` with
    the project's python and a stub honcho writing its arguments and environment to honcho.json."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "scripts", repo / "scripts")
    for name in ("Procfile", "Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy2(ROOT / name, repo / name)
    bin_dir = repo / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (repo / ".venv" / ".installed").touch()  # the venv counts as installed for make
    stub(bin_dir / "python", f'exec {shlex.quote(str(VENV_PYTHON))} "$@"\n')
    stub(
        bin_dir / "honcho",
        'exec python -c \'import json, os, sys; json.dump({"argv": sys.argv[1:], "env": dict(os.environ)}, '
        f'open(sys.argv[1], "w"))\' {tmp_path}/honcho.json "$@"\n',
    )
    return repo


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without mjhook's settings, plus ``extra``; a Redis URL where
    nothing answers unless ``extra`` names one, so that no path of up.sh probes the shared 6379."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MJHOOK_", "UP_", "GUNICORN_"))}
    env.update({"MJHOOK_REDIS_URL": DEAD_REDIS_URL, **extra}, VENV=".venv")
    return env


def run_up(repo: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / "scripts" / "up.sh")],
        env=clean_env(**extra),
        capture_output=True,
        text=True,
        timeout=60,
    )


def honcho_call(repo: Path) -> dict[str, object] | None:
    record = repo.parent / "honcho.json"
    return json.loads(record.read_text()) if record.exists() else None


def honcho_env(repo: Path) -> dict[str, str]:
    call = honcho_call(repo)
    assert call is not None, "up.sh did not start honcho"
    return call["env"]  # type: ignore[return-value]


# --- Redis: which one, decided as the processes will see it ------------------------------------


def test_a_unix_socket_redis_url_that_answers_is_used(repo: Path, tmp_path: Path) -> None:
    """Given MJHOOK_REDIS_URL=unix://... where a Redis answers (Settings accept it), when make up
    starts, then it uses that Redis (a redis-cli probe would refuse the scheme and stop make up)."""
    sock = tmp_path / "r.sock"
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        result = run_up(repo, MJHOOK_REDIS_URL=f"unix://{sock}")
    finally:
        server.terminate()
        server.wait(10)
    assert result.returncode == 0, result.stderr
    assert f"already running at unix://{sock}" in result.stdout
    assert honcho_env(repo)["MJHOOK_REDIS_URL"] == f"unix://{sock}"


def test_the_redis_url_in_dotenv_is_the_one_probed(repo: Path, redis_server: RedisServer) -> None:
    """Given a shell whose MJHOOK_REDIS_URL answers, and a ./.env naming another where nothing
    answers (honcho would give the processes the .env's), when make up starts, then it stops with
    an error naming the .env's URL and starts nothing."""
    (repo / ".env").write_text(f"MJHOOK_REDIS_URL={DEAD_REDIS_URL}\n")
    result = run_up(repo, MJHOOK_REDIS_URL=redis_server.url)
    assert result.returncode != 0
    assert DEAD_REDIS_URL in result.stderr
    assert honcho_call(repo) is None


def test_a_redis_url_is_shown_without_its_password(repo: Path, redis_server: RedisServer) -> None:
    """The banner and the error name the Redis by its URL, without user and password (the export
    line for another shell carries the URL whole: that is its purpose)."""
    dead = DEAD_REDIS_URL.replace("redis://", "redis://mjhook:pw-s3cret@")
    refused = run_up(repo, MJHOOK_REDIS_URL=dead)
    assert refused.returncode != 0
    assert DEAD_REDIS_URL.replace("redis://", "redis://***@") in refused.stderr
    assert "pw-s3cret" not in refused.stderr
    redis_server.client().config_set("requirepass", "pw-s3cret")
    live = redis_server.url.replace("redis://", "redis://:pw-s3cret@")
    started = run_up(repo, MJHOOK_REDIS_URL=live)
    assert started.returncode == 0, started.stderr
    [line] = [line for line in started.stdout.splitlines() if line.startswith("redis ")]
    assert line.endswith("already running at " + live.replace(":pw-s3cret@", "***@"))
    # and so is a password holding an @, or given in the query, however spelt (redis-py reads
    # each): the Redis is named by where redis-py connects, *** where it was given credentials; a
    # URL redis-py cannot read (a / ? or # in the password) is not shown at all
    for url, shown in [
        ("redis://:pw@s3cret@127.0.0.1:1/0", "redis://***@127.0.0.1:1/0"),
        ("redis://:pw#s3cret@127.0.0.1:1/0", "(a URL redis-py cannot read)"),
        ("redis://:pw?s3cret@127.0.0.1:1/0", "(a URL redis-py cannot read)"),
        ("redis://127.0.0.1:1/0?password=pw-s3cret", "redis://***@127.0.0.1:1/0"),
        ("redis://127.0.0.1:1?password=abc@s3cret", "redis://***@127.0.0.1:1/0"),
        ("redis://127.0.0.1:1/0?pass%77ord=pw-s3cret", "redis://***@127.0.0.1:1/0"),
        ("redis://:pa/s3cret@127.0.0.1:1/0", "(a URL redis-py cannot read)"),
    ]:
        refused = run_up(repo, MJHOOK_REDIS_URL=url)
        assert f"MJHOOK_REDIS_URL={shown};" in refused.stderr
        assert "s3cret" not in refused.stderr


def test_the_processes_get_what_up_decided_from_dotenv(repo: Path, redis_server: RedisServer) -> None:
    """Given a ./.env naming an S3 endpoint and a Redis that answers, when make up starts, then it
    starts no SeaweedFS, says which store it uses, and honcho reads no env file of its own: the
    processes get exactly the values up.sh decided from."""
    (repo / ".env").write_text(
        f"MJHOOK_REDIS_URL={redis_server.url}\nMJHOOK_S3_ENDPOINT='http://127.0.0.1:9/'\n"
    )
    result = run_up(repo)
    assert result.returncode == 0, result.stderr
    assert "using http://127.0.0.1:9/" in result.stdout
    call = honcho_call(repo)
    assert call is not None
    argv = call["argv"]
    assert argv[argv.index("-e") + 1] == "/dev/null"  # type: ignore[union-attr]
    assert "s3" not in argv  # type: ignore[operator]
    env = honcho_env(repo)
    assert (env["MJHOOK_REDIS_URL"], env["MJHOOK_S3_ENDPOINT"]) == (redis_server.url, "http://127.0.0.1:9/")


# --- what the banner tells the user -------------------------------------------------------------


def test_the_banner_gives_another_shell_the_s3_keys_up_invented(
    repo: Path, redis_server: RedisServer
) -> None:
    """Given make up starting its own SeaweedFS with a key pair it makes up, when it prints where
    each part listens, then it prints an `export` line that, run in another shell, gives `mjhook
    simulate load` / `mjhook get` the same Redis, endpoint and keys (else: AccessDenied)."""
    result = run_up(repo, MJHOOK_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    export_line = next(line for line in result.stdout.splitlines() if "export MJHOOK_" in line)
    exported = dict(
        word.split("=", 1) for word in shlex.split(export_line.split("export", 1)[1]) if "=" in word
    )
    env = honcho_env(repo)
    for name in ("MJHOOK_REDIS_URL", "MJHOOK_S3_ENDPOINT", "MJHOOK_S3_ACCESS_KEY", "MJHOOK_S3_SECRET_KEY"):
        assert exported[name] == env[name], name


def test_the_readme_tells_the_by_hand_path_to_run_the_export_line() -> None:
    readme = (ROOT / "README.md").read_text()
    by_hand = readme.split("## Try it without a provider account", 1)[1].split("\n## ", 1)[0]
    assert "export" in by_hand
    assert "MJHOOK_S3_SECRET_KEY" in by_hand


# --- the ingress's port -------------------------------------------------------------------------


def procfile_argv(name: str, **env: str) -> list[str]:
    """The arguments of the Procfile's ``name`` line, expanded by a shell as honcho does with ``env``."""
    line = next(
        entry.split(":", 1)[1]
        for entry in (ROOT / "Procfile").read_text().splitlines()
        if entry.startswith(f"{name}:")
    )
    return subprocess.run(
        ["sh", "-c", f"set -- {line.replace('exec ', '', 1)}; printf '%s\\n' \"$@\""],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


def procfile_ingress_bind(**env: str) -> list[str]:
    """The addresses gunicorn binds for the Procfile's ingress line, expanded by a shell as honcho
    does with ``env``."""
    argv = procfile_argv("ingress", **env)
    probe = (
        "import sys, json\n"
        "from gunicorn.app.wsgiapp import WSGIApplication\n"
        f"sys.argv = {argv!r}\n"
        "print(json.dumps(WSGIApplication('%(prog)s [OPTIONS] [APP_MODULE]').cfg.bind))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_ingress_listens_on_8000_unless_up_ingress_port_says_otherwise() -> None:
    assert procfile_ingress_bind() == ["127.0.0.1:8000"]
    assert procfile_ingress_bind(UP_INGRESS_PORT="8123") == ["127.0.0.1:8123"]


def test_the_banner_names_the_ingress_port_asked_for(repo: Path, redis_server: RedisServer) -> None:
    result = run_up(repo, MJHOOK_REDIS_URL=redis_server.url, UP_INGRESS_PORT="8123")
    assert result.returncode == 0, result.stderr
    assert "ingress  http://127.0.0.1:8123" in result.stdout
    assert honcho_env(repo)["UP_INGRESS_PORT"] == "8123"


def run_demo_load(repo: Path, tmp_path: Path, **env: str) -> str:
    """Run scripts/demo_load.sh for one task with ``env``, curl and mjhook stubbed (the task at once
    stored); what it asked curl, one line per call."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub(stubs / "curl", f'echo "$*" >> {tmp_path}/curl.calls\necho \'{{"data": {{"taskId": "t1"}}}}\'\n')
    stub(stubs / "mjhook", 'echo \'[{"taskId": "t1", "state": "stored"}]\'\n')
    stub(stubs / "sleep", "exit 0\n")
    environment = clean_env(DEMO_TASKS="1", **env)
    environment["PATH"] = f"{stubs}:{VENV_PYTHON.parent}:{environment['PATH']}"
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "demo_load.sh")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "demo: done" in result.stdout, result.stderr
    return (tmp_path / "curl.calls").read_text()


def test_the_demo_load_calls_back_the_ingress_on_its_port(repo: Path, tmp_path: Path) -> None:
    """Given the ingress on UP_INGRESS_PORT=8123, when scripts/demo_load.sh submits its tasks (to a
    stub curl and mjhook), then it waits for that ingress and names it as the callBackUrl."""
    calls = run_demo_load(repo, tmp_path, UP_INGRESS_PORT="8123")
    assert "http://127.0.0.1:8123/healthz" in calls
    assert "http://127.0.0.1:8123/callbacks/midjourney" in calls
    assert ":8000" not in calls


# --- make demo: the stack is the simulator's client ---------------------------------------------


def test_make_demo_points_the_stack_at_the_simulator(repo: Path, redis_server: RedisServer) -> None:
    """Given make demo (up.sh with the simulator), when the stack starts, then the workers and the
    CLI talk to the simulator with its key (README: MJHOOK_PROVIDER_URL is the simulator's in make
    demo), and may download its loopback files, the user's own allowances kept."""
    dry_run = subprocess.run(["make", "-n", "demo"], cwd=repo, capture_output=True, text=True, timeout=60)
    assert 'UP_EXTRA="sim demo"' in dry_run.stdout
    result = run_up(
        repo, MJHOOK_REDIS_URL=redis_server.url, UP_EXTRA="sim demo", MJHOOK_FETCH_ALLOW="10.0.0.0/8"
    )
    assert result.returncode == 0, result.stderr
    env = honcho_env(repo)
    assert env["MJHOOK_PROVIDER_URL"] == "http://127.0.0.1:8090"
    assert env["MJHOOK_PROVIDER_API_KEY"] == "sim-api-key"
    assert env["MJHOOK_FETCH_ALLOW"] == "127.0.0.1,10.0.0.0/8"
    assert honcho_call(repo)["argv"][-2:] == ["sim", "demo"]  # type: ignore[index]


def test_make_demo_keeps_a_provider_the_user_set_in_dotenv(repo: Path, redis_server: RedisServer) -> None:
    (repo / ".env").write_text("MJHOOK_PROVIDER_URL=http://127.0.0.1:9\nMJHOOK_PROVIDER_API_KEY=mine\n")
    result = run_up(repo, MJHOOK_REDIS_URL=redis_server.url, UP_EXTRA="sim demo")
    assert result.returncode == 0, result.stderr
    env = honcho_env(repo)
    assert (env["MJHOOK_PROVIDER_URL"], env["MJHOOK_PROVIDER_API_KEY"]) == ("http://127.0.0.1:9", "mine")


def test_plain_make_up_leaves_the_provider_alone(repo: Path, redis_server: RedisServer) -> None:
    result = run_up(repo, MJHOOK_REDIS_URL=redis_server.url)
    assert result.returncode == 0, result.stderr
    assert "MJHOOK_PROVIDER_URL" not in honcho_env(repo)


# --- a fresh machine ----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["up", "demo"])
def test_make_installs_redis_server_on_a_fresh_machine(repo: Path, tmp_path: Path, target: str) -> None:
    """Given a machine without redis-server (README: `make` installs everything else it needs),
    when the newcomer runs make up (or make demo) first, then make apt-installs redis-server."""
    farm = tmp_path / "bin"  # a PATH like a fresh machine's: /usr/bin but redis, apt-get and sudo stubbed
    farm.mkdir()
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith("redis") and tool.name not in ("apt-get", "sudo"):
            (farm / tool.name).symlink_to(tool)
    stub(farm / "apt-get", f'echo "$*" >> {tmp_path}/apt-get.calls\n')
    stub(farm / "sudo", '"$@"\n')
    env = clean_env(MJHOOK_REDIS_URL=DEAD_REDIS_URL)
    env["PATH"] = str(farm)
    result = subprocess.run(["make", target], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    calls = (tmp_path / "apt-get.calls").read_text() if (tmp_path / "apt-get.calls").exists() else ""
    assert "install -y redis-server" in calls, result.stderr


def test_a_dotenv_honcho_cannot_read_stops_make_up(repo: Path, redis_server: RedisServer) -> None:
    """Given a ./.env with an unbalanced quote on one line (honcho's parser refuses the file)
    When make up starts
    Then it stops with an error naming .env and starts nothing. It started the stack without any
    of the .env's settings, a callback token among them: the check silently off."""
    (repo / ".env").write_text(
        f"MJHOOK_REDIS_URL={redis_server.url}\n"
        "MJHOOK_CALLBACK_TOKEN=s3cret\n"
        "MJHOOK_PUBLIC_URL=https://hooks.example.test/it's-ours\n"
    )
    result = run_up(repo, MJHOOK_REDIS_URL=redis_server.url)
    assert result.returncode != 0
    assert "up: cannot read .env" in result.stderr
    assert honcho_call(repo) is None


# --- the demo's callbacks pass the ingress's checks ---------------------------------------------


def test_the_demo_load_sends_the_first_callback_token(repo: Path, tmp_path: Path) -> None:
    """Given an ingress that asks for ?token= (a rotation: two tokens), when scripts/demo_load.sh
    submits its tasks, then their callBackUrl carries the first, URL-quoted: without it every demo
    callback was answered 401 and nothing was stored."""
    calls = run_demo_load(repo, tmp_path, MJHOOK_CALLBACK_TOKEN=" s3cret&1 , older")
    assert '"callBackUrl": "http://127.0.0.1:8000/callbacks/midjourney?token=s3cret%261"' in calls


def test_make_demo_has_the_simulator_sign_with_the_first_webhook_key(
    repo: Path, redis_server: RedisServer
) -> None:
    """Given an ingress checking signatures (two keys, a rotation), when make demo starts, then
    the simulator is started with the first key: unsigned, every demo callback was refused."""
    result = run_up(
        repo, MJHOOK_REDIS_URL=redis_server.url, UP_EXTRA="sim demo", MJHOOK_WEBHOOK_HMAC_KEY=" k1 ,k2"
    )
    assert result.returncode == 0, result.stderr
    env = honcho_env(repo)
    assert env["UP_SIM_HMAC_KEY"] == "k1"
    assert procfile_argv("sim", UP_SIM_HMAC_KEY="k1")[-2:] == ["--hmac-key", "k1"]
    assert procfile_argv("sim")[-2:] == ["--hmac-key", ""]


def test_make_up_takes_an_absolute_venv(repo: Path, redis_server: RedisServer) -> None:
    venv = repo / ".venv"
    result = subprocess.run(
        ["bash", str(repo / "scripts" / "up.sh")],
        env={**clean_env(MJHOOK_REDIS_URL=redis_server.url), "VENV": str(venv)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert honcho_call(repo) is not None


@pytest.mark.parametrize(
    ("sent", "honcho_got"),
    [(signal.SIGHUP, "SIGTERM"), (signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")],
)
def test_a_hangup_or_ctrl_c_stops_the_stack_through_honcho(
    repo: Path, tmp_path: Path, redis_server: RedisServer, sent: signal.Signals, honcho_got: str
) -> None:
    """Given make up running (honcho stubbed: it records SIGINT or SIGTERM, on which it stops
    every process, as honcho does)
    When its terminal goes away (SIGHUP to its whole process group), or Ctrl-C is pressed
    (SIGINT to the group), or it is terminated
    Then honcho gets a signal it stops the stack on, and make up ends after it. Honcho died of a
    SIGHUP itself, and the processes it had started (each in a session of its own) kept running."""
    fake_honcho = tmp_path / "honcho.py"
    fake_honcho.write_text(
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        f"    open({str(tmp_path / 'honcho.signals')!r}, 'a').write(signal.Signals(signum).name)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "signal.signal(signal.SIGINT, stop)\n"
        f"open({str(tmp_path / 'honcho.started')!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    stub(repo / ".venv" / "bin" / "honcho", f'exec python {shlex.quote(str(fake_honcho))} "$@"\n')
    up = subprocess.Popen(
        ["bash", str(repo / "scripts" / "up.sh")],
        env=clean_env(MJHOOK_REDIS_URL=redis_server.url),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "honcho.started").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if sent is signal.SIGTERM:
            up.terminate()  # the shell alone, as a service manager would
        else:
            os.killpg(up.pid, sent)
        assert up.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
    assert (tmp_path / "honcho.signals").read_text() == honcho_got


def test_a_closed_terminal_stops_the_stack_though_every_write_to_it_fails(
    repo: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    """Given make up running in a terminal (a pty: its controlling terminal), honcho stubbed to
    print "SIGTERM received" first on a SIGTERM, as honcho does, then stop the stack
    When the terminal goes away (the pty's master closed: SIGHUP, and every write to it fails)
    Then honcho still gets its SIGTERM and stops the stack: printing straight to the dead
    terminal (EIO), it died of that before stopping anything."""
    fake_honcho = tmp_path / "honcho.py"
    fake_honcho.write_text(
        "import signal, sys, time\n"
        "def stop(signum, frame):\n"
        "    print('SIGTERM received', flush=True)\n"
        f"    open({str(tmp_path / 'honcho.signals')!r}, 'a').write(signal.Signals(signum).name)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('started', flush=True)\n"
        f"open({str(tmp_path / 'honcho.started')!r}, 'w').close()\n"
        "time.sleep(60)\n"
    )
    stub(repo / ".venv" / "bin" / "honcho", f'exec python {shlex.quote(str(fake_honcho))} "$@"\n')
    master, terminal = pty.openpty()

    def in_its_own_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    up = subprocess.Popen(
        ["bash", str(repo / "scripts" / "up.sh")],
        env=clean_env(MJHOOK_REDIS_URL=redis_server.url),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=in_its_own_terminal,
    )
    os.close(terminal)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "honcho.started").exists():
            assert time.monotonic() < deadline, "honcho did not start"
            with contextlib.suppress(OSError):
                if select.select([master], [], [], 0.05)[0]:
                    os.read(master, 65536)  # what make up prints, read so that it never blocks
        os.close(master)
        assert up.wait(30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(up.pid, signal.SIGKILL)
    assert (tmp_path / "honcho.signals").read_text() == "SIGTERM"
