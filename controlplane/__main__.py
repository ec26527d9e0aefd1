"""Allows `python -m controlplane`."""

from controlplane.cli import main

raise SystemExit(main())
