//! ListTasks: order, paging, filters, page tokens and stability while
//! tasks are created.

use std::collections::{HashMap, HashSet};

use serde_json::json;
use task_processor::{
    config::Config,
    pb::{self, task_service_client::TaskServiceClient},
};
use tonic::Code;

use crate::support::{
    Client, TestServer, assert_invalid_argument, request, test_config, wait_for_status,
};

/// gRPC's default receive limit, which tonic's client keeps too.
const DEFAULT_RECEIVE_LIMIT: usize = 4 * 1024 * 1024;

async fn list(client: &mut Client, list_request: pb::ListTasksRequest) -> pb::ListTasksResponse {
    client
        .list_tasks(list_request)
        .await
        .expect("listed")
        .into_inner()
}

/// Every task that matches, page by page; also returns the page sizes.
async fn list_all(
    client: &mut Client,
    mut list_request: pb::ListTasksRequest,
) -> (Vec<pb::Task>, Vec<usize>) {
    let mut tasks = Vec::new();
    let mut pages = Vec::new();
    loop {
        let page = list(client, list_request.clone()).await;
        pages.push(page.tasks.len());
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return (tasks, pages);
        }
        list_request.page_token = page.next_page_token;
    }
}

async fn create_labelled(
    client: &mut Client,
    name: &str,
    kind: &str,
    labels: &[(&str, &str)],
) -> pb::Task {
    let mut create_request = request(name, kind, None);
    create_request.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    client
        .create_task(create_request)
        .await
        .expect("created")
        .into_inner()
}

