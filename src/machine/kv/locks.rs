//! Locks and elections: a holder and a line of waiters per name, first come first served.
//! A holder's fencing token is the revision at which it took the lock, so tokens only grow
//! for a name, and a name that is free with nobody waiting needs no state at all.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::Bytes24;
use super::coord::Holder;

/// One name's lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Lock {
    pub(super) holder: Option<Holder>,
    /// Leases waiting, with the values they will hold with, oldest first.
    pub(super) waiters: VecDeque<(u64, Vec<u8>)>,
}

/// What [`Locks::release`] changed.
pub(super) enum Released {
    /// The lease neither held nor waited for the lock.
    Nothing,
    /// It left the line.
    LeftLine,
    /// It held the lock; now this one does (`None`: nobody).
    Handed(Option<Holder>),
}

/// Every name with a holder or a waiter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Locks {
    pub(super) by_name: BTreeMap<Bytes24, Lock>,
}

impl Locks {
    /// `lease` takes `name` at `revision` if it is free, or joins its line (once). Returns the
    /// holder, whether `lease` holds it, and how many wait ahead of it.
    pub(super) fn lock(
        &mut self,
        name: &[u8],
        lease: u64,
        value: &[u8],
        revision: u64,
    ) -> (Holder, bool, u64) {
        let lock = self.by_name.entry(Bytes24::from_slice(name)).or_default();
        match &lock.holder {
            None => {
                let holder = Holder { lease, token: revision, value: value.to_vec() };
                lock.holder = Some(holder.clone());
                (holder, true, 0)
            }
            Some(holder) if holder.lease == lease => (holder.clone(), true, 0),
            Some(holder) => {
                let ahead = match lock.waiters.iter().position(|(waiting, _)| *waiting == lease) {
                    Some(place) => place,
                    None => {
                        lock.waiters.push_back((lease, value.to_vec()));
                        lock.waiters.len() - 1
                    }
                };
                (holder.clone(), false, ahead as u64 + 1)
            }
        }
    }

    /// `lease` lets go of `name`: the next in line takes it at `revision`.
    pub(super) fn release(&mut self, name: &[u8], lease: u64, revision: u64) -> Released {
        let Some(lock) = self.by_name.get_mut(name) else { return Released::Nothing };
        let released = if lock.holder.as_ref().is_some_and(|holder| holder.lease == lease) {
            lock.holder = lock.waiters.pop_front().map(|(lease, value)| Holder {
                lease,
                token: revision,
                value,
            });
            Released::Handed(lock.holder.clone())
        } else if let Some(place) = lock.waiters.iter().position(|(waiting, _)| *waiting == lease) {
            lock.waiters.remove(place);
            Released::LeftLine
        } else {
            Released::Nothing
        };
        if lock.holder.is_none() && lock.waiters.is_empty() {
            self.by_name.remove(name);
        }
        released
    }

    /// The holder of `name`.
    pub(super) fn holder(&self, name: &[u8]) -> Option<&Holder> {
        self.by_name.get(name).and_then(|lock| lock.holder.as_ref())
    }

    /// The holder of `name`, to change its value.
    pub(super) fn holder_mut(&mut self, name: &[u8]) -> Option<&mut Holder> {
        self.by_name.get_mut(name).and_then(|lock| lock.holder.as_mut())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_passes_in_arrival_order_with_growing_tokens() {
        let mut locks = Locks::default();
        assert!(locks.lock(b"n", 1, b"a", 10).1);
        let (holder, held, ahead) = locks.lock(b"n", 2, b"b", 11);
        assert_eq!((holder.lease, held, ahead), (1, false, 1));
        assert_eq!(locks.lock(b"n", 3, b"c", 12).2, 2);
        // Asking again keeps the place.
        assert_eq!(locks.lock(b"n", 2, b"b", 13).2, 1);
        let Released::Handed(Some(next)) = locks.release(b"n", 1, 20) else { panic!() };
        assert_eq!((next.lease, next.token, next.value.as_slice()), (2, 20, &b"b"[..]));
        assert!(matches!(locks.release(b"n", 3, 21), Released::LeftLine));
        assert!(matches!(locks.release(b"n", 2, 22), Released::Handed(None)));
        assert!(locks.by_name.is_empty(), "a free name with nobody waiting keeps nothing");
        assert!(matches!(locks.release(b"n", 2, 23), Released::Nothing));
        assert_eq!(locks.lock(b"n", 4, b"", 30).0.token, 30);
    }
}
