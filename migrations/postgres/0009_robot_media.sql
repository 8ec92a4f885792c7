-- Robot options (playlist with loop/gain, voicemail recording, media bridge name), voicemail
-- recordings, and `recording_ready` pushes in the outbox.
-- (Numbered 0009: 0007 and 0008 are taken by other branches of the same round.)

-- The options of `call/robot` / `invite/robot` as JSON (NULL: the seed's bodies, no options).
-- The bridge is stored by name only; its URL and secret stay in DAPI_BRIDGES.
ALTER TABLE robot_sessions ADD COLUMN options TEXT;

-- One row per recorded participant and part: the Ogg Opus file as uploaded so far
-- (`PUT /agent/recordings/{session_id}/{uid}?part=N`, idempotent replace keeping the longest).
CREATE TABLE recordings (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id     BIGINT  NOT NULL REFERENCES calls (id),
    channel     TEXT    NOT NULL,
    session_id  BIGINT  NOT NULL REFERENCES robot_sessions (id),
    uid         TEXT    NOT NULL,
    part        BIGINT  NOT NULL,
    content     BYTEA   NOT NULL,
    sha256      TEXT    NOT NULL,
    bytes       BIGINT  NOT NULL,
    duration_ms BIGINT  NOT NULL,
    complete    BIGINT  NOT NULL CHECK (complete IN (0, 1)),
    started_at  BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    UNIQUE (session_id, uid, part)
);
CREATE INDEX recordings_by_channel ON recordings (channel, id);
CREATE INDEX recordings_by_age ON recordings (updated_at);

ALTER TABLE push_jobs DROP CONSTRAINT push_jobs_kind_check;
ALTER TABLE push_jobs ADD CONSTRAINT push_jobs_kind_check
    CHECK (kind IN ('call', 'cancel', 'recording_ready'));
