"""Every code example in the docs runs, every page builds, every error class has its anchor.

The examples are complete programs (``docs/examples/*.py``) that the pages include with
``pymdownx.snippets``, so what a reader copies is what these tests run. Each runs in its own
interpreter: the examples are independent programs, and several define a ``Call`` or ``Ticket``
class, which one process may hold only once.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import brainless_odm.exceptions

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.py"))

# Imports the example as a module (not as __main__) and runs its main(): what the test promises.
RUNNER = textwrap.dedent(
    """
    import asyncio, importlib.util, sys
    spec = importlib.util.spec_from_file_location("docs_example", sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    asyncio.run(module.main())
    """
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _needs_nats(path: Path) -> bool:
    return "NATS_URL" in path.read_text()


def test_examples_exist() -> None:
    assert len(EXAMPLE_FILES) >= 10


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_is_a_complete_program(path: Path) -> None:
    text = path.read_text()
    assert "async def main() -> None:" in text
    assert 'if __name__ == "__main__":\n    asyncio.run(main())' in text


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[p.name for p in EXAMPLE_FILES])
def test_example_runs(path: Path, request: pytest.FixtureRequest) -> None:
    extra: dict[str, str] = {}
    if _needs_nats(path):
        extra["NATS_URL"] = request.getfixturevalue("nats_url")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path)],
        env=_env(**extra),
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"


def test_example_tests_pass(nats_url: str) -> None:
    """docs/examples/apptests holds the test file the "Testing your app" page shows; it must pass."""
    registered = any(ep.name == "brainless_odm" for ep in importlib.metadata.entry_points(group="pytest11"))
    plugin = [] if registered else ["-p", "brainless_odm.pytest_plugin"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(EXAMPLES / "apptests")],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout


def test_every_example_is_shown_on_a_page() -> None:
    pages = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    included = set(re.findall(r'--8<-- "([^":]+)', pages))
    files = {
        str(p.relative_to(EXAMPLES))
        for p in EXAMPLES.rglob("*")
        if p.suffix in (".py", ".conf") and "__pycache__" not in p.parts
    }
    assert files - included == set(), "examples no page includes"
    assert included - files == set(), "pages include missing files"


def test_every_error_class_has_an_anchor() -> None:
    """help_url() links to docs/errors.md#<name>: each class needs its heading there."""
    page = (DOCS / "errors.md").read_text()
    anchors = set(re.findall(r"^## (\w+) \{#(\w+)\}$", page, flags=re.MULTILINE))
    for name in brainless_odm.exceptions.__all__:
        assert (name, name.lower()) in anchors, f"docs/errors.md has no '## {name} {{#{name.lower()}}}'"
        cls = getattr(brainless_odm.exceptions, name)
        assert cls.__doc__, f"{name} needs a docstring"
    url = brainless_odm.exceptions.UniqueViolation("call", "channel_id", "x").help_url()
    assert url.endswith("/errors/#uniqueviolation")


def test_the_errors_page_says_which_messages_carry_their_link() -> None:
    """Every class has help_url(); only UniqueViolation and FlushError put it in the message (the
    page said every message did)."""
    page = " ".join((DOCS / "errors.md").read_text().split())
    assert "every message links" not in page
    assert "`help_url()`" in page
    exc = brainless_odm.exceptions
    for name in exc.__all__:
        cls = getattr(exc, name)
        assert cls.help_url(cls.__new__(cls)).endswith(f"/errors/#{name.lower()}")
    carry = {
        "UniqueViolation": exc.UniqueViolation("call", "channel_id", "x"),
        "FlushError": exc.FlushError([("call", "k", RuntimeError("no"))]),
    }
    for name, e in carry.items():
        assert e.help_url() in str(e)
        assert f"[`{name}`](#{name.lower()})" in page


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="the docs toolchain pip resolves on 3.10 (mkdocstrings 1.0.6, pymdown-extensions 12.3) "
    "does not build; CI builds the docs on 3.11",
)
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=_env(NO_MKDOCS_2_WARNING="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    errors = (tmp_path / "site" / "errors" / "index.html").read_text()
    for name in brainless_odm.exceptions.__all__:
        assert f'id="{name.lower()}"' in errors
    assert 'class="mermaid"' in (tmp_path / "site" / "sync" / "index.html").read_text()
