-- Robot dispatch bookkeeping and prepared audio assets.

ALTER TABLE robot_sessions ADD COLUMN offered_at BIGINT;
ALTER TABLE robot_sessions ADD COLUMN redispatches BIGINT NOT NULL DEFAULT 0;
CREATE INDEX robot_sessions_running ON robot_sessions (lease_expires_at) WHERE state = 'running';
CREATE INDEX robot_sessions_offered ON robot_sessions (offered_at) WHERE state = 'offered';

CREATE TABLE audio_assets (
    name        TEXT    PRIMARY KEY,
    content     BYTEA   NOT NULL,
    sha256      TEXT    NOT NULL,
    bytes       BIGINT  NOT NULL,
    duration_ms BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);
