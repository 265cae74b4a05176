"""`vna reindex`: rebuild the index from the layout alone."""

from __future__ import annotations

import argparse

from vna.settings import Settings

NAME = "reindex"
HELP = "rebuild the index from the files in the layout (and quarantine)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="really replace the index's catalogue")


def main(args: argparse.Namespace, settings: Settings) -> int:
    from vna.index.engine import open_index
    from vna.layout import Layout
    from vna.progress import Progress
    from vna.quarantine import QuarantineStore
    from vna.reindex import count_files, reindex

    if not args.yes:
        print("vna reindex replaces every patient, study, series and instance row; add --yes")
        return 2
    layout = Layout(settings.archive.root, settings.archive.fsync)
    with Progress("reindex", count_files(layout), "files") as progress:
        report = reindex(
            open_index(settings.index.url),
            layout,
            QuarantineStore(settings.archive.quarantine, settings.archive.fsync),
            progress=progress.advance_to,
        )
    for problem in report.problems:
        print(f"skipped {problem}")
    print(
        f"reindexed {report.instances} instances, {report.quarantined} quarantine entries; "
        f"{len(report.problems)} skipped"
    )
    return 1 if report.problems else 0
