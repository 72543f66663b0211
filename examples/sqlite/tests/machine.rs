//! The state machine alone: command and reply encodings, the determinism refusals, batches
//! with failing statements, snapshots and their restores.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests may unwrap.

use quorum::{Slot, StateMachine};
use quorum_sqlite::command::DecodeError;
use quorum_sqlite::determinism::{APPLIED_TABLE, check_statement};
use quorum_sqlite::machine::{Position, recorded_position};
use quorum_sqlite::reply::{decode_reply, encode_reply};
use quorum_sqlite::{ErrorKind, Outcome, Reply, SqliteMachine, Statement, Value};

fn statement(sql: &str, params: Vec<Value>) -> Vec<u8> {
    Statement::new(sql, params).encode()
}

fn exec(machine: &mut SqliteMachine, sql: &str, params: Vec<Value>) -> Reply {
    machine.apply(&statement(sql, params))
}

fn query(machine: &SqliteMachine, sql: &str) -> Outcome {
    machine.query(&statement(sql, vec![])).unwrap()
}

fn kind(reply: &Reply) -> Option<ErrorKind> {
    reply.as_ref().err().map(|error| error.kind)
}

#[test]
fn statements_round_trip_and_garbage_is_a_typed_error() {
    let statements = [
        Statement::new("SELECT 1", vec![]),
        Statement::new(
            "INSERT INTO t VALUES (?1, ?2, ?3, ?4, ?5)",
            vec![
                Value::Null,
                Value::Integer(-7),
                Value::Real(2.5),
                Value::Text("héllo".into()),
                Value::Blob(vec![0, 1, 255]),
            ],
        ),
        Statement::new("", vec![Value::Text(String::new()), Value::Blob(vec![])]),
    ];
    for original in &statements {
        let bytes = original.encode();
        assert_eq!(&Statement::decode(&bytes).unwrap(), original);
        for cut in 0..bytes.len() {
            assert!(Statement::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Statement::decode(&longer), Err(DecodeError::Trailing(1)));
    }
    assert_eq!(Statement::decode(&[9, 0, 0, 0, 0]), Err(DecodeError::Version(9)));
    assert_eq!(Statement::decode(&[1, 0, 0, 0, 0, 1, 0, 0, 0, 7]), Err(DecodeError::Tag(7)));
    assert_eq!(Statement::decode(&[1, 1, 0, 0, 0, 0xff, 0, 0, 0, 0]), Err(DecodeError::Utf8));
    // A forged count does not allocate for it; pseudo-random bytes never panic.
    assert_eq!(
        Statement::decode(&[1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]),
        Err(DecodeError::Truncated)
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for length in 0..2000 {
        let bytes: Vec<u8> = (0..length % 64)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 7) as u8
            })
            .collect();
        let _ = Statement::decode(&bytes);
        let _ = decode_reply(&bytes);
    }
}

