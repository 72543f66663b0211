//! The command line's subcommands, one module each (`sql` holds exec and query).

pub mod bench;
pub mod node;
pub mod sql;
