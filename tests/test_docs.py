"""The README tells a newcomer the truth: every setting and every CLI command is in it."""

from __future__ import annotations

import re
from pathlib import Path

from cli.main import main
from shared.settings import ENV_PREFIX, Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    documented = set(re.findall(r"MJHOOK_[A-Z0-9_]+", README))
    expected = {ENV_PREFIX + name.upper() for name in Settings.model_fields}
    assert sorted(expected - documented) == []
    assert sorted(documented - expected) == []


def test_every_cli_command_is_documented() -> None:
    for name in main.commands:
        assert f"mjhook {name}" in README, name