#[test]
fn replies_round_trip_and_cuts_are_refused() {
    let replies: Vec<Reply> = vec![
        Ok(Outcome::default()),
        Ok(Outcome {
            changes: 3,
            last_insert_rowid: Some(-1),
            columns: vec!["a".into(), "b".into()],
            rows: vec![
                vec![Value::Integer(1), Value::Null],
                vec![Value::Real(0.5), Value::Blob(vec![1])],
            ],
        }),
        Err(quorum_sqlite::StatementError::new(ErrorKind::Sql, "UNIQUE constraint failed: t.id")),
    ];
    for reply in &replies {
        let mut bytes = Vec::new();
        encode_reply(reply, &mut bytes);
        assert_eq!(&decode_reply(&bytes).unwrap(), reply);
        for cut in 0..bytes.len() {
            assert!(decode_reply(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}

#[test]
fn non_deterministic_sql_is_refused_before_proposing_and_by_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = SqliteMachine::create(dir.path(), 0).unwrap();
    exec(&mut machine, "CREATE TABLE t (x)", vec![]).unwrap();
    exec(&mut machine, "CREATE TABLE d (x, at DEFAULT CURRENT_TIMESTAMP)", vec![]).unwrap();
    let refused = [
        ("SELECT random()", vec![]),
        ("INSERT INTO t VALUES (randomblob(4))", vec![]),
        ("INSERT INTO t VALUES (datetime('now'))", vec![]),
        ("INSERT INTO t VALUES (date())", vec![]),
        ("INSERT INTO t VALUES (current_timestamp)", vec![]),
        ("INSERT INTO t VALUES (CURRENT_DATE)", vec![]),
        ("INSERT INTO t VALUES (julianday('NOW'))", vec![]),
        ("INSERT INTO t VALUES (strftime('%s', 'now'))", vec![]),
        ("INSERT INTO t VALUES (date('2020-01-01', 'localtime'))", vec![]),
        ("INSERT INTO t VALUES (date(?1))", vec![Value::Text("now".into())]),
        ("INSERT INTO t VALUES (last_insert_rowid())", vec![]),
        ("INSERT INTO t VALUES (changes())", vec![]),
    ];
    for (sql, params) in &refused {
        let reply = exec(&mut machine, sql, params.clone());
        assert_eq!(kind(&reply), Some(ErrorKind::NonDeterministic), "{sql}: {reply:?}");
        let early = check_statement(sql, params).unwrap_err();
        assert_eq!(early.kind, ErrorKind::NonDeterministic, "{sql}");
    }
    // What only the replicas can see: a time value or a default known at run time.
    let late = [
        ("INSERT INTO t SELECT date(x) FROM (SELECT 'now' AS x)", vec![]),
        ("INSERT INTO d (x) VALUES (1)", vec![]),
        ("INSERT INTO t VALUES (strftime('%Y'))", vec![]),
    ];
    for (sql, params) in &late {
        let reply = exec(&mut machine, sql, params.clone());
        assert_eq!(kind(&reply), Some(ErrorKind::NonDeterministic), "{sql}: {reply:?}");
    }
    // What would break the replication's own bookkeeping or reach outside the database.
    for sql in [
        "PRAGMA journal_mode = DELETE",
        "ATTACH 'other.db' AS other",
        "BEGIN",
        "COMMIT",
        "SAVEPOINT quorum_command",
        "CREATE TEMP TABLE scratch (x)",
        "UPDATE _quorum_applied SET applied = 0",
        "DELETE FROM _quorum_applied",
    ] {
        let reply = exec(&mut machine, sql, vec![]);
        assert!(reply.is_err(), "{sql}: {reply:?}");
        if !sql.contains(APPLIED_TABLE) {
            assert_eq!(kind(&reply), Some(ErrorKind::NonDeterministic), "{sql}: {reply:?}");
            let early = check_statement(sql, &[]).unwrap_err();
            assert_eq!(early.kind, ErrorKind::NonDeterministic, "{sql}");
        }
    }
    assert!(check_statement("CREATE TABLE temp_readings (x)", &[]).is_ok());
    assert!(check_statement("SELECT * FROM t WHERE x = 'pragma'", &[]).is_ok());
    assert_eq!(query(&machine, "SELECT count(*) FROM t").rows, vec![vec![Value::Integer(0)]]);
    // Deterministic date arithmetic still works, computed by SQLite's own functions.
    let dated = exec(
        &mut machine,
        "INSERT INTO t VALUES (date('2024-02-28', '+1 day')) RETURNING x",
        vec![],
    )
    .unwrap();
    assert_eq!(dated.rows, vec![vec![Value::Text("2024-02-29".into())]]);
    assert!(check_statement("SELECT date('2024-02-28', '+1 day')", &[]).is_ok());
    assert!(check_statement("INSERT INTO t VALUES ('now')", &[]).is_ok(), "data, not a clock");
    let reply = exec(&mut machine, "INSERT INTO t VALUES ('now')", vec![]);
    assert!(reply.is_ok(), "{reply:?}");
}

#[test]
fn a_batch_is_one_transaction_and_a_failing_statement_is_rolled_back_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = SqliteMachine::create(dir.path(), 3).unwrap();
    let commands = [
        statement("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)", vec![]),
        statement("INSERT INTO t VALUES (1, 'one')", vec![]),
        statement("INSERT INTO t VALUES (1, 'again')", vec![]),
        statement(
            "INSERT INTO t VALUES (?1, ?2)",
            vec![Value::Integer(2), Value::Text("two".into())],
        ),
        statement("INSERT INTO t VALUES (3, NULL)", vec![]),
        statement("INSERT OR ROLLBACK INTO t VALUES (2, 'rolls back everything')", vec![]),
        statement("INSERT INTO t (v) VALUES ('four')", vec![]),
        statement("SELEC nothing", vec![]),
        b"not a command".to_vec(),
        statement("UPDATE t SET v = v || '!' WHERE id <= 2", vec![]),
        // A second statement that ends the transaction: the first is not applied again.
        statement("INSERT OR ROLLBACK INTO t VALUES (1, 'rolls back again')", vec![]),
        statement("INSERT INTO t VALUES (5, 'five')", vec![]),
    ];
    let batch: Vec<&[u8]> = commands.iter().map(Vec::as_slice).collect();
    let replies = machine.apply_batch(&batch);
    assert_eq!(replies.len(), commands.len());
    assert!(replies[0].is_ok());
    assert_eq!(replies[1].as_ref().unwrap().last_insert_rowid, Some(1));
    assert_eq!(kind(&replies[2]), Some(ErrorKind::Sql));
    assert!(replies[2].as_ref().unwrap_err().message.contains("UNIQUE"), "{:?}", replies[2]);
    assert_eq!(replies[3].as_ref().unwrap().changes, 1);
    assert!(replies[4].as_ref().unwrap_err().message.contains("NOT NULL"));
    assert_eq!(kind(&replies[5]), Some(ErrorKind::Sql));
    assert_eq!(replies[6].as_ref().unwrap().last_insert_rowid, Some(3));
    assert!(replies[7].as_ref().unwrap_err().message.contains("syntax error"));
    assert_eq!(kind(&replies[8]), Some(ErrorKind::Malformed));
    let update = replies[9].as_ref().unwrap();
    assert_eq!((update.changes, update.last_insert_rowid), (2, None));
    assert_eq!(kind(&replies[10]), Some(ErrorKind::Sql));
    assert_eq!(replies[11].as_ref().unwrap().changes, 1);
    let rows = query(&machine, "SELECT id, v FROM t ORDER BY id").rows;
    let expected: Vec<Vec<Value>> = [(1, "one!"), (2, "two!"), (3, "four"), (5, "five")]
        .iter()
        .map(|(id, v)| vec![Value::Integer(*id), Value::Text((*v).into())])
        .collect();
    assert_eq!(rows, expected, "only the failing statements were undone");
    assert_eq!(machine.applied(), commands.len() as u64);
    // Two statements in one command are refused; a query must not write.
    let two = exec(&mut machine, "DELETE FROM t; DELETE FROM t", vec![]);
    assert_eq!(kind(&two), Some(ErrorKind::Malformed), "{two:?}");
    let write = machine.query(&statement("DELETE FROM t", vec![]));
    assert_eq!(kind(&write), Some(ErrorKind::NotReadOnly));
    let wrong = exec(&mut machine, "INSERT INTO t VALUES (?1, ?2)", vec![Value::Integer(9)]);
    assert_eq!(kind(&wrong), Some(ErrorKind::Sql));
    assert_eq!(query(&machine, "SELECT count(*) FROM t").rows, vec![vec![Value::Integer(4)]]);
    // The position is committed with each batch, in the database file itself: a process that
    // stops finds it there.
    let (path, applied) = (machine.path(), machine.applied());
    assert_eq!(applied, commands.len() as u64 + 2, "queries are not applied");
    drop(machine);
    assert_eq!(recorded_position(&path).unwrap(), Some((3, Position { applied, slot: None })));
}

fn fill(machine: &mut SqliteMachine, rows: i64) {
    exec(machine, "CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, r REAL)", vec![]).unwrap();
    exec(machine, "CREATE INDEX t_r ON t (r)", vec![]).unwrap();
    for id in 0..rows {
        let params =
            vec![Value::Integer(id), Value::Blob(vec![id as u8; 40]), Value::Real(id as f64 / 3.0)];
        exec(machine, "INSERT INTO t VALUES (?1, ?2, ?3)", params).unwrap();
    }
}

#[test]
fn a_snapshot_restores_to_an_identical_database_and_bad_images_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = SqliteMachine::create(&dir.path().join("a"), 0).unwrap();
    fill(&mut machine, 500);
    let mut image = Vec::new();
    machine.snapshot(&mut image).unwrap();
    let restored = SqliteMachine::restore_in(&dir.path().join("b"), &mut &image[..]).unwrap();
    assert_eq!(restored.summary(), machine.summary());
    assert_eq!(restored.summary().entries, 500);
    assert_eq!(restored.applied(), machine.applied());
    let mut again = Vec::new();
    restored.snapshot(&mut again).unwrap();
    let differ: Vec<usize> =
        (0..image.len().min(again.len())).filter(|&i| image[i] != again[i]).take(20).collect();
    assert!(
        again == image,
        "one state, one image: lengths {} {}, differ at {differ:?}",
        again.len(),
        image.len()
    );
    // Another history to the same rows (one more row written then deleted, and a statement
    // that failed) gives the same rows, in as many pages.
    let mut other = SqliteMachine::create(&dir.path().join("c"), 0).unwrap();
    fill(&mut other, 501);
    exec(&mut other, "DELETE FROM t WHERE id = 500", vec![]).unwrap();
    assert_ne!(other.applied(), machine.applied());
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    machine.snapshot(&mut mine).unwrap();
    other.snapshot(&mut theirs).unwrap();
    assert_eq!(mine.len(), theirs.len());
    assert_eq!(other.summary().entries, machine.summary().entries);
    // Restored replicas go on identically.
    let mut restored = restored;
    for target in [&mut machine, &mut restored] {
        exec(target, "UPDATE t SET v = NULL WHERE id % 7 = 0", vec![]).unwrap();
    }
    assert_eq!(restored.summary(), machine.summary());
    // Damaged images: refused with an error, never a panic.
    for cut in [0, 10, 99, 100, 4096, image.len() - 1] {
        assert!(SqliteMachine::restore_in(dir.path(), &mut &image[..cut]).is_err(), "cut at {cut}");
    }
    let mut flipped = image.clone();
    let middle = flipped.len() / 2;
    for byte in &mut flipped[middle..middle + 64] {
        *byte ^= 0x5a;
    }
    assert!(SqliteMachine::restore_in(dir.path(), &mut &flipped[..]).is_err());
    assert!(SqliteMachine::restore_in(dir.path(), &mut &b"SQLite format 3\0garbage"[..]).is_err());
}

#[test]
fn through_the_trait_a_batch_commits_at_its_end_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = SqliteMachine::create(dir.path(), 0).unwrap();
    exec(&mut machine, "CREATE TABLE t (x INTEGER UNIQUE)", vec![]).unwrap();
    machine.on_batch_applied(Slot(4));
    let path = machine.path();
    let at = |applied, slot| Some((0, Position { applied, slot: Some(slot) }));
    assert_eq!(recorded_position(&path).unwrap(), at(1, 4));
    // Commands of one batch, as a node applies them: one at a time, then the batch's end.
    for x in 0..10 {
        exec(&mut machine, "INSERT INTO t VALUES (?1)", vec![Value::Integer(x)]).unwrap();
    }
    let duplicate = exec(&mut machine, "INSERT OR ROLLBACK INTO t VALUES (3)", vec![]);
    assert_eq!(kind(&duplicate), Some(ErrorKind::Sql));
    exec(&mut machine, "INSERT INTO t VALUES (10)", vec![]).unwrap();
    // Another connection sees nothing of the batch before its end, then all of it.
    assert_eq!(recorded_position(&path).unwrap(), at(1, 4), "not committed mid-batch");
    machine.on_batch_applied(Slot(7));
    assert_eq!(recorded_position(&path).unwrap(), at(13, 7));
    assert_eq!(query(&machine, "SELECT count(*) FROM t").rows, vec![vec![Value::Integer(11)]]);
    // A machine driven without batch ends still commits before a snapshot or a summary.
    exec(&mut machine, "INSERT INTO t VALUES (11)", vec![]).unwrap();
    let summary = machine.summary();
    assert_eq!(summary.entries, 12);
    assert_eq!(recorded_position(&path).unwrap(), at(14, 7));
}

#[test]
fn a_reopened_database_goes_on_from_the_slot_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = SqliteMachine::open_or_create(dir.path(), 2).unwrap();
    assert_eq!(machine.persisted_slot(), None, "an empty database holds no batch");
    exec(&mut machine, "CREATE TABLE t (x INTEGER)", vec![]).unwrap();
    machine.on_batch_applied(Slot(3));
    exec(&mut machine, "INSERT INTO t VALUES (1)", vec![]).unwrap();
    machine.on_batch_applied(Slot(9));
    machine.sync().unwrap();
    let (summary, path) = (machine.summary(), machine.path());
    // As a process killed mid-way leaves it: the machine is never dropped.
    std::mem::forget(machine);
    let reopened = SqliteMachine::open_or_create(dir.path(), 2).unwrap();
    assert_eq!(reopened.path(), path, "the same file, kept");
    assert_eq!(reopened.persisted_slot(), Some(Slot(9)));
    assert_eq!(reopened.summary(), summary);
    assert_eq!(reopened.applied(), 2);
    // Another shard's files are not this one's.
    let other = SqliteMachine::open_or_create(dir.path(), 3).unwrap();
    assert_eq!(other.persisted_slot(), None);
    assert!(path.exists());
}
