"""The ``pulumi-docker-machine`` command-line tool: docker-machine habits on stack outputs."""
