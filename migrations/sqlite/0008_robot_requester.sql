-- Who asked for each robot session (the caller of call/robot, the uid of invite/robot, the
-- owner of a scheduled call): per-uid robot limits count their active sessions. Rows from
-- before this migration have none and count for nobody.
ALTER TABLE robot_sessions ADD COLUMN requested_by TEXT;
CREATE INDEX robot_sessions_active_by_requester ON robot_sessions (requested_by)
    WHERE state IN ('queued', 'offered', 'running');
-- The sweeper's maximum robot duration looks for old active sessions.
CREATE INDEX robot_sessions_active_created ON robot_sessions (created_at)
    WHERE state IN ('queued', 'offered', 'running');
