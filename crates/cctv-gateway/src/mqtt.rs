//! The MQTT intake: subscribes with QoS 1 under a persistent session and
//! acknowledges (PUBACK) a message only once it is durable in the spool.
//!
//! While the spool is full a message is held, unacknowledged, and stored
//! when space frees; the broker sends no more than its in-flight window
//! meanwhile. A message held when the gateway stops or crashes is sent
//! again by the broker on the next connection (clean session off), with
//! the same id derived from its topic and body, so it counts once.
//! PUBACKs go out in the order the messages came (MQTT 3.1.1, 4.6).
//! Messages over `max_message_bytes` can never be published: they are
//! acknowledged, logged and counted as refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::MqttSettings;
use crate::metrics as names;
use crate::record::Message;
use crate::spool::Spool;
use crate::{ids, topics, GatewayError};

/// Messages received and not yet handed to the spool.
const RECEIVED_CAPACITY: usize = 256;
/// Messages handed to the spool whose PUBACK waits for the write.
const PIPELINE_CAPACITY: usize = 256;
/// Requests queued for the MQTT client's event loop.
const CLIENT_REQUEST_CAPACITY: usize = 1_024;
/// Pause after a connection error before the event loop reconnects.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// How often a held message retries the spool while it is full.
const FULL_RETRY: Duration = Duration::from_millis(200);
/// Incoming packets larger than this break the connection (the message
/// limit is checked by us, with room above it to refuse politely).
const PACKET_SLACK_BYTES: usize = 64 * 1024;

/// Runs the MQTT intake until `shutdown`.
pub(crate) async fn run(
    settings: MqttSettings,
    gateway_id: String,
    spool: Spool,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    let mut options = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    options
        .set_keep_alive(settings.keep_alive)
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_max_packet_size(settings.max_message_bytes + PACKET_SLACK_BYTES, 64 * 1024);
    if let (Some(user), Some(password)) = (&settings.user, &settings.password) {
        options.set_credentials(user, password);
    }
    let (client, event_loop) = AsyncClient::new(options, CLIENT_REQUEST_CAPACITY);
    let (received, receiver) = mpsc::channel(RECEIVED_CAPACITY);
    let settings = Arc::new(settings);
    let poller = tokio::spawn(poll(
        event_loop,
        client.clone(),
        settings.clone(),
        received,
        shutdown.clone(),
    ));
    store_and_ack(&settings, &gateway_id, &spool, &client, receiver, &shutdown).await;
    let _ = client.try_disconnect();
    let _ = poller.await;
    Ok(())
}

/// Drives the connection: (re)connects, subscribes on every new session,
/// hands received messages on.
async fn poll(
    mut event_loop: EventLoop,
    client: AsyncClient,
    settings: Arc<MqttSettings>,
    received: mpsc::Sender<Publish>,
    shutdown: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            event = event_loop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                tracing::info!(
                    session_present = connack.session_present,
                    "connected to the MQTT broker"
                );
                // Subscribing again is harmless; a new session needs it.
                for topic in &settings.topics {
                    if let Err(error) = client.try_subscribe(&topic.filter, QoS::AtLeastOnce) {
                        tracing::warn!(%error, filter = %topic.filter, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                tracing::info!("MQTT subscription confirmed");
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let sent = tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    sent = received.send(publish) => sent,
                };
                if sent.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(error) => {
                metrics::counter!(names::MQTT_ERRORS).increment(1);
                tracing::warn!(%error, host = %settings.host, port = settings.port, "MQTT connection failed; reconnecting");
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(RECONNECT_PAUSE) => {}
                }
            }
        }
    }
}

