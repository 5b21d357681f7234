//! One connection to the store: TCP (or TLS with our rustls and its ring provider, for
//! `rediss://`), `AUTH` with the password file read at every connection, RESP3 so that change
//! notifications arrive as pushes (on a connection of their own).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushInfo, RedisConnectionInfo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::sync::mpsc::UnboundedReceiver;

use super::config::{ClusterConfig, RedisUrl};

/// A node's connections to the store.
pub struct Link {
    pub cmd: MultiplexedConnection,
    /// Subscribed to the change notifications only.
    pub sub: MultiplexedConnection,
    pub pushes: UnboundedReceiver<PushInfo>,
}

/// How to reach the store.
#[derive(Clone)]
pub struct Endpoint {
    pub url: RedisUrl,
    password_file: Option<PathBuf>,
    tls: Option<Arc<rustls::ClientConfig>>,
    pub timeout: Duration,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url.to_string())
            .finish()
    }
}

fn read_pem_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", path.display()));
    }
    Ok(certs)
}

impl Endpoint {
    /// Checks the files the section names (a missing CA or password file stops the start).
    /// `Err`: (key, problem).
    pub fn new(cfg: &ClusterConfig) -> Result<Self, (String, String)> {
        let url = cfg.url();
        if let Some(f) = &cfg.password_file {
            read_password(f).map_err(|e| ("cluster.password_file".to_owned(), e))?;
        }
        let tls = if url.tls {
            let mut roots = rustls::RootCertStore::empty();
            let anchors = match &cfg.tls_ca {
                Some(f) => read_pem_certs(f).map_err(|e| ("cluster.tls_ca".to_owned(), e))?,
                None => read_pem_certs(std::path::Path::new(fedgate_certs::SYSTEM_BUNDLE))
                    .map_err(|e| {
                        (
                            "cluster.tls_ca".to_owned(),
                            format!("no tls_ca and the system bundle cannot be read: {e}"),
                        )
                    })?,
            };
            let (added, _ignored) = roots.add_parsable_certificates(anchors);
            if added == 0 {
                return Err(("cluster.tls_ca".into(), "no usable CA certificate".into()));
            }
            let builder =
                rustls::ClientConfig::builder_with_provider(fedgate_certs::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ("cluster.redis".to_owned(), e.to_string()))?
                    .with_root_certificates(roots);
            let config = match (&cfg.tls_cert, &cfg.tls_key) {
                (Some(c), Some(k)) => {
                    let chain =
                        read_pem_certs(c).map_err(|e| ("cluster.tls_cert".to_owned(), e))?;
                    let key = PrivateKeyDer::from_pem_file(k).map_err(|e| {
                        (
                            "cluster.tls_key".to_owned(),
                            format!("{}: {e}", k.display()),
                        )
                    })?;
                    builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| ("cluster.tls_cert".to_owned(), e.to_string()))?
                }
                _ => builder.with_no_client_auth(),
            };
            Some(Arc::new(config))
        } else {
            None
        };
        Ok(Self {
            url,
            password_file: cfg.password_file.clone(),
            tls,
            timeout: Duration::from_millis(cfg.timeout_ms),
        })
    }

    /// The two connections a node keeps: one for commands, one that only receives change
    /// notifications (so that no notification is ever in the way of a command's reply).
    pub async fn link(&self) -> Result<Link, String> {
        let (cmd, _) = self.connect(false).await?;
        let (sub, pushes) = self.connect(true).await?;
        Ok(Link {
            cmd,
            sub,
            pushes: pushes.expect("asked for notifications"),
        })
    }

    /// A multiplexed connection (with `notifications`, its pushes arrive on the receiver),
    /// its driver spawned.
    async fn connect(
        &self,
        notifications: bool,
    ) -> Result<(MultiplexedConnection, Option<UnboundedReceiver<PushInfo>>), String> {
        let mut info = RedisConnectionInfo::default()
            .set_protocol(ProtocolVersion::RESP3)
            .set_db(self.url.db)
            .set_skip_set_lib_name();
        if let Some(u) = &self.url.username {
            info = info.set_username(u);
        }
        if let Some(f) = &self.password_file {
            info = info.set_password(read_password(f)?);
        }
        let mut config = AsyncConnectionConfig::new().set_response_timeout(Some(self.timeout));
        let rx = if notifications {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            config = config.set_push_sender(tx);
            Some(rx)
        } else {
            None
        };
        let addr = (self.url.host.as_str(), self.url.port);
        let tcp = tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect: timed out after {:?}", self.timeout))?
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let setup = async {
            match &self.tls {
                Some(tls) => {
                    let name = ServerName::try_from(self.url.host.clone())
                        .map_err(|e| format!("tls: {}: {e}", self.url.host))?;
                    let stream = tokio_rustls::TlsConnector::from(tls.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| format!("tls: {e}"))?;
                    let (conn, driver) =
                        MultiplexedConnection::new_with_config(&info, stream, config)
                            .await
                            .map_err(|e| e.to_string())?;
                    tokio::spawn(driver);
                    Ok::<_, String>(conn)
                }
                None => {
                    let (conn, driver) = MultiplexedConnection::new_with_config(&info, tcp, config)
                        .await
                        .map_err(|e| e.to_string())?;
                    tokio::spawn(driver);
                    Ok(conn)
                }
            }
        };
        let conn = tokio::time::timeout(self.timeout * 2, setup)
            .await
            .map_err(|_| format!("set-up: timed out after {:?}", self.timeout * 2))??;
        Ok((conn, rx))
    }
}

/// The password: the file's content without the trailing line end; not empty.
pub fn read_password(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let p = text.trim_end_matches(['\n', '\r']);
    if p.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(p.to_owned())
}
