//! The replicated database: a [`StateMachine`] whose commands are SQL statements applied to
//! one SQLite database per shard.
//!
//! # What a replica keeps, and where a restart starts
//! Each shard's database is a file in `DATA_DIR/sqlite/`. It records the position it has
//! applied through in its own table, [`APPLIED_TABLE`] (`shard`; `applied`, the commands this
//! database has applied; `slot`, the slot of its last batch), written in the same transaction
//! as the commands it counts. The machine reports that slot to Quorum
//! ([`StateMachine::persisted_slot`]): a restart opens the file
//! ([`SqliteMachine::open_or_create`]) and Quorum applies only the batches after it, taking
//! only its session table from the snapshot. Commits are not synced one by one
//! (`synchronous = NORMAL` in WAL mode: a crash loses nothing, a power cut may take the last
//! commits back but leaves the database whole); [`StateMachine::sync`], which Quorum calls
//! before a snapshot releases the log, syncs them, so the log a restart needs is always kept.
//!
//! # Transactions
//! Each committed batch is one transaction, each command in a savepoint of its own: a failing
//! statement is rolled back to its savepoint and answers with SQLite's message, and the
//! others stay. [`StateMachine::apply`] begins the transaction if none is open and
//! [`StateMachine::on_batch_applied`] records the applied position and commits it
//! ([`SqliteMachine::apply_batch`] does both for a run of commands). Anything that reads the
//! database from outside the batch (a summary, a snapshot) commits an open transaction first,
//! for a machine driven without the batch boundary.
//!
//! # Files
//! A database restored from a snapshot is a new file (`shard-K.gN.db`, N the newest), because
//! the one it replaces keeps serving until the snapshot is durable, and the install may yet be
//! abandoned (the replica got past the snapshot's slot meanwhile). The machine that applies
//! commands is the live one: on its first command it removes the files of older generations
//! (their machines were replaced by then), and a machine dropped while another is live
//! removes its own file unless it holds a restored state ahead of the live one's (installed
//! just before a stop). A process that exits without dropping its machines (a node's
//! executors end without dropping their tasks) leaves every file: [`current_file`] tells
//! the one with the most commands applied, which the next start opens, removing the others.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use quorum::{Slot, SnapshotError, StateMachine, StateSummary};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension};

use crate::command::{Statement, Value};
use crate::determinism::{APPLIED_TABLE, Guard, REFUSAL_PREFIX, guard};
use crate::reply::{ErrorKind, Outcome, Reply, StatementError, decode_reply, encode_reply};

/// The largest reply, in bytes of values: a larger result is refused (and a command that
/// would return it is rolled back), so that a reply always fits a frame and a session.
pub const REPLY_BYTES_MAX: usize = 16 << 20;

/// The statements the machine runs for itself. A user's statement with the same text is
/// refused: it would be found in the statement cache already authorized.
const BEGIN: &str = "BEGIN";
const COMMIT: &str = "COMMIT";
const SAVEPOINT: &str = "SAVEPOINT quorum_command";
const RELEASE: &str = "RELEASE quorum_command";
const ROLLBACK_TO: &str = "ROLLBACK TO quorum_command";
const RECORD_APPLIED: &str = "UPDATE _quorum_applied SET applied = ?1, slot = ?3 WHERE shard = ?2";
const INTERNAL: &[&str] = &[BEGIN, COMMIT, SAVEPOINT, RELEASE, ROLLBACK_TO, RECORD_APPLIED];

/// Why a database could not be created or restored.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A file could not be written or removed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A snapshot image that is not one of this machine's databases.
    #[error("not a database image: {0}")]
    Image(&'static str),
}

thread_local! {
    /// The directory of the databases made on this thread: where [`StateMachine::restore`],
    /// which is given nothing but the image, puts the database it restores. Quorum makes and
    /// restores a shard's machine on that shard's executor thread.
    static HOME: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
}

/// Generations of database files, the same counter for every shard of the process.
static GENERATION: AtomicU64 = AtomicU64::new(1);

/// What this process knows of one shard's database files (`DIR/shard-K`).
#[derive(Clone, Copy, Debug, Default)]
struct Files {
    /// The newest generation made.
    newest: u64,
    /// The live machine (the last to apply a command): its generation and, once it is
    /// dropped, the commands it had applied.
    live: Option<(u64, u64)>,
}

