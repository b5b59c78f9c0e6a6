//! Balancing the ingress over the replicas of a service, like a Kubernetes
//! Service behind the gateway: requests go round-robin over the replicas'
//! addresses, and a replica that refuses connections (killed, restarting) is
//! left out for [`DOWN_FOR`] before it is tried again.
//!
//! [`Upstreams`] is what [`crate::ingress::serve`] routes to: service name →
//! the addresses of its replicas (one for a single replica: a
//! `HashMap<String, SocketAddr>` converts into it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a replica that refused a connection is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// Service name → the addresses of its replicas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upstreams(pub HashMap<String, Vec<SocketAddr>>);

impl From<HashMap<String, SocketAddr>> for Upstreams {
    fn from(single: HashMap<String, SocketAddr>) -> Self {
        Self(
            single
                .into_iter()
                .map(|(name, addr)| (name, vec![addr]))
                .collect(),
        )
    }
}

impl From<HashMap<String, Vec<SocketAddr>>> for Upstreams {
    fn from(replicas: HashMap<String, Vec<SocketAddr>>) -> Self {
        Self(replicas)
    }
}

/// The replicas of one service and which of them are skipped until when.
#[derive(Debug)]
pub(crate) struct Pool {
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
}

impl Pool {
    pub(crate) fn new(addrs: Vec<SocketAddr>) -> Self {
        let down_until = Mutex::new(vec![None; addrs.len()]);
        Self {
            addrs,
            next: AtomicUsize::new(0),
            down_until,
        }
    }

    /// How many replicas the pool has.
    pub(crate) fn len(&self) -> usize {
        self.addrs.len()
    }

    /// The next replica in turn that is not skipped, other than those in
    /// `tried`; when every other one is skipped, the next one in turn anyway
    /// (a refused connection is no worse than no answer). `None` only when
    /// every replica has been tried.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<(usize, SocketAddr)> {
        let count = self.addrs.len();
        if count == 0 || tried.len() >= count {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        let candidates = (0..count)
            .map(|offset| (start + offset) % count)
            .filter(|index| !tried.contains(index));
        let mut fallback = None;
        for index in candidates {
            if down[index].is_none_or(|until| until <= now) {
                return Some((index, self.addrs[index]));
            }
            fallback.get_or_insert(index);
        }
        fallback.map(|index| (index, self.addrs[index]))
    }

    /// Skips a replica for [`DOWN_FOR`]: it refused a connection.
    pub(crate) fn mark_down(&self, index: usize) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = down.get_mut(index) {
            *slot = Some(Instant::now() + DOWN_FOR);
        }
    }
}

/// One [`Pool`] per service.
pub(crate) fn pools(upstreams: Upstreams) -> HashMap<String, Pool> {
    upstreams
        .0
        .into_iter()
        .map(|(name, addrs)| (name, Pool::new(addrs)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn takes_turns() {
        let pool = Pool::new(vec![addr(1), addr(2), addr(3)]);
        let picked: Vec<u16> = (0..6).map(|_| pool.pick(&[]).unwrap().1.port()).collect();
        assert_eq!(picked, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn skips_a_replica_that_is_down_and_tries_each_once() {
        let pool = Pool::new(vec![addr(1), addr(2)]);
        pool.mark_down(0);
        for _ in 0..4 {
            assert_eq!(pool.pick(&[]).unwrap().1.port(), 2);
        }
        // Tried the live one already: the one that is down is the last resort.
        assert_eq!(pool.pick(&[1]).unwrap().1.port(), 1);
        assert_eq!(pool.pick(&[0, 1]), None);
    }

    #[test]
    fn a_single_address_converts() {
        let upstreams = Upstreams::from(HashMap::from([("auth".to_owned(), addr(9))]));
        assert_eq!(upstreams.0["auth"], [addr(9)]);
    }
}
