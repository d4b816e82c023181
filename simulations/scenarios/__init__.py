"""Bundled scenario files (``<name>.toml``), loaded by :mod:`fedlora.simulations.scenario`."""
