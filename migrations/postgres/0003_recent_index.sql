-- call/msg reads the newest rows of one uid: index in that order so no sort is needed.
DROP INDEX call_members_recent;
CREATE INDEX call_members_recent ON call_members (uid, created_at DESC, id DESC);
