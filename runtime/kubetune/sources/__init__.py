"""Remote sources of a run (hub models and datasets; object stores plug in) fetched once into the cache.

`kubetune.config.sources` says which keys of a config name remote sources (no network, no torch: the operator imports
it); `kubetune.sources.fetch` downloads them under a per-source lock, keyed by source and resolved revision, so that a
job's pods and later jobs sharing the cache volume download each file once.
"""
