"""Corpora -> tokens -> memmapped .bin files (data.prepare), and the batch loader that reads them (data.loader)."""
