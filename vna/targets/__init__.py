"""Storage targets (a folder, Azure Blob, S3, OCI) behind one small interface.

Here in `vna` because both the replicator (writing replicas) and the gateway
(reading from a replica when tier 0 fails) use them, and they may not import
each other.
"""
