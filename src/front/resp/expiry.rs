//! Keys that expire (docs/redis.md, "Expiry"): `SET … EX/PX`, `SETEX`, `PSETEX`, `EXPIRE`,
//! `PEXPIRE`, `TTL`, `PTTL`, `PERSIST`, through the store's leases. A key given an expiry gets
//! a lease of its own, granted on the key's shard only, and is put living by it; the shard's
//! leader ends the lease once its TTL has passed, and the key with it. Nothing keeps these
//! leases alive: the key lives at least its TTL (from when the grant was sent), and goes within
//! the drift bound (`--max-clock-drift`) and a tick or two after.
//!
//! The store's leases know their TTL, not when they end, so an expiry lease carries its end in
//! its id: the top bit set (the native client's random ids never have it), then the end as
//! milliseconds since the Unix epoch in the next 44 bits, then 19 random bits. `TTL` reads it
//! back; a key living by another lease (one granted through HTTP or the client) reports that
//! lease's whole TTL, the most it may have left.

use std::time::{SystemTime, UNIX_EPOCH};

use super::reply::{Reply, failure};
use crate::client::RangeOptions;
use crate::front::{Gateway, RequestError};
use crate::machine::kv::coord::{KeyValue, LEASE_TTL_MS_MIN, TxnResult};
use crate::machine::kv::{Compare, CompareOp, KeyRange, Target, Txn, TxnOp};

/// The top bit of an expiry lease's id.
const EXPIRY_LEASE_BIT: u64 = 1 << 63;
/// Bits of an expiry lease id below its end.
const RANDOM_BITS: u32 = 19;
/// Bits of the end, in milliseconds since the epoch (until the year 2527).
const END_BITS: u32 = 44;

/// How many times a change of a key's expiry is tried while other writers change the key.
const ROUNDS_MAX: usize = 64;

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// A fresh expiry lease id for a key that ends at `end_ms`.
fn expiry_lease_id(end_ms: u64) -> Result<u64, RequestError> {
    let mut random = [0; 8];
    getrandom::fill(&mut random).map_err(|error| RequestError::Rejected(error.to_string()))?;
    let random = u64::from_le_bytes(random) & ((1 << RANDOM_BITS) - 1);
    let end = end_ms & ((1 << END_BITS) - 1);
    Ok(EXPIRY_LEASE_BIT | (end << RANDOM_BITS) | random)
}

/// When an expiry lease ends, in milliseconds since the epoch; `None` for other leases.
fn expiry_end_ms(lease: u64) -> Option<u64> {
    (lease & EXPIRY_LEASE_BIT != 0).then_some((lease & !EXPIRY_LEASE_BIT) >> RANDOM_BITS)
}

/// Grants a lease of `ttl_ms` for a key of `shard`; its id.
async fn grant(gateway: &Gateway, shard: u16, ttl_ms: u64) -> Result<u64, RequestError> {
    loop {
        let id = expiry_lease_id(now_ms().saturating_add(ttl_ms))?;
        if gateway.lease_grant_on(&[shard], id, ttl_ms).await? {
            return Ok(id);
        }
    }
}

/// Ends the expiry lease `lease` left behind by a key that no longer lives by it (a lease of
/// anyone else is left alone; one already ended is no matter).
async fn retire(gateway: &Gateway, lease: u64) {
    if expiry_end_ms(lease).is_some() {
        let _ = gateway.lease_revoke(lease).await;
    }
}

/// `SET key value PX ttl_ms`: OK.
pub async fn set_expiring(gateway: &Gateway, key: &[u8], value: &[u8], ttl_ms: u64) -> Reply {
    let outcome = async {
        let lease = grant(gateway, gateway.shard_of(key), ttl_ms).await?;
        let (_, previous) = gateway.put_leased(key, value, lease).await?;
        if let Some(previous) = previous {
            retire(gateway, previous.lease).await;
        }
        Ok::<_, RequestError>(Reply::OK)
    };
    outcome.await.unwrap_or_else(|error| failure(&error))
}

