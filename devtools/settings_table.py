"""The README's table of ``CLASSIFIER_*`` variables, generated from ``ServingSettings``.

Each setting is documented once, by its ``Field`` in ``serving/settings.py``; this renders those
fields as a Markdown table (variable, default, description) between two marker comments in
README.md, so the README never retypes them::

    python -m devtools.settings_table           # rewrite the table in README.md
    python -m devtools.settings_table --check   # exit 1 if README.md's table is out of date

A unit test (``tests/unit/test_docs_tables.py``) fails when the two differ.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from serving.settings import ENV_PREFIX, ServingSettings

README = Path(__file__).resolve().parent.parent / "README.md"
START = "<!-- settings-table:start -->"
END = "<!-- settings-table:end -->"
HEADER = ("| variable | default | what |", "|---|---|---|")


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def _is_secret(info: FieldInfo) -> bool:
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def render_default(info: FieldInfo) -> str:
    """The default as one would write it in the variable; a secret's value is never shown."""
    default = info.get_default(call_default_factory=True)
    if default is None:
        return "unset"
    if _is_secret(info):
        return "(set, hidden)"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """The Markdown table of every ``ServingSettings`` field, in declaration order."""
    lines = list(HEADER)
    for name, info in ServingSettings.model_fields.items():
        if not info.description:
            raise ValueError(f"ServingSettings.{name} has no Field description to document")
        lines.append(f"| `{env_name(name)}` | {render_default(info)} | {_cell(info.description)} |")
    return "\n".join(lines) + "\n"


def _markers(text: str) -> tuple[int, int]:
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start or text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"README.md needs exactly one {START} ... {END} pair, in that order")
    return start + len(START), end


def current_table(readme_text: str) -> str:
    """What README.md holds between the markers, without the surrounding blank lines."""
    start, end = _markers(readme_text)
    return readme_text[start:end].strip("\n") + "\n"


def with_table(readme_text: str, table: str | None = None) -> str:
    """``readme_text`` with the generated table between the markers (blank lines around it, so
    Markdown sees a table, not part of an HTML block)."""
    start, end = _markers(readme_text)
    table = settings_table() if table is None else table
    return f"{readme_text[:start]}\n\n{table}\n{readme_text[end:]}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.settings_table",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the README's table differs from the generated one",
    )
    parser.add_argument(
        "--readme", type=Path, default=README, help="the README to update (default: README.md)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    text = args.readme.read_text()
    try:
        updated = with_table(text)
    except ValueError as exc:
        print(f"{args.readme}: {exc}", file=sys.stderr)
        return 2
    if updated == text:
        print(f"{args.readme}: settings table is up to date")
        return 0
    if args.check:
        print(
            f"{args.readme}: settings table is out of date; "
            "run `python -m devtools.settings_table`",
            file=sys.stderr,
        )
        return 1
    args.readme.write_text(updated)
    print(f"{args.readme}: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
