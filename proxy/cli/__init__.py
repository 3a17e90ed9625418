"""The ``gatehouse`` command line: one module per command group, at the top of
the layering (nothing else in ``proxy`` imports from here)."""
