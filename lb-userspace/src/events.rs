//! Kubernetes Events for objects the agent skips, so `kubectl describe`
//! shows why a Service is not served. Publishing is best effort: without
//! RBAC for events the failure is logged once at debug level.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{agent::ProblemSink, model::Problem};

pub struct EventPublisher {
    recorder: Recorder,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventPublisher")
    }
}

impl EventPublisher {
    pub fn new(client: Client, node_name: Option<&str>) -> Self {
        let reporter = Reporter { controller: "lb-agent".into(), instance: node_name.map(str::to_owned) };
        Self { recorder: Recorder::new(client, reporter) }
    }
}

fn reference(problem: &Problem) -> ObjectReference {
    let api_version = match problem.kind {
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => "v1",
    };
    ObjectReference {
        api_version: Some(api_version.into()),
        kind: Some(problem.kind.into()),
        namespace: Some(problem.namespace.clone()),
        name: Some(problem.name.clone()),
        ..Default::default()
    }
}

impl ProblemSink for EventPublisher {
    fn publish(&mut self, problem: &Problem) {
        let recorder = self.recorder.clone();
        let reference = reference(problem);
        let event = Event {
            type_: EventType::Warning,
            reason: format!("Invalid{}", problem.kind),
            note: Some(problem.message.chars().take(1000).collect()),
            action: "Skipped".into(),
            secondary: None,
        };
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish a Kubernetes Event");
            }
        });
    }
}

/// For the file source: problems only go to the log.
#[derive(Debug, Default)]
pub struct LogOnly;

impl ProblemSink for LogOnly {
    fn publish(&mut self, _problem: &Problem) {}
}
