//! TLS end to end, with certificates made by the test: the job over TLS, clear errors when
//! one side speaks TLS and the other does not, or the CA is wrong, and relays that splice
//! transports (review M3) failing the handshake.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use taskmill::{Client, ClientError, ClientOptions};
use taskmill_protocol::{Rejection, TlsClient, TlsServer};
use taskmill_squares::job::{self, JobConfig};
use taskmill_testkit::{config, key, within, TestMaster};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A CA and a server certificate for `localhost` and 127.0.0.1, as PEM files in a fresh folder.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("taskmill-tls-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let server_key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), server_key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn server(&self) -> TlsServer {
        TlsServer::from_pem_files(&self.path("cert.pem"), &self.path("key.pem")).unwrap()
    }

    fn client(&self, name: &str) -> ClientOptions {
        ClientOptions {
            tls: Some(TlsClient::from_ca_file(&self.path("ca.pem"), name).unwrap()),
            ..ClientOptions::default()
        }
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_squares_job_runs_over_tls() {
    let pki = Pki::new("job");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    let master = TestMaster::start(cfg).await;
    let mut job_config = JobConfig::new(5_000);
    job_config.local_workers = 2;
    job_config.client = pki.client("localhost");
    let report = within(
        "job over TLS",
        job::run(&master.addr, &key(), &job_config, &CancellationToken::new()),
    )
    .await
    .unwrap();
    assert!(report.success(), "{report:?}");
    assert_eq!(report.workers_seen, 2);
}

#[tokio::test]
async fn tls_and_the_authkey_are_both_required() {
    let pki = Pki::new("both");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    let master = TestMaster::start(cfg).await;
    let mut client = within(
        "tls connect",
        Client::connect_with(&master.addr, &key(), &pki.client("127.0.0.1")),
    )
    .await
    .unwrap();
    client.ping().await.unwrap();
    let wrong_key = within(
        "tls with a wrong key",
        Client::connect_with(
            &master.addr,
            &taskmill_testkit::wrong_key(),
            &pki.client("localhost"),
        ),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(wrong_key, ClientError::AuthenticationFailed),
        "{wrong_key:?}"
    );
}

#[tokio::test]
async fn a_plain_client_at_a_tls_master_gets_a_clear_error_quickly() {
    let pki = Pki::new("plain");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    let master = TestMaster::start(cfg).await;
    let err = within("plain at tls", Client::connect(&master.addr, &key()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("requires TLS"), "{err}");
    assert!(!err.is_transient(), "retrying without TLS cannot help");
}

#[tokio::test]
async fn a_probe_of_a_tls_port_is_neither_a_failure_nor_throttled() {
    let pki = Pki::new("probe");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    cfg.guard.auth_failures_per_minute = 1;
    let master = TestMaster::start(cfg).await;
    for _ in 0..3 {
        drop(
            within("probe", TcpStream::connect(&master.addr))
                .await
                .unwrap(),
        );
    }
    let mut client = within(
        "tls connect after the probes",
        Client::connect_with(&master.addr, &key(), &pki.client("localhost")),
    )
    .await
    .unwrap();
    within("three probes counted", async {
        while client.stats().await.unwrap().probes < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(client.stats().await.unwrap().handshake_failures, 0);
}

#[tokio::test]
async fn a_tls_client_turned_away_is_told_why_inside_tls_and_may_retry() {
    let pki = Pki::new("refused");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    cfg.max_connections = 1;
    let master = TestMaster::start(cfg).await;
    let options = pki.client("localhost");
    let mut first = within(
        "first",
        Client::connect_with(&master.addr, &key(), &options),
    )
    .await
    .unwrap();
    let err = within(
        "second",
        Client::connect_with(&master.addr, &key(), &options),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ClientError::Rejected(Rejection::Overloaded)),
        "{err:?}"
    );
    assert!(err.is_transient(), "an overloaded master is worth retrying");
    first.ping().await.unwrap();
}

#[tokio::test]
async fn a_tls_client_rejects_a_plain_master_and_a_certificate_from_another_ca() {
    let pki = Pki::new("client");
    let plain = TestMaster::start(config()).await;
    let err = within(
        "tls at plain",
        Client::connect_with(&plain.addr, &key(), &pki.client("localhost")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    // The plain master answers the ClientHello with a TLS alert: the client is told, every
    // time, rather than seeing a close it would retry as a restart.
    assert!(err.to_string().contains("alert"), "{err}");
    assert!(!err.is_transient());

    let other = Pki::new("other");
    let mut cfg = config();
    cfg.tls = Some(other.server());
    let impostor = TestMaster::start(cfg).await;
    let err = within(
        "wrong ca",
        Client::connect_with(&impostor.addr, &key(), &pki.client("localhost")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("TLS handshake"), "{err}");
}

#[test]
fn unreadable_or_empty_pem_files_are_clear_errors() {
    let missing = TlsServer::from_pem_files(
        Path::new("/nonexistent/cert.pem"),
        Path::new("/nonexistent/key.pem"),
    );
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/cert.pem"));
    let dir = std::env::temp_dir().join(format!("taskmill-tls-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("empty.pem"), "").unwrap();
    let err = TlsClient::from_ca_file(&dir.join("empty.pem"), "localhost").unwrap_err();
    assert!(err.to_string().contains("no certificate"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A relay on a fresh loopback port for one connection: it takes the client's side as
/// `accept` says (plain, or TLS ended with the master's own certificate: the relay holds it),
/// opens its own TLS connection to `master`, and copies bytes both ways unchanged.
async fn relay(master: &str, accept: Option<TlsServer>, connect: TlsClient) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let master = master.to_owned();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let mut client = match accept {
            Some(tls) => tls.accept(client).await.unwrap(),
            None => taskmill_protocol::Stream::Plain(client),
        };
        let upstream = TcpStream::connect(&master).await.unwrap();
        let mut upstream = connect.connect(upstream).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    addr
}

#[tokio::test]
async fn a_relay_between_a_plaintext_client_and_a_tls_master_fails_the_handshake() {
    let pki = Pki::new("relay");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    let master = TestMaster::start(cfg).await;
    let to_master = pki.client("localhost").tls.unwrap();

    // Plaintext towards the client, TLS towards the master: the hello the client made for a
    // plain transport does not verify for the master's TLS session.
    let addr = relay(&master.addr, None, to_master.clone()).await;
    let err = within(
        "plain client through the relay",
        Client::connect(&addr, &key()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");
    assert!(err.to_string().contains("relay"), "{err}");

    // TLS on both legs, the relay even holding the master's certificate: two TLS sessions,
    // two exporter values, and the hello fails all the same.
    let addr = relay(&master.addr, Some(pki.server()), to_master).await;
    let err = within(
        "tls client through a tls relay",
        Client::connect_with(&addr, &key(), &pki.client("localhost")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::AuthenticationFailed), "{err:?}");

    // Straight to the master, the same client and key work.
    within(
        "direct",
        Client::connect_with(&master.addr, &key(), &pki.client("localhost")),
    )
    .await
    .unwrap()
    .ping()
    .await
    .unwrap();
}

#[tokio::test]
async fn a_tls_client_that_does_not_negotiate_alpn_taskmill_is_refused() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::io::AsyncReadExt;

    let pki = Pki::new("alpn");
    let mut cfg = config();
    cfg.tls = Some(pki.server());
    // Past the test's own bound: only the ALPN check can close the connection in time.
    cfg.handshake_timeout = taskmill_testkit::LIMIT * 2;
    let master = TestMaster::start(cfg).await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let connect = |alpn: Vec<Vec<u8>>| {
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        config.alpn_protocols = alpn;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
        let addr = master.addr.clone();
        async move {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            connector
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
        }
    };
    // Another protocol's id: refused in the TLS handshake itself.
    let err = within("tls offering h2", connect(vec![b"h2".to_vec()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NoApplicationProtocol"), "{err}");
    // No ALPN at all: the TLS handshake completes, then the master closes without a word.
    let mut tls = within("tls without alpn", connect(vec![]))
        .await
        .expect("the TLS handshake itself completes");
    let mut buf = [0u8; 64];
    let read = within("the master closing", tls.read(&mut buf)).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}