/// Per database file prefix (`DIR/shard-K`), its [`Files`].
static FILES: Mutex<Option<HashMap<PathBuf, Files>>> = Mutex::new(None);

fn with_files<T>(prefix: &Path, f: impl FnOnce(&mut Files) -> T) -> T {
    let mut files = FILES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(files.get_or_insert_with(HashMap::new).entry(prefix.to_path_buf()).or_default())
}

/// One shard's SQL database.
pub struct SqliteMachine {
    connection: Connection,
    guard: Guard,
    shard: u16,
    /// Commands applied, the open transaction's included (what [`APPLIED_TABLE`] says once
    /// it commits).
    applied: u64,
    /// The slot of the last batch applied (what [`APPLIED_TABLE`] says once it commits).
    slot: Option<u64>,
    /// The slot the file held when this machine was made ([`StateMachine::persisted_slot`]).
    persisted: Option<u64>,
    /// The commands applied in the open transaction: applied again should one of them end
    /// it (see `apply_one`).
    open: RefCell<Vec<Vec<u8>>>,
    dir: PathBuf,
    generation: u64,
    /// True once this machine applied a command: it is the live one ([`Files`]).
    live: bool,
}

impl std::fmt::Debug for SqliteMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteMachine")
            .field("shard", &self.shard)
            .field("applied", &self.applied)
            .field("path", &self.path())
            .finish()
    }
}

