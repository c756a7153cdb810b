"""Headless Chromium for tests: the DOM of a page after its scripts ran, and screenshots.

Uses Debian's ``chromium`` (``make test`` installs it) through its own command-line modes
(``--dump-dom``, ``--screenshot``), so no driver or DevTools client is needed. ``--virtual-time-budget``
lets the page's timers run for that much virtual time; Chromium pauses virtual time while network
requests are pending, so fetches and image loads finish within it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

#: Virtual milliseconds the page's scripts get before the DOM is read or the screenshot taken.
DEFAULT_BUDGET_MS = 5000
#: Wall-clock seconds one Chromium run may take.
RUN_TIMEOUT_S = 60.0

# Headless, and nothing that reaches the internet (component updates, sync, field trials...).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Element:
    """One element of a dumped DOM: its tag, attributes and all the text inside it."""

    tag: str
    attrs: dict[str, str]
    text_parts: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The text inside, each text node separated from the next by one space."""
        return " ".join(" ".join(self.text_parts).split())


class _Collector(HTMLParser):
    VOID = frozenset({"img", "br", "meta", "link", "input", "hr", "source", "wbr", "area", "col"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text_parts.append(data)


def parse_dom(html: str) -> list[Element]:
    """Every element of ``html``, in document order."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector.elements


class Chromium:
    """Runs headless Chromium with a profile of its own in ``profile_dir``."""

    def __init__(self, executable: str, profile_dir: Path) -> None:
        self._executable = executable
        self._profile_dir = profile_dir

    def _run(self, url: str, *args: str, budget_ms: int) -> str:
        argv = [
            self._executable,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self._profile_dir}",
            f"--virtual-time-budget={budget_ms}",
            *args,
            url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
        return done.stdout

    def dump_dom(self, url: str, *, budget_ms: int = DEFAULT_BUDGET_MS) -> str:
        """The page's DOM, serialized, after ``budget_ms`` of virtual time."""
        return self._run(url, "--dump-dom", budget_ms=budget_ms)

    def screenshot(
        self, url: str, path: Path, *, size: tuple[int, int] = (1280, 900), budget_ms: int = DEFAULT_BUDGET_MS
    ) -> Path:
        """Save a PNG of the page's viewport (``size``: width, height) to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._run(url, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}", budget_ms=budget_ms)
        if not path.exists():
            raise RuntimeError(f"chromium wrote no screenshot to {path}")
        return path
