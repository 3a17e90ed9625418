"""Just-in-time access: callers request time-bound access to a route, approvers
grant it (web page, CLI, HTTP API), policy enforces it through the ``grant``
criterion, and every step is audited.

The grant's life is a pure state machine (:mod:`proxy.grants.machine`) over
plain data (:mod:`proxy.grants.model`); stores, the HTTP endpoints, the
webhook and the expiry sweeper are the I/O around it.
"""
