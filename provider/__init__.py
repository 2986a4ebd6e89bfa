"""Docker Machine as Pulumi dynamic resources.

The resources live in :mod:`provider.resources`; this package root imports
nothing so that the pure modules (PKI, checks, rendering) load without Pulumi.
"""
