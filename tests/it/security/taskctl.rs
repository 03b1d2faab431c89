//! taskctl against a TLS server with mTLS and principals: `https://` and
//! `--ca`, a token from `--token`, `TASKCTL_TOKEN` or `--token-file`, and
//! `--cert`/`--key` naming a principal.

use super::{Files, Pki, principals_yaml};
use crate::taskctl::{command, run};

#[tokio::test]
async fn taskctl_with_a_ca_a_token_and_a_client_certificate() {
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let files = Files::new();
    let pair = servers.server(1);
    files.write("server.key", &pair.key_pem);
    files.write("server.crt", &pair.cert_pem);
    files.write("client-ca.crt", &clients.ca_pem());
    files.write(
        "principals.yaml",
        &principals_yaml(&[
            ("writer", Some("writer-token"), &["write"]),
            ("reader", Some("reader-token"), &["read"]),
            ("spiffe://test/taskctl", None, &["read"]),
        ]),
    );
    let server = super::start_secure(&files, true, false).await;
    let ca = files.write("ca.crt", &servers.ca_pem());
    let identity = clients.client(Some("spiffe://test/taskctl"), "taskctl");
    let cert = files.write("client.crt", &identity.cert_pem);
    let key = files.write("client.key", &identity.key_pem);
    let token_file = files.write("token", "writer-token\n");
    let https = format!("https://{}", server.address);
    let plain = server.address.to_string();
    let (ca, cert, key, token_file) = (
        ca.display().to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        token_file.display().to_string(),
    );
    let tls_args = [
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];

    // A token names the principal: the writer creates.
    let mut args = tls_args.to_vec();
    args.extend([
        "--token",
        "writer-token",
        "create",
        "by-token",
        "--kind",
        "echo",
    ]);
    run(command(&https, &args)).await.expect_code(0);

    // From a file, and with TLS implied by --ca on a host:port address.
    let mut args = tls_args.to_vec();
    args.extend([
        "--token-file",
        token_file.as_str(),
        "create",
        "by-file",
        "--kind",
        "echo",
    ]);
    run(command(&plain, &args)).await.expect_code(0);

    // From the environment: the reader lists, and may not create.
    let mut args = tls_args.to_vec();
    args.push("list");
    let mut listing = command(&https, &args);
    listing.env("TASKCTL_TOKEN", "reader-token");
    let listed = run(listing).await;
    listed.expect_code(0);
    assert!(listed.stdout.contains("by-token"), "{listed:?}");
    let mut args = tls_args.to_vec();
    args.extend(["create", "refused", "--kind", "echo"]);
    let mut creating = command(&https, &args);
    creating.env("TASKCTL_TOKEN", "reader-token");
    let refused = run(creating).await;
    assert_ne!(refused.code, 0);
    assert!(
        refused
            .stderr
            .contains("principal reader lacks role write for CreateTask"),
        "{refused:?}"
    );

    // Without a token, the certificate names the principal (read only).
    let mut args = tls_args.to_vec();
    args.push("list");
    run(command(&https, &args)).await.expect_code(0);
    let mut args = tls_args.to_vec();
    args.extend(["create", "refused", "--kind", "echo"]);
    let refused = run(command(&https, &args)).await;
    assert!(
        refused
            .stderr
            .contains("principal spiffe://test/taskctl lacks role write"),
        "{refused:?}"
    );

    // Without the client certificate, or without the CA, no connection.
    let refused = run(command(
        &https,
        &["--ca", ca.as_str(), "--token", "writer-token", "list"],
    ))
    .await;
    assert_ne!(refused.code, 0, "{refused:?}");
    let refused = run(command(&https, &["--token", "writer-token", "list"])).await;
    assert_ne!(refused.code, 0, "{refused:?}");
}
