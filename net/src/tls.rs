//! Certificates: a self-signed CA and a server certificate it signs, generated on a data
//! directory's first start (rcgen) and kept in `DATA_DIR/tls/`, or an operator's own files;
//! the rustls/quinn configurations of server and client (TLS 1.3, ALPN `reservoir/1`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::wire::ALPN;
use crate::NetError;

/// Where a data directory keeps its generated certificates.
pub fn tls_directory(data_directory: &Path) -> PathBuf {
    data_directory.join("tls")
}

/// The CA certificate clients trust (`--ca`).
pub fn ca_path(data_directory: &Path) -> PathBuf {
    tls_directory(data_directory).join("ca.pem")
}

/// A certificate chain and its key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
}

/// Streams a connection may have open at once (quinn's transport limit; a client needs few).
pub const STREAMS_PER_CONNECTION_MAX: u32 = 64;
/// A connection with no traffic (keep-alives included) for this long is closed: how long a
/// peer that vanished without a word (SIGKILL, a lost host) takes to be noticed, unless a
/// stateless reset says so sooner.
pub const IDLE_TIMEOUT_MS: u32 = 10_000;
/// Bytes a stream may have unread in a client (a standby reading the WAL feed included).
pub const STREAM_RECEIVE_WINDOW_BYTES: u32 = 8 << 20;
/// Bytes a connection may have unread in a client over all its streams.
pub const CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 2 * STREAM_RECEIVE_WINDOW_BYTES;

// The server's windows. Each is memory one connection can make the server hold in quinn's
// buffers, outside the reply caps (`server::REPLY_BYTES_HELD_*`), times `CONNECTIONS_MAX`
// (10,000) connections: 256 KiB + 512 KiB is at most 7.5 GiB over every connection, 750 MiB
// over one tenant's 1,000. Regression: the server took the client's 8 MiB + 16 MiB receive
// windows and quinn's 10 MB send window, 260 GB over 10,000 connections (25 GB for one
// tenant) that read no replies and send requests the server stops reading. At a LAN's
// 0.5 ms round trip 256 KiB is ~500 MB/s a connection; across 100 ms, 2.5 MB/s (~60,000
// W1 replies/s a connection): a client far away opens more connections.

/// Bytes a stream may have unread in the server: what a client can push ahead of what the
/// server reads (it stops reading a stream whose replies are over their caps).
pub const SERVER_STREAM_RECEIVE_WINDOW_BYTES: u32 = 256 << 10;
/// Bytes a connection may have unread in the server over all its streams, those the server
/// never accepts included. Regression: quinn's default is unbounded (2^62), so a peer with no
/// token could park `STREAMS_PER_CONNECTION_MAX` x the stream window in the server's buffers
/// per connection until its `Hello` timed out.
pub const SERVER_CONNECTION_RECEIVE_WINDOW_BYTES: u32 = 2 * SERVER_STREAM_RECEIVE_WINDOW_BYTES;
/// Bytes of replies the server's quinn may hold for one connection, written and not yet
/// acknowledged by the client (quinn's default is 10 MB): past it, the reply's write waits,
/// and its bytes count against the reply caps.
pub const SERVER_SEND_WINDOW_BYTES: u64 = 256 << 10;
/// A replication connection's send window, set once its token is checked: the WAL feed to a
/// standby in another region (32 MiB per 100 ms round trip is ~320 MB/s of log).
pub const REPLICATION_SEND_WINDOW_BYTES: u64 = 32 << 20;

fn tls_error(what: &str, error: impl std::fmt::Display) -> NetError {
    NetError::Tls(format!("{what}: {error}"))
}

fn write_private(path: &Path, text: &str) -> Result<(), NetError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|error| tls_error(&path.display().to_string(), error))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| tls_error(&path.display().to_string(), error))
}

/// The generated certificates of a data directory, made on first use: a CA (its key is kept
/// only to sign the server certificate, mode 0600) and a server certificate for `localhost`,
/// `127.0.0.1`, `::1` and `extra_names` (e.g. the host of `--listen`). Returns the server's
/// files. An existing set is used as it is.
pub fn ensure_generated(data_directory: &Path, extra_names: &[String]) -> Result<CertificateFiles, NetError> {
    let directory = tls_directory(data_directory);
    let files = CertificateFiles { certificate: directory.join("server.pem"), key: directory.join("server.key") };
    if files.certificate.exists() && files.key.exists() && ca_path(data_directory).exists() {
        return Ok(files);
    }
    std::fs::create_dir_all(&directory).map_err(|error| tls_error("create the tls directory", error))?;
    let ca_key = rcgen::KeyPair::generate().map_err(|error| tls_error("generate the CA key", error))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|error| tls_error("CA", error))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Reservoir local CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(|error| tls_error("sign the CA", error))?;

    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    for name in extra_names {
        if !names.contains(name) && !name.is_empty() && name != "0.0.0.0" && name != "::" {
            names.push(name.clone());
        }
    }
    let server_key = rcgen::KeyPair::generate().map_err(|error| tls_error("generate the server key", error))?;
    let mut server_params = rcgen::CertificateParams::new(names).map_err(|error| tls_error("server names", error))?;
    server_params.distinguished_name.push(rcgen::DnType::CommonName, "reservoir");
    let server =
        server_params.signed_by(&server_key, &ca, &ca_key).map_err(|error| tls_error("sign the server", error))?;

    write_private(&directory.join("ca.key"), &ca_key.serialize_pem())?;
    write_private(&files.key, &server_key.serialize_pem())?;
    // The chain the server presents: its certificate, then the CA's.
    write_private(&files.certificate, &format!("{}{}", server.pem(), ca.pem()))?;
    write_private(&ca_path(data_directory), &ca.pem())?;
    std::fs::File::open(&directory).and_then(|file| file.sync_all()).map_err(|error| tls_error("sync tls/", error))?;
    Ok(files)
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, NetError> {
    let text = std::fs::read(path).map_err(|error| tls_error(&path.display().to_string(), error))?;
    let certificates: Vec<_> = rustls_pemfile_certificates(&text)
        .map_err(|error| tls_error(&format!("{}: not PEM certificates", path.display()), error))?;
    if certificates.is_empty() {
        return Err(NetError::Tls(format!("{}: no certificate in it", path.display())));
    }
    Ok(certificates)
}

