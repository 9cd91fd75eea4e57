"""``python -m app`` runs the GUI, same as the ``blip-cam`` entry point."""

from app.main import main

raise SystemExit(main())
