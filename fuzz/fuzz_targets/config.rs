//! The node's config file: any text, parsed as `NodeSettings::from_file` parses the file's
//! contents (TOML into `NodeSettings`), then checked and resolved with defaults
//! (`NodeConfig::resolve`). Neither panics; a configuration that resolves gives every shard a
//! core configuration the core takes (`Config::validate`, `Replica::new`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use quorum::core::Replica;
use quorum::runtime::config::{NodeConfig, NodeSettings};

fuzz_target!(|data: &[u8]| {
    // `from_file` reads the file as UTF-8 first: anything else is refused before TOML.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(settings) = toml::from_str::<NodeSettings>(text) else { return };
    let Ok(config) = NodeConfig::resolve(settings) else { return };
    assert!(config.frame_bytes_max() >= 2 * config.batch_bytes_max);
    assert!(config.members().any(|(id, _, _)| id == config.id), "the node is a member");
    for shard in 0..config.shards {
        let core = config.shard_config(shard);
        core.validate().expect("a resolved configuration suits every shard's core");
        Replica::new(core).expect("a resolved configuration makes a replica");
    }
});
