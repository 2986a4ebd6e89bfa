"""Allow ``python -m provider.cli``."""

from provider.cli.main import entry_point

entry_point()
