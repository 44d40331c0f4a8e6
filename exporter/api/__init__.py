"""Distribute.ai's async API as data: job ids, result answers and their timestamps. No I/O."""
