//! A subscriber of containerd's event stream (the `containerd.services.events.v1.Events`
//! gRPC service), for events `ctr events` cannot print: it drops types it does not know, such as
//! myvm's own `myvm.events.v1.SandboxError`. Only the two messages the subscription needs are
//! declared here.

use std::{
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// containerd's `SubscribeRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRequest {
    #[prost(string, repeated, tag = "1")]
    pub filters: Vec<String>,
}

/// containerd's `Envelope`: one published event.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    #[prost(message, optional, tag = "1")]
    pub timestamp: Option<prost_types::Timestamp>,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(string, tag = "3")]
    pub topic: String,
    #[prost(message, optional, tag = "4")]
    pub event: Option<prost_types::Any>,
}

/// Events received since [`Events::subscribe`], collected by a background thread.
pub struct Events {
    seen: Arc<Mutex<Vec<Envelope>>>,
}

impl Events {
    /// Subscribes to every event of the containerd at `socket`.
    pub fn subscribe(socket: &Path) -> Events {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let socket = socket.to_path_buf();
        let sink = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let channel = crate::cri::uds_channel(&rt, &socket);
            rt.block_on(async move {
                let mut grpc = tonic::client::Grpc::new(channel);
                if let Err(e) = grpc.ready().await {
                    eprintln!("containerd's events service: {e}");
                    return;
                }
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/containerd.services.events.v1.Events/Subscribe",
                );
                let codec = tonic_prost::ProstCodec::<SubscribeRequest, Envelope>::default();
                let req = tonic::Request::new(SubscribeRequest::default());
                // containerd answers the call with its first event, not before.
                let _ = ready_tx.send(());
                let mut stream = match grpc.server_streaming(req, path, codec).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => {
                        eprintln!("subscribing to containerd's events: {e}");
                        return;
                    }
                };
                while let Ok(Some(e)) = stream.message().await {
                    sink.lock().unwrap().push(e);
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("connected to containerd's events service");
        // The subscription is registered once the request reached containerd.
        std::thread::sleep(Duration::from_millis(300));
        Events { seen }
    }

    /// Every event received so far.
    pub fn all(&self) -> Vec<Envelope> {
        self.seen.lock().unwrap().clone()
    }

    /// The events on `topic` received so far.
    pub fn on(&self, topic: &str) -> Vec<Envelope> {
        self.all()
            .into_iter()
            .filter(|e| e.topic == topic)
            .collect()
    }

    /// Waits up to `timeout` for an event on `topic` that `pred` accepts.
    pub fn wait_for(
        &self,
        topic: &str,
        timeout: Duration,
        pred: impl Fn(&Envelope) -> bool,
    ) -> Envelope {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.on(topic).into_iter().find(&pred) {
                return e;
            }
            if Instant::now() > deadline {
                let topics: Vec<String> = self.all().into_iter().map(|e| e.topic).collect();
                panic!("no matching {topic} event within {timeout:?}; seen: {topics:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Decodes a myvm `SandboxError` event.
pub fn sandbox_error(e: &Envelope) -> myvm_protocol::events::SandboxError {
    let any = e.event.as_ref().expect("the event has a payload");
    assert_eq!(
        any.type_url.rsplit('/').next(),
        Some("myvm.events.v1.SandboxError")
    );
    protobuf::Message::parse_from_bytes(&any.value).expect("a SandboxError")
}
