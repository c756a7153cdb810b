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
    """Every command, and every subcommand of a group on a line naming its group (the README's
    table writes `mjhook dlq list / replay [ID...] / purge`)."""
    for name, command in main.commands.items():
        assert f"mjhook {name}" in README, name
        lines = [line for line in README.splitlines() if f"mjhook {name} " in line]
        for sub in getattr(command, "commands", {}):
            assert any(re.search(rf"\b{re.escape(sub)}\b", line) for line in lines), f"mjhook {name} {sub}"