impl SqliteMachine {
    /// An empty database for `shard` in `dir` (created if missing), replacing any file an
    /// earlier run left there ([`SqliteMachine::open_or_create`] keeps it). Remembers `dir`
    /// for this thread's restores.
    ///
    /// # Errors
    /// The directory or the database cannot be created.
    pub fn create(dir: &Path, shard: u16) -> Result<SqliteMachine, MachineError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| MachineError::Io { path: dir.to_path_buf(), source })?;
        HOME.with(|home| *home.borrow_mut() = Some(dir.to_path_buf()));
        remove_stale(dir, shard)?;
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let path = file_path(dir, shard, generation);
        let connection = open(&path)?;
        connection.execute_batch(&format!(
            "CREATE TABLE {APPLIED_TABLE} (shard INTEGER PRIMARY KEY, applied INTEGER NOT NULL,
                                           slot INTEGER);
             INSERT INTO {APPLIED_TABLE} VALUES ({shard}, 0, NULL);"
        ))?;
        let at = Position { applied: 0, slot: None };
        SqliteMachine::with_connection(connection, dir, shard, at, generation)
    }

    /// The database an earlier run left for `shard` in `dir` (the one with the most commands
    /// applied: [`current_file`]; the others are removed), or an empty one if there is none
    /// or it cannot be read. Quorum then applies only the batches after the slot it holds
    /// ([`StateMachine::persisted_slot`]). Remembers `dir` for this thread's restores.
    ///
    /// # Errors
    /// The directory or the database cannot be opened or created.
    pub fn open_or_create(dir: &Path, shard: u16) -> Result<SqliteMachine, MachineError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| MachineError::Io { path: dir.to_path_buf(), source })?;
        let found = current_file(dir, shard)?;
        let Some((path, (_, at))) = found.and_then(|path| match recorded_position(&path) {
            Ok(Some((file_shard, at))) if file_shard == shard => Some((path, (file_shard, at))),
            // Another shard's, or written before the bookkeeping had a slot: start over.
            _ => None,
        }) else {
            return SqliteMachine::create(dir, shard);
        };
        HOME.with(|home| *home.borrow_mut() = Some(dir.to_path_buf()));
        let generation = path
            .file_name()
            .and_then(|name| name.to_str())
            .and_then(|name| name.strip_prefix(&format!("shard-{shard}.g")))
            .and_then(|rest| rest.strip_suffix(".db"))
            .and_then(|number| number.parse::<u64>().ok())
            .ok_or(MachineError::Image("a database file name without its generation"))?;
        GENERATION.fetch_max(generation + 1, Ordering::Relaxed);
        let keep = path.clone().into_os_string();
        let io = |source| MachineError::Io { path: dir.to_path_buf(), source };
        let prefix = format!("shard-{shard}.");
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let other = entry.path();
            let ours = other.as_os_str().to_string_lossy().starts_with(&*keep.to_string_lossy());
            if entry.file_name().to_string_lossy().starts_with(&prefix) && !ours {
                std::fs::remove_file(&other).map_err(io)?;
            }
        }
        let connection = open(&path)?;
        let mut machine = SqliteMachine::with_connection(connection, dir, shard, at, generation)?;
        // It applies from here on: no older generation is left to replace.
        machine.become_live();
        Ok(machine)
    }

    /// The database of a snapshot image ([`StateMachine::snapshot`]), as a new file in `dir`.
    ///
    /// # Errors
    /// The image is not such a database (checked: header, size, `PRAGMA quick_check`, the
    /// bookkeeping table), or the file cannot be written.
    pub fn restore_in(dir: &Path, image: &mut dyn Read) -> Result<SqliteMachine, MachineError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| MachineError::Io { path: dir.to_path_buf(), source })?;
        let generation = GENERATION.fetch_add(1, Ordering::Relaxed);
        let staging = dir.join(format!("restore-{generation}.tmp"));
        // Streamed into the file SQLite will open: the image is never held whole.
        let written = std::fs::File::create(&staging)
            .and_then(|mut file| std::io::copy(image, &mut file))
            .map_err(|source| {
                remove_then(&staging, MachineError::Io { path: staging.clone(), source })
            })?;
        let mut header = [0; 100];
        let head = std::fs::File::open(&staging).and_then(|mut file| {
            let read = file.read(&mut header)?;
            Ok(read + file.read(&mut header[read..])?)
        });
        match head {
            Ok(read) if read == header.len() => {}
            Ok(_) => return Err(remove_then(&staging, MachineError::Image("no SQLite header"))),
            Err(source) => {
                return Err(remove_then(
                    &staging,
                    MachineError::Io { path: staging.clone(), source },
                ));
            }
        }
        if let Err(error) = check_image_header(&header, written) {
            return Err(remove_then(&staging, error));
        }
        let checked = (|| {
            let connection = Connection::open(&staging)?;
            let verdict: String = connection.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if verdict != "ok" {
                return Ok(Err(MachineError::Image("the database is damaged")));
            }
            let sql = format!("SELECT shard, applied, slot FROM {APPLIED_TABLE}");
            let mut statement = connection.prepare(&sql)?;
            let rows: Vec<(i64, i64, Option<i64>)> = statement
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            Ok::<_, rusqlite::Error>(match rows[..] {
                [(shard, applied, slot)] => {
                    let slot = slot.map(u64::try_from).transpose();
                    match (u16::try_from(shard), u64::try_from(applied), slot) {
                        (Ok(shard), Ok(applied), Ok(slot)) => {
                            Ok((shard, Position { applied, slot }))
                        }
                        _ => Err(MachineError::Image("the applied position is out of range")),
                    }
                }
                _ => Err(MachineError::Image("the bookkeeping table must hold one row")),
            })
        })();
        let (shard, at) = match checked {
            Ok(Ok(position)) => position,
            Ok(Err(error)) => return Err(remove_then(&staging, error)),
            Err(error) => return Err(remove_then(&staging, error.into())),
        };
        // Durable before it is named: a restart may open it in place of the log's replay.
        let synced = std::fs::File::open(&staging).and_then(|file| file.sync_all());
        synced.map_err(|source| {
            remove_then(&staging, MachineError::Io { path: staging.clone(), source })
        })?;
        let path = file_path(dir, shard, generation);
        std::fs::rename(&staging, &path)
            .and_then(|()| sync_dir(dir))
            .map_err(|source| MachineError::Io { path: path.clone(), source })?;
        let connection = open(&path)?;
        SqliteMachine::with_connection(connection, dir, shard, at, generation)
    }

    fn with_connection(
        connection: Connection,
        dir: &Path,
        shard: u16,
        at: Position,
        generation: u64,
    ) -> Result<SqliteMachine, MachineError> {
        let guard = guard(&connection)?;
        connection.set_prepared_statement_cache_capacity(256);
        with_files(&dir.join(format!("shard-{shard}")), |files| {
            files.newest = files.newest.max(generation);
        });
        let dir = dir.to_path_buf();
        let open = RefCell::new(Vec::new());
        let (applied, slot, persisted) = (at.applied, at.slot, at.slot);
        Ok(SqliteMachine {
            connection,
            guard,
            shard,
            applied,
            slot,
            persisted,
            open,
            dir,
            generation,
            live: false,
        })
    }

    /// The shard this database belongs to.
    #[must_use]
    pub fn shard(&self) -> u16 {
        self.shard
    }

    /// Commands applied so far: what the database's [`APPLIED_TABLE`] records once the open
    /// transaction, if any, commits (at the end of each batch).
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        file_path(&self.dir, self.shard, self.generation)
    }

    /// Applies `commands` in order in one transaction, each in its own savepoint, and records
    /// the new applied position in the same transaction. One reply per command; a failing
    /// command is rolled back alone. What a node does for each committed batch, through
    /// [`StateMachine::apply`] and [`StateMachine::on_batch_applied`].
    ///
    /// # Panics
    /// The database itself fails (disk full, I/O error): going on would let this replica
    /// diverge, so the node stops.
    pub fn apply_batch(&mut self, commands: &[&[u8]]) -> Vec<Reply> {
        let replies = commands.iter().map(|command| self.apply_one(command)).collect();
        self.commit_open();
        replies
    }

    /// Applies one command in the open transaction (begun if none is), in a savepoint.
    fn apply_one(&mut self, command: &[u8]) -> Reply {
        if !self.live {
            self.become_live();
        }
        if self.connection.is_autocommit() {
            self.internal(BEGIN, &[]);
        }
        let reply = self.apply_in_savepoint(command);
        if self.connection.is_autocommit() {
            // The statement ended the whole transaction (`INSERT OR ROLLBACK`,
            // `RAISE(ROLLBACK, …)`): the commands before it in the transaction are applied
            // again, from the same state, so that it alone is undone. It is not kept among
            // them: undone, it did nothing, and applied again it would end the transaction
            // again.
            self.internal(BEGIN, &[]);
            let earlier = std::mem::take(self.open.get_mut());
            for command in &earlier {
                let _ = self.apply_in_savepoint(command);
            }
            *self.open.get_mut() = earlier;
        } else {
            self.open.get_mut().push(command.to_vec());
        }
        self.applied += 1;
        reply
    }

    /// Records the applied position and commits the open transaction, if there is one.
    /// Through `&self`: a query, a summary or a snapshot of a machine used without
    /// [`StateMachine::on_batch_applied`] (tests, tools) commits first too.
    fn commit_open(&self) {
        if self.connection.is_autocommit() {
            return;
        }
        let position = i64::try_from(self.applied).unwrap_or(i64::MAX);
        let slot = match self.slot {
            Some(slot) => Value::Integer(i64::try_from(slot).unwrap_or(i64::MAX)),
            None => Value::Null,
        };
        let shard = Value::Integer(self.shard.into());
        self.internal(RECORD_APPLIED, &[Value::Integer(position), shard, slot]);
        self.internal(COMMIT, &[]);
        self.open.borrow_mut().clear();
    }

    /// This machine applies from now on: the files of older generations belong to machines
    /// replaced before it (a snapshot installed), and go.
    fn become_live(&mut self) {
        self.live = true;
        with_files(&self.prefix(), |files| files.live = Some((self.generation, self.applied)));
        let prefix = format!("shard-{}.g", self.shard);
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let generation = name
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split('.').next())
                .and_then(|number| number.parse::<u64>().ok());
            if generation.is_some_and(|generation| generation < self.generation) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    fn prefix(&self) -> PathBuf {
        self.dir.join(format!("shard-{}", self.shard))
    }

    fn apply_in_savepoint(&mut self, command: &[u8]) -> Reply {
        let statement = Statement::decode(command)
            .map_err(|error| StatementError::new(ErrorKind::Malformed, error.to_string()))?;
        self.internal(SAVEPOINT, &[]);
        let reply = self.run(&statement, false);
        if !self.connection.is_autocommit() {
            if reply.is_err() {
                self.internal(ROLLBACK_TO, &[]);
            }
            self.internal(RELEASE, &[]);
        }
        reply
    }

    /// Runs one of the machine's own statements; a failure is the database's, not the
    /// command's.
    fn internal(&self, sql: &str, params: &[Value]) {
        let result = self.connection.prepare_cached(sql).and_then(|mut statement| {
            for (index, value) in params.iter().enumerate() {
                statement.raw_bind_parameter(index + 1, to_sql(value))?;
            }
            statement.raw_execute()
        });
        if let Err(error) = result {
            panic!("shard {}: the database failed on `{sql}`: {error}", self.shard);
        }
    }

    /// Runs a user's statement: checked by the guard, parameters bound, its rows collected.
    /// `read_only`: refuse a statement that would write.
    fn run(&self, statement: &Statement, read_only: bool) -> Reply {
        let sql = statement.sql.trim();
        if INTERNAL.contains(&sql) {
            return Err(StatementError::new(
                ErrorKind::NonDeterministic,
                "the replication's own statements cannot be sent",
            ));
        }
        self.guard.take_denial();
        self.guard.checking.store(true, Ordering::Relaxed);
        let reply = self.run_checked(sql, &statement.params, read_only);
        self.guard.checking.store(false, Ordering::Relaxed);
        reply.map_err(|error| self.statement_error(error))
    }

    fn run_checked(
        &self,
        sql: &str,
        params: &[Value],
        read_only: bool,
    ) -> Result<Outcome, Failure> {
        let mut prepared = self.connection.prepare_cached(sql)?;
        if read_only && !prepared.readonly() {
            return Err(Failure::Refused(StatementError::new(
                ErrorKind::NotReadOnly,
                "a query must not write: send it as a command",
            )));
        }
        if prepared.parameter_count() != params.len() {
            return Err(Failure::Refused(StatementError::new(
                ErrorKind::Sql,
                format!(
                    "the statement has {} parameters, {} given",
                    prepared.parameter_count(),
                    params.len()
                ),
            )));
        }
        for (index, value) in params.iter().enumerate() {
            prepared.raw_bind_parameter(index + 1, to_sql(value))?;
        }
        let columns: Vec<String> = prepared.column_names().iter().map(|c| c.to_string()).collect();
        let changes_before = self.connection.total_changes();
        // SAFETY: the handle is this connection's, open for as long as `self`, and used on
        // this thread only; the call only sets the value `last_insert_rowid` reports.
        unsafe { rusqlite::ffi::sqlite3_set_last_insert_rowid(self.connection.handle(), i64::MIN) };
        let mut rows = Vec::new();
        let mut bytes = 0;
        let mut cursor = prepared.raw_query();
        while let Some(row) = cursor.next()? {
            let mut values = Vec::with_capacity(columns.len());
            for index in 0..columns.len() {
                let value = from_sql(row.get_ref(index)?);
                bytes += value_bytes(&value);
                values.push(value);
            }
            rows.push(values);
            if bytes > REPLY_BYTES_MAX {
                return Err(Failure::Refused(StatementError::new(
                    ErrorKind::TooLarge,
                    format!("the result exceeds {REPLY_BYTES_MAX} bytes: select fewer rows"),
                )));
            }
        }
        drop(cursor);
        let changes = self.connection.total_changes() - changes_before;
        let rowid = self.connection.last_insert_rowid();
        let last_insert_rowid = (rowid != i64::MIN).then_some(rowid);
        Ok(Outcome { changes, last_insert_rowid, columns, rows })
    }

    fn statement_error(&self, failure: Failure) -> StatementError {
        let error = match failure {
            Failure::Refused(error) => return error,
            Failure::Sqlite(error) => error,
        };
        let denied = self.guard.take_denial();
        let message = denied.unwrap_or_else(|| match &error {
            rusqlite::Error::SqliteFailure(_, Some(message)) => message.clone(),
            other => other.to_string(),
        });
        match message.find(REFUSAL_PREFIX) {
            Some(at) => StatementError::new(
                ErrorKind::NonDeterministic,
                message[at + REFUSAL_PREFIX.len()..].to_string(),
            ),
            None if matches!(error, rusqlite::Error::MultipleStatement) => StatementError::new(
                ErrorKind::Malformed,
                "one statement per command: send the others as commands of their own",
            ),
            None => StatementError::new(ErrorKind::Sql, message),
        }
    }

    /// The database's content as one canonical file: `VACUUM INTO` writes a fresh database,
    /// laid out from its rows and schema alone, so replicas in one state give the same bytes
    /// whatever their histories.
    ///
    /// # Errors
    /// The copy cannot be written or read back.
    pub fn write_image(&self, out: &mut dyn Write) -> Result<(), MachineError> {
        use std::os::unix::fs::FileExt;
        self.commit_open();
        let path =
            self.dir.join(format!("snapshot-{}.tmp", GENERATION.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_file(&path);
        let target = path.to_string_lossy().into_owned();
        self.connection.execute("VACUUM INTO ?1", [&target])?;
        // The schema cookie (bytes 40..44) is the source's plus one, so it counts the copies
        // a database went through: a replica restored from a snapshot would differ from one
        // that was not. Any value is valid for a file no connection has open.
        let copied =
            std::fs::OpenOptions::new().read(true).write(true).open(&path).and_then(|mut file| {
                file.write_all_at(&1u32.to_be_bytes(), 40)?;
                std::io::copy(&mut file, out)
            });
        let _ = std::fs::remove_file(&path);
        copied.map(drop).map_err(|source| MachineError::Io { path, source })
    }

    /// The snapshot image ([`SqliteMachine::write_image`]) in memory, for tests and tools.
    ///
    /// # Errors
    /// As [`SqliteMachine::write_image`].
    pub fn image(&self) -> Result<Vec<u8>, MachineError> {
        let mut image = Vec::new();
        self.write_image(&mut image)?;
        Ok(image)
    }
}

/// A statement's failure: SQLite's, or one of the machine's own refusals.
enum Failure {
    Sqlite(rusqlite::Error),
    Refused(StatementError),
}

impl From<rusqlite::Error> for Failure {
    fn from(error: rusqlite::Error) -> Failure {
        Failure::Sqlite(error)
    }
}

impl StateMachine for SqliteMachine {
    type Reply = Reply;
    const PERSISTS: bool = true;

    fn apply(&mut self, command: &[u8]) -> Reply {
        self.apply_one(command)
    }

    /// The end of a committed batch: its transaction commits, recording its slot.
    fn on_batch_applied(&mut self, slot: Slot) {
        self.slot = Some(slot.0);
        self.commit_open();
    }

    /// The database persists itself: a restart goes on from the slot its file holds (`None`
    /// before its first batch).
    fn persisted_slot(&self) -> Option<Slot> {
        self.persisted.map(Slot)
    }

    /// Commits are written without a sync (`synchronous = NORMAL` in WAL mode: a crash keeps
    /// the database whole, a power cut may take the last commits back); this syncs the
    /// database, its WAL and their directory, so every batch applied so far survives both.
    fn sync(&mut self) -> std::io::Result<()> {
        self.commit_open();
        let path = self.path();
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        std::fs::File::open(&path)?.sync_all()?;
        match std::fs::File::open(&wal) {
            Ok(file) => file.sync_all()?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        sync_dir(&self.dir)
    }

    fn query(&self, request: &[u8]) -> Reply {
        let statement = Statement::decode(request)
            .map_err(|error| StatementError::new(ErrorKind::Malformed, error.to_string()))?;
        self.run(&statement, true)
    }

    fn encode_reply(reply: &Reply, out: &mut Vec<u8>) {
        encode_reply(reply, out);
    }

    fn decode_reply(bytes: &[u8]) -> Option<Reply> {
        decode_reply(bytes).ok()
    }

    fn summary(&self) -> StateSummary {
        self.commit_open();
        match content_digest(&self.connection) {
            Ok((entries, digest)) => StateSummary { entries, digest },
            Err(error) => panic!("shard {}: the database cannot be read: {error}", self.shard),
        }
    }

    /// The database copied by `VACUUM INTO` and streamed out; a failure (a full disk) is
    /// passed on, and the snapshot is not taken.
    fn snapshot(&self, out: &mut dyn Write) -> std::io::Result<()> {
        self.write_image(out).map_err(|error| match error {
            MachineError::Io { source, .. } => source,
            other => std::io::Error::other(other.to_string()),
        })
    }

    fn restore(image: &mut dyn Read) -> Result<SqliteMachine, SnapshotError> {
        let dir = HOME.with(|home| home.borrow().clone()).unwrap_or_else(std::env::temp_dir);
        SqliteMachine::restore_in(&dir, image).map_err(|error| match error {
            MachineError::Image(why) => SnapshotError::Image(why),
            MachineError::Io { source, .. } => SnapshotError::reading(&source),
            MachineError::Sqlite(_) => SnapshotError::Image("the database image cannot be opened"),
        })
    }
}

impl Drop for SqliteMachine {
    fn drop(&mut self) {
        // What a reader of the file after a clean stop expects to find.
        self.commit_open();
        let (generation, applied, live) = (self.generation, self.applied, self.live);
        let keep = with_files(&self.prefix(), |files| match files.live {
            Some((live_generation, _)) if live_generation == generation => {
                files.live = Some((generation, applied));
                true
            }
            // A restored state not applied from yet: kept if it is ahead of the live one's.
            Some((_, live_applied)) => !live && applied > live_applied,
            None => generation >= files.newest,
        });
        if !keep {
            let path = self.path();
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut file = path.clone().into_os_string();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
        }
    }
}

/// Every row of every table and the schema, in one order, hashed: `(rows, digest)`. `rows`
/// counts the rows of the user's tables (not the bookkeeping table, whose row still enters the
/// digest). Two databases with the same schema and rows give the same pair, whatever their
/// files' layout.
///
/// # Errors
/// SQLite cannot read the database.
pub fn content_digest(connection: &Connection) -> rusqlite::Result<(u64, u64)> {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut entries = 0;
    let mut schema = connection
        .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema ORDER BY type, name")?;
    let objects: Vec<(String, String, String, Option<String>)> = schema
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut encoded = Vec::new();
    for (kind, name, table, sql) in &objects {
        for text in [kind, name, table, sql.as_ref().unwrap_or(kind)] {
            hasher.update(&(text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        if kind != "table" || name.starts_with("sqlite_") {
            continue;
        }
        let quoted = name.replace('"', "\"\"");
        let width = connection.prepare(&format!("SELECT * FROM \"{quoted}\""))?.column_count();
        let order: Vec<String> = (1..=width).map(|k| k.to_string()).collect();
        let sql = format!("SELECT * FROM \"{quoted}\" ORDER BY {}", order.join(","));
        let mut ordered = connection.prepare(&sql)?;
        let mut rows = ordered.raw_query();
        while let Some(row) = rows.next()? {
            encoded.clear();
            let values: Vec<Value> =
                (0..width).map(|k| row.get_ref(k).map(from_sql)).collect::<Result<_, _>>()?;
            crate::command::put_values(&mut encoded, &values);
            hasher.update(&encoded);
            if name != APPLIED_TABLE {
                entries += 1;
            }
        }
    }
    Ok((entries, hasher.digest()))
}

/// [`content_digest`] of the database file at `path`. For tools and tests that compare
/// replicas' files once their nodes stopped. Opened read-write, though it only reads: a node
/// killed mid-run leaves a write-ahead file that only a writable connection can recover
/// (which moves its pages into the file and changes no row).
///
/// # Errors
/// The file cannot be opened or read as a database.
pub fn file_digest(path: &Path) -> Result<(u64, u64), MachineError> {
    let connection = Connection::open(path)?;
    Ok(content_digest(&connection)?)
}

/// The database file of `shard` in `dir` that holds the most: of the `shard-K.gN.db` files,
/// the one with the most commands applied (its [`APPLIED_TABLE`]), the newer generation of
/// two equal. The one to read once a node stopped (see the module's documentation on files).
/// `None` if there is none.
///
/// # Errors
/// The directory cannot be read, or a file is not one of these databases.
pub fn current_file(dir: &Path, shard: u16) -> Result<Option<PathBuf>, MachineError> {
    let io = |source| MachineError::Io { path: dir.to_path_buf(), source };
    let prefix = format!("shard-{shard}.g");
    let mut best: Option<((u64, u64), PathBuf)> = None;
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let generation = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".db"))
            .and_then(|number| number.parse::<u64>().ok());
        let Some(generation) = generation else { continue };
        let path = entry.path();
        // A file that cannot be read ranks last (`open_or_create` then starts over).
        let applied = recorded_position(&path).ok().flatten().map_or(0, |(_, at)| at.applied);
        if best.as_ref().is_none_or(|(rank, _)| (applied, generation) > *rank) {
            best = Some(((applied, generation), path));
        }
    }
    Ok(best.map(|(_, path)| path))
}

fn file_path(dir: &Path, shard: u16, generation: u64) -> PathBuf {
    dir.join(format!("shard-{shard}.g{generation}.db"))
}

/// Removes what an earlier run left of `shard`'s databases in `dir`.
fn remove_stale(dir: &Path, shard: u16) -> Result<(), MachineError> {
    let io = |source| MachineError::Io { path: dir.to_path_buf(), source };
    let prefix = format!("shard-{shard}.");
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(entry.path()).map_err(io)?;
        }
    }
    Ok(())
}

