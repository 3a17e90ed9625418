"""Shared state for replicas (optional): browser sessions, rate limits and
credential-fetch coordination in Redis, with the documented fallbacks when
Redis cannot be reached."""
