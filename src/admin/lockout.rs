//! Failed admin authentications, bounded per source address, so that the admin key cannot be
//! guessed at line rate: after [`Policy::max_failures`] failures within [`Policy::window_ms`],
//! the source is locked out for [`Policy::lockout_ms`], and every call from it (the right key
//! too) is refused until then.
//!
//! A source is an IPv4 address, or an IPv6 /64 (what one host or customer usually holds: an
//! attacker with a /64 gets no more tries than with one address). The table holds at most
//! [`Policy::capacity`] sources; when it is full, sources whose window and lockout are over
//! are swept, and if it is still full, every further source shares one overflow entry. So an
//! attacker with more addresses than that gets no more guesses than the table allows, at the
//! price of locking out new sources together while the attack lasts; the memory stays bounded
//! whatever the number of addresses.
//!
//! Pure: every call takes `now` (Unix milliseconds), so tests move time themselves.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// When a source is locked out, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Failures within a window that lock the source out.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window_ms: u64,
    /// How long a source stays locked out.
    pub lockout_ms: u64,
    /// Sources tracked at once.
    pub capacity: usize,
}

impl Default for Policy {
    /// Five failures in a minute: room for an operator's typos, none for guessing (five guesses
    /// a minute against a random key of 32 characters is nothing). A minute's lockout is long
    /// against a guesser and short for an operator who mistyped. 4,096 sources take about
    /// 200 KB.
    fn default() -> Policy {
        Policy {
            max_failures: 5,
            window_ms: 60_000,
            lockout_ms: 60_000,
            capacity: 4096,
        }
    }
}

/// Where failures are counted: an address (IPv6: its /64), or the shared overflow entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Addr(IpAddr),
    Overflow,
}

/// One source's failures in its current window, and the end of its lockout.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    window_start: u64,
    failures: u32,
    locked_until: u64,
}

impl Entry {
    /// Whether the entry holds nothing that still matters at `now`.
    fn expired(&self, now: u64, policy: &Policy) -> bool {
        self.locked_until <= now && now >= self.window_start.saturating_add(policy.window_ms)
    }
}

/// The failures of every source seen recently.
#[derive(Debug)]
pub(crate) struct Lockout {
    policy: Policy,
    /// A std mutex: the admin API is not a hot path, and no `.await` happens while it is held.
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    sources: HashMap<IpAddr, Entry>,
    overflow: Entry,
}

impl Table {
    /// The entry failures from `addr` are counted in: its own, or the overflow's when the table
    /// has no room for it.
    fn source(&self, addr: IpAddr, capacity: usize) -> Source {
        if self.sources.contains_key(&addr) || self.sources.len() < capacity {
            Source::Addr(addr)
        } else {
            Source::Overflow
        }
    }

    fn get(&self, source: Source) -> Option<&Entry> {
        match source {
            Source::Addr(addr) => self.sources.get(&addr),
            Source::Overflow => Some(&self.overflow),
        }
    }

    fn get_mut(&mut self, source: Source) -> &mut Entry {
        match source {
            Source::Addr(addr) => self.sources.entry(addr).or_default(),
            Source::Overflow => &mut self.overflow,
        }
    }
}