fn remove_then(path: &Path, error: MachineError) -> MachineError {
    let _ = std::fs::remove_file(path);
    error
}

/// Opens a database the way every replica does. Commits are not synced one by one: the log
/// is durable, and [`StateMachine::sync`] syncs the database before the log below a snapshot
/// goes (the module's documentation). Not locked
/// exclusively: a tool (or `bench`, in the same process, whose stopped nodes' machines may
/// outlive their executors) can read it beside the replica.
fn open(path: &Path) -> Result<Connection, MachineError> {
    let connection = Connection::open(path)?;
    connection.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;",
    )?;
    Ok(connection)
}

/// Refuses an image that is not a whole SQLite database file before it reaches SQLite.
fn check_image_header(header: &[u8; 100], length: u64) -> Result<(), MachineError> {
    if &header[..16] != b"SQLite format 3\0" {
        return Err(MachineError::Image("no SQLite header"));
    }
    let page_bytes = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        bytes if bytes >= 512 && bytes.is_power_of_two() => u64::from(bytes),
        _ => return Err(MachineError::Image("a page size SQLite never writes")),
    };
    let pages = u64::from(u32::from_be_bytes([header[28], header[29], header[30], header[31]]));
    if !length.is_multiple_of(page_bytes) || pages.checked_mul(page_bytes) != Some(length) {
        return Err(MachineError::Image("the image's length is not its pages'"));
    }
    Ok(())
}

