-- Calls, their members (the rows of call/msg), the timeline, robot sessions and
-- scheduled calls. Times are unix milliseconds bound by the application (never now()).

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE calls (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel       TEXT    NOT NULL UNIQUE,
    caller_uid    TEXT    NOT NULL,
    kind          TEXT    NOT NULL CHECK (kind IN ('user', 'robot', 'task')),
    state         TEXT    NOT NULL CHECK (state IN ('ringing', 'connected', 'ended')),
    end_code      BIGINT,
    extra_msg     TEXT,
    created_at    BIGINT  NOT NULL,
    connected_at  BIGINT,
    ended_at      BIGINT,
    ring_deadline BIGINT
);
CREATE INDEX calls_ring_due ON calls (ring_deadline) WHERE ring_deadline IS NOT NULL;

CREATE TABLE call_members (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id            BIGINT  NOT NULL REFERENCES calls (id),
    channel            TEXT    NOT NULL,
    uid                TEXT    NOT NULL,
    role               TEXT    NOT NULL CHECK (role IN ('caller', 'callee', 'invited')),
    status             BIGINT  NOT NULL CHECK (status IN (0, 1, 2)),
    joined             BIGINT  NOT NULL DEFAULT 0,
    created_at         BIGINT  NOT NULL,
    heartbeat_deadline BIGINT,
    UNIQUE (call_id, uid)
);
CREATE INDEX call_members_recent ON call_members (uid, created_at);
CREATE INDEX call_members_heartbeat_due ON call_members (heartbeat_deadline)
    WHERE heartbeat_deadline IS NOT NULL;

CREATE TABLE call_events (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id    BIGINT  NOT NULL REFERENCES calls (id),
    uid        TEXT,
    kind       TEXT    NOT NULL,
    code       BIGINT,
    detail     TEXT,
    source     TEXT    NOT NULL CHECK (source IN ('app', 'server')),
    effect     TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
CREATE INDEX call_events_by_call ON call_events (call_id, id);

CREATE TABLE robot_sessions (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id          BIGINT  NOT NULL REFERENCES calls (id),
    channel          TEXT    NOT NULL,
    uid              TEXT    NOT NULL,
    audio            TEXT    NOT NULL,
    loop_audio       BIGINT  NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('queued', 'offered', 'running', 'left', 'cancelled', 'dead')),
    leave_requested  BIGINT  NOT NULL DEFAULT 0,
    agent_id         TEXT,
    lease_expires_at BIGINT,
    attempts         BIGINT  NOT NULL DEFAULT 0,
    max_attempts     BIGINT  NOT NULL,
    run_at           BIGINT  NOT NULL,
    position_ms      BIGINT  NOT NULL DEFAULT 0,
    errors           TEXT    NOT NULL DEFAULT '[]',
    created_at       BIGINT  NOT NULL,
    updated_at       BIGINT  NOT NULL
);
-- At most one robot per channel, enforced by the database under races.
CREATE UNIQUE INDEX robot_sessions_one_active ON robot_sessions (channel)
    WHERE state IN ('queued', 'offered', 'running');
CREATE INDEX robot_sessions_queued ON robot_sessions (run_at) WHERE state = 'queued';

CREATE TABLE calltasks (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    src_uid    TEXT    NOT NULL,
    dst_uid    TEXT    NOT NULL,
    call_time  BIGINT  NOT NULL,
    taskid     TEXT    NOT NULL,
    tone_list  TEXT    NOT NULL DEFAULT '[]',
    state      TEXT    NOT NULL CHECK (state IN ('pending', 'fired', 'missed')),
    channel    TEXT,
    fired_at   BIGINT,
    created_at BIGINT  NOT NULL,
    updated_at BIGINT  NOT NULL
);
CREATE INDEX calltasks_by_src ON calltasks (src_uid, call_time, id);
CREATE INDEX calltasks_due ON calltasks (call_time) WHERE state = 'pending';
