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
            "label" | "labels" => {
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
            }
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
        assert_eq!(
            list_schedules_request("page_size=3")
                .expect("valid")
                .page_size,
            3
        );
    }
}