/// The source address failures are counted under: IPv4 as is (also when mapped into IPv6),
/// IPv6 as its /64.
fn source_addr(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

/// Whole seconds from `now` until `until`, at least 1 (what `Retry-After` says).
fn seconds_until(until: u64, now: u64) -> u64 {
    until.saturating_sub(now).div_ceil(1000).max(1)
}

impl Lockout {
    /// An empty table with `policy`.
    pub(crate) fn new(policy: Policy) -> Lockout {
        Lockout {
            policy,
            table: Mutex::new(Table::default()),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err` with the seconds left when calls from `ip` are locked out at `now`.
    pub(crate) fn check(&self, ip: IpAddr, now: u64) -> Result<(), u64> {
        let table = self.table();
        let source = table.source(source_addr(ip), self.policy.capacity);
        match table.get(source) {
            Some(entry) if entry.locked_until > now => Err(seconds_until(entry.locked_until, now)),
            _ => Ok(()),
        }
    }

    /// Counts a failure from `ip` at `now`; `Some` with the lockout's seconds when this failure
    /// locked the source out.
    pub(crate) fn failed(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let policy = self.policy;
        let addr = source_addr(ip);
        let mut table = self.table();
        if !table.sources.contains_key(&addr) && table.sources.len() >= policy.capacity {
            table
                .sources
                .retain(|_, entry| !entry.expired(now, &policy));
        }
        let source = table.source(addr, policy.capacity);
        let entry = table.get_mut(source);
        if now >= entry.window_start.saturating_add(policy.window_ms) {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures < policy.max_failures {
            return None;
        }
        entry.failures = 0;
        entry.locked_until = now.saturating_add(policy.lockout_ms);
        Some(seconds_until(entry.locked_until, now))
    }

    /// Forgets the failures of `ip`, which has just given the right key.
    pub(crate) fn succeeded(&self, ip: IpAddr) {
        self.table().sources.remove(&source_addr(ip));
    }

    /// Sources tracked (the overflow entry not counted).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.table().sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn lockout() -> Lockout {
        Lockout::new(Policy::default())
    }

    #[test]
    fn five_failures_in_a_minute_lock_the_source_for_a_minute() {
        let table = lockout();
        let a = ip("192.0.2.1");
        for i in 0..4 {
            assert_eq!(table.failed(a, T0 + i * 1000), None);
            assert_eq!(table.check(a, T0 + i * 1000), Ok(()));
        }
        assert_eq!(table.failed(a, T0 + 4000), Some(60));
        // Locked: every call refused, saying how long is left (rounded up).
        assert_eq!(table.check(a, T0 + 4000), Err(60));
        assert_eq!(table.check(a, T0 + 33_500), Err(31));
        assert_eq!(table.check(a, T0 + 63_999), Err(1));
        // Another address is not.
        assert_eq!(table.check(ip("192.0.2.2"), T0 + 5000), Ok(()));
        // Over at the lockout's end, with a clean slate.
        assert_eq!(table.check(a, T0 + 64_000), Ok(()));
        for i in 0..4 {
            assert_eq!(table.failed(a, T0 + 64_000 + i), None);
        }
        assert_eq!(table.failed(a, T0 + 64_004), Some(60));
    }

    #[test]
    fn failures_spread_over_windows_never_lock() {
        let table = lockout();
        let a = ip("192.0.2.1");
        // Four failures a minute, for an hour.
        for minute in 0..60 {
            for i in 0..4 {
                let now = T0 + minute * 60_000 + i * 10_000;
                assert_eq!(table.failed(a, now), None, "minute {minute}");
                assert_eq!(table.check(a, now), Ok(()));
            }
        }
    }

    #[test]
    fn the_right_key_forgets_the_failures() {
        let table = lockout();
        let a = ip("192.0.2.1");
        for i in 0..4 {
            table.failed(a, T0 + i);
        }
        table.succeeded(a);
        assert_eq!(table.len(), 0);
        for i in 0..4 {
            assert_eq!(table.failed(a, T0 + 10 + i), None);
        }
    }

    #[test]
    fn ipv6_sources_are_their_64_and_mapped_ipv4_is_ipv4() {
        let table = lockout();
        for i in 0..4 {
            table.failed(ip(&format!("2001:db8:1:2::{i}")), T0);
        }
        assert_eq!(table.failed(ip("2001:db8:1:2:ffff::9"), T0), Some(60));
        assert_eq!(table.check(ip("2001:db8:1:2::abcd"), T0), Err(60));
        assert_eq!(table.check(ip("2001:db8:1:3::1"), T0), Ok(()));

        for _ in 0..4 {
            table.failed(ip("::ffff:192.0.2.7"), T0);
        }
        assert_eq!(table.failed(ip("192.0.2.7"), T0), Some(60));
        assert_eq!(table.check(ip("::ffff:192.0.2.7"), T0), Err(60));
    }

    #[test]
    fn the_table_is_bounded_and_overflowing_sources_share_one_entry() {
        let policy = Policy {
            capacity: 100,
            ..Policy::default()
        };
        let table = Lockout::new(policy);
        let addr = |i: u32| IpAddr::V4((0x0a00_0000 + i).into());
        // The first hundred sources fill the table.
        for i in 0..100 {
            table.failed(addr(i), T0);
        }
        assert_eq!(table.len(), 100);
        // Sources beyond it share the overflow entry: together they get five failures, then
        // all of them are locked.
        for i in 100..104 {
            assert_eq!(table.failed(addr(i), T0), None);
        }
        assert_eq!(table.failed(addr(104), T0), Some(60));
        assert_eq!(table.check(addr(100_000), T0), Err(60));
        // A hundred thousand sources, each failing: the table stays at its capacity.
        for i in 105..100_000 {
            table.failed(addr(i), T0 + 1);
        }
        assert_eq!(table.len(), 100);
        // Tracked sources keep their own entries meanwhile.
        assert_eq!(table.check(addr(5), T0 + 1), Ok(()));
        // Once their windows are over, the old entries are swept to make room.
        let later = T0 + 61_000;
        assert_eq!(table.failed(addr(2_000_000), later), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.check(addr(2_000_000), later), Ok(()));
    }

    #[test]
    fn a_locked_source_is_not_swept() {
        let policy = Policy {
            capacity: 2,
            ..Policy::default()
        };
        let table = Lockout::new(policy);
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        table.failed(b, T0);
        for _ in 0..5 {
            table.failed(a, T0 + 30_000);
        }
        // After b's window, before a's lockout ends: b's entry goes, a's stays.
        assert_eq!(table.failed(ip("192.0.2.3"), T0 + 60_000), None);
        assert_eq!(table.check(a, T0 + 60_000), Err(30));
        assert_eq!(table.len(), 2);
    }
}
