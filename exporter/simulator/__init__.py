"""A faithful stand-in for Distribute.ai's async API: jobs, lifecycle, faults and request stats."""
