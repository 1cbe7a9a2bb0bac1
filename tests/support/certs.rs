//! TLS test certificates made in-process with rcgen (ECDSA P-256): a CA, a server certificate
//! for 127.0.0.1 and localhost, and a client certificate, each signed by the CA, written as PEM
//! files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The PEM files of one CA's certificates.
pub struct Certificates {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub server: (PathBuf, PathBuf),
    /// A client's certificate and key (for mutual TLS).
    pub client: (PathBuf, PathBuf),
}

/// A CA called `name` and the server and client certificates it signs, written into `dir` with
/// file names starting with `name`.
pub fn certificates(dir: &Path, name: &str) -> Certificates {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("aether test CA {name}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let ca = Issuer::new(ca_params, ca_key);

    let leaf = |names: Vec<String>, common: &str, usage: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, common);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &ca).expect("signed by the CA");
        (cert.pem(), key.serialize_pem())
    };
    let server = leaf(
        vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(
        Vec::new(),
        "aether test client",
        ExtendedKeyUsagePurpose::ClientAuth,
    );

    let write = |file: &str, pem: &str| {
        let path = dir.join(format!("{name}-{file}"));
        std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    };
    Certificates {
        ca: write("ca.pem", &ca_cert.pem()),
        server: (
            write("server.pem", &server.0),
            write("server.key", &server.1),
        ),
        client: (
            write("client.pem", &client.0),
            write("client.key", &client.1),
        ),
    }
}
