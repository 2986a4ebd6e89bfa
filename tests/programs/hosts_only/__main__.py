"""Host resources only, for the machines listed under ``machines``.

The tests use it to create machines without configuring Docker on them. The
entries are read and checked as the project's program reads them. The project's root
directory must be on PYTHONPATH, for this program and for the provider
processes that unpickle the Host provider.
"""

import pulumi

from provider import program

machines = program.parse_machines(pulumi.Config().require_object("machines"))
addresses = {}
for machine in machines:
    host = program.declare_host(machine)
    addresses[machine.name] = host.address
pulumi.export("addresses", addresses)
