//! The SQL of the `/rtc` bus between API instances (PostgreSQL only; docs/rtc-bus.md).
//!
//! ```text
//!  claim   ── lock channel ─ read members ─ limit ─ nextval ─ upsert row ─ NOTIFY dapi_rtc Joined
//!  release ── lock channel ─ delete row if still that join ─ nextval ─ NOTIFY dapi_rtc Left
//!  publish ── NOTIFY dapi_rtc_<instance> text   (or: insert into rtc_bus_messages, NOTIFY '@id')
//!  listen  ── LISTEN dapi_rtc, dapi_rtc_<me>; snapshot of rtc_presence on every (re)subscription
//!  heartbeat / purge / goodbye ── rtc_instances; a lapsed instance's members are released
//! ```
//!
//! Joins and leaves of one channel hold a transaction-scoped advisory lock on the channel,
//! so their sequence numbers grow in commit order, which is also the order in which every
//! listener receives their notifications (PostgreSQL delivers notifications of different
//! transactions in commit order). The hub relies on that to tell stale events from new ones.

use protocol::signaling::LeaveReason;
use sqlx::postgres::PgListener;

use super::{PgStore, StoreResult};
use crate::domain::{ChannelName, Uid};
use crate::rtc_wire::{BROADCAST, BusMessage, Claim, InstanceId, PresenceRow};

/// Largest notification sent inline. PostgreSQL refuses payloads of 8000 bytes or more;
/// larger ones go through `rtc_bus_messages`.
pub const INLINE_MAX: usize = 7_500;

/// First key of the advisory locks on channels (the second is the channel's hash).
const CHANNEL_LOCK_CLASS: i32 = 0x7274;

/// What the bus listener hands over.
#[derive(Debug)]
pub enum BusDelivery {
    /// The listener (re)subscribed: every presence row. `after_loss`: notifications may
    /// have been missed before this.
    Subscribed {
        /// Every member of every instance.
        rows: Vec<PresenceRow>,
        /// Not the first subscription: the connection was lost and re-established.
        after_loss: bool,
    },
    /// The text of one notification (a large one already read from its table).
    Message(String),
    /// A large notification whose payload was no longer there (pruned).
    Lost,
}

/// How a notification was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In the NOTIFY payload.
    Inline,
    /// Through `rtc_bus_messages` (too large for NOTIFY).
    Stored,
}

type Row = (String, String, String, i64);

fn to_row((channel, uid, instance, seq): Row) -> Option<PresenceRow> {
    Some(PresenceRow {
        channel: ChannelName::parse(&channel).ok()?,
        uid: Uid::parse(&uid).ok()?,
        instance: InstanceId::from_stored(instance),
        seq,
    })
}

