"""HTTP: the aiohttp application, its pages and routes, and the web config (TLS, basic auth, limits)."""
