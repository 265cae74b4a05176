"""Peer systems that the benchmarks run side by side with ours (Orthanc, ...).

Each module manages one peer: start it on loopback, feed it, count what it holds,
stop it. They are benchmark helpers, not part of the `vna` package.
"""
