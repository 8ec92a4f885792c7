-- The dispatcher asks, on every pass and for each agent connected to it, which of that
-- agent's sessions were asked to leave. Without this index that read scanned every active
-- session (4.5 ms per agent with 14,000 running on PostgreSQL): only the few rows asked
-- to leave are indexed.
CREATE INDEX robot_sessions_pending_leaves ON robot_sessions (agent_id) WHERE leave_requested = 1;
