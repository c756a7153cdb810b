"""constraints.txt pins every package the venv (``make venv``) and the image (Dockerfile) install,
within pyproject.toml's ranges: the tests run the versions that ship. ``make lock`` writes it."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = ROOT / "constraints.txt"
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)")


def read_pins(text: str) -> dict[NormalizedName, Version]:
    """``name==version`` lines by normalized name; raises ValueError on any other line, or a
    package pinned twice."""
    pins: dict[NormalizedName, Version] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"not a pin of one version: {line!r}")
        name = canonicalize_name(match["name"])
        if name in pins:
            raise ValueError(f"{name} is pinned twice")
        pins[name] = Version(match["version"])
    return pins


def project_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and those of every extra (the venv installs them all)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [Requirement(line) for line in lines]


def requirement_closure(roots: list[Requirement]) -> set[NormalizedName]:
    """Every distribution ``roots`` need on this platform, read from the installed packages'
    metadata, each with the extras asked of it."""
    needed: set[NormalizedName] = set()
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    pending = [(canonicalize_name(req.name), frozenset(req.extras)) for req in roots]
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        needed.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras}
            )
            if wanted:
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return needed


@pytest.fixture(scope="module")
def pins() -> dict[NormalizedName, Version]:
    return read_pins(CONSTRAINTS.read_text())


def test_read_pins_refuses_what_is_no_single_pin() -> None:
    assert read_pins("# a comment\n\nFalcon==4.4.0\n") == {"falcon": Version("4.4.0")}
    for text in ("falcon>=4.0\n", "falcon\n", "falcon==4.4.0\nFALCON==4.3\n", "-e .\n"):
        with pytest.raises(ValueError):
            read_pins(text)


def test_every_requirement_is_pinned_within_its_range(pins: dict[NormalizedName, Version]) -> None:
    for requirement in project_requirements():
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not pinned: run make lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} is outside pyproject.toml's {requirement}: run make lock"
        )


def test_every_package_the_requirements_pull_in_is_pinned(pins: dict[NormalizedName, Version]) -> None:
    needed = requirement_closure(project_requirements())

    assert {"falcon", "dramatiq", "redis", "minio", "hiredis", "pika"} <= needed  # the walk reaches extras
    assert needed - set(pins) == set(), "unpinned: run make lock"
    assert canonicalize_name("mjhook") not in pins


def test_the_tests_run_the_pinned_versions(pins: dict[NormalizedName, Version]) -> None:
    installed = {name: Version(importlib.metadata.version(name)) for name in pins}

    assert installed == pins, "the venv is not constraints.txt's: make venv installs it"


def test_the_venv_installs_the_pins_and_follows_them() -> None:
    makefile = (ROOT / "Makefile").read_text()
    rule = re.search(r"^\$\(STAMP\): (?P<prerequisites>.*)\n(?P<recipe>(?:\t.*\n)+)", makefile, re.MULTILINE)

    assert rule is not None, "no $(STAMP) rule in the Makefile"
    assert "constraints.txt" in rule["prerequisites"].split(), "a new lock would not reinstall the venv"
    installs = [line for line in rule["recipe"].splitlines() if "pip install" in line]
    assert installs
    assert all("-c constraints.txt" in line for line in installs), installs


def test_the_image_installs_the_pins() -> None:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    installs = [number for number, line in enumerate(lines) if "pip install" in line]
    copied = [
        number for number, line in enumerate(lines) if line.startswith("COPY ") and "constraints.txt" in line
    ]

    assert len(installs) == 2, "the dependencies, then the project"
    assert all("-c constraints.txt" in lines[number] for number in installs)
    assert copied, "constraints.txt is not copied into the image"
    assert copied[0] < installs[0], "constraints.txt is not in the image before pip needs it"
