//! The query strings of the list routes, read into their RPC's request.
//! Only the shape is checked here (a number is a number, a label is
//! `key=value`); the RPC checks the values (a negative page size, a label
//! key, a token) with the messages gRPC clients get.

use std::collections::HashMap;

use super::error::GatewayError;
use crate::pb;

/// `pageSize`, `pageToken`, `status` (repeatable: `TASK_STATUS_PENDING`,
/// `pending` or `1`) and `label` (repeatable: `key=value`). The proto's
/// own names (`page_size`, `statuses`, `labels`…) are taken too.
pub fn list_tasks_request(query: &str) -> Result<pb::ListTasksRequest, GatewayError> {
    let mut request = pb::ListTasksRequest::default();
    let mut labels = HashMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "pageSize" | "page_size" => request.page_size = page_size(&name, &value)?,
            "pageToken" | "page_token" => request.page_token = value.into_owned(),
            "status" | "statuses" => request.statuses.push(status(&name, &value)?),
            "label" | "labels" => add_label(&mut labels, &name, &value)?,
            _ => {
                return Err(unknown_parameter(
                    &name,
                    "pageSize, pageToken, status, label",
                ));
            }
        }
    }
    request.labels = labels;
    Ok(request)
}

/// `status` and `label` as for the list, `kind` (repeatable),
/// `sendInitial` (`true` or `false`) and `resumeToken`. The proto's own
/// names (`statuses`, `kinds`, `send_initial`, `resume_token`…) are taken
/// too.
pub fn watch_tasks_request(query: &str) -> Result<pb::WatchTasksRequest, GatewayError> {
    let mut request = pb::WatchTasksRequest::default();
    let mut labels = HashMap::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "status" | "statuses" => request.statuses.push(status(&name, &value)?),
            "label" | "labels" => add_label(&mut labels, &name, &value)?,
            "kind" | "kinds" => request.kinds.push(value.into_owned()),
            "sendInitial" | "send_initial" => {
                request.send_initial = match &*value {
                    "true" | "" => true,
                    "false" => false,
                    _ => {
                        return Err(GatewayError::bad_request(format!(
                            "{name}: expected true or false, got {value:?}"
                        )));
                    }
                };
            }
            "resumeToken" | "resume_token" => request.resume_token = value.into_owned(),
            _ => {
                return Err(unknown_parameter(
                    &name,
                    "status, label, kind, sendInitial, resumeToken",
                ));
            }
        }
    }
    request.labels = labels;
    Ok(request)
}

/// A `label=key=value` parameter, into `labels`; a key given twice is
/// refused rather than one of them silently kept.
fn add_label(
    labels: &mut HashMap<String, String>,
    name: &str,
    value: &str,
) -> Result<(), GatewayError> {
    let Some((key, label_value)) = value.split_once('=') else {
        return Err(GatewayError::bad_request(format!(
            "{name}: expected key=value, got {value:?}"
        )));
    };
    if labels
        .insert(key.to_owned(), label_value.to_owned())
        .is_some()
    {
        return Err(GatewayError::bad_request(format!(
            "{name}: the key {key:?} is given twice"
        )));
    }
    Ok(())
}

/// `pageSize` and `pageToken`.
pub fn list_schedules_request(query: &str) -> Result<pb::ListSchedulesRequest, GatewayError> {
    let mut request = pb::ListSchedulesRequest::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match &*name {
            "pageSize" | "page_size" => request.page_size = page_size(&name, &value)?,
            "pageToken" | "page_token" => request.page_token = value.into_owned(),
            _ => return Err(unknown_parameter(&name, "pageSize, pageToken")),
        }
    }
    Ok(request)
}

fn page_size(name: &str, value: &str) -> Result<i32, GatewayError> {
    value.parse().map_err(|_| {
        GatewayError::bad_request(format!("{name}: expected a whole number, got {value:?}"))
    })
}

/// A status by its enum name, its name without the prefix in any case
/// (`pending`, as the original service wrote statuses), or its number.
fn status(name: &str, value: &str) -> Result<i32, GatewayError> {
    const PREFIX: &str = "TASK_STATUS_";
    if let Ok(number) = value.parse::<i32>() {
        return Ok(number);
    }
    let upper = value.to_ascii_uppercase();
    let full = if upper.starts_with(PREFIX) {
        upper
    } else {
        format!("{PREFIX}{upper}")
    };
    pb::TaskStatus::from_str_name(&full)
        .map(|status| status as i32)
        .ok_or_else(|| {
            GatewayError::bad_request(format!(
                "{name}: unknown status {value:?} (TASK_STATUS_PENDING, TASK_STATUS_RUNNING, \
                 TASK_STATUS_COMPLETED, TASK_STATUS_FAILED or TASK_STATUS_CANCELLED)"
            ))
        })
}

fn unknown_parameter(name: &str, known: &str) -> GatewayError {
    GatewayError::bad_request(format!("unknown query parameter {name:?} (known: {known})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_parameter_is_read_and_repeats_add_up() {
        let request = list_tasks_request(
            "pageSize=10&pageToken=abc%2B&status=TASK_STATUS_PENDING&status=running&statuses=5\
             &label=team%3Ddata&label=tier=gold%3D1",
        )
        .expect("valid");
        assert_eq!(request.page_size, 10);
        assert_eq!(request.page_token, "abc+");
        assert_eq!(
            request.statuses,
            [
                pb::TaskStatus::Pending as i32,
                pb::TaskStatus::Running as i32,
                pb::TaskStatus::Cancelled as i32
            ]
        );
        assert_eq!(request.labels.len(), 2);
        assert_eq!(request.labels["team"], "data");
        assert_eq!(request.labels["tier"], "gold=1");
        assert_eq!(list_tasks_request("").expect("empty"), Default::default());
    }

    #[test]
    fn every_watch_parameter_is_read_and_repeats_add_up() {
        let request = watch_tasks_request(
            "status=pending&status=2&label=team%3Ddata&kind=echo&kinds=sleep&sendInitial=true\
             &resumeToken=abc%2B",
        )
        .expect("valid");
        assert_eq!(
            request.statuses,
            [
                pb::TaskStatus::Pending as i32,
                pb::TaskStatus::Running as i32
            ]
        );
        assert_eq!(request.labels["team"], "data");
        assert_eq!(request.kinds, ["echo", "sleep"]);
        assert!(request.send_initial);
        assert_eq!(request.resume_token, "abc+");
        assert_eq!(watch_tasks_request("").expect("empty"), Default::default());
    }

    #[test]
    fn a_malformed_parameter_is_refused_by_name() {
        for (query, named) in [
            ("pageSize=ten", "pageSize"),
            ("status=DONE", "status"),
            ("label=team", "label"),
            ("label=a=1&label=a=2", "given twice"),
            ("page=2", "\"page\""),
        ] {
            let error = list_tasks_request(query).expect_err(query);
            assert!(error.to_string().contains(named), "{query}: {error}");
        }
        assert!(list_schedules_request("status=1").is_err());
        for (query, named) in [
            ("sendInitial=yes", "sendInitial"),
            ("label=team", "label"),
            ("pageSize=1", "\"pageSize\""),
        ] {
            let error = watch_tasks_request(query).expect_err(query);
            assert!(error.to_string().contains(named), "{query}: {error}");
        }
        assert_eq!(
            list_schedules_request("page_size=3")
                .expect("valid")
                .page_size,
            3
        );
    }
}
