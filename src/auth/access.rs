//! Which role each RPC needs, by its gRPC path: the contract's table, in
//! one place. gRPC, gRPC-Web and the REST routes (which call the RPC in
//! process) all reach the server as these paths.

use super::principals::Role;

/// What a call to one path needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No credentials at all: gRPC health, which kubelet probes.
    Open,
    /// Server reflection: open unless `auth.protect_reflection`, then any
    /// authenticated principal (it shows the schema, no data).
    Reflection,
    /// A principal with this role (or admin).
    Role(Role),
}

/// The task service's RPCs: (method, role).
const TASK_SERVICE_METHODS: &[(&str, Role)] = &[
    ("CreateTask", Role::Write),
    ("BatchCreateTasks", Role::Write),
    ("GetTask", Role::Read),
    ("ListTasks", Role::Read),
    ("CancelTask", Role::Write),
    ("WatchTask", Role::Read),
    ("WatchTasks", Role::Read),
    ("DeleteTask", Role::Write),
    ("CreateSchedule", Role::Write),
    ("GetSchedule", Role::Read),
    ("ListSchedules", Role::Read),
    ("PauseSchedule", Role::Write),
    ("ResumeSchedule", Role::Write),
    ("DeleteSchedule", Role::Write),
];

const TASK_SERVICE: &str = "/taskprocessor.v1.TaskService/";
const WORKER_SERVICE: &str = "/taskprocessor.v1.WorkerService/";
const HEALTH_SERVICE: &str = "/grpc.health.v1.Health/";
const REFLECTION_SERVICES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// What a call to `path` needs. A path no rule names needs admin, so an
/// RPC added later is closed until someone decides who may call it.
pub fn access(path: &str) -> Access {
    if let Some(method) = path.strip_prefix(TASK_SERVICE) {
        return TASK_SERVICE_METHODS
            .iter()
            .find(|(name, _)| *name == method)
            .map_or(Access::Role(Role::Admin), |(_, role)| Access::Role(*role));
    }
    if let Some(method) = path.strip_prefix(WORKER_SERVICE) {
        // Listing the workers is reading; everything else is working.
        return Access::Role(if method == "ListWorkers" {
            Role::Read
        } else {
            Role::Work
        });
    }
    if path.starts_with(HEALTH_SERVICE) {
        return Access::Open;
    }
    if REFLECTION_SERVICES
        .iter()
        .any(|service| path.starts_with(service))
    {
        return Access::Reflection;
    }
    Access::Role(Role::Admin)
}

/// The method of a path, for messages: `CreateTask`.
pub fn method_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether calls to `path` are audited: those that create, cancel or
/// delete something, which are exactly the ones that need `write`.
pub fn audited(path: &str) -> bool {
    access(path) == Access::Role(Role::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_table() {
        let role = |path: &str| match access(path) {
            Access::Role(role) => Some(role),
            _ => None,
        };
        for method in [
            "GetTask",
            "ListTasks",
            "WatchTask",
            "WatchTasks",
            "GetSchedule",
            "ListSchedules",
        ] {
            assert_eq!(
                role(&format!("{TASK_SERVICE}{method}")),
                Some(Role::Read),
                "{method}"
            );
        }
        for method in [
            "CreateTask",
            "BatchCreateTasks",
            "CancelTask",
            "DeleteTask",
            "CreateSchedule",
            "PauseSchedule",
            "ResumeSchedule",
            "DeleteSchedule",
        ] {
            assert_eq!(
                role(&format!("{TASK_SERVICE}{method}")),
                Some(Role::Write),
                "{method}"
            );
            assert!(audited(&format!("{TASK_SERVICE}{method}")), "{method}");
        }
        assert_eq!(
            role("/taskprocessor.v1.WorkerService/Claim"),
            Some(Role::Work)
        );
        assert_eq!(
            role("/taskprocessor.v1.WorkerService/Work"),
            Some(Role::Work)
        );
        assert_eq!(
            role("/taskprocessor.v1.WorkerService/ListWorkers"),
            Some(Role::Read)
        );
        assert_eq!(
            role("/taskprocessor.v1.TaskService/Nope"),
            Some(Role::Admin)
        );
        assert_eq!(role("/other.Service/Call"), Some(Role::Admin));
        assert_eq!(role("/api/v1/tasks"), Some(Role::Admin));
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(access("/grpc.health.v1.Health/Watch"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Access::Reflection
        );
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Reflection
        );
        assert!(!audited("/taskprocessor.v1.TaskService/GetTask"));
    }
}
