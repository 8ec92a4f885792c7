//! The pure parts of the one-socket driver ([`super::mux`]): which listener a datagram is
//! for, and which listener's timer is due. No sockets, no clock: addresses, bytes and
//! instants come in as arguments, so both are tested with made-up values.
//!
//! ```text
//!   datagram (local, remote, bytes) ──► Routes::route ──► the listener, or dropped
//!      STUN Binding request: USERNAME "OURS:THEIRS" ──► by our ufrag; (local, remote) learnt
//!      anything else (DTLS, SRTP, SRTCP, STUN replies) ──► by (local, remote)
//!   our own STUN check to (local, remote) ──► Routes::learn (its reply comes from there)
//!
//!   listener's poll_timeout ──► Timers::arm ──► Timers::next (sleep until) ──► Timers::due
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

/// The STUN magic cookie (RFC 5389).
const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
/// STUN Binding request.
const BINDING_REQUEST: [u8; 2] = [0x00, 0x01];
/// The USERNAME attribute.
const ATTR_USERNAME: [u8; 2] = [0x00, 0x06];
/// The STUN header's length.
const STUN_HEADER: usize = 20;

/// Whether a datagram is STUN (RFC 7983: first byte 0..=3, and the magic cookie).
pub(super) fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= STUN_HEADER
        && datagram.first().is_some_and(|b| *b <= 3)
        && datagram.get(4..8) == Some(&MAGIC_COOKIE[..])
}

/// The receiver's ufrag of a STUN Binding request: the part of its USERNAME before the
/// colon (RFC 8445 7.2.2: `RFRAG:LFRAG`, where RFRAG is ours). `None` for anything else.
pub(super) fn binding_request_ufrag(datagram: &[u8]) -> Option<&str> {
    if !is_stun(datagram) || datagram.get(0..2) != Some(&BINDING_REQUEST[..]) {
        return None;
    }
    let mut rest = datagram.get(STUN_HEADER..)?;
    while rest.len() >= 4 {
        let kind = [rest[0], rest[1]];
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let value = rest.get(4..4 + len)?;
        if kind == ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next().filter(|u| !u.is_empty());
        }
        // Attributes are padded to 4 bytes.
        let padded = 4 + len.div_ceil(4) * 4;
        rest = rest.get(padded..)?;
    }
    None
}

/// A socket's address and a remote one: the path a datagram took.
pub(super) type Path = (SocketAddr, SocketAddr);

/// Which listener each ufrag and each path belongs to.
#[derive(Debug)]
pub(super) struct Routes<V> {
    by_ufrag: HashMap<String, (u64, V)>,
    by_path: HashMap<Path, (u64, V)>,
    /// The ufrag and paths of each listener id, to forget them together.
    of: HashMap<u64, (String, Vec<Path>)>,
}

impl<V> Default for Routes<V> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_path: HashMap::new(),
            of: HashMap::new(),
        }
    }
}

impl<V: Clone> Routes<V> {
    /// A new listener `id`, reached through its local ufrag.
    pub(super) fn add(&mut self, id: u64, ufrag: &str, value: V) {
        self.by_ufrag.insert(ufrag.to_owned(), (id, value));
        self.of.insert(id, (ufrag.to_owned(), Vec::new()));
    }

    /// The listener a datagram that came over `path` is for. A Binding request names its
    /// listener by ufrag (and teaches its path: the peer's checks come before anything
    /// else); every other datagram goes by its path.
    pub(super) fn route(&mut self, path: Path, datagram: &[u8]) -> Option<V> {
        if let Some(ufrag) = binding_request_ufrag(datagram) {
            let (id, value) = self.by_ufrag.get(ufrag)?.clone();
            self.learn(id, path, value.clone());
            return Some(value);
        }
        self.by_path.get(&path).map(|(_, v)| v.clone())
    }

    /// Datagrams over `path` are for listener `id` from now on (its own check went there,
    /// or a check came from there). A path taken by another listener moves to this one.
    pub(super) fn learn(&mut self, id: u64, path: Path, value: V) {
        let Some((_, paths)) = self.of.get_mut(&id) else {
            return;
        };
        if paths.contains(&path) {
            return;
        }
        paths.push(path);
        if let Some((old, _)) = self.by_path.insert(path, (id, value))
            && old != id
            && let Some((_, theirs)) = self.of.get_mut(&old)
        {
            theirs.retain(|p| *p != path);
        }
    }

