"""Where ids come from: inline config, ids files, the registration API."""
