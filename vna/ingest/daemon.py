"""The ingest daemon: from drop folders to layout and index, one batch at a time.

Worker processes prepare files in parallel (parse, coerce, write a staged copy,
hash); this process commits their results in batches (`commit.Committer`), on
a thread of its own (`commit_thread`) while the loop keeps the workers fed, so
the index sees one writer per daemon and one transaction per batch. Candidates
come from a scan at start, a rescan every `rescan_seconds`, and file-system
events in between.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from sqlalchemy import Engine

from vna import digest
from vna.ingest.coerce import Rules
from vna.ingest.commit import Committer, Outcome, received_now
from vna.ingest.commit_thread import Committed, CommitThread
from vna.ingest.prepare import Job, Rejected, Result, Skipped, init_worker, prepare
from vna.ingest.scan import Candidate, below, ignored, scan
from vna.ingest.watch import Watchers
from vna.layout import Layout
from vna.quarantine import QuarantineStore, Reason
from vna.settings import Settings, SourceSettings

logger = logging.getLogger(__name__)

#: Files per worker task. Each task costs the pool a round trip (pickling, futures, wake-ups)
#: and the chunk one received time: 16 took 7% less CPU per file than 8. Whatever its size,
#: a worker's crash is narrowed down to one file (`_submit_suspect`).
CHUNK = 16
#: Batches handed to the commit thread before the loop hands it no more and sends no more
#: work to the workers: one being committed, one waiting. More would only pile up staged
#: files while the index is down (at most what is in flight besides).
MAX_COMMITS_WAITING = 2
MAX_CRASHES = 3  # a file that kills a worker this often, alone in the pool, is quarantined
DEFER_SECONDS = 5.0


def prepare_many(jobs: list[Job]) -> list[Result]:
    """Worker entry point: a few files per task keeps the pool's overhead small."""
    return [prepare(job) for job in jobs]


def rules_for(src: SourceSettings) -> Rules:
    return Rules(
        source=src.name,
        issuer_of_patient_id=src.issuer_of_patient_id,
        override_issuer=src.override_issuer,
        set=dict(src.coerce.set),
        replace={k: dict(v) for k, v in src.coerce.replace.items()},
        remove=tuple(src.coerce.remove),
    )


