//! mTLS: a client without a certificate, or with one from another CA, is
//! refused at the handshake; a client certificate names its principal by
//! its URI SAN, else its CN.

use task_processor::pb;
use tonic::Code;

use super::{Files, Pki, principals_yaml, tls_channel, tls_client};
use crate::support::request;

#[tokio::test]
async fn client_certificates_are_required_and_name_their_principal() {
    let servers = Pki::new("server CA");
    let clients = Pki::new("client CA");
    let strangers = Pki::new("another CA");
    let files = Files::new();
    let pair = servers.server(1);
    files.write("server.key", &pair.key_pem);
    files.write("server.crt", &pair.cert_pem);
    files.write("client-ca.crt", &clients.ca_pem());
    files.write(
        "principals.yaml",
        &principals_yaml(&[
            ("spiffe://test/ns/jobs/sa/reader", None, &["read"]),
            ("cn-only-writer", None, &["write"]),
        ]),
    );
    let server = super::start_secure(&files, true, false).await;
    let ca = servers.ca_pem();

    // No certificate, or one no configured CA signed: the server ends the
    // handshake (with TLS 1.3 the client learns it on its first read), so
    // no call gets through.
    let stranger = strangers.client(Some("spiffe://test/ns/jobs/sa/reader"), "x");
    for identity in [None, Some(&stranger)] {
        if let Ok(channel) = tls_channel(server.address, &ca, identity).await {
            let status = pb::task_service_client::TaskServiceClient::new(channel)
                .list_tasks(pb::ListTasksRequest::default())
                .await
                .expect_err("no call without a trusted client certificate");
            assert!(
                !matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ),
                "refused by the handshake, not by a principal: {status:?}"
            );
        }
    }

    // The URI SAN names the principal, not the CN.
    let reader_certificate =
        clients.client(Some("spiffe://test/ns/jobs/sa/reader"), "cn-only-writer");
    let mut reader = tls_client(server.address, &ca, Some(&reader_certificate)).await;
    reader
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect("a reader lists");
    let refused = reader
        .create_task(request("no", "echo", None))
        .await
        .expect_err("a reader cannot create");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        refused.message(),
        "principal spiffe://test/ns/jobs/sa/reader lacks role write for CreateTask"
    );

    // Without a URI SAN, the CN does.
    let writer_certificate = clients.client(None, "cn-only-writer");
    let mut writer = tls_client(server.address, &ca, Some(&writer_certificate)).await;
    writer
        .create_task(request("yes", "echo", None))
        .await
        .expect("a writer creates");

    // A valid certificate naming no principal is unauthenticated.
    let nobody = clients.client(None, "nobody");
    let mut nobody = tls_client(server.address, &ca, Some(&nobody)).await;
    let refused = nobody
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .expect_err("nobody is refused");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused.message().contains("nobody"),
        "{}",
        refused.message()
    );
}
