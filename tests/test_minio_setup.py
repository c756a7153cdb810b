"""docker compose's ``minio-setup``: the bucket, a policy allowing that bucket alone, and the app's
own MinIO user holding it, so the ingress and workers never hold MinIO's root key.

No MinIO runs here (no Docker engine, and MinIO ships no wheel): the service's script runs for real
in dash and in bash (MinIO's image runs bash as /bin/sh), with the environment compose gives it,
against a stand-in ``mc`` on the PATH that records each call, its standard input and the policy
file it is handed. What ``mc`` and MinIO do with those calls is mc's and MinIO's documented
behaviour (the README's deploying notes say which release was read)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy import APP_SERVICES, COMPOSE_FILE, STACK_SECRETS, environment_of, interpolate

#: A stand-in ``mc``: appends {"argv", "stdin", "policy"} as one JSON line to $FAKE_MC_LOG, and
#: exits 1 when its first argument is $FAKE_MC_FAIL.
FAKE_MC = """\
import json, os, sys
argv = sys.argv[1:]
record = {"argv": argv, "stdin": sys.stdin.read()}
if argv[:3] == ["admin", "policy", "create"]:
    with open(argv[5]) as policy:
        record["policy"] = policy.read()
with open(os.environ["FAKE_MC_LOG"], "a") as log:
    log.write(json.dumps(record) + "\\n")
sys.exit(1 if argv[0] == os.environ.get("FAKE_MC_FAIL") else 0)
"""

#: What the app asks of its bucket (shared/storage.py, through minio-py), and the action MinIO
#: checks for each: HeadBucket (bucket_exists) s3:ListBucket; the region lookup before the first
#: request s3:GetBucketLocation; list_objects s3:ListBucket; put_object, one PUT or multipart,
#: s3:PutObject, and s3:AbortMultipartUpload when a multipart upload fails; get_object and
#: stat_object s3:GetObject (s3:ListBucket too, for a missing key to be 404 not 403);
#: remove_object s3:DeleteObject; presigned GET links s3:GetObject as the user who signed them.
BUCKET_ACTIONS = {"s3:ListBucket", "s3:GetBucketLocation"}
OBJECT_ACTIONS = {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}

SHELLS = [shell for shell in ("dash", "bash") if shutil.which(shell)]


def run_setup(
    services: dict[str, dict[str, Any]],
    tmp_path: Path,
    shell: str,
    environ: dict[str, str],
    *,
    fail: str = "",
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """The service's script, as its container runs it (compose's ``$$`` made ``$``), in
    ``shell``, with the environment compose gives it from ``environ`` (a .env)."""
    service = services["minio-setup"]
    assert service["entrypoint"] == ["/bin/sh", "-c"]
    (script,) = service["command"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    mc = bin_dir / "mc"
    mc.write_text(f"#!{sys.executable}\n{FAKE_MC}")
    mc.chmod(0o755)
    log = tmp_path / "mc.jsonl"
    environment = {name: interpolate(value or "", environ) for name, value in environment_of(service).items()}
    result = subprocess.run(
        [shell, "-c", script.replace("$$", "$")],
        env={
            **environment,
            "PATH": f"{bin_dir}:/usr/bin:/bin",
            "TMPDIR": str(tmp_path),
            "FAKE_MC_LOG": str(log),
            "FAKE_MC_FAIL": fail,
        },
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    declared: dict[str, dict[str, Any]] = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return declared


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_makes_the_bucket_then_the_policy_then_the_app_user(
    services: dict[str, dict[str, Any]], tmp_path: Path, shell: str
) -> None:
    environ = {**STACK_SECRETS, "MJHOOK_S3_BUCKET": "renders.example-2", "MINIO_APP_USER": "render-app"}

    result, calls = run_setup(services, tmp_path, shell, environ)

    assert result.returncode == 0, result.stderr
    assert [call["argv"] for call in calls] == [
        ["alias", "set", "setup", "http://minio:9000"],
        ["mb", "--ignore-existing", "setup/renders.example-2"],
        ["admin", "policy", "create", "setup", "mjhook-app", str(tmp_path / "mjhook-app-policy.json")],
        ["admin", "user", "add", "setup"],
        ["admin", "policy", "attach", "setup", "mjhook-app", "--user", "render-app"],
    ]
    # The keys go in on standard input, one line each: never in an argument
    assert calls[0]["stdin"] == f"minioadmin\n{STACK_SECRETS['MINIO_ROOT_PASSWORD']}\n"
    assert calls[3]["stdin"] == f"render-app\n{STACK_SECRETS['MINIO_APP_PASSWORD']}\n"
    assert all(STACK_SECRETS["MINIO_APP_PASSWORD"] not in " ".join(call["argv"]) for call in calls)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_policy_allows_the_app_s_bucket_and_nothing_else(
    services: dict[str, dict[str, Any]], tmp_path: Path, shell: str
) -> None:
    _, calls = run_setup(services, tmp_path, shell, {**STACK_SECRETS, "MJHOOK_S3_BUCKET": "renders"})
    policy = json.loads(next(call["policy"] for call in calls if "policy" in call))

    allowed: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            allowed.setdefault(resource, set()).update(statement["Action"])
    assert policy["Version"] == "2012-10-17"  # MinIO refuses a policy without it
    assert set(allowed) == {"arn:aws:s3:::renders", "arn:aws:s3:::renders/*"}
    assert allowed["arn:aws:s3:::renders"] >= BUCKET_ACTIONS
    assert allowed["arn:aws:s3:::renders/*"] >= OBJECT_ACTIONS
    every_action = set().union(*allowed.values())
    assert not [action for action in every_action if "*" in action or not action.startswith("s3:")]
    assert not {"s3:CreateBucket", "s3:DeleteBucket", "s3:PutBucketPolicy"} & every_action


@pytest.mark.parametrize("shell", SHELLS)
def test_a_password_of_any_characters_reaches_mc_as_it_is(
    services: dict[str, dict[str, Any]], tmp_path: Path, shell: str
) -> None:
    """A password starting with "-" (mc would read it as an option), with quotes, ``$``, a command
    substitution and spaces: it reaches mc intact, and nothing in it runs."""
    password = "-x 'it\"s' $HOME $(touch ran) `touch ran2` \\n;"

    result, calls = run_setup(services, tmp_path, shell, {**STACK_SECRETS, "MINIO_APP_PASSWORD": password})

    assert result.returncode == 0, result.stderr
    assert calls[3]["stdin"] == f"mjhook\n{password}\n"
    assert not (tmp_path / "ran").exists()
    assert not (tmp_path / "ran2").exists()


@pytest.mark.parametrize("failing", ["alias", "mb", "admin"])
def test_a_failed_step_fails_the_setup_and_stops_it(
    services: dict[str, dict[str, Any]], tmp_path: Path, failing: str
) -> None:
    """The workers wait for minio-setup to succeed: a step that fails must fail it, not be passed
    over (a worker would start without its bucket or its user)."""
    result, calls = run_setup(services, tmp_path, SHELLS[0], STACK_SECRETS, fail=failing)

    assert result.returncode != 0
    assert calls[-1]["argv"][0] == failing


def test_the_app_holds_no_minio_root_key(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        values = " ".join(value or "" for value in environment_of(services[name]).values())
        assert "MINIO_ROOT" not in values, f"{name} is given MinIO's root credentials"
