//! TLS for `https://` upstreams: rustls with the system's trusted roots (read the way
//! OpenSSL-based clients read them, so `SSL_CERT_FILE` and `SSL_CERT_DIR` apply) plus an
//! optional CA file per upstream, for a private CA inside the cluster.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::UpstreamError;

/// Makes ring (the provider this crate links) the process's default rustls provider, once:
/// clients that build their TLS settings from the default (reqwest, the Redis client) need
/// one.
pub fn install_crypto_provider() {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client TLS settings for one upstream: HTTP/2 and HTTP/1.1 offered (ALPN).
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, UpstreamError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system CA certificate could not be read");
    }
    let (_, unparsable) = roots.add_parsable_certificates(native.certs);
    if unparsable > 0 {
        tracing::warn!(
            count = unparsable,
            "system CA certificates skipped (not parsable)"
        );
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| UpstreamError::Config(format!("ca_file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(UpstreamError::Config(format!(
                "ca_file {}: no PEM certificate in it",
                path.display()
            )));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| UpstreamError::Config(format!("ca_file {}: {e}", path.display())))?;
        }
    }
    if roots.is_empty() {
        return Err(UpstreamError::Config(
            "no trusted CA certificate found: the system store is empty; set SSL_CERT_FILE or the upstream's ca_file"
                .into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