    /// Whether `path` already leads to listener `id` (no lock-and-insert needed).
    pub(super) fn knows(&self, id: u64, path: Path) -> bool {
        self.of.get(&id).is_some_and(|(_, p)| p.contains(&path))
    }

    /// Forgets listener `id`: its ufrag and every path it learnt.
    pub(super) fn remove(&mut self, id: u64) {
        if let Some((ufrag, paths)) = self.of.remove(&id) {
            self.by_ufrag.remove(&ufrag);
            for p in paths {
                self.by_path.remove(&p);
            }
        }
    }
}

/// One timer for all listeners: each listener has at most one deadline (its connection's
/// `poll_timeout`), kept in a min-heap; a deadline moved or dropped leaves a stale heap
/// entry, skipped when it comes up.
#[derive(Debug, Default)]
pub(super) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    armed: HashMap<u64, Instant>,
}

impl Timers {
    /// Sets listener `id`'s deadline (`None`: it has none). True when that deadline is now
    /// the earliest of all (whoever sleeps until [`Timers::next`] must wake up).
    pub(super) fn arm(&mut self, id: u64, at: Option<Instant>) -> bool {
        let Some(at) = at else {
            self.armed.remove(&id);
            return false;
        };
        if self.armed.get(&id) == Some(&at) {
            return false;
        }
        let earliest = self.next().is_none_or(|n| at < n);
        self.armed.insert(id, at);
        self.heap.push(Reverse((at, id)));
        if self.heap.len() > 64 + 4 * self.armed.len() {
            self.compact();
        }
        earliest
    }

    /// Drops listener `id`'s deadline.
    pub(super) fn remove(&mut self, id: u64) {
        self.armed.remove(&id);
    }

    /// The earliest deadline.
    pub(super) fn next(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The listeners whose deadline is at or before `now`, earliest first; their deadlines
    /// are cleared (they get new ones once handled).
    pub(super) fn due(&mut self, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if self.armed.get(&id) == Some(&at) {
                self.armed.remove(&id);
                out.push(id);
            }
        }
        out
    }

    fn drop_stale(&mut self) {
        while let Some(Reverse((at, id))) = self.heap.peek().copied() {
            if self.armed.get(&id) == Some(&at) {
                return;
            }
            self.heap.pop();
        }
    }

