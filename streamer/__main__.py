"""`python -m streamer` runs the command-line interface."""

from streamer.cli import main

raise SystemExit(main())
