//! What the process has around it: a stderr whose reader is gone (M5 in REVIEW.md: logging must
//! never take a master or worker down, nor make it deaf to SIGTERM) and the open-files limit
//! (I7: raised at start, or a clear refusal to start).

use std::io::Write as _;
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::Command;
use std::time::{Duration, Instant};

use taskmill_testkit::process::{binary, Proc};
use taskmill_testkit::LIMIT;

/// Runs `cmd` with an open-files limit of `soft` (hard `hard`), as `ulimit -n` would.
fn with_open_files(cmd: &mut Command, soft: u64, hard: u64) -> &mut Command {
    let limit = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit is async-signal-safe, and nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The soft and hard open-files limits of process `pid`, from /proc.
fn open_files(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse().ok());
    (numbers.next().unwrap(), numbers.next().unwrap())
}

#[test]
fn the_master_raises_its_open_files_limit_to_the_hard_limit() {
    let mut master = Proc::spawn(with_open_files(
        Command::new(binary("taskmill-master")).args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-connections",
            "1000",
        ]),
        256,
        2048,
    ));
    master.listening_addr();
    assert_eq!(open_files(master.child.id()), (2048, 2048));
    master.signal(libc::SIGTERM);
    assert!(master.wait(LIMIT).success(), "{}", master.stderr());
}

#[test]
fn a_connection_limit_the_open_files_limit_cannot_serve_is_refused_at_start() {
    let mut master = Proc::spawn(with_open_files(
        Command::new(binary("taskmill-master")).args(["serve", "--listen", "127.0.0.1:0"]),
        1024,
        1024,
    ));
    let status = master.wait(LIMIT);
    let err = master.stderr();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--max-connections 4096 needs about"), "{err}");
    assert!(err.contains("at most 1024"), "{err}");
}

/// Opens `n` unauthenticated connections of every kind the master logs about: silent ones,
/// garbage, a 4 GiB length header. Returns them, still open.
fn unauthenticated_flood(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n)
        .filter_map(|i| {
            let mut stream = TcpStream::connect(addr).ok()?;
            let _ = match i % 3 {
                0 => Ok(()),
                1 => stream.write_all(b"GET / HTTP/1.1\r\n\r\n"),
                _ => stream.write_all(&u32::MAX.to_be_bytes()),
            };
            Some(stream)
        })
        .collect()
}

#[test]
fn a_master_whose_stderr_reader_is_gone_survives_a_flood_and_stops_on_sigterm() {
    // Small limits, so the flood trips every warning: the connection limit, shedding,
    // failed handshakes, and debug lines for each connection.
    let mut master = Proc::spawn_stderr_gone(
        Command::new(binary("taskmill-master"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(["--max-connections", "16", "--max-handshakes-per-ip", "4"])
            .args(["--auth-failures-per-minute", "2"])
            .env("RUST_LOG", "debug"),
    );
    let addr = master.listening_addr();
    for _ in 0..3 {
        let mut flood = unauthenticated_flood(&addr, 40);
        // The first is silent: shed by the later ones, or past the first-byte bound.
        let first = &mut flood[0];
        first.set_read_timeout(Some(LIMIT)).unwrap();
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(first, &mut buf), Ok(n) if n > 0) {}
        drop(flood);
        assert!(
            master.child.try_wait().unwrap().is_none(),
            "the master died logging to a broken stderr"
        );
    }
    // Still serving: a client with the key gets in.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let key = taskmill::AuthKey::new(taskmill_testkit::KEY).unwrap();
        let deadline = Instant::now() + LIMIT;
        loop {
            match taskmill::Client::connect(&addr, &key).await {
                Ok(mut client) => break client.ping().await.unwrap(),
                Err(err) => assert!(Instant::now() < deadline, "{err}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    master.signal(libc::SIGTERM);
    let status = master.wait(LIMIT);
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_worker_whose_stderr_reader_is_gone_stops_on_sigterm() {
    let master = Proc::spawn(Command::new(binary("taskmill-master")).args([
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]));
    let addr = master.listening_addr();
    let mut worker = Proc::spawn_stderr_gone(
        Command::new(binary("taskmill-worker"))
            .args(["--master", &addr])
            .env("RUST_LOG", "debug"),
    );
    // Once the worker is connected it has logged (connecting, the session, waiting).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let key = taskmill::AuthKey::new(taskmill_testkit::KEY).unwrap();
        let mut client = taskmill::Client::connect(&addr, &key).await.unwrap();
        let deadline = Instant::now() + LIMIT;
        while client.stats().await.unwrap().clients < 2 {
            assert!(Instant::now() < deadline, "the worker never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker died"
    );
    worker.signal(libc::SIGTERM);
    let status = worker.wait(LIMIT);
    assert!(status.success(), "{status:?}");
}
