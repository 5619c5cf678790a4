//! Kubernetes Events for objects the agent skips, so `kubectl describe`
//! shows why a Service is not served, and for health check ports that
//! cannot be opened. Publishing is best effort: without
//! RBAC for events the failure is logged once at debug level.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::{agent::ProblemSink, healthcheck::Failure, model::Problem};

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

impl EventPublisher {
    fn send(&self, event: Event, reference: ObjectReference) {
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::debug!(error = %e, "could not publish a Kubernetes Event");
            }
        });
    }
}

impl ProblemSink for EventPublisher {
    fn publish(&mut self, problem: &Problem) {
        let event = Event {
            type_: EventType::Warning,
            reason: format!("Invalid{}", problem.kind),
            note: Some(problem.message.chars().take(1000).collect()),
            action: "Skipped".into(),
            secondary: None,
        };
        self.send(event, reference(problem));
    }

    /// kube-proxy's Event for the same failure (reason and action).
    fn health_check_failed(&mut self, failure: &Failure) {
        let (namespace, name) = &failure.service;
        let service =
            Problem { kind: "Service", namespace: namespace.clone(), name: name.clone(), message: String::new() };
        let event = Event {
            type_: EventType::Warning,
            reason: "FailedToStartServiceHealthcheck".into(),
            note: Some(failure.to_string().chars().take(1000).collect()),
            action: "Listen".into(),
            secondary: None,
        };
        self.send(event, reference(&service));
    }
}

/// For the file source: problems only go to the log.
#[derive(Debug, Default)]
pub struct LogOnly;

impl ProblemSink for LogOnly {
    fn publish(&mut self, _problem: &Problem) {}
}
