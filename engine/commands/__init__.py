"""CLI sub-commands, one module each, registered by engine.cli."""
