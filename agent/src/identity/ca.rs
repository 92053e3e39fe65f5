//! The `local` CA: a signing certificate and key in a directory shared by the cluster, and a trust
//! bundle that may hold several roots (so the root can be rotated). Layout, as Istio's `cacerts`:
//! `ca-cert.pem` (signing certificate), `ca-key.pem` (its PKCS#8 key), `root-cert.pem` (trust bundle;
//! defaults to `ca-cert.pem`).
use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject as _};

use super::Identity;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source} (create the CA with `sluice ca init --dir <dir>`)")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("CA file {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("CA directory {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("minting a certificate for {identity}: {detail}")]
    Mint { identity: String, detail: String },
    #[error("CA directory {path} already holds a CA; refusing to overwrite it")]
    Exists { path: PathBuf },
}

/// A minted leaf: chain (leaf first), key, expiry.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub not_after: SystemTime,
}

/// The signing CA and the trust bundle.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    ca_cert: CertificateDer<'static>,
    /// Every trusted root (DER).
    pub roots: Vec<CertificateDer<'static>>,
}

fn read(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Read { path: path.to_path_buf(), source })
}

fn certs_from_pem(path: &Path, text: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(text.as_bytes()).collect();
    let certs = certs.map_err(|e| CaError::Parse { path: path.to_path_buf(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(CaError::Parse { path: path.to_path_buf(), detail: "no PEM certificate found".into() });
    }
    Ok(certs)
}

/// Whether [`write_private`] may replace an existing file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Replace {
    Yes,
    No,
}

/// Mode of every private key file: owner read/write only.
pub const PRIVATE_KEY_MODE: u32 = 0o600;

/// Writes a private key to `path` so that no other user can ever open it: the file is created
/// with mode [`PRIVATE_KEY_MODE`] (`O_CREAT|O_EXCL`, 0600; a umask can only narrow it), never
/// created wider and chmod'ed after. `Replace::No` creates `path` itself and fails if it exists;
/// `Replace::Yes` writes a new file beside it and renames it over `path`, so the old key (or an
/// existing file's wider mode) is never reused.
fn write_private(path: &Path, contents: &[u8], replace: Replace) -> std::io::Result<()> {
    let target = match replace {
        Replace::No => path.to_path_buf(),
        Replace::Yes => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
        }
    };
    if replace == Replace::Yes {
        // A leftover of this very process id (a crash): never ours to keep.
        match std::fs::remove_file(&target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(PRIVATE_KEY_MODE).open(&target)?;
    let written = f.write_all(contents).and_then(|()| f.sync_all());
    let done = written.and_then(|()| match replace {
        Replace::No => Ok(()),
        Replace::Yes => std::fs::rename(&target, path),
    });
    if done.is_err() {
        let _ = std::fs::remove_file(&target);
    }
    done
}

impl LocalCa {
    /// Creates a new self-signed root for `trust_domain` in `dir` (refuses to overwrite).
    pub fn init(dir: &Path, trust_domain: &str, lifetime: Duration) -> Result<(), CaError> {
        let w = |source| CaError::Write { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(w)?;
        if dir.join("ca-key.pem").exists() {
            return Err(CaError::Exists { path: dir.to_path_buf() });
        }
        let mint = |detail: rcgen::Error| CaError::Mint {
            identity: format!("root CA of {trust_domain}"),
            detail: detail.to_string(),
        };
        let key = KeyPair::generate().map_err(mint)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, format!("sluice root CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + lifetime).into();
        let cert = params.self_signed(&key).map_err(mint)?;
        // The key first, created exclusively: a concurrent `init` loses here, before any
        // certificate is written for a key that is not the one on disk.
        let key_path = dir.join("ca-key.pem");
        write_private(&key_path, key.serialize_pem().as_bytes(), Replace::No).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::Exists { path: dir.to_path_buf() }
            } else {
                CaError::Write { path: key_path.clone(), source }
            }
        })?;
        std::fs::write(dir.join("ca-cert.pem"), cert.pem()).map_err(w)?;
        std::fs::write(dir.join("root-cert.pem"), cert.pem()).map_err(w)?;
        Ok(())
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<LocalCa, CaError> {
        let cert_path = dir.join("ca-cert.pem");
        let key_path = dir.join("ca-key.pem");
        let root_path = dir.join("root-cert.pem");
        let cert_pem = read(&cert_path)?;
        let ca_cert = certs_from_pem(&cert_path, &cert_pem)?.remove(0);
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|e| CaError::Parse { path: key_path.clone(), detail: e.to_string() })?;
        let issuer = Issuer::from_ca_cert_der(&ca_cert, key)
            .map_err(|e| CaError::Parse { path: cert_path.clone(), detail: e.to_string() })?;
        let roots = if root_path.exists() {
            certs_from_pem(&root_path, &read(&root_path)?)?
        } else {
            vec![ca_cert.clone()]
        };
        Ok(LocalCa { issuer, ca_cert, roots })
    }

    /// Mints a leaf certificate for `id` valid for `lifetime` (ECDSA P-256, URI SAN, both EKUs).
    pub fn mint(&self, id: &Identity, lifetime: Duration) -> Result<Leaf, CaError> {
        self.mint_uri(&id.to_string(), lifetime).map(|(leaf, _, _)| leaf)
    }

    /// Issues a certificate for any URI SAN and writes `<out>.crt` (leaf PEM) and `<out>.key`.
    pub fn issue_files(&self, uri: &str, lifetime: Duration, out: &Path) -> Result<(), CaError> {
        let (_, cert_pem, key_pem) = self.mint_uri(uri, lifetime)?;
        let (crt, key) = (out.with_extension("crt"), out.with_extension("key"));
        write_private(&key, key_pem.as_bytes(), Replace::Yes)
            .map_err(|source| CaError::Write { path: key, source })?;
        std::fs::write(&crt, cert_pem).map_err(|source| CaError::Write { path: crt, source })
    }

    /// Mints a leaf for `uri`; also returns the certificate and key as PEM.
    fn mint_uri(&self, uri: &str, lifetime: Duration) -> Result<(Leaf, String, String), CaError> {
        let err = |e: rcgen::Error| CaError::Mint { identity: uri.to_string(), detail: e.to_string() };
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let uri = uri.to_string().try_into().map_err(err)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.distinguished_name = DistinguishedName::new();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        let not_after = now + lifetime;
        // Tolerate small clock differences between nodes.
        params.not_before = (now - Duration::from_secs(30)).into();
        params.not_after = not_after.into();
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let mut chain = vec![cert.der().clone()];
        if !self.roots.contains(&self.ca_cert) {
            // An intermediate signing CA: send it along.
            chain.push(self.ca_cert.clone());
        }
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        Ok((
            Leaf { chain, key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(), not_after },
            cert_pem,
            key_pem,
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn init_load_mint_and_refuse_overwrite() {
        let dir = tempfile::tempdir().expect("tempdir");
        LocalCa::init(dir.path(), "cluster.local", Duration::from_secs(3600)).expect("init");
        let e = LocalCa::init(dir.path(), "cluster.local", Duration::from_secs(3600))
            .expect_err("second init refused");
        assert!(matches!(e, CaError::Exists { .. }));
        let ca = LocalCa::load(dir.path()).expect("load");
        assert_eq!(ca.roots.len(), 1);
        let id = Identity::new("cluster.local", "shop", "web");
        let leaf = ca.mint(&id, Duration::from_secs(60)).expect("mint");
        let (_, x) = x509_parser::parse_x509_certificate(&leaf.chain[0]).expect("parse");
        let sans = x.subject_alternative_name().expect("ext").expect("present");
        let uris: Vec<String> = sans
            .value
            .general_names
            .iter()
            .filter_map(|g| match g {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(uris, vec![id.to_string()]);
    }

    /// Serializes the tests that change the process's umask (it is process-wide).
    pub(crate) static UMASK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

    /// Runs `f` with umask 0, so any mode it checks comes from the code, not from the umask.
    pub(crate) fn with_open_umask<R>(f: impl FnOnce() -> R) -> R {
        use nix::sys::stat::{Mode, umask};
        let _guard = UMASK.lock();
        let old = umask(Mode::empty());
        let r = f();
        umask(old);
        r
    }

    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn key_files_are_created_0600_whatever_the_umask() {
        with_open_umask(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            LocalCa::init(dir.path(), "cluster.local", Duration::from_secs(3600)).expect("init");
            assert_eq!(mode(&dir.path().join("ca-key.pem")), 0o600, "ca-key.pem");
            let ca = LocalCa::load(dir.path()).expect("load");
            let out = dir.path().join("leaf");
            // An existing key file with a wide mode is replaced, not written into.
            std::fs::write(out.with_extension("key"), "old").expect("old key");
            assert_eq!(mode(&out.with_extension("key")), 0o666, "the umask is open in this test");
            ca.issue_files("spiffe://cluster.local/ns/a/sa/b", Duration::from_secs(60), &out).expect("issue");
            assert_eq!(mode(&out.with_extension("key")), 0o600, "leaf key");
            let key = std::fs::read_to_string(out.with_extension("key")).expect("read key");
            assert!(key.contains("PRIVATE KEY"), "{key}");
            let left: Vec<_> = std::fs::read_dir(dir.path())
                .expect("ls")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".tmp"))
                .collect();
            assert!(left.is_empty(), "temporary files left: {left:?}");
        });
    }

    #[test]
    fn missing_ca_names_the_file_and_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = LocalCa::load(dir.path()).err().expect("missing").to_string();
        assert!(e.contains("ca-cert.pem") && e.contains("sluice ca init"), "{e}");
    }
}
