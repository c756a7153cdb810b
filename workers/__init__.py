"""Everything slow: dedup, fetch, store. ``dramatiq workers.tasks`` runs it."""
