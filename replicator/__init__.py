"""One-way mirror of the archive layout to fsspec targets (built on `vna`'s change feed)."""
