"""Timestamps read back from the index, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ColumnElement, func


def aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands datetimes back without their zone; they were written in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def day_bucket(column: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """`YYYY-MM-DD` of a timestamp column, computed by the database on either backend."""
    if dialect == "sqlite":
        return func.date(column)
    return func.to_char(column, "YYYY-MM-DD")


def hour_bucket(column: ColumnElement[Any], dialect: str) -> ColumnElement[str]:
    """`YYYY-MM-DDTHH` of a timestamp column, computed by the database on either backend."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%dT%H", column)
    return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24')