/// The key as it is now, with its revisions and lease.
async fn read(gateway: &Gateway, key: &[u8]) -> Result<Option<KeyValue>, RequestError> {
    let reply = gateway.range(&KeyRange::Key(key.to_vec()), RangeOptions::default()).await?;
    Ok(reply.entries.into_iter().next())
}

/// Puts `entry`'s value back living by `lease` if the key is unchanged since it was read;
/// false if it changed.
async fn rebind(gateway: &Gateway, entry: &KeyValue, lease: u64) -> Result<bool, RequestError> {
    let txn = Txn {
        compares: vec![Compare::Key {
            key: entry.key.clone(),
            op: CompareOp::Equal,
            target: Target::ModRevision(entry.mod_revision),
        }],
        success: vec![TxnOp::Put { key: entry.key.clone(), value: entry.value.clone(), lease }],
        failure: Vec::new(),
    };
    let outcome = gateway.txn(&txn).await?;
    debug_assert!(!outcome.succeeded || matches!(outcome.results.first(), Some(TxnResult::Put(_))));
    Ok(outcome.succeeded)
}

/// `EXPIRE`/`PEXPIRE` (`ttl_ms` ≤ 0 deletes the key) and `PERSIST` (`ttl_ms` `None`): 1 if the
/// key's expiry changed, 0 if the key is absent (or, for `PERSIST`, has none).
pub async fn set_expiry(gateway: &Gateway, key: &[u8], ttl_ms: Option<i64>) -> Reply {
    let outcome = async {
        for _ in 0..ROUNDS_MAX {
            let Some(entry) = read(gateway, key).await? else { return Ok(Reply::Integer(0)) };
            let lease = match ttl_ms {
                None if entry.lease == 0 => return Ok(Reply::Integer(0)),
                None => 0,
                Some(ms) if ms <= 0 => {
                    gateway.delete(key).await?;
                    return Ok(Reply::Integer(1));
                }
                Some(ms) if (ms as u64) < LEASE_TTL_MS_MIN => {
                    return Ok(Reply::error(format!(
                        "ERR invalid expire time: Quorum's shortest expiry is {LEASE_TTL_MS_MIN} ms (a lease's minimum; docs/redis.md)"
                    )));
                }
                Some(ms) => grant(gateway, gateway.shard_of(key), ms as u64).await?,
            };
            if rebind(gateway, &entry, lease).await? {
                retire(gateway, entry.lease).await;
                return Ok(Reply::Integer(1));
            }
            retire(gateway, lease).await;
        }
        Ok::<_, RequestError>(Reply::error(format!(
            "TRYAGAIN the key changed under {ROUNDS_MAX} tries in a row"
        )))
    };
    outcome.await.unwrap_or_else(|error| failure(&error))
}

/// `TTL` (seconds, rounded) or `PTTL` (`millis`): -2 for an absent key, -1 for one without an
/// expiry.
pub async fn ttl(gateway: &Gateway, key: &[u8], millis: bool) -> Reply {
    let outcome = async {
        let Some(entry) = read(gateway, key).await? else { return Ok(-2) };
        if entry.lease == 0 {
            return Ok(-1);
        }
        let left_ms = match expiry_end_ms(entry.lease) {
            Some(end_ms) => end_ms.saturating_sub(now_ms()),
            None => {
                let leases = gateway.leases().await?;
                let lease = leases.iter().find(|lease| lease.id == entry.lease);
                lease.map_or(0, |lease| lease.ttl_ms)
            }
        };
        let left_ms = i64::try_from(left_ms).unwrap_or(i64::MAX);
        Ok::<_, RequestError>(if millis { left_ms } else { (left_ms + 500) / 1000 })
    };
    match outcome.await {
        Ok(left) => Reply::Integer(left),
        Err(error) => failure(&error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expiry_lease_carries_its_end_and_others_do_not() {
        let end_ms = 1_765_000_000_123;
        let id = expiry_lease_id(end_ms).unwrap_or(0);
        assert_eq!(expiry_end_ms(id), Some(end_ms));
        assert_eq!(expiry_end_ms(crate::client::lease_id_random().unwrap_or(1)), None);
        assert_ne!(id, 0);
    }
}
