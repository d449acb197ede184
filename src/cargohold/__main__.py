"""Allow ``python -m cargohold``."""

from cargohold.cli.main import main

main()
