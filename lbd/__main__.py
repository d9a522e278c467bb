"""`python -m lbd ...` is the same as `lbd ...`."""

from lbd.cli import main

raise SystemExit(main())
