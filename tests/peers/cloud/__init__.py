"""Local servers speaking the cloud token wire protocols (Azure, Google, OAuth 2.0)."""
