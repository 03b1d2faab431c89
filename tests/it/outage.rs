//! A PostgreSQL outage under a running server, through a proxy that cuts
//! or silences the network: creates, reads and cancels answer
//! `UNAVAILABLE` quickly instead of hanging, the task service's health
//! and `/readyz` say so while the process's stay up, the server comes back
//! by itself, and no create answered OK is lost.

use std::{net::SocketAddr, time::Duration};

use serde_json::json;
use task_processor::pb::{self, task_service_client::TaskServiceClient};
use tonic::{Code, transport::Channel};

use crate::{
    process::start_binary,
    proxy::Proxy,
    stores::{fresh_postgres_schema, postgres_available},
    support::{eventually, missing_tasks, request, wait_for_status},
};

/// How long a call may take during the outage before the test calls it a
/// hang. The contract wants creates answered within 2 s; before the fix
/// every call waited 10 s for a pooled connection. Generous, so a loaded
/// machine does not fail the test.
const OUTAGE_PATIENCE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_network_to_postgres_is_unavailable_then_heals_and_loses_nothing() {
    outage_then_recovery("outage::cut", Proxy::cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_network_to_postgres_is_unavailable_then_heals_and_loses_nothing() {
    outage_then_recovery("outage::silent", Proxy::silence).await;
}

async fn outage_then_recovery(test: &str, fault: fn(&Proxy)) {
    if !postgres_available(test) {
        return;
    }
    let direct = fresh_postgres_schema().await;
    let proxy = Proxy::start(postgres_address(&direct)).await;
    let through_proxy = direct.replacen(&authority_of(&direct), &proxy.address().to_string(), 1);
    let process = start_binary(&["--store", through_proxy.as_str()], &[]);
    let mut client = process.client().await;

    let mut acknowledged = Vec::new();
    for number in 0..5 {
        acknowledged.push(create_echo(&mut client, number).await.expect("created"));
    }
    let long = client
        .create_task(request("long", "sleep", Some(json!({"seconds": 3600}))))
        .await
        .expect("created")
        .into_inner();
    acknowledged.push(long.id.clone());
    wait_for_status(&client, &long.id, pb::TaskStatus::Running).await;

    fault(&proxy);
    for number in 0..3 {
        let refused = create_echo(&mut client, 100 + number).await;
        assert_eq!(
            refused,
            Err(Code::Unavailable),
            "a create during the outage"
        );
    }
    let read = in_time(client.get_task(pb::GetTaskRequest {
        id: acknowledged[0].clone(),
    }))
    .await;
    assert_eq!(
        read.err(),
        Some(Code::Unavailable),
        "a get during the outage"
    );
    let listed = in_time(client.list_tasks(pb::ListTasksRequest::default())).await;
    assert_eq!(
        listed.err(),
        Some(Code::Unavailable),
        "a list during the outage"
    );
    let cancelled = in_time(client.cancel_task(pb::CancelTaskRequest {
        id: long.id.clone(),
    }))
    .await;
    assert_eq!(
        cancelled.err(),
        Some(Code::Unavailable),
        "a cancel during the outage"
    );
    process.expect_store_failure_reported().await;

    proxy.restore();
    process.expect_store_recovery_reported().await;
    let after = eventually("a create succeeds after the outage", || {
        let mut client = client.clone();
        async move { create_echo(&mut client, 200).await.ok() }
    })
    .await;
    acknowledged.push(after);

    let lost = missing_tasks(&mut client, &acknowledged).await;
    assert!(lost.is_empty(), "acknowledged creates lost: {lost:?}");
    for id in acknowledged.iter().filter(|id| **id != long.id) {
        wait_for_status(&client, id, pb::TaskStatus::Completed).await;
    }
}

async fn create_echo(
    client: &mut TaskServiceClient<Channel>,
    number: usize,
) -> Result<String, Code> {
    let create = request(&format!("echo {number}"), "echo", Some(json!(number)));
    in_time(client.create_task(create))
        .await
        .map(|task| task.id)
}

/// The call's answer, or a failed test when it takes longer than
/// [`OUTAGE_PATIENCE`].
async fn in_time<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Code> {
    match tokio::time::timeout(OUTAGE_PATIENCE, call).await {
        Ok(answer) => answer
            .map(tonic::Response::into_inner)
            .map_err(|status| status.code()),
        Err(_) => panic!("a call got no answer within {OUTAGE_PATIENCE:?}"),
    }
}

/// `host:port` of a `postgres://user@host:port/…` URL.
fn authority_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    authority.rsplit('@').next().unwrap_or(authority).to_owned()
}

fn postgres_address(url: &str) -> SocketAddr {
    let authority = authority_of(url);
    let with_port = if authority.contains(':') {
        authority
    } else {
        format!("{authority}:5432")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .expect("resolvable")
        .next()
        .expect("an address")
}
