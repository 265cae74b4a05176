"""The systems the benchmarks run side by side: peers (Orthanc, ...) and ours (`vna`).

Each module manages one system: start it (peers on loopback), feed it, count
what it holds, stop it. They are benchmark helpers, not part of the `vna` package.
"""
