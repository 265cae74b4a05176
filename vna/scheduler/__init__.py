"""Scheduled jobs: verification, reconciliation, replication windows, reports.

APScheduler fires the jobs; its job store lives in the index database so that
next run times survive a restart. Every run's outcome is recorded in
`job_runs`, whoever started it (the schedule or `vna jobs run`).
"""
