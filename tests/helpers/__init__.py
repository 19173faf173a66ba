"""Helpers shared by the tests: real Ray clusters, miniature data sets in their on-disk formats,
hand-made study frames. Imported as ``helpers.<module>`` (pytest puts ``tests/`` on sys.path)."""
