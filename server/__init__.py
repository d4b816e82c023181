"""Server side: the Flower ServerApp round loop, the adapter registry (database + blob store)
and the HTTP hub. Never imports torch: the server container ships without it.

Registry (used by the round loop and the hub): :mod:`fedlora.server.registry`
(:class:`~fedlora.server.registry.Registry`) with its inputs/outputs in
:mod:`fedlora.server.registry_types`. Hub: :func:`fedlora.server.hub.create_app`; its CLI is
the typer sub-app :data:`fedlora.server.hub_cli.app`. This package's ``__init__`` imports
nothing heavy, so ``import fedlora.server.<module>`` costs only what that module needs.
"""
