"""One module per ``credentials.type``; :func:`build` picks the class for a spec."""
