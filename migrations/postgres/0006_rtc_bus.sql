-- The /rtc bus between API instances on one database (docs/rtc-bus.md). Members of a
-- channel may be connected to different instances; these tables say who is where, and
-- carry the notifications too large for NOTIFY. Times are unix milliseconds bound by the
-- application (never now()).

-- One row per running API instance; a row whose heartbeat lapsed is a dead instance, and
-- whichever live instance notices removes it with its members.
CREATE TABLE rtc_instances (
    id           TEXT   PRIMARY KEY,
    started_at   BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL
);

-- Joins and leaves are numbered from one sequence, under a per-channel advisory lock: in a
-- channel, numbers grow in commit order, so they order the members (who came first
-- offers) and tell a stale notification from a new one.
CREATE SEQUENCE rtc_seq;

-- Who is in which channel, on which instance. One row per (channel, uid): a join of the
-- same uid elsewhere takes the row over (replacement).
CREATE TABLE rtc_presence (
    channel     TEXT   NOT NULL,
    uid         TEXT   NOT NULL,
    instance_id TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    joined_at   BIGINT NOT NULL,
    PRIMARY KEY (channel, uid)
);
CREATE INDEX rtc_presence_by_instance ON rtc_presence (instance_id);

-- Notifications over NOTIFY's 8000-byte payload limit (SDP offers): the payload waits
-- here and NOTIFY carries '@' and its id. The addressee deletes it on reading; rows older
-- than a minute (their addressee died) are pruned.
CREATE TABLE rtc_bus_messages (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload    TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX rtc_bus_messages_by_age ON rtc_bus_messages (created_at);
