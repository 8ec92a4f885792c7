-- Robot options (playlist with loop/gain, voicemail recording, media bridge name), voicemail
-- recordings, and `recording_ready` pushes in the outbox.
-- (Numbered 0009: 0007 and 0008 are taken by other branches of the same round.)

-- The options of `call/robot` / `invite/robot` as JSON (NULL: the seed's bodies, no options).
-- The bridge is stored by name only; its URL and secret stay in DAPI_BRIDGES.
ALTER TABLE robot_sessions ADD COLUMN options TEXT;

-- One row per recorded participant and part: the Ogg Opus file as uploaded so far
-- (`PUT /agent/recordings/{session_id}/{uid}?part=N`, idempotent replace keeping the longest).
CREATE TABLE recordings (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id     INTEGER NOT NULL REFERENCES calls (id),
    channel     TEXT    NOT NULL,
    session_id  INTEGER NOT NULL REFERENCES robot_sessions (id),
    uid         TEXT    NOT NULL,
    part        INTEGER NOT NULL,
    content     BLOB    NOT NULL,
    sha256      TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    complete    INTEGER NOT NULL CHECK (complete IN (0, 1)),
    started_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    UNIQUE (session_id, uid, part)
);
CREATE INDEX recordings_by_channel ON recordings (channel, id);
CREATE INDEX recordings_by_age ON recordings (updated_at);

-- push_jobs.kind gains 'recording_ready': SQLite cannot change a CHECK, so the table is
-- rebuilt with the same columns and indexes (nothing references push_jobs).
CREATE TABLE push_jobs_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id     INTEGER NOT NULL REFERENCES calls (id),
    channel     TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('call', 'cancel', 'recording_ready')),
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
INSERT INTO push_jobs_new SELECT id, call_id, channel, kind, uid, caller_uid, extra_msg, platform,
    push_token, voip, state, attempts, run_at, expires_at, last_error, created_at, updated_at FROM push_jobs;
DROP TABLE push_jobs;
ALTER TABLE push_jobs_new RENAME TO push_jobs;
CREATE UNIQUE INDEX push_jobs_once ON push_jobs (call_id, kind, platform, push_token);
CREATE INDEX push_jobs_due ON push_jobs (run_at) WHERE state IN ('queued', 'sending');
CREATE INDEX push_jobs_by_token ON push_jobs (platform, push_token) WHERE state IN ('queued', 'sending');
CREATE INDEX push_jobs_finished ON push_jobs (updated_at) WHERE state IN ('sent', 'dead', 'dropped');