class IngestDaemon:
    """Runs until stopped (`run`) or until the drop folders are drained (`run(once=True)`)."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.archive.root, settings.archive.fsync)
        self.quarantine = QuarantineStore(settings.archive.quarantine, settings.archive.fsync)
        self.committer = Committer(settings, engine, self.layout, self.quarantine)
        self.sources = {s.name: s for s in settings.sources}
        self.rules = {s.name: rules_for(s) for s in settings.sources}
        self.pending: dict[str, Candidate] = {}
        # When each pending file is next due (settled, its back-off over), soonest first:
        # (due, mtime, n, path). Taking the files due is then the work of those files, not
        # of every file pending (up to max_pending, on every turn of the loop). An entry
        # left behind by a file that changed, was deferred or is busy is dropped on sight.
        self._due: list[tuple[float, float, int, str]] = []
        self._entries = itertools.count()
        self.in_flight: dict[Future[list[Result]], list[Job]] = {}
        # Files in flight when a worker died, to be tried one at a time with nothing else
        # in the pool (`_submit_suspect`), and the task of the one being tried.
        self._suspects: list[str] = []
        self._solo: Future[list[Result]] | None = None
        self.busy: set[str] = set()  # submitted, and not yet committed
        self.counts: Counter[str] = Counter()
        self.stop_event = threading.Event()
        self.on_outcome = on_outcome
        self._pool: ProcessPoolExecutor | None = None
        self._submitted = 0
        self._more_on_disk = False  # the last rescan stopped at max_pending
        self._clock = time.monotonic  # what the settle rule counts in

    # -- the loop ---------------------------------------------------------

    def run(self, once: bool = False) -> Counter[str]:
        """Take files in until `stop()` (or, with `once`, until nothing is left); return counts."""
        ingest = self.settings.ingest
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self.quarantine.root.mkdir(parents=True, exist_ok=True)
        for src in self.settings.sources:
            src.drop.mkdir(parents=True, exist_ok=True)
        self.committer.recover()
        watchers = None if once else Watchers(self.settings.sources)
        if watchers:
            watchers.start()
        self._start_pool()
        commits = CommitThread(self.committer, self.stop_event)
        results: list[Result] = []
        next_rescan = 0.0
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if now >= next_rescan or self._backlog_waits():
                    self._rescan()
                    next_rescan = now + ingest.rescan_seconds
                if watchers:
                    self._drain_hints(watchers.hints)
                self._apply(commits.take())
                if commits.outstanding < MAX_COMMITS_WAITING:
                    self._submit()
                if self.in_flight:
                    results.extend(self._collect(timeout=0.2))
                elif commits.outstanding:
                    self._apply(commits.take(timeout=0.2))
                full = len(results) >= ingest.batch_size or (results and not self.in_flight)
                if full and commits.outstanding < MAX_COMMITS_WAITING:
                    commits.put(results)
                    results = []
                busy = self.in_flight or results or self._submitted or commits.outstanding
                if not busy:
                    if once and not self.pending:
                        self._rescan()
                        if not self.pending:
                            break
                    self._idle(watchers)
        finally:
            try:
                if results:
                    commits.put(results)
                self._apply(commits.close())
            finally:
                self._shutdown_pool()
                if watchers:
                    watchers.stop()
                self.layout.close()
        return self.counts

    def stop(self) -> None:
        self.stop_event.set()

    # -- candidates -------------------------------------------------------

    def _rescan(self) -> None:
        """Every drop folder, up to `max_pending` files. What the scan found counts as seen
        when it ended (a long scan of a share takes longer than the settle time: a file seen
        early must not be due by the time the scan is done), all at one time, so the
        files are taken oldest first."""
        limit = self.settings.ingest.max_pending
        self._more_on_disk = False
        found: list[Candidate] = []
        new = 0
        for src in self.settings.sources:
            for cand in scan(src.name, src.drop, self.settings.ingest.ignore):
                if cand.path not in self.pending:
                    if len(self.pending) + new >= limit:
                        self._more_on_disk = True
                        break
                    new += 1
                found.append(cand)
            if self._more_on_disk:
                break
        now = self._clock()
        for cand in found:
            self._add(cand, now)

    def _backlog_waits(self) -> bool:
        """A rescan stopped at `max_pending` and half of what it took is done: scan again
        now. Files that were there before the daemon started raise no events, so a backlog
        larger than `max_pending` (a migration, a share filled while the daemon was down)
        would otherwise be taken `max_pending` files per `rescan_seconds`."""
        return self._more_on_disk and len(self.pending) <= self.settings.ingest.max_pending // 2

    def _add(self, cand: Candidate, now: float | None = None) -> None:
        """A file found by a scan or an event: known (its settle clock restarted if it
        changed), or new (its settle clock started now)."""
        known = self.pending.get(cand.path)
        seen = self._clock() if now is None else now
        if known is None:
            cand.seen_at = seen
            self.pending[cand.path] = cand
            self._schedule(cand)
        elif known.changed(cand.size, cand.mtime, seen):
            known.suspect = False  # a new version: taken as any file, once it has settled
            self._schedule(known)

    def _due_at(self, cand: Candidate) -> float:
        return max(cand.seen_at + self.settings.ingest.settle_seconds, cand.not_before)

    def _schedule(self, cand: Candidate) -> None:
        heapq.heappush(self._due, (self._due_at(cand), cand.mtime, next(self._entries), cand.path))

    def _drain_hints(self, hints: queue.SimpleQueue[tuple[str, str, bool]]) -> None:
        """Take in the files that events point at.

        A folder moved in whole raises an event for itself and for every folder and
        file below it: a file or folder that a scan of this drain already found is
        skipped (when a file is taken, `_ready` looks at it again anyway). A file
        written into a folder after its scan is not among them, and is taken from
        its own event.
        """
        found: set[str] = set()  # files and folders found by this drain's scans
        patterns = self.settings.ingest.ignore
        seen = 0
        while seen < 10000:
            try:
                source, path, is_dir = hints.get_nowait()
            except queue.Empty:
                return
            seen += 1
            src = self.sources.get(source)
            if src is None:
                continue
            prefix = below(src.drop)
            if not path.startswith(prefix) or path in found:
                continue
            rel = path[len(prefix) :]
            if any(ignored(part, patterns) for part in rel.split(os.sep)):
                continue
            if is_dir:
                found.add(path)
                for cand in scan(source, src.drop, patterns, Path(path)):
                    found.add(cand.path)
                    found.add(os.path.dirname(cand.path))
                    self._add(cand)
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            self._add(Candidate(source, path, rel.replace(os.sep, "/"), st.st_mtime, st.st_size))

    def _idle(self, watchers: Watchers | None) -> None:
        """Sleep until a file could have settled (or its back-off ended) or an event arrives."""
        wait_for = 1.0
        if self._due:  # the first entry may be stale: at worst the loop looks once too early
            wait_for = max(0.05, min(wait_for, self._due[0][0] - self._clock()))
        if watchers is None:
            self.stop_event.wait(wait_for)
            return
        deadline = time.monotonic() + wait_for
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            try:
                hint = watchers.hints.get(timeout=min(0.1, wait_for))
            except queue.Empty:
                continue
            watchers.hints.put(hint)
            return

    # -- work -------------------------------------------------------------

    def _ready(self, limit: int) -> list[Candidate]:
        """Up to `limit` files due now, to be submitted: each leaves the due queue, and is
        scheduled again if it comes back from the workers still pending."""
        now = self._clock()
        chosen: list[Candidate] = []
        taken: set[str] = set()
        while self._due and len(chosen) < limit and self._due[0][0] <= now:
            due, _, _, path = heapq.heappop(self._due)
            c = self.pending.get(path)
            if c is None or c.suspect or path in self.busy or path in taken:
                continue  # done, tried on its own (`_submit_suspect`), or under way
            if due != self._due_at(c):
                continue  # an entry from before it changed
            # Events may be older than the last write: look again before taking it.
            unchanged = self._look_again(c, now)
            if unchanged is None:
                if path in self.pending:
                    self._defer(path)
                continue
            if not unchanged and self._due_at(c) > now:
                self._schedule(c)
                continue
            chosen.append(c)
            taken.add(path)
        return chosen

    def _look_again(self, cand: Candidate, now: float) -> bool | None:
        """Look at a file once more before it is taken: True if unchanged, False if it
        changed (its settle clock restarted), None if it is gone (no longer pending) or
        cannot be looked at now (still pending)."""
        try:
            st = os.stat(cand.path)
        except FileNotFoundError:
            self.pending.pop(cand.path, None)
            return None
        except OSError:
            return None
        return not cand.changed(st.st_size, st.st_mtime, now)

    def _submit(self) -> None:
        self._submitted = 0
        if self._solo is not None or self._submit_suspect():
            return
        workers = max(1, self.settings.ingest.workers)
        room = workers * 3 - len(self.in_flight)
        if room <= 0:
            return
        ready = self._ready(room * CHUNK)
        staging = str(self.layout.staging_dir())
        for i in range(0, len(ready), CHUNK):
            # The files of a chunk are taken at one time: what the archive adds to each
            # (the received time in its provenance and Original Attributes) then repeats
            # within the chunk, and the worker encodes it once.
            received = received_now()
            jobs = [self._job(c, staging, received) for c in ready[i : i + CHUNK]]
            if self._dispatch(jobs) is None:
                for c in ready[i:]:
                    self._schedule(c)
                return

    def _submit_suspect(self) -> bool:
        """Try the next suspect alone; True while suspects hold back other work.

        When a worker dies, every task in flight fails with it, so which file killed
        it is not known. Each file that was in flight is tried again on its own, with
        nothing else in the pool, after the work already in flight has finished: a
        crash then is that file's, and counts towards quarantining it. Before, every
        file in flight counted a crash, and good files that happened to be in flight
        with a bad one three times were quarantined with it.
        """
        if not self._suspects:
            return False
        if self.in_flight:
            return True
        for path in list(self._suspects):
            cand = self.pending.get(path)
            if cand is None or not cand.suspect:
                self._suspects.remove(path)  # done with, or found changed (`_add`)
                continue
            if path in self.busy:
                continue  # its result from the crash is still being committed
            unchanged = self._look_again(cand, self._clock())  # gone or changed since?
            if unchanged is None:
                if path not in self.pending:
                    self._suspects.remove(path)
                continue
            self._suspects.remove(path)
            cand.suspect = False
            if not unchanged:
                self._schedule(cand)  # a new version: taken as any file, once settled
                continue
            job = self._job(cand, str(self.layout.staging_dir()), received_now())
            self._solo = self._dispatch([job])
            if self._solo is None:  # the pool broke meanwhile: tried again on the next turn
                cand.suspect = True
                self._suspects.insert(0, path)
            return True
        return bool(self._suspects)

    def _dispatch(self, jobs: list[Job]) -> Future[list[Result]] | None:
        """Hand a task to the pool; None if the pool broke since its last task was collected
        (a worker died): the jobs were not taken, and a new pool is started once the tasks
        in flight, which fail with it, are collected (`_collect`)."""
        if self._pool is None:
            fut: Future[list[Result]] = Future()
            fut.set_result(prepare_many(jobs))
        else:
            try:
                fut = self._pool.submit(prepare_many, jobs)
            except BrokenProcessPool:
                if not self.in_flight:
                    self._shutdown_pool()
                    self._start_pool()
                return None
        self.busy.update(j.path for j in jobs)
        self._submitted += len(jobs)
        self.in_flight[fut] = jobs
        return fut

    def _job(self, cand: Candidate, staging: str, received: dt.datetime) -> Job:
        return Job(
            source=cand.source,
            path=cand.path,
            relpath=cand.relpath,
            rules=self.rules[cand.source],
            staging=staging,
            durable=self.layout.fsync_each_staged,
            received=received,
        )

    def _collect(self, timeout: float) -> list[Result]:
        if not self.in_flight:
            return []
        done, _ = wait(list(self.in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        out: list[Result] = []
        broken = False
        for fut in done:
            jobs = self.in_flight.pop(fut)
            solo = fut is self._solo
            if solo:
                self._solo = None
            try:
                out.extend(fut.result())
            except BrokenProcessPool:
                broken = True
                out.extend(self._after_crash(jobs, solo))
        if broken:
            for fut, jobs in list(self.in_flight.items()):
                self.in_flight.pop(fut)
                out.extend(self._after_crash(jobs, alone=False))
            self._solo = None
            self._shutdown_pool()
            self._start_pool()
        return out

    def _suspect(self, cand: Candidate) -> None:
        if not cand.suspect:
            cand.suspect = True
            self._suspects.append(cand.path)

    def _after_crash(self, jobs: list[Job], alone: bool) -> list[Result]:
        """A worker died (a file crashed the parser?): find the culprit and quarantine it.

        A file in flight with others becomes a suspect, tried again on its own
        (`_submit_suspect`); one that was alone in the pool is the culprit, tried
        again until it has killed a worker MAX_CRASHES times.
        """
        out: list[Result] = []
        for job in jobs:
            with contextlib.suppress(OSError):  # what the dead worker may have staged
                job.discard_staged()
            cand = self.pending.get(job.path)
            if cand is None:
                continue
            if not alone:
                self._suspect(cand)
                out.append(Skipped(job, "a worker process died; trying each file on its own"))
                continue
            cand.attempts += 1
            if cand.attempts < MAX_CRASHES:
                self._suspect(cand)
                out.append(Skipped(job, "a worker process died with this file alone; trying again"))
                continue
            try:
                with open(job.path, "rb") as fh:
                    file_digest = digest.of_stream(fh)
                size = os.path.getsize(job.path)
            except OSError:
                out.append(Skipped(job, "vanished", vanished=True))
                continue
            out.append(
                Rejected(
                    job,
                    Reason.UNREADABLE,
                    "the parser crashed on this file repeatedly",
                    file_digest,
                    size,
                    None,
                )
            )
        return out

    def _apply(self, committed: list[Committed]) -> None:
        """What the commit thread made of each batch, applied to the daemon's state."""
        for batch in committed:
            self._release(r.job.path for r in batch.results)
            if batch.outcomes is None:  # failed: every file is taken again after a while
                for r in batch.results:
                    self._defer(r.job.path)
                continue
            for outcome in batch.outcomes:
                self.counts[outcome.outcome] += 1
                if outcome.outcome == "deferred":
                    self._defer(outcome.path)
                else:
                    self.pending.pop(outcome.path, None)
                    outcome.log()
                if self.on_outcome:
                    self.on_outcome(outcome)

    def _defer(self, path: str) -> None:
        cand = self.pending.get(path)
        if cand is not None:
            cand.not_before = self._clock() + DEFER_SECONDS
            self._schedule(cand)

    def _release(self, paths: Iterable[str]) -> None:
        """Files back from the workers: those still pending (not decided, deferred) are due
        again when their schedule says; the rest are done."""
        for path in paths:
            self.busy.discard(path)
            cand = self.pending.get(path)
            if cand is not None:
                self._schedule(cand)

    def _start_pool(self) -> None:
        workers = self.settings.ingest.workers
        self._pool = (
            ProcessPoolExecutor(max_workers=workers, initializer=init_worker)
            if workers > 0
            else None
        )
        if self._pool is None:
            init_worker()

    def _shutdown_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
