"""Reports for storage admins, computed from the index."""
