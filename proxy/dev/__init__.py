"""Development tools: a loopback-only OpenID issuer, development certificates and
the demo. Never used by a running proxy."""
