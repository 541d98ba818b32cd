//! Shared harness of the S3 integration tests: starts the real `cairn serve` binary on a free 127.0.0.1
//! port in a temp dir (port 0; the port is read from the "listening on" line) and runs real clients
//! against it. Nothing is mocked.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const ACCESS: &str = "cairntestroot";
pub const SECRET: &str = "cairn-test-secret-key-0123456789";

pub struct Server {
    pub dir: tempfile::TempDir,
    pub endpoint: String,
    pub port: u16,
    /// PEM of the test CA when serving HTTPS.
    pub ca: Option<PathBuf>,
    child: Child,
}

pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[], false)
    }

    pub fn start_tls() -> Server {
        Server::start_with(&[], true)
    }

    pub fn start_with(extra: &[&str], tls: bool) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let mut cmd = Command::new(cairn_bin());
        cmd.arg("serve")
            .arg("--data")
            .arg(&data)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(extra);
        let mut ca = None;
        if tls {
            let (ca_pem, cert, key) = make_tls(dir.path());
            cmd.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
            ca = Some(ca_pem);
        }
        cmd.env("CAIRN_ROOT_ACCESS_KEY", ACCESS)
            .env("CAIRN_ROOT_SECRET_KEY", SECRET)
            .env(
                "CAIRN_LOG",
                std::env::var("CAIRN_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn cairn serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut endpoint = None;
        for line in lines.by_ref() {
            let line = line.expect("read server stdout");
            if let Some(url) = line.strip_prefix("cairn: listening on ") {
                endpoint = Some(url.trim().to_owned());
                break;
            }
        }
        let endpoint = endpoint.unwrap_or_else(|| {
            let status = child.wait().ok();
            panic!("cairn serve exited before listening ({status:?})")
        });
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let port = endpoint.rsplit(':').next().unwrap().parse().unwrap();
        Server {
            dir,
            endpoint,
            port,
            ca,
            child,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch directory for test files, inside the server's temp dir (cleaned up with it).
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Environment for AWS-SDK-based clients (aws cli, boto3).
    pub fn aws_env(&self, cmd: &mut Command) {
        cmd.env("AWS_ACCESS_KEY_ID", ACCESS)
            .env("AWS_SECRET_ACCESS_KEY", SECRET)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_PAGER", "")
            .env("ENDPOINT", &self.endpoint);
        match &self.ca {
            Some(ca) => cmd.env("AWS_CA_BUNDLE", ca),
            None => cmd.env_remove("AWS_CA_BUNDLE"),
        };
    }

    /// Runs Debian's aws cli v2 (not a pip-installed v1 that may come first on PATH).
    pub fn aws(&self, args: &[&str]) -> Output {
        let bin = if Path::new("/usr/bin/aws").exists() {
            "/usr/bin/aws"
        } else {
            "aws"
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--endpoint-url").arg(&self.endpoint).args(args);
        self.aws_env(&mut cmd);
        run(cmd)
    }

    pub fn aws_ok(&self, args: &[&str]) -> String {
        let out = self.aws(args);
        assert_ok(&out, &format!("aws {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `tests/clients/<script>` with python3 (boto3).
    pub fn python(&self, script: &str, args: &[&str]) -> Output {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/clients")
            .join(script);
        let mut cmd = Command::new("python3");
        cmd.arg(path).args(args);
        self.aws_env(&mut cmd);
        run(cmd)
    }

    pub fn python_ok(&self, script: &str, args: &[&str]) -> String {
        let out = self.python(script, args);
        assert_ok(&out, &format!("python3 {script} {args:?}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Is the process still alive?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(mut cmd: Command) -> Output {
    let desc = format!("{cmd:?}");
    cmd.stdin(Stdio::null());
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e} (is the client installed? see .ci/run)"))
}

pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deterministic pseudo-random bytes (xorshift), so files differ but tests are reproducible.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Writes a test CA and a server certificate for 127.0.0.1 / localhost; returns (ca.pem, cert.pem, key.pem).
pub fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cairn test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &issuer).unwrap();
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let (ca_p, cert_p, key_p) = (
        tls.join("ca.pem"),
        tls.join("cert.pem"),
        tls.join("key.pem"),
    );
    std::fs::write(&ca_p, ca_cert.pem()).unwrap();
    std::fs::write(&cert_p, cert.pem()).unwrap();
    std::fs::write(&key_p, key.serialize_pem()).unwrap();
    (ca_p, cert_p, key_p)
}

/// Sends raw bytes over TCP and returns whatever the server answered (for malformed-request tests). The server
/// may answer and close before the whole request is sent: a failed write is not an error here.
pub fn raw_http(port: u16, request: &[u8], close_after_send: bool) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(request);
    if close_after_send {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}
