"""Where the tests find the project's files."""

from __future__ import annotations

from pathlib import Path

#: The repository's root.
ROOT = Path(__file__).resolve().parent.parent.parent
#: The shipped synthetic recording (``recordings/README.md`` says how it was made).
SAMPLE = ROOT / "recordings" / "sample.jsonl"
