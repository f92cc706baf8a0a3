"""Throwaway databases on the PostgreSQL server the tests and benchmarks use.

The server is ``AUTO_RESUME_TEST_PG_URL`` (default ``postgresql+psycopg2://root@127.0.0.1:5432/postgres``,
trust authentication). Each database gets a random name, so concurrent sessions on one server
do not meet, and is dropped ``WITH (FORCE)``: a daemon that still holds connections cannot keep it.

pytest-postgresql's ``DatabaseJanitor`` does the same against a running server, but it brings
psycopg 3 (a second driver beside the psycopg2 that Dagster uses) and is a pytest plugin, while
the benchmarks are plain scripts; these three functions are all that is needed.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2

DEFAULT_SERVER_URL = "postgresql+psycopg2://root@127.0.0.1:5432/postgres"


def server_url() -> str:
    """SQLAlchemy URL of the test server's maintenance database (``AUTO_RESUME_TEST_PG_URL``)."""
    return os.environ.get("AUTO_RESUME_TEST_PG_URL", DEFAULT_SERVER_URL)


def psycopg2_dsn(url: str) -> str:
    """The libpq form of a ``postgresql+psycopg2://`` SQLAlchemy URL, for ``psycopg2.connect``."""
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def _admin(server: str, statement: str) -> None:
    # A connection per statement: holding one open for a whole session would survive nothing
    # (a test restarts its private server) and gain nothing (this runs twice per database).
    connection = psycopg2.connect(psycopg2_dsn(server))
    connection.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement)
    finally:
        connection.close()


def create_database(server: str | None = None, prefix: str = "auto_resume_e2e") -> str:
    """Create an empty database named ``<prefix>_<random>`` on ``server``; its SQLAlchemy URL.

    Args:
        server: URL of a database on the server to create it on; default ``server_url()``.
        prefix: Start of the name, saying who made it if one is ever left behind.
    """
    server = server or server_url()
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    _admin(server, f'CREATE DATABASE "{name}"')
    return server.rsplit("/", 1)[0] + "/" + name


def drop_database(url: str, server: str | None = None) -> None:
    """Drop the database ``url`` names, cutting the connections still open to it.

    Args:
        url: The database's SQLAlchemy URL, as ``create_database`` returned it.
        server: The URL it was created with (a database to connect to while dropping this one);
            default ``server_url()``.
    """
    _admin(server or server_url(), f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


@contextmanager
def throwaway_database(server: str | None = None, prefix: str = "auto_resume_e2e") -> Iterator[str]:
    """A new, empty database (its SQLAlchemy URL), dropped on the way out whatever happened.

    Args:
        server: URL of a database on the server to create it on; default ``server_url()``.
        prefix: Start of the database's name.
    """
    url = create_database(server, prefix)
    try:
        yield url
    finally:
        drop_database(url, server)
