//! A certificate authority made in the test, and the certificates it
//! issues: for HAProxy's binds, for servers behind it, for Consul's agents.

use std::path::{Path, PathBuf};

/// A self-signed CA (key usages: certificate and CRL signing, digital
/// signature).
pub struct TestCa {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

/// A certificate the CA issued, with its key.
pub struct Issued {
    /// The certificate, PEM.
    pub cert: String,
    pub key: rcgen::KeyPair,
    /// The certificate, DER (what a client sees).
    pub der: Vec<u8>,
}

impl Issued {
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Certificate then key, PEM: what HAProxy's `crt` takes.
    pub fn bundle(&self) -> String {
        format!("{}{}", self.cert, self.key_pem())
    }

    /// Writes `<dir>/<name>.pem` (the certificate) and `<dir>/<name>-key.pem`;
    /// returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, &self.cert).unwrap();
        std::fs::write(&k, self.key_pem()).unwrap();
        (c, k)
    }
}

impl TestCa {
    /// A new CA whose subject's CN is `name`.
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        TestCa { cert, key }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA's certificate (PEM) to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.pem()).unwrap();
    }

    /// A certificate for `sans` (names or IP addresses) with `cn` as its
    /// subject's CN, a new key, and whatever `tweak` sets beside (subject
    /// fields, serial, validity, extended key usages).
    pub fn issue(
        &self,
        sans: &[&str],
        cn: &str,
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> Issued {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        tweak(&mut p);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Issued {
            cert: cert.pem(),
            der: cert.der().to_vec(),
            key,
        }
    }
}

/// A [`TestCa`] whose certificate is also in a file of its own (what
/// `curl --cacert`, `HAPROXY_BACKEND_CA_FILE` and the like read); the
/// file goes with it.
pub struct CaFile {
    ca: TestCa,
    dir: tempfile::TempDir,
}

impl CaFile {
    pub fn new(name: &str) -> CaFile {
        let ca = TestCa::new(name);
        let dir = tempfile::tempdir().unwrap();
        ca.write(&dir.path().join("ca.pem"));
        CaFile { ca, dir }
    }

    /// The CA certificate's file.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl std::ops::Deref for CaFile {
    type Target = TestCa;
    fn deref(&self) -> &TestCa {
        &self.ca
    }
}
