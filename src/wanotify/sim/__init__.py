"""The simulated phones' HTTP API (``/sim``): a dev tool, mounted only with the simulator."""
