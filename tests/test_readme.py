"""README.md's Python examples run as written (each block is a whole program)."""

from __future__ import annotations

import re
import runpy
import threading
from pathlib import Path

import pytest

from brainless_odm import default_registry

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples() -> None:
    assert BLOCKS, "README.md should show a runnable example"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / f"readme_{index}.py"
    script.write_text(BLOCKS[index])
    errors: list[BaseException] = []

    def run() -> None:
        # The example is a program of its own: it sees only its own Document classes, and its
        # asyncio.run() gets a thread of its own, away from the test session's event loop.
        saved = dict(default_registry._classes)
        default_registry._classes.clear()
        try:
            runpy.run_path(str(script), run_name="__main__")
        except BaseException as exc:
            errors.append(exc)
        finally:
            default_registry._classes.clear()
            default_registry._classes.update(saved)

    t = threading.Thread(target=run)
    t.start()
    t.join(60)
    assert not t.is_alive(), "README example did not finish"
    if errors:
        raise errors[0]
    assert "documents written" in capsys.readouterr().out
