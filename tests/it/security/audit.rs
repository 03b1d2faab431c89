//! The audit line, as the real binary logs it by default: one `info` line
//! per create, cancel or delete, naming the principal; none for reads; and
//! no token anywhere in the log.

use task_processor::pb;

use super::{Files, ONE_PER_ROLE, principals_yaml, with_token};
use crate::{
    process::start_binary,
    support::{eventually, request},
};

#[tokio::test]
async fn changes_are_audited_with_their_principal_and_tokens_never_logged() {
    let files = Files::new();
    let principals = files.write("principals.yaml", &principals_yaml(ONE_PER_ROLE));
    let process = start_binary(
        &[
            "--auth-principals",
            principals.to_str().expect("UTF-8 path"),
        ],
        &[],
    );
    let mut client = process.client().await;
    let task = client
        .create_task(with_token(request("audited", "echo", None), "writer-token"))
        .await
        .expect("created")
        .into_inner();
    client
        .get_task(with_token(
            pb::GetTaskRequest {
                id: task.id.clone(),
            },
            "reader-token",
        ))
        .await
        .expect("read");
    client
        .delete_task(with_token(
            pb::DeleteTaskRequest {
                id: task.id.clone(),
            },
            "root-token",
        ))
        .await
        .ok();
    let audit_lines = |method: &'static str| {
        let log = process.log.clone();
        async move {
            let lines: Vec<_> = log
                .lock()
                .expect("not poisoned")
                .iter()
                .filter(|entry| entry["message"] == "audit" && entry["method"] == method)
                .cloned()
                .collect();
            (!lines.is_empty()).then_some(lines)
        }
    };
    let created = eventually("the create's audit line", || audit_lines("CreateTask")).await;
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["principal"], "writer");
    assert_eq!(created[0]["tenant"], "");
    assert_eq!(created[0]["level"], "INFO", "{created:?}");
    assert!(
        created[0]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let deleted = eventually("the delete's audit line", || audit_lines("DeleteTask")).await;
    assert_eq!(deleted[0]["principal"], "root");

    let log = process.log.lock().expect("not poisoned").clone();
    assert!(
        !log.iter()
            .any(|entry| entry["message"] == "audit" && entry["method"] == "GetTask"),
        "reads are not audited"
    );
    let text = serde_json::to_string(&log).expect("JSON");
    for (_, token, _) in ONE_PER_ROLE {
        let token = token.expect("every test principal has a token");
        assert!(!text.contains(token), "{token} logged");
    }
}