impl PgStore {
    /// Registers this instance (again, after another declared it dead).
    pub async fn rtc_register(&self, me: &InstanceId, now_ms: i64) -> StoreResult<()> {
        sqlx::query(sql::REGISTER)
            .bind(me.as_str())
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Records this instance's heartbeat; false when its row is gone (another instance
    /// declared it dead and released its members).
    pub async fn rtc_heartbeat(&self, me: &InstanceId, now_ms: i64) -> StoreResult<bool> {
        let done = sqlx::query(sql::HEARTBEAT)
            .bind(me.as_str())
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the instances whose heartbeat is older than `lapsed_before`, then releases
    /// (reason `timeout`) every member whose instance has no row. Returns the removed
    /// instances and the number of members released.
    pub async fn rtc_purge(&self, lapsed_before: i64) -> StoreResult<(Vec<String>, usize)> {
        let dead: Vec<String> = sqlx::query_scalar(sql::DELETE_LAPSED)
            .bind(lapsed_before)
            .fetch_all(self.pool())
            .await?;
        let orphans: Vec<Row> = sqlx::query_as(sql::ORPHANS).fetch_all(self.pool()).await?;
        let mut released = 0;
        for row in orphans.into_iter().filter_map(to_row) {
            if self.rtc_release(&row, LeaveReason::Timeout).await? {
                released += 1;
            }
        }
        Ok((dead, released))
    }

    /// Releases every member of `me` (reason `left`) and removes its row: a clean stop.
    pub async fn rtc_goodbye(&self, me: &InstanceId) -> StoreResult<usize> {
        let rows: Vec<Row> = sqlx::query_as(sql::ROWS_OF_INSTANCE)
            .bind(me.as_str())
            .fetch_all(self.pool())
            .await?;
        let mut released = 0;
        for row in rows.into_iter().filter_map(to_row) {
            if self.rtc_release(&row, LeaveReason::Left).await? {
                released += 1;
            }
        }
        sqlx::query(sql::DELETE_INSTANCE)
            .bind(me.as_str())
            .execute(self.pool())
            .await?;
        Ok(released)
    }

    /// Records that `uid` joined `channel` on `me`: refuses it (`None`) when the channel
    /// has `max_peers` other members on any instance; otherwise takes the uid's row over
    /// (a replacement, wherever the earlier join was) and tells every instance.
    pub async fn rtc_claim(
        &self,
        me: &InstanceId,
        channel: &ChannelName,
        uid: &Uid,
        max_peers: usize,
        now_ms: i64,
    ) -> StoreResult<Option<Claim>> {
        let mut tx = self.pool().begin().await?;
        lock_channel(&mut tx, channel).await?;
        let rows: Vec<Row> = sqlx::query_as(sql::MEMBERS)
            .bind(channel.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let members: Vec<PresenceRow> = rows.into_iter().filter_map(to_row).collect();
        let again = members.iter().any(|r| &r.uid == uid);
        if !again && members.len() >= max_peers {
            tx.rollback().await?;
            return Ok(None);
        }
        let seq: i64 = sqlx::query_scalar(sql::NEXT_SEQ)
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query(sql::UPSERT_MEMBER)
            .bind(channel.as_str())
            .bind(uid.as_str())
            .bind(me.as_str())
            .bind(seq)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let joined = BusMessage::Joined(PresenceRow {
            channel: channel.clone(),
            uid: uid.clone(),
            instance: me.clone(),
            seq,
        });
        notify(&mut *tx, BROADCAST, &joined.encode()).await?;
        tx.commit().await?;
        Ok(Some(Claim {
            channel: channel.clone(),
            uid: uid.clone(),
            seq,
            members,
        }))
    }

    /// Records that the join `row` ended: deletes its row if it is still that join and
    /// tells every instance. False when it was not (already released, or replaced).
    pub async fn rtc_release(&self, row: &PresenceRow, reason: LeaveReason) -> StoreResult<bool> {
        let mut tx = self.pool().begin().await?;
        lock_channel(&mut tx, &row.channel).await?;
        let owner: Option<String> = sqlx::query_scalar(sql::DELETE_MEMBER)
            .bind(row.channel.as_str())
            .bind(row.uid.as_str())
            .bind(row.seq)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(owner) = owner else {
            tx.rollback().await?;
            return Ok(false);
        };
        let event_seq: i64 = sqlx::query_scalar(sql::NEXT_SEQ)
            .fetch_one(&mut *tx)
            .await?;
        let left = BusMessage::Left {
            row: PresenceRow {
                instance: InstanceId::from_stored(owner),
                ..row.clone()
            },
            reason,
            event_seq,
        };
        notify(&mut *tx, BROADCAST, &left.encode()).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Sends `text` to the instance `to`: inline, or through `rtc_bus_messages` when it
    /// is too large for NOTIFY.
    pub async fn rtc_publish(&self, to: &InstanceId, text: &str, now_ms: i64) -> StoreResult<Sent> {
        let channel = to.notify_channel();
        if text.len() <= INLINE_MAX {
            notify(self.pool(), &channel, text).await?;
            return Ok(Sent::Inline);
        }
        sqlx::query(sql::PUBLISH_STORED)
            .bind(&channel)
            .bind(text)
            .bind(now_ms)
            .execute(self.pool())
            .await?;
        Ok(Sent::Stored)
    }

    /// Deletes stored notifications older than `before_ms` (their addressee died before
    /// reading them).
    pub async fn rtc_prune_messages(&self, before_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query(sql::PRUNE_MESSAGES)
            .bind(before_ms)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Listens for the bus messages of `me` (broadcast and addressed) and hands each to
    /// `on`, in the order PostgreSQL delivers them; returns only on error. On every
    /// subscription (the first, and after the connection is re-established in place) it
    /// first hands over a snapshot of the presence table, read on the listening connection
    /// after `LISTEN`, so nothing committed after the snapshot is missed.
    pub async fn rtc_listen(
        &self,
        me: &InstanceId,
        after_loss: bool,
        on: &mut (dyn FnMut(BusDelivery) + Send),
    ) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(self.pool()).await?;
        let addressed = me.notify_channel();
        listener.listen_all([BROADCAST, addressed.as_str()]).await?;
        let rows = snapshot(&mut listener).await?;
        on(BusDelivery::Subscribed { rows, after_loss });
        loop {
            let Some(n) = listener.try_recv().await? else {
                // Lost and re-established in place (re-subscribed): resynchronise.
                let rows = snapshot(&mut listener).await?;
                on(BusDelivery::Subscribed {
                    rows,
                    after_loss: true,
                });
                continue;
            };
            let payload = n.payload();
            let Some(id) = payload.strip_prefix('@') else {
                on(BusDelivery::Message(payload.to_owned()));
                continue;
            };
            let id: i64 = id.parse().unwrap_or(-1);
            let stored: Option<String> = sqlx::query_scalar(sql::TAKE_STORED)
                .bind(id)
                .fetch_optional(&mut listener)
                .await?;
            on(stored.map_or(BusDelivery::Lost, BusDelivery::Message));
        }
    }
}

async fn lock_channel(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    channel: &ChannelName,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::LOCK_CHANNEL)
        .bind(CHANNEL_LOCK_CLASS)
        .bind(channel.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn notify<'e>(
    on: impl sqlx::PgExecutor<'e>,
    channel: &str,
    text: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql::NOTIFY)
        .bind(channel)
        .bind(text)
        .execute(on)
        .await?;
    Ok(())
}

async fn snapshot(listener: &mut PgListener) -> Result<Vec<PresenceRow>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(sql::ALL_MEMBERS).fetch_all(listener).await?;
    Ok(rows.into_iter().filter_map(to_row).collect())
}

mod sql {
    pub const REGISTER: &str = "INSERT INTO rtc_instances (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at";
    pub const HEARTBEAT: &str = "UPDATE rtc_instances SET heartbeat_at = $2 WHERE id = $1";
    pub const DELETE_LAPSED: &str =
        "DELETE FROM rtc_instances WHERE heartbeat_at < $1 RETURNING id";
    pub const DELETE_INSTANCE: &str = "DELETE FROM rtc_instances WHERE id = $1";
    pub const ORPHANS: &str = "SELECT channel, uid, instance_id, seq FROM rtc_presence p \
         WHERE NOT EXISTS (SELECT 1 FROM rtc_instances i WHERE i.id = p.instance_id) ORDER BY seq LIMIT 1000";
    pub const ROWS_OF_INSTANCE: &str = "SELECT channel, uid, instance_id, seq FROM rtc_presence WHERE instance_id = $1 ORDER BY seq";
    pub const LOCK_CHANNEL: &str = "SELECT pg_advisory_xact_lock($1, hashtext($2))";
    pub const MEMBERS: &str =
        "SELECT channel, uid, instance_id, seq FROM rtc_presence WHERE channel = $1 ORDER BY seq";
    pub const ALL_MEMBERS: &str =
        "SELECT channel, uid, instance_id, seq FROM rtc_presence ORDER BY seq";
    pub const NEXT_SEQ: &str = "SELECT nextval('rtc_seq')";
    pub const UPSERT_MEMBER: &str = "INSERT INTO rtc_presence (channel, uid, instance_id, seq, joined_at) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (channel, uid) DO UPDATE \
         SET instance_id = excluded.instance_id, seq = excluded.seq, joined_at = excluded.joined_at";
    pub const DELETE_MEMBER: &str = "DELETE FROM rtc_presence WHERE channel = $1 AND uid = $2 AND seq = $3 \
         RETURNING instance_id";
    pub const NOTIFY: &str = "SELECT pg_notify($1, $2)";
    pub const PUBLISH_STORED: &str = "WITH m AS (INSERT INTO rtc_bus_messages (payload, created_at) VALUES ($2, $3) RETURNING id) \
         SELECT pg_notify($1, '@' || m.id) FROM m";
    pub const TAKE_STORED: &str = "DELETE FROM rtc_bus_messages WHERE id = $1 RETURNING payload";
    pub const PRUNE_MESSAGES: &str = "DELETE FROM rtc_bus_messages WHERE created_at < $1";
}
