-- mephisto-router state database: the one source of the schema.
-- Compiled into the binary and applied at every start (idempotent).
-- Bump PRAGMA user_version below and STORE_SCHEMA_VERSION in
-- supervisor/store.h together; a database newer than the binary is refused.
-- Version 2 added the uploads table (a version-1 database gets it at start).

-- One row per agent the router knows.
CREATE TABLE IF NOT EXISTS agents (
    agent_id          TEXT PRIMARY KEY,
    status            TEXT NOT NULL DEFAULT 'none',
    attached_worker   INTEGER,            -- worker slot holding its socket, NULL when detached
    attached_conn     INTEGER,            -- connection id within that worker
    is_alive          INTEGER NOT NULL DEFAULT 0,
    last_ping         REAL NOT NULL DEFAULT 0,   -- unix seconds of the last heartbeat, 0 = never
    disconnect_time   REAL NOT NULL DEFAULT 0,   -- unix seconds its socket closed, 0 = never
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS agents_by_worker ON agents (attached_worker);
CREATE INDEX IF NOT EXISTS agents_by_status ON agents (status);

-- Packets that could not be delivered yet, in delivery order (seq, the
-- router's own sequence number). destination is an agent id, or 'mephisto'
-- for the backend. A packet delivered at once is never written here.
CREATE TABLE IF NOT EXISTS queued_packets (
    seq               INTEGER PRIMARY KEY,
    destination       TEXT NOT NULL,
    packet            TEXT NOT NULL,      -- the JSON packet as it will be sent
    created_at        REAL NOT NULL
);

CREATE INDEX IF NOT EXISTS queued_packets_by_destination
    ON queued_packets (destination, seq);

-- Files uploaded with a submission, as the router stored them: download_file
-- serves only these, and only the very file recorded (device and inode).
-- Deleted, with their files, after upload_retention.
CREATE TABLE IF NOT EXISTS uploads (
    stored_name       TEXT PRIMARY KEY,   -- mr-<32 hex digits>, in upload_dir
    original_name     TEXT NOT NULL,      -- the client's file name
    field             TEXT NOT NULL,      -- the form field it came in
    agent_id          TEXT,               -- USED_AGENT_ID of the submission
    size              INTEGER NOT NULL,
    device            INTEGER NOT NULL,
    inode             INTEGER NOT NULL,
    created_at        REAL NOT NULL
) WITHOUT ROWID;

-- Facts about the router itself, one row per key.
CREATE TABLE IF NOT EXISTS router_meta (
    key               TEXT PRIMARY KEY,   -- schema_version, started_at, last_backend_ping, backend_attached, pid, stopped_at
    value             TEXT
) WITHOUT ROWID;

PRAGMA user_version = 2;
