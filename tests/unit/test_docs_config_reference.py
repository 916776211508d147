"""The generated reference pages (docs/reference/) match the code they are rendered from."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fedai.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "docs" / "gen_config_reference.py"


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_reference", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pages(generator: ModuleType) -> dict[Path, str]:
    return generator.render_all()


def test_committed_pages_are_fresh(pages: dict[Path, str]) -> None:
    # Arrange / Act
    stale = [
        str(path.relative_to(ROOT))
        for path, text in pages.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]

    # Assert
    assert not stale, (
        f"stale generated docs {stale}: run .venv/bin/python docs/gen_config_reference.py "
        "and commit the result"
    )


def test_config_page_names_every_key_with_its_default(
    generator: ModuleType, pages: dict[Path, str]
) -> None:
    # Arrange
    text = pages[generator.REFERENCE / "config.md"]
    defaults = ExperimentConfig().to_dict()

    # Act
    missing = [
        f"{section}.{key}"
        for section, values in defaults.items()
        for key, value in values.items()
        if f"## `[{section}]`" not in text
        or f"| `{key}` |" not in text
        or (value is not None and generator._toml(value) not in text)
    ]

    # Assert
    assert not missing
    assert len(dataclasses.fields(ExperimentConfig)) == text.count("\n## `[")


def test_node_config_page_names_every_node_key(
    generator: ModuleType, pages: dict[Path, str]
) -> None:
    # Arrange
    text = pages[generator.REFERENCE / "node-config.md"]

    # Act
    missing = [key for key in generator.node_config_keys() if f"`{key}`" not in text]

    # Assert
    assert generator.node_config_keys()
    assert not missing


def test_cli_page_covers_every_subcommand(generator: ModuleType, pages: dict[Path, str]) -> None:
    # Arrange
    from fedai.cli import build_parser

    text = pages[generator.REFERENCE / "cli.md"]

    # Act
    progs = [p.prog for p in generator._parsers(build_parser())]

    # Assert
    assert len(progs) > 10
    assert all(f"## `{prog}`" in text for prog in progs)


def test_rst_table_and_definitions_become_markdown(generator: ModuleType) -> None:
    # Arrange
    doc = """Intro line one
    continues here.

    ========  ===========================
    ``a-b``   First ``x`` | second, and a
              wrapped ``long.
              name``.
    ========  ===========================

    * an item
      that wraps:

      ``dp``     the first
                 mode
      ``off``    the other
    """

    # Act
    text = generator.rst_to_markdown(doc)

    # Assert
    assert text == (
        "Intro line one continues here.\n\n"
        "| key | meaning |\n|---|---|\n"
        "| `a-b` | First `x` \\| second, and a wrapped `long.name`. |\n\n"
        "- an item that wraps:\n"
        "    - `dp`: the first mode\n"
        "    - `off`: the other\n"
    )
