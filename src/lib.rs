pub mod pb {
    tonic::include_proto!("taskprocessor.v1");
}
