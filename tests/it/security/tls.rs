//! TLS on the port: gRPC and HTTP/1.1 over it, plaintext refused, the
//! certificate rotated without a restart, a broken file ignored, and a
//! start with a missing or broken file refused with its name.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use task_processor::{
    auth::{POLL_EVERY, Security},
    config::{AuthSettings, TlsSettings},
    errors::error_chain,
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use super::{Files, Pki, handshake, served_certificate, tls_channel, tls_client};
use crate::support::{create, eventually, request};

fn write_server_files(files: &Files, pki: &Pki, serial: u64) -> super::Pair {
    let pair = pki.server(serial);
    files.write("server.key", &pair.key_pem);
    files.write("server.crt", &pair.cert_pem);
    pair
}

#[tokio::test]
async fn tls_serves_grpc_and_http_and_refuses_plaintext() {
    let pki = Pki::new("test CA");
    let files = Files::new();
    write_server_files(&files, &pki, 1);
    let server = super::start_secure(&files, false, false).await;

    let mut client = tls_client(server.address, &pki.ca_pem(), None).await;
    let task = create(&mut client, "over TLS", "echo", None).await;
    assert!(!task.id.is_empty());
    let mut health = HealthClient::new(
        tls_channel(server.address, &pki.ca_pem(), None)
            .await
            .expect("TLS"),
    );
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("health over TLS");

    // HTTP/1.1 over TLS (ALPN http/1.1): the gateway's /health.
    let stream = handshake(server.address, &pki.ca_pem(), None, b"http/1.1")
        .await
        .expect("a TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1");
    tokio::spawn(connection);
    let answer = sender
        .send_request(
            http::Request::get("/health")
                .header("host", "127.0.0.1")
                .body(Empty::<Bytes>::new())
                .expect("a request"),
        )
        .await
        .expect("an answer");
    assert_eq!(answer.status(), 200);
    let body = answer
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    assert_eq!(&body[..], br#"{"status":"ok"}"#);

    // A plaintext client gets no answer from a TLS port.
    let mut plaintext = task_processor::pb::task_service_client::TaskServiceClient::new(
        tonic::transport::Channel::from_shared(server.url())
            .expect("a URI")
            .connect_lazy(),
    );
    let refused = tokio::time::timeout(
        crate::support::DEADLINE,
        plaintext.create_task(request("plain", "echo", None)),
    )
    .await
    .expect("refused in time");
    assert!(
        refused.is_err(),
        "a plaintext call on a TLS port: {refused:?}"
    );
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_and_a_broken_one_is_ignored() {
    let pki = Pki::new("test CA");
    let files = Files::new();
    let first = write_server_files(&files, &pki, 1);
    let server = super::start_secure(&files, false, false).await;
    let ca = pki.ca_pem();
    assert_eq!(
        served_certificate(server.address, &ca, b"h2").await,
        Ok(first.der.clone())
    );

    // cert-manager writes a new pair.
    let second = write_server_files(&files, &pki, 2);
    eventually("the rotated certificate", || {
        let (ca, expected) = (ca.clone(), second.der.clone());
        async move {
            (served_certificate(server.address, &ca, b"h2").await == Ok(expected)).then_some(())
        }
    })
    .await;

    // A broken certificate is not served: for several polls, new
    // connections still get the last good one.
    files.write("server.crt", "-----BEGIN CERTIFICATE-----\nbroken\n");
    let watched_until = tokio::time::Instant::now() + POLL_EVERY * 3;
    while tokio::time::Instant::now() < watched_until {
        assert_eq!(
            served_certificate(server.address, &ca, b"h2").await,
            Ok(second.der.clone()),
            "the last good certificate while the file is broken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // And a good one after it is taken again.
    let third = write_server_files(&files, &pki, 3);
    eventually("the certificate after the broken one", || {
        let (ca, expected) = (ca.clone(), third.der.clone());
        async move {
            (served_certificate(server.address, &ca, b"h2").await == Ok(expected)).then_some(())
        }
    })
    .await;
    // Calls work on it.
    let mut client = tls_client(server.address, &ca, None).await;
    create(&mut client, "after rotation", "echo", None).await;
}

#[tokio::test]
async fn a_start_with_a_missing_or_broken_file_names_it() {
    let pki = Pki::new("test CA");
    let files = Files::new();
    let pair = pki.server(1);
    let cert = files.write("server.crt", &pair.cert_pem);
    let key = files.write("server.key", &pair.key_pem);
    let broken = files.write("broken.pem", "not PEM at all");
    let other_key = files.write("other.key", &pki.server(2).key_pem);
    let missing = files.path("missing.pem");
    let tls =
        |cert: &std::path::Path, key: &std::path::Path, ca: Option<&std::path::Path>| TlsSettings {
            cert_file: Some(cert.to_owned()),
            key_file: Some(key.to_owned()),
            client_ca_file: ca.map(ToOwned::to_owned),
        };
    for (settings, auth, expected) in [
        (
            tls(&missing, &key, None),
            AuthSettings::default(),
            missing.clone(),
        ),
        (
            tls(&cert, &missing, None),
            AuthSettings::default(),
            missing.clone(),
        ),
        (
            tls(&broken, &key, None),
            AuthSettings::default(),
            broken.clone(),
        ),
        (
            tls(&cert, &broken, None),
            AuthSettings::default(),
            broken.clone(),
        ),
        (
            tls(&cert, &other_key, None),
            AuthSettings::default(),
            other_key.clone(),
        ),
        (
            tls(&cert, &key, Some(&missing)),
            AuthSettings::default(),
            missing.clone(),
        ),
        (
            tls(&cert, &key, Some(&broken)),
            AuthSettings::default(),
            broken.clone(),
        ),
        (
            TlsSettings::default(),
            AuthSettings {
                tenant_quotas: Default::default(),
                principals_file: Some(missing.clone()),
                protect_reflection: false,
            },
            missing.clone(),
        ),
        (
            TlsSettings::default(),
            AuthSettings {
                tenant_quotas: Default::default(),
                principals_file: Some(files.write("bad.yaml", "principals: [")),
                protect_reflection: false,
            },
            files.path("bad.yaml"),
        ),
    ] {
        let error = match Security::load(&settings, &auth) {
            Ok(_) => panic!("{settings:?} {auth:?} must be refused"),
            Err(error) => error_chain(&error),
        };
        assert!(
            error.contains(&expected.display().to_string()),
            "{error:?} names {}",
            expected.display()
        );
    }
    assert!(Security::load(&tls(&cert, &key, None), &AuthSettings::default()).is_ok());
}
