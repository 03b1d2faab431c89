//! The ceiling: a bare tonic server answering CreateTask and GetTask with
//! the same messages as ours, but no validation, manager or store.

use std::{future::Future, time::SystemTime};

use task_processor::pb::{
    self, task_service_server::TaskService, task_service_server::TaskServiceServer,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};

struct BareService {
    stored: pb::Task,
}

fn task(name: String, data: Option<prost_types::Value>) -> pb::Task {
    pb::Task {
        id: uuid::Uuid::now_v7().to_string(),
        name,
        kind: "echo".into(),
        status: pb::TaskStatus::Pending as i32,
        data,
        timeout_seconds: 60,
        revision: 1,
        created_at: Some(SystemTime::now().into()),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl TaskService for BareService {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        let request = request.into_inner();
        Ok(Response::new(task(request.name, request.data)))
    }

    async fn get_task(
        &self,
        _request: Request<pb::GetTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        Ok(Response::new(self.stored.clone()))
    }

    async fn list_tasks(
        &self,
        _request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn cancel_task(
        &self,
        _request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::Task>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn delete_task(
        &self,
        _request: Request<pb::DeleteTaskRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn batch_create_tasks(
        &self,
        _request: Request<pb::BatchCreateTasksRequest>,
    ) -> Result<Response<pb::BatchCreateTasksResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn create_schedule(
        &self,
        _request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn get_schedule(
        &self,
        _request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn list_schedules(
        &self,
        _request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn pause_schedule(
        &self,
        _request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn resume_schedule(
        &self,
        _request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    async fn delete_schedule(
        &self,
        _request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    type WatchTaskStream = tokio_stream::Empty<Result<pb::WatchTaskResponse, Status>>;

    async fn watch_task(
        &self,
        _request: Request<pb::WatchTaskRequest>,
    ) -> Result<Response<Self::WatchTaskStream>, Status> {
        Err(Status::unimplemented("bare server"))
    }

    type WatchTasksStream = tokio_stream::Empty<Result<pb::WatchTasksResponse, Status>>;

    async fn watch_tasks(
        &self,
        _request: Request<pb::WatchTasksRequest>,
    ) -> Result<Response<Self::WatchTasksStream>, Status> {
        Err(Status::unimplemented("bare server"))
    }
}

pub async fn serve(listener: TcpListener, stop: impl Future<Output = ()>) {
    let data = Some(task_processor::api::json::json_to_proto(
        &serde_json::json!({"n": 1}),
    ));
    let service = BareService {
        stored: task("stored".into(), data),
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let _ = tonic::transport::Server::builder()
        .add_service(TaskServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, stop)
        .await;
}
