"""Vendor-neutral archive core: configuration, layout, index, ingest and the `vna` CLI."""

__version__ = "0.1.0"
