//! Throwaway certificates for the TLS tests, made at test time with `/usr/bin/openssl` (the tool
//! operators use; no extra crate) in a temporary directory: a CA, a server certificate for
//! 127.0.0.1 / localhost and client certificates, all P-256 keys in PEM, valid for two days.
//! Any openssl failure panics with its stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const OPENSSL: &str = "/usr/bin/openssl";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(OPENSSL)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {OPENSSL} (Debian package openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A self-signed CA in `dir`, named `<name>.pem` / `<name>.key`.
#[derive(Debug, Clone)]
pub struct Ca {
    dir: PathBuf,
    pub cert: PathBuf,
    key: PathBuf,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_path_buf(),
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// A leaf certificate `<leaf>.pem` / `<leaf>.key` signed by this CA with the given extended
    /// key usage (`serverAuth` or `clientAuth`) and subject alternative names.
    fn issue(&self, leaf: &str, eku: &str, san: Option<&str>) -> Issued {
        let (cert, key, csr, ext) = (
            format!("{leaf}.pem"),
            format!("{leaf}.key"),
            format!("{leaf}.csr"),
            format!("{leaf}.ext"),
        );
        let mut extensions = format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage={eku}\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid\n"
        );
        if let Some(san) = san {
            extensions.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(self.dir.join(&ext), extensions).unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={leaf}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &self.cert.display().to_string(),
                "-CAkey",
                &self.key.display().to_string(),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }

    /// A server certificate for `127.0.0.1` and `localhost`. It is a client certificate too:
    /// etcd's built-in grpc-gateway dials the server with it under `--client-cert-auth`.
    pub fn server(&self, leaf: &str) -> Issued {
        self.issue(
            leaf,
            "serverAuth,clientAuth",
            Some("IP:127.0.0.1,DNS:localhost"),
        )
    }

    /// A client certificate (CN = `leaf`).
    pub fn client(&self, leaf: &str) -> Issued {
        self.issue(leaf, "clientAuth", None)
    }
}

/// Everything a TLS test needs: the store's CA with a server and a client certificate, and an
/// unrelated CA (with its own client certificate) for the failure cases.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub server: Issued,
    pub client: Issued,
    pub other_ca: Ca,
    pub other_client: Issued,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("np-etcd-pki-")
            .tempdir()
            .unwrap();
        let ca = Ca::new(dir.path(), "ca");
        let server = ca.server("server");
        let client = ca.client("nodeplane-client");
        let other_ca = Ca::new(dir.path(), "other-ca");
        let other_client = other_ca.client("stranger");
        Pki {
            dir,
            ca,
            server,
            client,
            other_ca,
            other_client,
        }
    }
}
