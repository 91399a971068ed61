"""A SQL database as a catalog source, through SQLAlchemy: any database it has a driver for, the URL as users
type it (``postgresql://user@host/db`` → psycopg 3, ``mysql://`` → PyMySQL when mysqlclient is absent,
``sqlite:///catalog.db``).

The configured SELECT is used as a subquery, so the reads a job needs are built around it without parsing it:
``SELECT * FROM (<query>) AS src [WHERE src.updated_at >= :since] ORDER BY ...``; ids only, counts and one
product by id likewise (or the configured ``by_id_query``). Rows are streamed (a server-side cursor where the
driver has one), never read whole into memory.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from pipeline.errors import InvalidInput, SourceError
from pipeline.sources.base import Source, SourceRow, SqlSpec, describe, unique

_STREAM = 500  # rows a streaming cursor fetches at a time


def _engine(spec: SqlSpec) -> Engine:
    try:
        url = make_url(spec.url)
    except ArgumentError as exc:
        raise InvalidInput(f"{spec.url!r} is not a database URL ({exc})") from None
    backend, timeout = url.get_backend_name(), spec.timeout_s
    if url.drivername in ("mysql", "mariadb") and importlib.util.find_spec("MySQLdb") is None:
        url = url.set(drivername=f"{url.drivername}+pymysql")
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        ms = int(timeout * 1000)
        connect_args = {"connect_timeout": max(1, int(timeout)), "options": f"-c statement_timeout={ms}"}
    elif backend in ("mysql", "mariadb"):
        connect_args = {"connect_timeout": max(1, int(timeout)), "read_timeout": max(1, int(timeout))}
    elif backend == "sqlite":
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise InvalidInput(f"{spec.url}: a SQLite source is a database file (sqlite:///path/to/catalog.db)")
        if not Path(database).expanduser().is_file():  # sqlite would create an empty one and find no products
            raise SourceError(f"{describe(spec)}: no such database file {database}")
        # Read-only, and usable from the reader's thread whichever thread made the engine.
        url = url.set(database=f"file:{Path(database).expanduser().resolve()}?mode=ro", query={"uri": "true"})
        connect_args = {"timeout": timeout, "check_same_thread": False}
    try:
        return sa.create_engine(url, connect_args=connect_args, poolclass=NullPool)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise InvalidInput(f"{describe(spec)}: {exc}") from None


def driver_message(exc: BaseException) -> str:
    """What the database said, without SQLAlchemy's wrapping (the statement, the background link)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class SqlSource(Source):
    spec: SqlSpec

    def __init__(self, spec: SqlSpec, strict: bool = False) -> None:
        super().__init__(spec, strict)
        self.engine = _engine(spec)
        self._query = spec.query.strip().rstrip(";").strip()
        quote = self.engine.dialect.identifier_preparer.quote
        self._id = f"src.{quote(self.id_column)}"
        self._updated = f"src.{quote(spec.updated_at)}" if spec.updated_at else None

    def _select(self, what: str, since: Any = None, order: bool = False) -> tuple[sa.TextClause, dict[str, Any]]:
        sql = f"SELECT {what} FROM ({self._query}) AS src"
        params: dict[str, Any] = {}
        if since is not None and self._updated:
            sql += f" WHERE {self._updated} >= :since"
            params["since"] = since
        if order:
            sql += f" ORDER BY {self._updated}, {self._id}" if self._updated else f" ORDER BY {self._id}"
        return sa.text(sql), params

    def _connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise SourceError(f"{describe(self.spec)}: cannot connect ({driver_message(exc)})") from None

    def _run(self, conn: Connection, statement: sa.TextClause, params: dict[str, Any]) -> sa.CursorResult[Any]:
        try:
            return conn.execution_options(stream_results=True, yield_per=_STREAM).execute(statement, params)
        except SQLAlchemyError as exc:
            raise SourceError(f"{describe(self.spec)}: the query failed ({driver_message(exc)})") from None

    def rows(self, since: Any = None) -> Iterator[SourceRow]:
        statement, params = self._select("*", since, order=True)
        with self._connect() as conn:
            result = self._run(conn, statement, params)
            if self.id_column not in list(result.keys()):
                columns = ", ".join(result.keys())
                raise SourceError(f"{describe(self.spec)}: the query has no {self.id_column!r} column ({columns})")
            try:
                records = (self.to_row(i, dict(m)) for i, m in enumerate(result.mappings(), start=1))
                yield from unique(records)
            except SQLAlchemyError as exc:
                raise SourceError(f"{describe(self.spec)}: reading rows failed ({driver_message(exc)})") from None

    def ids(self) -> Iterator[str]:
        statement, params = self._select(self._id)
        with self._connect() as conn:
            result = self._run(conn, statement, params)
            try:
                for (value,) in result:
                    if value is not None:
                        yield str(value)
            except SQLAlchemyError as exc:
                raise SourceError(f"{describe(self.spec)}: reading ids failed ({driver_message(exc)})") from None

    def by_id(self, product_id: str) -> SourceRow | None:
        if self.spec.by_id_query:
            statement, params = sa.text(self.spec.by_id_query.strip().rstrip(";")), {"id": product_id}
        else:
            statement, params = self._select("*")
            statement = sa.text(f"{statement.text} WHERE {self._id} = :id")
            params = {"id": product_id}
        with self._connect() as conn:
            try:
                record = conn.execute(statement, params).mappings().first()
            except SQLAlchemyError as exc:
                raise SourceError(f"{describe(self.spec)}: the by-id query failed ({driver_message(exc)})") from None
        return None if record is None else self.to_row(1, dict(record))

    def count(self, since: Any = None) -> int | None:
        statement, params = self._select("count(*)", since)
        with self._connect() as conn:
            try:
                return int(conn.execute(statement, params).scalar_one())
            except SQLAlchemyError as exc:
                raise SourceError(f"{describe(self.spec)}: the query failed ({driver_message(exc)})") from None

    def close(self) -> None:
        self.engine.dispose()