/// One message on its way to the spool.
struct InFlight {
    publish: Publish,
    messages: Vec<Message>,
    written: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

/// Hands messages to the spool as they come (so their writes share fsyncs)
/// and acknowledges each once written, in order.
async fn store_and_ack(
    settings: &MqttSettings,
    gateway_id: &str,
    spool: &Spool,
    client: &AsyncClient,
    mut receiver: mpsc::Receiver<Publish>,
    shutdown: &CancellationToken,
) {
    let mut pipeline: VecDeque<InFlight> = VecDeque::with_capacity(PIPELINE_CAPACITY);
    loop {
        let room = pipeline.len() < PIPELINE_CAPACITY;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            done = async {
                match pipeline.front_mut() {
                    Some(front) => (&mut front.written).await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(mut front) = pipeline.pop_front() else { continue };
                let result = done.unwrap_or(Err(GatewayError::SpoolClosed));
                if let Err(error) = result {
                    // Held: not acknowledged until it is stored.
                    if !store_held(spool, &front.messages, error, shutdown).await {
                        break;
                    }
                    front.written = tokio::spawn(async { Ok(()) });
                }
                let format = front.messages.first().map_or("other", |m| m.format.as_str());
                metrics::counter!(names::RECEIVED, "source" => "mqtt", "format" => format)
                    .increment(front.messages.len() as u64);
                if let Err(error) = client.ack(&front.publish).await {
                    tracing::warn!(%error, "cannot send a PUBACK; the broker will send the message again");
                }
            }
            publish = receiver.recv(), if room => {
                let Some(publish) = publish else { break };
                let Some(messages) = to_messages(settings, gateway_id, &publish) else {
                    // Never publishable: acknowledged so it does not come back forever.
                    let _ = client.ack(&publish).await;
                    continue;
                };
                let writer = spool.clone();
                let to_write = messages.clone();
                let written = tokio::spawn(async move { writer.append(&to_write).await });
                pipeline.push_back(InFlight { publish, messages, written });
            }
        }
    }
    // Unacknowledged messages are sent again by the broker on the next
    // session; the ones already written then repeat with the same id.
    for in_flight in pipeline {
        in_flight.written.abort();
    }
}

/// Retries a held message until the spool takes it; `false` on shutdown
/// or an error that waiting does not fix.
async fn store_held(
    spool: &Spool,
    messages: &[Message],
    first_error: GatewayError,
    shutdown: &CancellationToken,
) -> bool {
    let mut error = first_error;
    let mut counted = false;
    loop {
        if !error.is_transient() {
            tracing::error!(%error, "cannot store an MQTT message; it stays with the broker");
            return false;
        }
        if !counted {
            metrics::counter!(names::MQTT_HELD).increment(1);
            metrics::counter!(names::REFUSED, "source" => "mqtt", "reason" => "spool_full")
                .increment(1);
            tracing::warn!("spool full; holding an MQTT message without its PUBACK");
            counted = true;
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return false,
            () = spool.space_freed() => {}
            () = tokio::time::sleep(FULL_RETRY) => {}
        }
        match spool.append(messages).await {
            Ok(()) => return true,
            Err(next) => error = next,
        }
    }
}

/// The spool record of an MQTT message; `None` when it cannot be passed on.
fn to_messages(
    settings: &MqttSettings,
    gateway_id: &str,
    publish: &Publish,
) -> Option<Vec<Message>> {
    if publish.payload.len() > settings.max_message_bytes {
        tracing::warn!(topic = %publish.topic, bytes = publish.payload.len(), limit = settings.max_message_bytes, "MQTT message too large; dropped");
        metrics::counter!(names::REFUSED, "source" => "mqtt", "reason" => "too_large").increment(1);
        return None;
    }
    let Some(routed) = topics::route(&settings.topics, &publish.topic, &publish.payload) else {
        tracing::warn!(topic = %publish.topic, "MQTT message on a topic no subscription maps; dropped");
        metrics::counter!(names::REFUSED, "source" => "mqtt", "reason" => "not_found").increment(1);
        return None;
    };
    let device = format!("mqtt:{}", publish.topic);
    Some(vec![Message {
        format: routed.format,
        id: ids::message_id(
            gateway_id,
            &device,
            routed.format.as_str(),
            &publish.payload,
        ),
        received_at_ms: chrono::Utc::now().timestamp_millis(),
        camera_id: routed.camera_id,
        attachments: None,
        body: routed.body,
    }])
}
