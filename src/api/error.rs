//! The errors of the API edge and the one place they become gRPC statuses.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::manager::ManagerError;

/// Everything an RPC can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field broke a rule of the contract.
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error(transparent)]
    Manager(#[from] ManagerError),
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field: field.into(),
            description: description.into(),
        }
    }

    /// The error of a message nested in a request, at `path`: its field is
    /// named `path.field` (`task.name`, `requests[3].data`).
    pub fn within(self, path: &str) -> Self {
        match self {
            Self::InvalidArgument { field, description } => Self::InvalidArgument {
                field: format!("{path}.{field}"),
                description,
            },
            other => other,
        }
    }

    /// The field a refused request broke, if that is why it was refused.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidArgument { field, .. } => Some(field),
            Self::Manager(_) => None,
        }
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        let message = error.to_string();
        match error {
            ApiError::InvalidArgument { field, description } => Status::with_error_details(
                Code::InvalidArgument,
                message,
                ErrorDetails::with_bad_request_violation(field, description),
            ),
            ApiError::Manager(manager_error) => match manager_error {
                ManagerError::NotFound(_) | ManagerError::ScheduleNotFound(_) => {
                    Status::not_found(message)
                }
                ManagerError::NotCancellable { .. }
                | ManagerError::NotFinished { .. }
                | ManagerError::WatchPositionLost => Status::failed_precondition(message),
                ManagerError::RequestIdConflict { .. } => Status::already_exists(message),
                ManagerError::QueueFull { retry_after, .. }
                | ManagerError::TenantQuotaFull { retry_after, .. }
                | ManagerError::MemoryFull { retry_after, .. } => Status::with_error_details(
                    Code::ResourceExhausted,
                    format!("{message}; retry in {}ms", retry_after.as_millis()),
                    ErrorDetails::with_retry_info(Some(retry_after)),
                ),
                ManagerError::ShuttingDown | ManagerError::Storage(_) => {
                    Status::unavailable(message)
                }
            },
        }
    }
}
