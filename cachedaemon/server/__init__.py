"""The HTTP server: per-shard aiohttp servers on one port, the route table, handlers, metrics.

``cachedaemon.server.main.run(settings)`` is the entry point the CLI's ``serve`` calls.
"""
