"""`python -m harvester` entry point."""

from harvester.cli import main

raise SystemExit(main())
