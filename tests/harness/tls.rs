//! A broker behind TLS for the end-to-end tests: tansu 0.6.0 cannot serve
//! TLS itself (its `--cert` and `--key` flags exclude each other), so
//! stunnel (Debian's `stunnel4`, installed by `.ci/run`) terminates TLS in
//! front of it, with a certificate from a throwaway CA made here. tansu
//! advertises stunnel's address, so every connection goes through TLS.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, KeyUsage, SubjectAlternativeName};
use openssl::x509::{X509, X509NameBuilder};

use super::{Process, free_port, tansu_bin};

/// A key for a test certificate (P-256: fast to make).
fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn certificate(name: &str, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
    let mut subject = X509NameBuilder::new().unwrap();
    subject.append_entry_by_text("CN", name).unwrap();
    let subject = subject.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(63, MsbOption::MAYBE_ZERO, false).unwrap();
    builder
        .set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    builder.set_subject_name(&subject).unwrap();
    builder.set_pubkey(key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    match issuer {
        None => {
            builder.set_issuer_name(&subject).unwrap();
            builder
                .append_extension(BasicConstraints::new().critical().ca().build().unwrap())
                .unwrap();
            builder
                .append_extension(KeyUsage::new().key_cert_sign().crl_sign().build().unwrap())
                .unwrap();
            builder.sign(key, MessageDigest::sha256()).unwrap();
        }
        Some((ca, ca_key)) => {
            builder.set_issuer_name(ca.subject_name()).unwrap();
            let san = SubjectAlternativeName::new()
                .ip("127.0.0.1")
                .dns("localhost")
                .build(&builder.x509v3_context(Some(ca), None))
                .unwrap();
            builder.append_extension(san).unwrap();
            builder.sign(ca_key, MessageDigest::sha256()).unwrap();
        }
    }
    builder.build()
}

/// The stunnel binary.
fn stunnel() -> &'static str {
    for bin in ["stunnel4", "stunnel"] {
        if Command::new(bin)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return bin;
        }
    }
    panic!("stunnel is not installed (Debian: apt-get install stunnel4; .ci/run does this)");
}

/// How the broker authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// TLS only.
    None,
    /// Mutual TLS: stunnel requires a client certificate from the CA.
    Certificate,
    /// SASL (tansu's `--authentication`).
    Sasl,
}

/// tansu behind a TLS-terminating stunnel.
pub struct TlsBroker {
    /// The TLS address clients use.
    pub address: String,
    /// The CA certificate clients trust (`ssl.ca.location`).
    pub ca: PathBuf,
    /// A client certificate and key from the CA (`ssl.certificate.location`,
    /// `ssl.key.location`), for mutual TLS.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    _tansu: Process,
    _stunnel: Process,
    _dir: tempfile::TempDir,
}

impl TlsBroker {
    /// Starts tansu and stunnel, authenticating clients as `auth` says.
    pub fn start(auth: ClientAuth) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_key, server_key, client_key) = (key(), key(), key());
        let ca = certificate("todo-eventd test CA", &ca_key, None);
        let server = certificate("localhost", &server_key, Some((&ca, &ca_key)));
        let client = certificate("todo-eventd", &client_key, Some((&ca, &ca_key)));
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.to_pem().unwrap()).unwrap();
        let write_pair = |name: &str, cert: &X509, key: &PKey<Private>| {
            let (cert_file, key_file) = (
                dir.path().join(format!("{name}.pem")),
                dir.path().join(format!("{name}.key")),
            );
            std::fs::write(&cert_file, cert.to_pem().unwrap()).unwrap();
            std::fs::write(&key_file, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
            (cert_file, key_file)
        };
        let (cert, key_file) = write_pair("server", &server, &server_key);
        let (client_cert, client_key) = write_pair("client", &client, &client_key);

        let (tls_port, plain_port) = (free_port(), free_port());
        let address = format!("127.0.0.1:{tls_port}");
        let mut tansu = Command::new(tansu_bin());
        tansu.args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{plain_port}"),
            "--advertised-listener-url",
            &format!("tcp://{address}"),
            "--storage-engine",
            "memory://tansu/",
        ]);
        if auth == ClientAuth::Sasl {
            tansu.arg("--authentication");
        }
        let tansu = spawn(tansu, dir.path(), "tansu");
        wait_for(&format!("127.0.0.1:{plain_port}"));

        let config = dir.path().join("stunnel.conf");
        let mut text = format!(
            "foreground = yes\npid =\n[kafka]\naccept = {address}\nconnect = 127.0.0.1:{plain_port}\ncert = {}\nkey = {}\n",
            cert.display(),
            key_file.display()
        );
        if auth == ClientAuth::Certificate {
            text.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\n",
                ca_file.display()
            ));
        }
        std::fs::write(&config, text).unwrap();
        let mut stunnel_cmd = Command::new(stunnel());
        stunnel_cmd.arg(&config);
        let stunnel = spawn(stunnel_cmd, dir.path(), "stunnel");
        wait_for(&address);
        Self {
            address,
            ca: ca_file,
            client_cert,
            client_key,
            _tansu: tansu,
            _stunnel: stunnel,
            _dir: dir,
        }
    }
}

fn spawn(mut command: Command, dir: &Path, name: &str) -> Process {
    let log = dir.join(format!("{name}.log"));
    let child = command
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("{name}.err"))).unwrap(),
        ))
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Process { child, log }
}

fn wait_for(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {address}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
