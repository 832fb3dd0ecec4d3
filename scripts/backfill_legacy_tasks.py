#!/usr/bin/env python3
"""Backfill legacy single-instruction tasks into single-step workflows.

The same as ``stepsync backfill legacy-tasks`` (all options, e.g. ``--dry-run``,
``--verify``, ``--rollback RUN_ID``, ``--resume``), for people who run scripts.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sync.cli import app

if __name__ == "__main__":
    app(["backfill", "legacy-tasks", *sys.argv[1:]], prog_name="backfill_legacy_tasks.py")
