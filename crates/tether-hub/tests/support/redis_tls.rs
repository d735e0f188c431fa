//! A `redis-server` of the test's own that speaks only TLS (`--port 0 --tls-port P`), with
//! a CA and a server certificate made by rcgen for the test, and a second, unrelated CA to
//! show that a server signed by someone else is refused.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::eventually;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A self-signed CA; returns its PEM and an issuer for leaf certificates.
fn ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

pub struct RedisTlsServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisTlsServer {
    pub async fn start() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("tether-redis-tls-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_pem, issuer) = ca("tether test CA");
        let (other_pem, _) = ca("someone else's CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other_pem).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
        let child = Command::new("redis-server")
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--tls-cert-file", &path("server.pem")])
            .args(["--tls-key-file", &path("server.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let server = Self {
            port,
            dir,
            child: Some(child),
        };
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert!(
            eventually(Duration::from_secs(10), || async move {
                TcpStream::connect(addr).await.is_ok()
            })
            .await,
            "redis-server with TLS did not start"
        );
        server
    }

    /// The URL trusting the CA that signed this server.
    pub fn url(&self) -> String {
        self.url_trusting("ca.pem")
    }

    /// The URL trusting a CA that did not sign this server.
    pub fn url_trusting_another_ca(&self) -> String {
        self.url_trusting("other-ca.pem")
    }

    fn url_trusting(&self, ca: &str) -> String {
        format!(
            "rediss://127.0.0.1:{}/?ca={}",
            self.port,
            self.dir.join(ca).display()
        )
    }
}

impl Drop for RedisTlsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
