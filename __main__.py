"""pulumi-docker-machine: Docker hosts with mutual TLS, declared in stack config."""

import pulumi

from provider import program
from provider.errors import InvalidInputError

try:
    program.main()
except InvalidInputError as error:
    # A clean one-line failure instead of a traceback: the message already
    # names the setting, the value and the fix.
    raise pulumi.RunError(f"stack configuration: {error}") from None
