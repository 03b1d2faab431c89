//! A worker that vanishes is noticed, and its tasks run again: a killed
//! process (its connection closed under it), and a half-open connection
//! (a frozen process, a cut network: nothing closes, nothing answers),
//! found by HTTP/2 keepalive. Through a TCP proxy between the worker and
//! the server: a fake of the network, not of anything we own.

use std::time::Duration;

use serde_json::json;
use task_processor::{config::Config, pb};
use tonic::transport::Endpoint;

use super::{RawWorker, hello, worker_config};
use crate::{
    proxy::Proxy,
    support::{TestServer, create, wait_for_status},
};

contract_tests!(
    a_killed_workers_task_runs_again_on_another_worker,
    a_silent_worker_is_found_by_keepalive_and_its_task_runs_again,
);

/// A worker stream through `proxy`.
async fn worker_through(proxy: &Proxy, name: &str) -> RawWorker {
    let channel = Endpoint::from_shared(format!("http://{}", proxy.address()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect through the proxy");
    RawWorker::open(channel, hello(&["remote"], 1, name))
        .await
        .expect("hello accepted")
}

/// A worker through a proxy takes a task; `lose` takes its network away;
/// the task runs again, as attempt 2, on a worker connected directly.
async fn runs_again_after(config: Config, lose: impl FnOnce(&Proxy)) {
    let server = TestServer::start_with(config).await;
    let mut client = server.client().await;
    let proxy = Proxy::start(server.address).await;
    let task = create(&mut client, "survives", "remote", None).await;
    let mut lost = worker_through(&proxy, "lost").await;
    let run = lost.next_assignment().await;
    assert_eq!(run.attempt, 1);
    lose(&proxy);
    let mut survivor = RawWorker::connect(&server, &["remote"], 1, "survivor").await;
    let again = survivor.next_assignment().await;
    assert_eq!((again.id.as_str(), again.attempt), (task.id.as_str(), 2));
    survivor
        .complete(&again.id, again.attempt, json!("ok"))
        .await;
    wait_for_status(&client, &task.id, pb::TaskStatus::Completed).await;
}

async fn a_killed_workers_task_runs_again_on_another_worker() {
    // As when the worker's process is killed: its socket closes.
    runs_again_after(worker_config(), Proxy::cut).await;
}

async fn a_silent_worker_is_found_by_keepalive_and_its_task_runs_again() {
    // Nothing is closed and nothing gets through: only the server's
    // keepalive pings, unanswered, can tell.
    let config = Config {
        keepalive_interval: Duration::from_millis(500),
        keepalive_timeout: Duration::from_millis(500),
        ..worker_config()
    };
    runs_again_after(config, Proxy::silence).await;
}
