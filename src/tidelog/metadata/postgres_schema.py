"""The PostgreSQL backend's schema: tables and the functions that make each contract call
one round trip. Versioned: a broker refuses a database whose schema is newer than its own.

Ordering: every writing function locks the one `tidelog_revision` row first and holds it
to commit, so revisions commit in order and a reader that sees revision R in
`tidelog_changes` also sees every revision below R (watchers replay by revision alone).
Keys are `COLLATE "C"`, so their order is UTF-8 byte order, the embedded backend's.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

TABLES = """
CREATE TABLE tidelog_schema (
    id int PRIMARY KEY CHECK (id = 1),
    version int NOT NULL
);
CREATE TABLE tidelog_kv (
    key text COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL,
    version bigint NOT NULL,
    lease bigint NOT NULL DEFAULT 0
);
CREATE INDEX tidelog_kv_by_lease ON tidelog_kv (lease) WHERE lease <> 0;
CREATE TABLE tidelog_revision (
    id int PRIMARY KEY CHECK (id = 1),
    value bigint NOT NULL,
    compacted bigint NOT NULL
);
INSERT INTO tidelog_revision VALUES (1, 0, 0);
CREATE TABLE tidelog_changes (
    revision bigint NOT NULL,
    seq int NOT NULL,
    key text COLLATE "C" NOT NULL,
    value bytea,
    PRIMARY KEY (revision, seq)
);
CREATE TABLE tidelog_leases (
    id bigserial PRIMARY KEY,
    ttl double precision NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX tidelog_leases_by_expiry ON tidelog_leases (expires_at);
CREATE TABLE tidelog_counters (
    name text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE tidelog_applied (
    id uuid PRIMARY KEY,
    revision bigint NOT NULL,
    failed text[] NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tidelog_applied_by_time ON tidelog_applied (at);
"""

FUNCTIONS = """
-- Delete leases `ids` and their keys at revision rev + 1 (if any key goes); the caller
-- holds the revision row. Returns the revision after.
CREATE OR REPLACE FUNCTION tidelog_drop_leases(ids bigint[], rev bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    gone text[];
BEGIN
    IF cardinality(ids) = 0 THEN
        RETURN rev;
    END IF;
    DELETE FROM tidelog_leases WHERE id = ANY(ids);
    WITH d AS (DELETE FROM tidelog_kv WHERE lease = ANY(ids) RETURNING key)
    SELECT coalesce(array_agg(key ORDER BY key), '{}') INTO gone FROM d;
    IF cardinality(gone) = 0 THEN
        RETURN rev;
    END IF;
    INSERT INTO tidelog_changes (revision, seq, key, value)
        SELECT rev + 1, o::int, k, NULL FROM unnest(gone) WITH ORDINALITY AS u(k, o);
    RETURN rev + 1;
END $$;

-- Make revision `rev` current and wake watchers (NOTIFY is delivered at commit).
CREATE OR REPLACE FUNCTION tidelog_publish(before bigint, rev bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF rev <> before THEN
        UPDATE tidelog_revision SET value = rev WHERE id = 1;
        PERFORM pg_notify('tidelog_changes', rev::text);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION tidelog_expire(skew double precision)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := now() + make_interval(secs => skew);
    before bigint;
    rev bigint;
    due bigint[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tidelog_leases WHERE expires_at <= t) THEN
        RETURN 0;
    END IF;
    SELECT value INTO before FROM tidelog_revision WHERE id = 1 FOR UPDATE;
    SELECT coalesce(array_agg(id), '{}') INTO due FROM tidelog_leases WHERE expires_at <= t;
    rev := tidelog_drop_leases(due, before);
    PERFORM tidelog_publish(before, rev);
    RETURN rev;
END $$;

CREATE OR REPLACE FUNCTION tidelog_revoke(lid bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    before bigint;
    rev bigint;
BEGIN
    SELECT value INTO before FROM tidelog_revision WHERE id = 1 FOR UPDATE;
    rev := tidelog_drop_leases(ARRAY[lid], before);
    PERFORM tidelog_publish(before, rev);
    RETURN rev;
END $$;

-- The whole transaction contract in one call. `txid` makes a retry after a lost
-- connection safe: a transaction already applied answers what it answered then.
-- Due leases expire first (their keys then compare as absent); that expiry commits even
-- when a compare fails. Returns the revision and the keys whose compare failed.
CREATE OR REPLACE FUNCTION tidelog_commit(
    txid uuid, ckeys text[], cversions bigint[], pkeys text[], pvalues bytea[],
    dkeys text[], plid bigint, skew double precision,
    OUT out_revision bigint, OUT out_failed text[])
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz := now() + make_interval(secs => skew);
    before bigint;
    rev bigint;
    due bigint[];
    gone text[];
    np int := cardinality(pkeys);
BEGIN
    SELECT value INTO before FROM tidelog_revision WHERE id = 1 FOR UPDATE;
    SELECT a.revision, a.failed INTO out_revision, out_failed
        FROM tidelog_applied a WHERE a.id = txid;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT coalesce(array_agg(id), '{}') INTO due FROM tidelog_leases WHERE expires_at <= t;
    rev := tidelog_drop_leases(due, before);
    SELECT coalesce(array_agg(c.k ORDER BY c.k), '{}') INTO out_failed
        FROM unnest(ckeys, cversions) AS c(k, v)
        LEFT JOIN tidelog_kv kv ON kv.key = c.k
        WHERE coalesce(kv.version, 0) <> c.v;
    IF cardinality(out_failed) = 0 THEN
        IF plid <> 0 AND np > 0
                AND NOT EXISTS (SELECT 1 FROM tidelog_leases WHERE id = plid) THEN
            RAISE EXCEPTION 'lease % is unknown or expired', plid USING ERRCODE = 'TL001';
        END IF;
        SELECT coalesce(array_agg(key), '{}') INTO gone FROM tidelog_kv WHERE key = ANY(dkeys);
        IF np > 0 OR cardinality(gone) > 0 THEN
            rev := rev + 1;
            INSERT INTO tidelog_kv AS kv (key, value, version, lease)
                SELECT k, v, rev, plid FROM unnest(pkeys, pvalues) AS u(k, v)
                ON CONFLICT (key) DO UPDATE
                SET value = excluded.value, version = excluded.version, lease = excluded.lease;
            DELETE FROM tidelog_kv WHERE key = ANY(gone);
            INSERT INTO tidelog_changes (revision, seq, key, value)
                SELECT rev, o::int, k, v FROM unnest(pkeys, pvalues) WITH ORDINALITY AS u(k, v, o);
            INSERT INTO tidelog_changes (revision, seq, key, value)
                SELECT rev, np + o::int, k, NULL FROM unnest(gone) WITH ORDINALITY AS u(k, o);
        END IF;
    END IF;
    PERFORM tidelog_publish(before, rev);
    out_revision := rev;
    INSERT INTO tidelog_applied (id, revision, failed) VALUES (txid, rev, out_failed);
END $$;

CREATE OR REPLACE FUNCTION tidelog_next_ids(cname text, n bigint)
RETURNS bigint LANGUAGE sql AS $$
    INSERT INTO tidelog_counters AS c (name, value) VALUES (cname, n)
    ON CONFLICT (name) DO UPDATE SET value = c.value + excluded.value
    RETURNING value;
$$;
"""

# Keys whose lease expired but that no sweep has deleted yet are already absent to readers.
LIVE = """(kv.lease = 0 OR EXISTS (
    SELECT 1 FROM tidelog_leases l
    WHERE l.id = kv.lease AND l.expires_at > now() + make_interval(secs => $2::float8)))"""

GET = f"SELECT value, version, lease FROM tidelog_kv kv WHERE key = $1 AND {LIVE}"

# one statement, so the revision and the rows come from one snapshot
LIST = f"""
SELECT r.value AS revision, e.key, e.value, e.version, e.lease
FROM tidelog_revision r
LEFT JOIN LATERAL (
    SELECT kv.key, kv.value, kv.version, kv.lease FROM tidelog_kv kv
    WHERE kv.key >= $1 AND ($3::text IS NULL OR kv.key < $3)
      AND ($4::text IS NULL OR kv.key > $4) AND {LIVE}
    ORDER BY kv.key LIMIT $5
) e ON true
WHERE r.id = 1
ORDER BY e.key
"""

CHANGES = """
SELECT r.value AS current, r.compacted, c.revision, c.seq, c.key, c.value
FROM tidelog_revision r
LEFT JOIN LATERAL (
    SELECT ch.revision, ch.seq, ch.key, ch.value FROM tidelog_changes ch
    WHERE (ch.revision, ch.seq) > ($1, $2)
      AND ch.key >= $3 AND ($4::text IS NULL OR ch.key < $4)
    ORDER BY ch.revision, ch.seq LIMIT $5
) c ON true
WHERE r.id = 1
ORDER BY c.revision, c.seq
"""

GRANT = """INSERT INTO tidelog_leases (ttl, expires_at)
VALUES ($1::float8, now() + make_interval(secs => $1::float8 + $2::float8)) RETURNING id"""

KEEP_ALIVE = """UPDATE tidelog_leases
SET expires_at = now() + make_interval(secs => ttl + $2::float8)
WHERE id = $1 AND expires_at > now() + make_interval(secs => $2::float8)"""

# the change history kept for watchers that reconnect, and retried commits' answers
PRUNE = """
WITH cut AS (
    UPDATE tidelog_revision SET compacted = greatest(compacted, value - $1)
    WHERE id = 1 RETURNING compacted
)
DELETE FROM tidelog_changes WHERE revision <= (SELECT compacted FROM cut)
"""
PRUNE_APPLIED = "DELETE FROM tidelog_applied WHERE at < now() - make_interval(secs => $1::float8)"
