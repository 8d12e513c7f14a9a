"""`switchyard migrate` against a real PostgreSQL (started here, loopback only): versioned schema
migrations, applied once when several servers start at once, refused when the database is newer.

The PostgreSQL job store itself (several replicas sharing one queue) builds on this schema.
"""
import subprocess

import pytest

import pg_helpers


@pytest.fixture
def pg():
    if pg_helpers.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    with pg_helpers.TempPostgres() as server:
        yield server


def _migrate(binary, url, **kw):
    return subprocess.Popen([binary, "migrate", "--database-url", url], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def test_concurrent_migrations_apply_each_version_once(switchyard_bin, pg):
    procs = [_migrate(switchyard_bin, pg.url) for _ in range(6)]
    outs = [p.communicate(timeout=60) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "switchyard schema at version 2" in out, out
    applied = sorted(int(out.split("(")[1].split()[0]) for out, _ in outs)
    assert sum(applied) == 2 and applied[0] == 0, outs  # each version applied once, by whoever got there
    assert pg.psql("SELECT version FROM switchyard_schema_migrations ORDER BY version") == [["1"], ["2"]]
    tables = {row[0] for row in pg.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"switchyard_jobs", "switchyard_idempotency_keys", "switchyard_replicas",
            "switchyard_schema_migrations"} <= tables
    # The claim index is partial: queued jobs that no replica holds.
    (index,) = pg.psql("SELECT indexdef FROM pg_indexes WHERE indexname = 'switchyard_jobs_claimable'")
    assert "WHERE ((status = 'queued'::text) AND (lease_owner IS NULL))" in index[0], index
    assert pg.psql("SELECT count(*) FROM pg_indexes WHERE indexname = 'switchyard_jobs_claim'") == [["0"]]
    # Again: nothing to do.
    out, err = _migrate(switchyard_bin, pg.url).communicate(timeout=60)
    assert "(0 migrations applied)" in out, (out, err)


def test_a_newer_schema_is_refused(switchyard_bin, pg):
    assert _migrate(switchyard_bin, pg.url).wait(timeout=60) == 0
    pg.psql("INSERT INTO switchyard_schema_migrations (version) VALUES (99)")
    p = _migrate(switchyard_bin, pg.url)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "schema version 99, newer than this build knows (2)" in err, err


def test_connection_errors_are_clear_and_never_show_the_password(switchyard_bin, pg):
    url = f"postgresql://switchyard:s3cret-pw@127.0.0.1:{pg.port}/no_such_database"
    p = _migrate(switchyard_bin, url)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1
    assert "cannot connect to PostgreSQL at postgresql://switchyard:***@127.0.0.1" in err, err
    assert "no_such_database" in err
    assert "s3cret-pw" not in err + out


def test_migrate_needs_a_database_url(switchyard_bin):
    p = subprocess.run([switchyard_bin, "migrate"], capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin"})
    assert p.returncode != 0
    assert "--database-url" in p.stderr
