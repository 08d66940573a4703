"""``python -m animatex_train`` == ``animatex-train``."""

from animatex_train.cli import main

raise SystemExit(main())
