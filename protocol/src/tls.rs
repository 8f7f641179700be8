//! Optional TLS (rustls): loading certificates and keys, and [`Stream`], the one stream type
//! every connection uses, plain or encrypted. The authkey handshake runs inside TLS as well,
//! bound to the TLS session through its exporter (`handshake.rs`): TLS hides and protects the
//! traffic, the authkey still decides who may use the queues. TLS 1.3 only (its exporter is
//! sound without further extensions), and both sides require ALPN `taskmill/1`, so a
//! certificate shared with another service cannot be used to confuse the two protocols.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} from {path}: {cause}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        cause: String,
    },
    #[error("{path} holds no certificate")]
    NoCertificate { path: PathBuf },
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error("TLS configuration rejected: {0}")]
    Config(rustls::Error),
}

// Not `#[from]`: that would make the rustls error the source too, and error chains would say
// it twice.
impl From<rustls::Error> for TlsError {
    fn from(err: rustls::Error) -> Self {
        TlsError::Config(err)
    }
}

/// The ALPN protocol id both sides require.
pub const ALPN: &[u8] = b"taskmill/1";

fn no_alpn() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the peer did not negotiate ALPN taskmill/1 (not a taskmill TLS endpoint)",
    )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |cause: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        cause,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The master's side: its certificate chain and private key.
#[derive(Clone)]
pub struct TlsServer {
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsServer(..)")
    }
}

impl TlsServer {
    /// Loads a PEM certificate chain and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let chain = certificates(cert, "a certificate chain")?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Pem {
            what: "a private key",
            path: key.to_owned(),
            cause: e.to_string(),
        })?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Runs the TLS handshake on an accepted connection.
    pub async fn accept(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = self.acceptor.accept(tcp).await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(no_alpn());
        }
        Ok(Stream::ServerTls(Box::new(tls)))
    }
}

/// A client's side: which certificate authorities to trust, and the name the master's
/// certificate must carry.
#[derive(Clone)]
pub struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsClient({:?})", self.server_name)
    }
}

impl TlsClient {
    /// Trusts the PEM certificates in `ca` and expects `server_name` (a DNS name or IP
    /// address) in the master's certificate.
    pub fn from_ca_file(ca: &Path, server_name: &str) -> Result<Self, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in certificates(ca, "CA certificates")? {
            roots.add(cert)?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }

    /// Runs the TLS handshake on a fresh connection to the master.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<Stream> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
            return Err(no_alpn());
        }
        Ok(Stream::ClientTls(Box::new(tls)))
    }
}

/// A connection, plain or TLS on either side.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::ClientTls(s) => s.get_ref().0,
            Stream::ServerTls(s) => s.get_ref().0,
        }
    }
}

impl crate::handshake::Channel for Stream {
    /// Under TLS, 32 bytes exported from the session (RFC 9266): a relay that ends our TLS
    /// session and opens its own sees another value on each side.
    fn binding(&self) -> io::Result<crate::handshake::Binding> {
        use crate::handshake::{Binding, TLS_EXPORTER_LABEL};
        let export = |result: Result<[u8; 32], rustls::Error>| {
            result
                .map(Binding::Tls)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        match self {
            Stream::Plain(_) => Ok(Binding::Plain),
            Stream::ClientTls(s) => export(s.get_ref().1.export_keying_material(
                [0u8; 32],
                TLS_EXPORTER_LABEL,
                None,
            )),
            Stream::ServerTls(s) => export(s.get_ref().1.export_keying_material(
                [0u8; 32],
                TLS_EXPORTER_LABEL,
                None,
            )),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ClientTls(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ClientTls(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ServerTls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ClientTls(s) => Pin::new(s).poll_flush(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ClientTls(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ServerTls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
