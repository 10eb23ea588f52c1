//! The MQTT intake: subscribes with QoS 1 under a persistent session and
//! acknowledges (PUBACK) a message only once it is durable in the spool.
//!
//! While the spool is full a message is held, unacknowledged, and stored
//! when space frees; the broker sends no more than its in-flight window
//! meanwhile. A message held when the gateway stops or crashes is sent
//! again by the broker on the next connection (clean session off), with
//! the same id derived from its topic and body, so it counts once.
//! PUBACKs go out in the order the messages came (MQTT 3.1.1, 4.6).
//!
//! One task, the poller, owns the connection and writes every PUBACK
//! itself, straight onto the socket between polls. It never waits for
//! the spool: a message the spool task has no room for is held and the
//! poller stops reading (the broker then meets TCP backpressure) while it
//! still writes PUBACKs. Sending PUBACKs through rumqttc's request channel
//! instead stalled under load: a poll reads up to nine packets but takes
//! one request, so PUBACKs piled up until the channel was full, the spool
//! task blocked on it and the poller blocked on the spool task (a broker
//! like mosquitto 2.0 does not cap what it has in flight to us).
//! Messages over `max_message_bytes` can never be published: they are
//! acknowledged, logged and counted as refused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, PubAck, Publish, QoS};
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
/// PUBACKs decided by the spool task and not yet taken by the poller.
const ACK_CAPACITY: usize = 256;
/// Requests queued for the MQTT client's event loop (subscriptions and
/// the disconnect only; PUBACKs do not go this way).
const CLIENT_REQUEST_CAPACITY: usize = 64;
/// Longest a batch of PUBACKs may take to reach the socket before the
/// connection counts as broken.
const ACK_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
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
    let (ack_sender, acks) = mpsc::channel(ACK_CAPACITY);
    let settings = Arc::new(settings);
    let poller = tokio::spawn(poll(
        event_loop,
        client.clone(),
        settings.clone(),
        received,
        acks,
        shutdown.clone(),
    ));
    store_and_ack(
        &settings,
        &gateway_id,
        &spool,
        receiver,
        ack_sender,
        &shutdown,
    )
    .await;
    let _ = client.try_disconnect();
    let _ = poller.await;
    Ok(())
}

/// A received message and the connection it came on.
#[derive(Debug)]
struct Received {
    publish: Publish,
    connection: u64,
}

/// The PUBACK of a message, for the connection it came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ack {
    pkid: u16,
    connection: u64,
}

/// Drives the connection: (re)connects, subscribes on every new session,
/// hands received messages on and writes the PUBACKs. It waits for
/// nothing but the broker: while the spool task has no room it holds the
/// message and stops reading, but keeps writing PUBACKs.
async fn poll(
    mut event_loop: EventLoop,
    client: AsyncClient,
    settings: Arc<MqttSettings>,
    received: mpsc::Sender<Received>,
    mut acks: mpsc::Receiver<Ack>,
    shutdown: CancellationToken,
) {
    // Counts connections, so a PUBACK never goes to a later connection
    // whose packet ids mean other messages.
    let mut connection: u64 = 0;
    let mut held: Option<Received> = None;
    let mut ack_batch: Vec<Ack> = Vec::with_capacity(ACK_CAPACITY);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            taken = acks.recv_many(&mut ack_batch, ACK_CAPACITY) => {
                if taken == 0 {
                    break;
                }
                let pkids = current_pkids(&ack_batch, connection);
                ack_batch.clear();
                if let Err(error) = write_pubacks(&mut event_loop, &pkids).await {
                    metrics::counter!(names::MQTT_ERRORS).increment(1);
                    tracing::warn!(%error, host = %settings.host, port = settings.port, "cannot send PUBACKs; reconnecting");
                    // The next poll reconnects; the broker sends the
                    // unacknowledged messages again.
                    event_loop.clean();
                }
            }
            permit = received.reserve(), if held.is_some() => {
                let Ok(permit) = permit else { break };
                if let Some(message) = held.take() {
                    permit.send(message);
                }
            }
            event = event_loop.poll(), if held.is_none() => match event {
                Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                    connection += 1;
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
                    match received.try_send(Received { publish, connection }) {
                        Ok(()) => {}
                        // Held: no more reading until the spool task takes it.
                        Err(mpsc::error::TrySendError::Full(message)) => held = Some(message),
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
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
            },
        }
    }
}