    fn compact(&mut self) {
        self.heap = self
            .armed
            .iter()
            .map(|(id, at)| Reverse((*at, *id)))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A Binding request with the given USERNAME (and a PRIORITY attribute before it, so
    /// the walk over attributes is exercised).
    fn binding(username: &str) -> Vec<u8> {
        let mut attrs = Vec::new();
        attrs.extend_from_slice(&[0x00, 0x24, 0x00, 0x04, 1, 2, 3, 4]); // PRIORITY
        attrs.extend_from_slice(&ATTR_USERNAME);
        let len = u16::try_from(username.len()).unwrap_or(0);
        attrs.extend_from_slice(&len.to_be_bytes());
        attrs.extend_from_slice(username.as_bytes());
        while attrs.len() % 4 != 0 {
            attrs.push(0);
        }
        let mut m = Vec::new();
        m.extend_from_slice(&BINDING_REQUEST);
        m.extend_from_slice(&u16::try_from(attrs.len()).unwrap_or(0).to_be_bytes());
        m.extend_from_slice(&MAGIC_COOKIE);
        m.extend_from_slice(&[7; 12]);
        m.extend_from_slice(&attrs);
        m
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_binding_request_names_our_ufrag() {
        assert_eq!(binding_request_ufrag(&binding("abcd:wxyz")), Some("abcd"));
        assert_eq!(binding_request_ufrag(&binding("odd:x")), Some("odd"));
    }

    #[test]
    fn other_datagrams_name_no_ufrag() {
        // A Binding success response (0x0101) carries no USERNAME to route by.
        let mut reply = binding("abcd:wxyz");
        reply[0] = 0x01;
        reply[1] = 0x01;
        assert_eq!(binding_request_ufrag(&reply), None);
        assert!(is_stun(&reply));
        // DTLS (20..=63), RTP (128..=191): not STUN.
        assert!(!is_stun(&[22; 40]));
        assert!(!is_stun(&[0x80; 40]));
        assert_eq!(binding_request_ufrag(&[0x80; 40]), None);
        // Truncated or lying lengths are refused, never a panic.
        let full = binding("abcd:wxyz");
        for n in 0..full.len() {
            let _ = binding_request_ufrag(&full[..n]);
        }
        assert_eq!(binding_request_ufrag(&binding(":x")), None);
    }

    #[test]
    fn routes_learn_paths_from_checks_and_forget_them() {
        let mut r: Routes<&str> = Routes::default();
        r.add(1, "aaaa", "one");
        r.add(2, "bbbb", "two");
        let (p1, p2) = ((addr(5000), addr(6001)), (addr(5000), addr(6002)));
        // Media before any check has nowhere to go.
        assert_eq!(r.route(p1, &[0x80; 40]), None);
        // A check from p1 for "aaaa" routes there and teaches p1.
        assert_eq!(r.route(p1, &binding("aaaa:x")), Some("one"));
        assert_eq!(r.route(p1, &[0x80; 40]), Some("one"));
        // Our own check out over p2 teaches p2 (its reply has no USERNAME).
        assert!(!r.knows(2, p2));
        r.learn(2, p2, "two");
        assert!(r.knows(2, p2));
        assert_eq!(r.route(p2, &[22; 40]), Some("two"));
        // An unknown ufrag goes nowhere.
        assert_eq!(r.route(p2, &binding("cccc:x")), None);
        r.remove(1);
        assert_eq!(r.route(p1, &[0x80; 40]), None);
        assert_eq!(r.route(p1, &binding("aaaa:x")), None);
        assert!(r.knows(2, p2) && !r.knows(1, p1));
    }

    #[test]
    fn a_path_taken_over_stays_with_the_newer_listener() {
        let mut r: Routes<u64> = Routes::default();
        let p = (addr(5000), addr(6000));
        r.add(1, "aaaa", 1);
        assert_eq!(r.route(p, &binding("aaaa:x")), Some(1));
        // The same remote socket now checks for another listener (a peer that rejoined).
        r.add(2, "bbbb", 2);
        assert_eq!(r.route(p, &binding("bbbb:x")), Some(2));
        assert_eq!(r.route(p, &[0x80; 40]), Some(2));
        assert!(!r.knows(1, p));
        r.remove(1);
        assert_eq!(r.route(p, &[0x80; 40]), Some(2));
        r.remove(2);
        assert_eq!(r.route(p, &[0x80; 40]), None);
    }

    #[test]
    fn timers_hand_out_due_listeners_in_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        assert_eq!(t.next(), None);
        assert!(t.arm(1, Some(ms(50))));
        assert!(t.arm(2, Some(ms(20))), "earlier: wake the sleeper");
        assert!(!t.arm(3, Some(ms(80))), "later: no need to wake");
        assert!(!t.arm(3, Some(ms(80))), "unchanged");
        assert_eq!(t.next(), Some(ms(20)));
        assert_eq!(t.due(ms(10)), Vec::<u64>::new());
        assert_eq!(t.due(ms(50)), vec![2, 1]);
        assert_eq!(t.next(), Some(ms(80)));
        // Moving a deadline leaves the old entry stale: it never fires.
        assert!(t.arm(3, Some(ms(30))));
        assert_eq!(t.next(), Some(ms(30)));
        assert_eq!(t.due(ms(100)), vec![3]);
        assert_eq!(t.next(), None);
    }

    #[test]
    fn removed_or_cleared_timers_never_fire() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        t.arm(1, Some(t0));
        t.arm(2, Some(t0));
        t.remove(1);
        t.arm(2, None);
        assert_eq!(t.next(), None);
        assert!(t.due(t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn the_heap_stays_bounded_when_deadlines_keep_moving() {
        let t0 = Instant::now();
        let mut t = Timers::default();
        for i in 0..10_000u64 {
            t.arm(i % 3, Some(t0 + Duration::from_millis(10_000 - i)));
        }
        assert!(t.heap.len() <= 64 + 4 * 3 + 1, "{}", t.heap.len());
        let due = t.due(t0 + Duration::from_secs(20));
        assert_eq!(due.len(), 3);
    }
}