async fn pages_cover_every_task_oldest_first_exactly_once() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut created = Vec::new();
    for index in 0..120 {
        created.push(
            create_labelled(&mut client, &format!("t{index}"), "echo", &[])
                .await
                .id,
        );
    }
    let (tasks, pages) = list_all(&mut client, pb::ListTasksRequest::default()).await;
    assert_eq!(pages, vec![50, 50, 20], "page size 0 means 50");
    let listed: Vec<String> = tasks.into_iter().map(|task| task.id).collect();
    assert_eq!(listed, created, "creation order, no gaps, no repeats");

    let (_, pages) = list_all(
        &mut client,
        pb::ListTasksRequest {
            page_size: 7,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(pages.iter().sum::<usize>(), 120);
    assert!(pages.iter().all(|size| *size <= 7));
}

async fn page_size_is_capped_at_one_thousand() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for index in 0..1001 {
        create_labelled(&mut client, &format!("t{index}"), "echo", &[]).await;
    }
    let page = list(
        &mut client,
        pb::ListTasksRequest {
            page_size: 5000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(page.tasks.len(), 1000);
    assert!(!page.next_page_token.is_empty());
    let rest = list(
        &mut client,
        pb::ListTasksRequest {
            page_size: 5000,
            page_token: page.next_page_token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rest.tasks.len(), 1);
    assert!(
        rest.next_page_token.is_empty(),
        "the last page has no token"
    );
}

async fn filters_by_status_and_by_every_label_pair() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let a = create_labelled(
        &mut client,
        "a",
        "echo",
        &[("team", "red"), ("env", "prod")],
    )
    .await;
    let b = create_labelled(&mut client, "b", "fail", &[("team", "red")]).await;
    let c = create_labelled(
        &mut client,
        "c",
        "gate",
        &[("team", "blue"), ("env", "prod")],
    )
    .await;
    wait_for_status(&client, &a.id, pb::TaskStatus::Completed).await;
    wait_for_status(&client, &b.id, pb::TaskStatus::Failed).await;
    wait_for_status(&client, &c.id, pb::TaskStatus::Running).await;

    let names = |tasks: Vec<pb::Task>| tasks.into_iter().map(|task| task.name).collect::<Vec<_>>();
    let by_labels = |labels: &[(&str, &str)]| pb::ListTasksRequest {
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let by_statuses = |statuses: &[pb::TaskStatus]| pb::ListTasksRequest {
        statuses: statuses.iter().map(|status| *status as i32).collect(),
        ..Default::default()
    };
    assert_eq!(
        names(list_all(&mut client, by_labels(&[("team", "red")])).await.0),
        ["a", "b"]
    );
    assert_eq!(
        names(list_all(&mut client, by_labels(&[("env", "prod")])).await.0),
        ["a", "c"]
    );
    assert_eq!(
        names(
            list_all(&mut client, by_labels(&[("team", "red"), ("env", "prod")]))
                .await
                .0
        ),
        ["a"]
    );
    assert!(
        list_all(&mut client, by_labels(&[("team", "green")]))
            .await
            .0
            .is_empty()
    );
    assert_eq!(
        names(
            list_all(&mut client, by_statuses(&[pb::TaskStatus::Running]))
                .await
                .0
        ),
        ["c"]
    );
    assert_eq!(
        names(
            list_all(
                &mut client,
                by_statuses(&[pb::TaskStatus::Failed, pb::TaskStatus::Completed])
            )
            .await
            .0
        ),
        ["a", "b"]
    );
    let mut both = by_statuses(&[pb::TaskStatus::Completed, pb::TaskStatus::Running]);
    both.labels = HashMap::from([("env".into(), "prod".into())]);
    assert_eq!(names(list_all(&mut client, both).await.0), ["a", "c"]);
    server.gate.release(1);
}

async fn bad_list_requests_are_invalid_arguments() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    for _ in 0..3 {
        create_labelled(&mut client, "t", "echo", &[("team", "red")]).await;
    }
    let first = list(
        &mut client,
        pb::ListTasksRequest {
            page_size: 1,
            ..Default::default()
        },
    )
    .await;
    let token = first.next_page_token;
    assert!(!token.is_empty());

    let cases = vec![
        (
            "page_size",
            pb::ListTasksRequest {
                page_size: -1,
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::ListTasksRequest {
                page_token: "not a token".into(),
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::ListTasksRequest {
                page_token: format!("{token}x"),
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::ListTasksRequest {
                page_token: token.chars().rev().collect(),
                page_size: 1,
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::ListTasksRequest {
                page_token: token.clone(),
                labels: HashMap::from([("team".into(), "red".into())]),
                ..Default::default()
            },
        ),
        (
            "page_token",
            pb::ListTasksRequest {
                page_token: token.clone(),
                statuses: vec![pb::TaskStatus::Completed as i32],
                ..Default::default()
            },
        ),
        (
            "statuses",
            pb::ListTasksRequest {
                statuses: vec![0],
                ..Default::default()
            },
        ),
        (
            "statuses",
            pb::ListTasksRequest {
                statuses: vec![42],
                ..Default::default()
            },
        ),
        (
            "labels",
            pb::ListTasksRequest {
                labels: HashMap::from([("bad key!".into(), "v".into())]),
                ..Default::default()
            },
        ),
    ];
    for (field, bad_request) in cases {
        let status = client
            .list_tasks(bad_request.clone())
            .await
            .expect_err(&format!("{bad_request:?}"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_invalid_argument(&status, field);
    }
    // The token still works with the filters it was issued for, and a
    // different page size.
    let next = list(
        &mut client,
        pb::ListTasksRequest {
            page_token: token,
            page_size: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(next.tasks.len(), 2);
}

/// While one client pages through, others create tasks: the pager never
/// sees a task twice, never skips one that existed when it started, and
/// sees everything in creation order.
async fn paging_is_stable_while_tasks_are_created() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut existing = Vec::new();
    for index in 0..200 {
        existing.push(
            create_labelled(&mut client, &format!("old {index}"), "echo", &[])
                .await
                .id,
        );
    }
    let creator = {
        let mut client = client.clone();
        tokio::spawn(async move {
            for index in 0..300 {
                create_labelled(&mut client, &format!("new {index}"), "echo", &[]).await;
            }
        })
    };
    let mut seen = Vec::new();
    let mut list_request = pb::ListTasksRequest {
        page_size: 13,
        ..Default::default()
    };
    loop {
        let page = list(&mut client, list_request.clone()).await;
        seen.extend(page.tasks.into_iter().map(|task| task.id));
        if page.next_page_token.is_empty() {
            break;
        }
        list_request.page_token = page.next_page_token;
        tokio::task::yield_now().await;
    }
    creator.await.expect("creator");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no task seen twice");
    assert_eq!(
        &seen[..existing.len()],
        &existing[..],
        "every older task, in order"
    );
    let mut sorted = seen.clone();
    sorted.sort_by_key(|id| uuid::Uuid::parse_str(id).expect("uuid"));
    assert_eq!(sorted, seen, "creation order throughout");
}

/// Creates a `gate` task (it stays unfinished, so it carries no result)
/// whose data is a string of `bytes` bytes.
async fn create_big(client: &mut Client, name: &str, bytes: usize) -> String {
    client
        .create_task(request(name, "gate", Some(json!("d".repeat(bytes)))))
        .await
        .unwrap_or_else(|status| panic!("create {name}: {status:?}"))
        .into_inner()
        .id
}

/// Ten tasks of 900 KB are 9 MB at page size 1000: pages are cut short so
/// that a client with gRPC's default 4 MiB receive limit can list them
/// all, each task once, in order.
async fn pages_are_cut_short_to_stay_under_four_mebibytes() {
    let server = TestServer::start().await;
    let mut client = server.client().await;
    let mut created = Vec::new();
    for index in 0..10 {
        created.push(create_big(&mut client, &format!("big {index}"), 900_000).await);
    }
    // tonic's client refuses messages above 4 MiB unless told otherwise.
    let mut default_client = TaskServiceClient::new(server.channel().await)
        .max_decoding_message_size(DEFAULT_RECEIVE_LIMIT);
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut list_request = pb::ListTasksRequest {
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let page = default_client
            .list_tasks(list_request.clone())
            .await
            .unwrap_or_else(|status| panic!("page {}: {status:?}", pages.len() + 1))
            .into_inner();
        assert!(
            prost::Message::encoded_len(&page) <= DEFAULT_RECEIVE_LIMIT,
            "a page of {} bytes",
            prost::Message::encoded_len(&page)
        );
        pages.push(page.tasks.len());
        seen.extend(page.tasks.into_iter().map(|task| task.id));
        if page.next_page_token.is_empty() {
            break;
        }
        list_request.page_token = page.next_page_token;
    }
    assert_eq!(
        seen, created,
        "every task once, oldest first: pages {pages:?}"
    );
    assert!(
        pages.len() >= 3,
        "9 MB needs at least three pages: {pages:?}"
    );
    server.gate.release(10);
}

/// A task larger than the page budget is still listed, alone on its page,
/// and the pages around it go on where they should.
async fn a_task_larger_than_the_page_budget_is_sent_alone() {
    let server = TestServer::start_with(Config {
        max_data_bytes: 6 * 1024 * 1024,
        ..test_config()
    })
    .await;
    // Receives the huge task, on create and on list.
    let mut client =
        TaskServiceClient::new(server.channel().await).max_decoding_message_size(usize::MAX);
    let small = create_big(&mut client, "small", 1000).await;
    let huge = create_big(&mut client, "huge", 5 * 1024 * 1024).await;
    let after = create_big(&mut client, "after", 1000).await;
    let (mut seen, mut pages) = (Vec::new(), Vec::new());
    let mut list_request = pb::ListTasksRequest {
        page_size: 1000,
        ..Default::default()
    };
    loop {
        let page = client
            .list_tasks(list_request.clone())
            .await
            .expect("listed")
            .into_inner();
        pages.push(
            page.tasks
                .iter()
                .map(|task| task.name.clone())
                .collect::<Vec<_>>(),
        );
        seen.extend(page.tasks.into_iter().map(|task| task.id));
        if page.next_page_token.is_empty() {
            break;
        }
        list_request.page_token = page.next_page_token;
    }
    assert_eq!(seen, [small, huge, after]);
    assert!(
        pages.contains(&vec!["huge".to_owned()]),
        "the huge task has a page of its own: {pages:?}"
    );
    server.gate.release(3);
}

contract_tests!(
    pages_cover_every_task_oldest_first_exactly_once,
    pages_are_cut_short_to_stay_under_four_mebibytes,
    a_task_larger_than_the_page_budget_is_sent_alone,
    page_size_is_capped_at_one_thousand,
    filters_by_status_and_by_every_label_pair,
    bad_list_requests_are_invalid_arguments,
    paging_is_stable_while_tasks_are_created,
);