/// The packet ids of `acks` that belong to connection `current`, in
/// order. A PUBACK for an earlier connection is dropped: the broker sends
/// that message again (with the same derived id, so it counts once).
fn current_pkids(acks: &[Ack], current: u64) -> Vec<u16> {
    acks.iter()
        .filter(|ack| ack.connection == current)
        .map(|ack| ack.pkid)
        .collect()
}

/// Writes PUBACKs for `pkids` straight onto the connection and flushes.
///
/// rumqttc's request channel would do this only one request per poll
/// against up to nine packets read (see the module docs); the event loop
/// is idle here (not inside `poll`), so its connection is ours to write.
async fn write_pubacks(event_loop: &mut EventLoop, pkids: &[u16]) -> Result<(), GatewayError> {
    if pkids.is_empty() {
        return Ok(());
    }
    // Not connected: the broker sends those messages again on the next one.
    let Some(network) = event_loop.network.as_mut() else {
        return Ok(());
    };
    for &pkid in pkids {
        network
            .write(Packet::PubAck(PubAck::new(pkid)))
            .await
            .map_err(|error| GatewayError::MqttConnection {
                message: error.to_string(),
            })?;
    }
    match tokio::time::timeout(ACK_FLUSH_TIMEOUT, network.flush()).await {
        Ok(flushed) => flushed.map_err(|error| GatewayError::MqttConnection {
            message: error.to_string(),
        }),
        Err(_) => Err(GatewayError::MqttConnection {
            message: "PUBACK flush timed out".to_string(),
        }),
    }
}

/// One message on its way to the spool.
struct InFlight {
    /// `None` for a QoS 0 message, which has no PUBACK.
    ack: Option<Ack>,
    /// Empty for a message that can never be published (acknowledged in
    /// its turn, counted as refused).
    messages: Vec<Message>,
    written: tokio::task::JoinHandle<Result<(), GatewayError>>,
}

/// Hands messages to the spool as they come (so their writes share fsyncs)
/// and acknowledges each once written, in order.
async fn store_and_ack(
    settings: &MqttSettings,
    gateway_id: &str,
    spool: &Spool,
    mut receiver: mpsc::Receiver<Received>,
    acks: mpsc::Sender<Ack>,
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
                if let Some(first) = front.messages.first() {
                    metrics::counter!(names::RECEIVED, "source" => "mqtt", "format" => first.format.as_str())
                        .increment(front.messages.len() as u64);
                }
                // The poller always takes PUBACKs (it never waits for this
                // task), so this wait is short and cannot close a cycle.
                if let Some(ack) = front.ack {
                    if acks.send(ack).await.is_err() {
                        break;
                    }
                }
            }
            message = receiver.recv(), if room => {
                let Some(Received { publish, connection }) = message else { break };
                let ack = (publish.qos != QoS::AtMostOnce).then_some(Ack { pkid: publish.pkid, connection });
                // Never publishable: acknowledged in its turn so it does
                // not come back forever.
                let messages = to_messages(settings, gateway_id, &publish).unwrap_or_default();
                let written = if messages.is_empty() {
                    tokio::spawn(async { Ok(()) })
                } else {
                    let writer = spool.clone();
                    let to_write = messages.clone();
                    tokio::spawn(async move { writer.append(&to_write).await })
                };
                pipeline.push_back(InFlight { ack, messages, written });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pubacks_keep_their_order_and_skip_earlier_connections() {
        let acks = [
            Ack {
                pkid: 7,
                connection: 1,
            },
            Ack {
                pkid: 3,
                connection: 2,
            },
            Ack {
                pkid: 9,
                connection: 2,
            },
            Ack {
                pkid: 1,
                connection: 2,
            },
        ];
        assert_eq!(current_pkids(&acks, 2), vec![3, 9, 1]);
        assert!(current_pkids(&acks, 3).is_empty());
    }
}
