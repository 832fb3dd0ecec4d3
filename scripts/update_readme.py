"""Regenerate the README's configuration reference from the settings model."""

from __future__ import annotations

import re
from pathlib import Path

from sync.commands.config import reference_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!-- config-reference:start -->\n).*?(<!-- config-reference:end -->)", re.S)


def with_reference(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + reference_markdown() + m.group(2), text)


if __name__ == "__main__":
    README.write_text(with_reference(README.read_text()))