fn to_sql(value: &Value) -> ToSqlOutput<'_> {
    ToSqlOutput::Borrowed(match value {
        Value::Null => ValueRef::Null,
        Value::Integer(integer) => ValueRef::Integer(*integer),
        Value::Real(real) => ValueRef::Real(*real),
        Value::Text(text) => ValueRef::Text(text.as_bytes()),
        Value::Blob(blob) => ValueRef::Blob(blob),
    })
}

fn from_sql(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(integer) => Value::Integer(integer),
        ValueRef::Real(real) => Value::Real(real),
        ValueRef::Text(text) => Value::Text(String::from_utf8_lossy(text).into_owned()),
        ValueRef::Blob(blob) => Value::Blob(blob.to_vec()),
    }
}

fn value_bytes(value: &Value) -> usize {
    match value {
        Value::Null => 1,
        Value::Integer(_) | Value::Real(_) => 9,
        Value::Text(text) => 5 + text.len(),
        Value::Blob(blob) => 5 + blob.len(),
    }
}

/// Reads the applied position recorded in a database file, for tools and tests.
///
/// # Errors
/// The file is not one of this machine's databases.
pub fn recorded_position(path: &Path) -> Result<Option<(u16, Position)>, MachineError> {
    // Read-write for the reason `file_digest` gives.
    let connection = Connection::open(path)?;
    let sql = format!("SELECT shard, applied, slot FROM {APPLIED_TABLE}");
    let row: Option<(i64, i64, Option<i64>)> =
        connection.query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()?;
    Ok(row.map(|(shard, applied, slot)| {
        (shard as u16, Position { applied: applied as u64, slot: slot.map(|slot| slot as u64) })
    }))
}

/// Where a database is: the commands it applied and the slot of its last batch (its
/// [`APPLIED_TABLE`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Commands applied.
    pub applied: u64,
    /// The slot of the last batch applied; `None` before the first.
    pub slot: Option<u64>,
}

/// Syncs a directory, so that the names made in it last.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
