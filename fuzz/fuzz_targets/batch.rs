//! The batch reader on any bytes a peer or a disk could hold: `check_batch` (what a follower
//! runs before persisting a batch) and `BatchReader` (what apply iterates) agree on every
//! input, a batch that parses is rebuilt byte for byte by `BatchBuilder`, each command's
//! payload that decodes as a `KvCommand` re-encodes to itself, and the key-value applier takes
//! the batch (or refuses it where the check did) without panicking. Skipping the batch (what a
//! restart over a machine that persists itself does) decides every command as applying it did,
//! with sessions bounded by count (as such a machine's are), and its image restores.

#![no_main]

use libfuzzer_sys::fuzz_target;
use quorum::core::{BatchBuilder, BatchReader, Slot, check_batch};
use quorum::machine::{Applier, KvCommand, KvStore, SessionLimits};

fuzz_target!(|data: &[u8]| {
    let checked = check_batch(data);
    let read: Result<Vec<_>, _> = BatchReader::new(data).collect();
    match (&checked, &read) {
        (Ok(()), Ok(commands)) => {
            let mut builder = BatchBuilder::new(data.len());
            for (id, payload) in commands {
                builder.push(*id, payload);
                if let Some(command) = KvCommand::decode(payload) {
                    assert_eq!(&command.encode()[..], *payload, "a command re-encodes to itself");
                }
            }
            assert_eq!(builder.commands(), commands.len());
            assert_eq!(&builder.take()[..], data, "a batch rebuilds byte for byte");
        }
        (Err(check), Err(reader)) => assert_eq!(check, reader, "both stop at the same damage"),
        _ => panic!("check_batch says {checked:?}, BatchReader says {:?}", read.map(|_| ())),
    }
    // Small session limits, so that replies are dropped and sessions evicted on the way.
    let limits = SessionLimits {
        replies_max: 2,
        reply_bytes_max: 64,
        sessions_max: 2,
        idle_commands_min: 1,
        evicted_max: 2,
    };
    let mut applier = Applier::new(KvStore::default(), limits);
    let applied = applier.apply_batch(Slot(1), 1, data, |_, _| {});
    assert_eq!(applied.err(), checked.err(), "apply refuses what the check refuses");
    let mut image = Vec::new();
    applier.snapshot(&mut image).expect("an image in memory");
    let restored =
        Applier::<KvStore>::restore(&mut &image[..], limits).expect("its own image restores");
    let mut again = Vec::new();
    restored.snapshot(&mut again).expect("an image in memory");
    assert_eq!(again, image, "an image restores to the same image");
    let counted = SessionLimits { reply_bytes_max: usize::MAX, ..limits };
    let mut applying = Applier::new(KvStore::default(), counted);
    let mut skipping = Applier::new(KvStore::default(), counted);
    let applied = applying.apply_batch(Slot(1), 1, data, |_, _| {});
    let skipped = skipping.skip_batch(data);
    assert_eq!(applied.err(), skipped.err(), "skip refuses what apply refuses");
    assert_eq!(applying.applied_commands(), skipping.applied_commands(), "the same decisions");
    assert_eq!(applying.sessions(), skipping.sessions());
    let mut image = Vec::new();
    skipping.snapshot(&mut image).expect("an image in memory");
    let restored =
        Applier::<KvStore>::restore(&mut &image[..], counted).expect("a skipped image restores");
    let mut again = Vec::new();
    restored.snapshot(&mut again).expect("an image in memory");
    assert_eq!(again, image, "replies not known here survive the image");
});
