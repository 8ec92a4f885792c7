-- Push: registered devices and a durable outbox of pushes to deliver. Requests only
-- write the outbox (in the call's transaction); a worker delivers it off the request path.
-- Times are unix milliseconds bound by the application (never now()).

CREATE TABLE push_devices (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid        TEXT    NOT NULL,
    platform   TEXT    NOT NULL CHECK (platform IN ('ios', 'android', 'web')),
    push_token TEXT    NOT NULL,
    voip       BIGINT  NOT NULL CHECK (voip IN (0, 1)),
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL,
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
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id     BIGINT  NOT NULL REFERENCES calls (id),
    channel     TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('call', 'cancel')),
    uid         TEXT    NOT NULL,
    caller_uid  TEXT    NOT NULL,
    extra_msg   TEXT,
    platform    TEXT    NOT NULL,
    push_token  TEXT    NOT NULL,
    voip        BIGINT  NOT NULL,
    state       TEXT    NOT NULL
        CHECK (state IN ('queued', 'sending', 'sent', 'dead', 'dropped')),
    attempts    BIGINT  NOT NULL DEFAULT 0,
    run_at      BIGINT  NOT NULL,
    expires_at  BIGINT,
    last_error  TEXT,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL
);
CREATE UNIQUE INDEX push_jobs_once ON push_jobs (call_id, kind, platform, push_token);
CREATE INDEX push_jobs_due ON push_jobs (run_at) WHERE state IN ('queued', 'sending');
CREATE INDEX push_jobs_by_token ON push_jobs (platform, push_token) WHERE state IN ('queued', 'sending');
CREATE INDEX push_jobs_finished ON push_jobs (updated_at) WHERE state IN ('sent', 'dead', 'dropped');
