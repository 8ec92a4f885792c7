-- Push: registered devices and a durable outbox of pushes to deliver. Requests only
-- write the outbox (in the call's transaction); a worker delivers it off the request path.
-- Times are unix milliseconds bound by the application (never now()).

CREATE TABLE push_devices (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    uid        TEXT    NOT NULL,
    platform   TEXT    NOT NULL CHECK (platform IN ('ios', 'android', 'web')),
    push_token TEXT    NOT NULL,
    voip       INTEGER NOT NULL CHECK (voip IN (0, 1)),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- A token belongs to one device, and so to one uid at a time.
    UNIQUE (platform, push_token)
);
CREATE INDEX push_devices_by_uid ON push_devices (uid);

-- One row per push to one device. States:
--   queued  -> sending (claimed: attempts + 1, run_at = lease end)
--   sending -> sent | queued (retry at run_at) | dead (attempts used up, or refused for good)
--           | dropped (token invalid, device unregistered, call over or push expired)
-- A sending row whose lease (run_at) lapsed is due again: a crashed worker loses nothing.
CREATE TABLE push_jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id     INTEGER NOT NULL REFERENCES calls (id),
    channel     TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('call', 'cancel')),
    uid         TEXT    NOT NULL,
    caller_uid  TEXT    NOT NULL,
    extra_msg   TEXT,
    platform    TEXT    NOT NULL,
    push_token  TEXT    NOT NULL,
    voip        INTEGER NOT NULL,
    state       TEXT    NOT NULL
        CHECK (state IN ('queued', 'sending', 'sent', 'dead', 'dropped')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    run_at      INTEGER NOT NULL,
    expires_at  INTEGER,
    last_error  TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
CREATE UNIQUE INDEX push_jobs_once ON push_jobs (call_id, kind, platform, push_token);
CREATE INDEX push_jobs_due ON push_jobs (run_at) WHERE state IN ('queued', 'sending');
CREATE INDEX push_jobs_by_token ON push_jobs (platform, push_token) WHERE state IN ('queued', 'sending');
CREATE INDEX push_jobs_finished ON push_jobs (updated_at) WHERE state IN ('sent', 'dead', 'dropped');
