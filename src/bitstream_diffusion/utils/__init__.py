"""Small shared helpers: atomic writes (:mod:`.atomic_io`) and the cache-directory rule (:mod:`.cache`)."""
