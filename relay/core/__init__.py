"""The pure protocol core: no I/O, no event loop, no store (ARCHITECTURE.md, "Layers")."""
