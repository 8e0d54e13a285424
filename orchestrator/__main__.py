"""`python -m orchestrator` is `cgc-rerun`."""

from __future__ import annotations

from orchestrator.cli import main

raise SystemExit(main())
