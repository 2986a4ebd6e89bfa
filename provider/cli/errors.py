"""Errors of the command-line tool and the exit codes it documents."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1  # a command failed, or the machine lacks an output it needs
EXIT_USAGE = 2  # invalid arguments or options, including an unsupported shell
EXIT_NO_STACK = 3  # no pulumi, no project, stack not found, backend failure
EXIT_NO_OUTPUTS = 4  # the stack has no machines output (never deployed)
EXIT_UNKNOWN_MACHINE = 5  # no machine of that name in the stack
EXIT_NO_SECRETS = 6  # the secret outputs cannot be decrypted
EXIT_UNREACHABLE = 7  # the daemon did not respond (network or TLS error)


class CliError(Exception):
    """A failure reported to the user as one message and an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
