"""The pure protocol core: no I/O, no event loop, no store (DESIGN §2, STYLE §1)."""