/// PEM certificates, parsed with rustls' own PEM reader.
fn rustls_pemfile_certificates(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(text).collect::<Result<Vec<_>, _>>().map_err(|error| error.to_string())
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, NetError> {
    use rustls::pki_types::pem::PemObject as _;
    let text = std::fs::read(path).map_err(|error| tls_error(&path.display().to_string(), error))?;
    PrivateKeyDer::from_pem_slice(&text)
        .map_err(|error| tls_error(&format!("{}: no private key", path.display()), error))
}

fn transport(stream_receive_window_bytes: u32, connection_receive_window_bytes: u32) -> quinn::TransportConfig {
    assert!(stream_receive_window_bytes <= connection_receive_window_bytes);
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(STREAMS_PER_CONNECTION_MAX))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .max_idle_timeout(Some(quinn::VarInt::from_u32(IDLE_TIMEOUT_MS).into()))
        .keep_alive_interval(Some(Duration::from_millis(u64::from(IDLE_TIMEOUT_MS) / 3)))
        .stream_receive_window(quinn::VarInt::from_u32(stream_receive_window_bytes))
        .receive_window(quinn::VarInt::from_u32(connection_receive_window_bytes));
    transport
}

fn server_transport() -> quinn::TransportConfig {
    let mut transport = transport(SERVER_STREAM_RECEIVE_WINDOW_BYTES, SERVER_CONNECTION_RECEIVE_WINDOW_BYTES);
    transport.send_window(SERVER_SEND_WINDOW_BYTES);
    transport
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The quinn server configuration for a certificate chain and key.
pub fn server_config(files: &CertificateFiles) -> Result<quinn::ServerConfig, NetError> {
    let chain = read_certificates(&files.certificate)?;
    let key = read_key(&files.key)?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| tls_error("TLS versions", error))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| tls_error("the server certificate", error))?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|error| tls_error("QUIC TLS", error))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(server_transport()));
    Ok(config)
}

/// The quinn client configuration that trusts the CA certificates in `ca_pem`.
pub fn client_config(ca_pem: &[u8]) -> Result<quinn::ClientConfig, NetError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls_pemfile_certificates(ca_pem).map_err(|error| tls_error("the CA file", error))? {
        roots.add(certificate).map_err(|error| tls_error("the CA certificate", error))?;
    }
    if roots.is_empty() {
        return Err(NetError::Tls("the CA file holds no certificate".into()));
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| tls_error("TLS versions", error))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|error| tls_error("QUIC TLS", error))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport(STREAM_RECEIVE_WINDOW_BYTES, CONNECTION_RECEIVE_WINDOW_BYTES)));
    Ok(config)
}

/// Bytes of the stateless-reset secret.
const RESET_KEY_BYTES: usize = 32;

/// The endpoint configuration of a server whose stateless-reset key lives in the data
/// directory (`tls/reset.key`, made on first use): after a crash and restart the server can
/// tell clients of the old process at once that their connection is gone (a QUIC stateless
/// reset), instead of letting them wait out the idle timeout.
pub fn endpoint_config(data_directory: &Path) -> Result<quinn::EndpointConfig, NetError> {
    let directory = tls_directory(data_directory);
    let path = directory.join("reset.key");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            use rand::RngCore as _;
            std::fs::create_dir_all(&directory).map_err(|error| tls_error("create the tls directory", error))?;
            let mut secret = [0u8; RESET_KEY_BYTES];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let text: String = secret.iter().map(|byte| format!("{byte:02x}")).collect();
            write_private(&path, &text)?;
            text
        }
        Err(error) => return Err(tls_error(&path.display().to_string(), error)),
    };
    let text = text.trim();
    let mut key = [0u8; RESET_KEY_BYTES];
    if text.len() != RESET_KEY_BYTES * 2 {
        return Err(NetError::Tls(format!("{}: not a {RESET_KEY_BYTES}-byte hex key", path.display())));
    }
    for (index, slot) in key.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
            .map_err(|_| NetError::Tls(format!("{}: not a hex key", path.display())))?;
    }
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key);
    Ok(quinn::EndpointConfig::new(Arc::new(hmac)))
}
