//! Workers against whoever answers the master's address before the master does: an impostor's
//! refusals and garbage are retried, not obeyed, and the worker joins the real master when it
//! comes back on that port.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use taskmill::{Worker, WorkerConfig, WorkerError};
use taskmill_protocol::codec::HANDSHAKE_MAX_FRAME;
use taskmill_protocol::{ClientHandshake, Connection, MasterHandshake, Rejection};
use taskmill_squares::job::{self, JobConfig};
use taskmill_squares::Squares;
use taskmill_testkit::{config, key, within, wrong_key, TestMaster};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Answers every connection on `listener` in turn with a refused proof, a refused version, or
/// bytes that are no taskmill frame; counts the connections it answered.
fn impostor(listener: TcpListener, answered: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let n = answered.fetch_add(1, Ordering::SeqCst);
            let mut conn =
                Connection::<_, ClientHandshake, MasterHandshake>::new(stream, HANDSHAKE_MAX_FRAME);
            let _ = conn.recv().await;
            let why = match n % 3 {
                0 => Rejection::AuthenticationFailed,
                1 => Rejection::UnsupportedVersion { supported: 999 },
                _ => Rejection::NotTaskmill,
            };
            let _ = conn.send(&MasterHandshake::Rejected(why)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_facing_an_impostor_keeps_retrying_and_joins_the_real_master_on_that_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let fake = impostor(listener, answered.clone());

    let mut worker = WorkerConfig::new(addr.to_string(), key());
    worker.max_backoff = Duration::from_millis(100);
    let stop = CancellationToken::new();
    let worker = tokio::spawn(Worker::new(worker, Squares::new()).run(stop.clone()));

    within("the worker retrying past every kind of refusal", async {
        while answered.load(Ordering::SeqCst) < 6 {
            assert!(!worker.is_finished(), "the worker gave up on an impostor");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    fake.abort();
    let _ = fake.await;

    // The real master comes back on the same port (mio binds listeners with SO_REUSEADDR).
    let master = TestMaster::serve(TcpListener::bind(addr).await.unwrap(), config());
    let report = within(
        "a job through the worker that outlasted the impostor",
        job::run(
            &master.addr,
            &key(),
            &JobConfig::new(200),
            &CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.verified, 200);
    stop.cancel();
    let report = within("worker exit", worker).await.unwrap().unwrap();
    assert_eq!(report.completed, 200);
}

#[tokio::test]
async fn a_worker_asked_to_exit_on_auth_failure_does_and_one_that_is_not_gives_up_after_its_window()
{
    let master = TestMaster::start(config()).await;

    let mut strict = WorkerConfig::new(master.addr.clone(), wrong_key());
    strict.handshake_patience = None;
    let err = within(
        "a strict worker with a wrong key",
        Worker::new(strict, Squares::new()).run(CancellationToken::new()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");

    let mut patient = WorkerConfig::new(master.addr.clone(), wrong_key());
    patient.max_backoff = Duration::from_millis(50);
    patient.handshake_patience = Some(Duration::from_millis(600));
    let started = tokio::time::Instant::now();
    let err: WorkerError = within(
        "a patient worker with a wrong key",
        Worker::new(patient, Squares::new()).run(CancellationToken::new()),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "gave up before its window: {:?}",
        started.elapsed()
    );
}
