-- Failover driven by the agent link (DESIGN.md decision 11, docs/robot-session-states.md).
--
-- agent_links: the link (one WebSocket connection to some API instance) each agent is
-- connected over now. A registration makes its link the current one; when a link closes,
-- the agent's sessions go back to the queue only if that link is still the current one,
-- so the late close of an old connection (a half-open socket noticed after the agent
-- reconnected, perhaps to another instance) changes nothing.
CREATE TABLE agent_links (
    agent_id  TEXT   PRIMARY KEY,
    link_id   TEXT   NOT NULL,
    opened_at BIGINT NOT NULL
);
-- 1 once the holding agent reported `playing` since its accept: a link lost after that is
-- the agent's failure, not the session's, and does not use up one of its attempts.
ALTER TABLE robot_sessions ADD COLUMN played BIGINT NOT NULL DEFAULT 0;
-- The sessions of one agent, read when its link closes.
CREATE INDEX robot_sessions_held ON robot_sessions (agent_id) WHERE state IN ('offered', 'running');
