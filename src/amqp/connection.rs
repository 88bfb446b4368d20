//! The connection to a broker: one per role (consuming, publishing), reopened on demand
//! after a failure, failing over across the nodes of the address list; RabbitMQ's
//! `connection.blocked` followed.

use super::{AmqpBroker, Publishers, Role, State, TIMEOUT};
use std::sync::Arc;

use futures::StreamExt;
use lapin::{Connection, ConnectionProperties};
use mailroute_actors::broker::BrokerError;
use tracing::{info, warn};

impl AmqpBroker {
    pub(super) async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        let mut state = self.state.lock().await;
        self.connection_locked(&mut state, Role::Consuming).await
    }

    pub(super) async fn connection_locked(
        &self,
        state: &mut State,
        role: Role,
    ) -> Result<Arc<Connection>, BrokerError> {
        let slot = match role {
            Role::Consuming => &mut state.consuming,
            Role::Publishing => &mut state.publishing,
        };
        if let Some(c) = slot {
            if c.status().connected() {
                return Ok(c.clone());
            }
        }
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(BrokerError::ChannelClosed("this client has closed".into()));
        }
        if role == Role::Publishing {
            *self.publishers_locked() = Publishers::default();
        }
        let kind = match role {
            Role::Consuming => "consume",
            Role::Publishing => "publish",
        };
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{} ({kind})", self.name).into());
        let (connection, node) = self.connect_any(props).await?;
        info!(broker = %node, connection = kind, "connected");
        if role == Role::Publishing {
            // A new connection starts unblocked; the broker says so again if it still is.
            self.blocked.send_replace(false);
            self.watch_blocked(&connection);
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Tries every node once, starting with the one in use; the first that answers is used
    /// from now on. All failing is one error naming each node and why.
    pub(super) async fn connect_any(
        &self,
        props: ConnectionProperties,
    ) -> Result<(Arc<Connection>, String), BrokerError> {
        use std::sync::atomic::Ordering;
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for step in 0..self.nodes.len() {
            let index = (first + step) % self.nodes.len();
            let node = &self.nodes[index];
            let runtime = async_rs::Runtime::tokio_with_handle(self.handle.clone());
            let connect = Connection::connect_uri_with_config(
                node.uri.clone(),
                props.clone(),
                self.tls.clone(),
                runtime,
            );
            let reason = match tokio::time::timeout(TIMEOUT, connect).await {
                Ok(Ok(c)) => {
                    if index != first {
                        warn!(broker = %node.masked, "moved to another node of the address list");
                    }
                    self.current.store(index, Ordering::Relaxed);
                    return Ok((Arc::new(c), node.masked.clone()));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {TIMEOUT:?}"),
            };
            if self.nodes.len() > 1 {
                warn!(broker = %node.masked, %reason, "node does not answer; trying the next");
            }
            failures.push(if self.nodes.len() > 1 {
                format!("{}: {reason}", node.masked)
            } else {
                reason
            });
        }
        Err(BrokerError::ConnectFailed {
            address: self.masked.clone(),
            reason: failures.join("; "),
        })
    }
}

impl AmqpBroker {
    /// Follows RabbitMQ's `connection.blocked` (a memory or disk alarm: publishes wait until
    /// it clears) and its end: logged, counted, and the consumers pause meanwhile.
    pub(super) fn watch_blocked(&self, connection: &Connection) {
        let mut events = connection.events_listener();
        let (blocked, times, broker, unblocked_at) = (
            self.blocked.clone(),
            self.times_blocked.clone(),
            self.masked.clone(),
            self.unblocked_at.clone(),
        );
        self.handle.spawn(async move {
            while let Some(event) = events.next().await {
                match event {
                    lapin::Event::ConnectionBlocked(reason) => {
                        times.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        warn!(%broker, %reason, "broker blocked publishing (resource alarm); consumers pause");
                        blocked.send_replace(true);
                    }
                    lapin::Event::ConnectionUnblocked => {
                        info!(%broker, "broker unblocked publishing; consumers resume");
                        *unblocked_at
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) =
                            Some(std::time::Instant::now());
                        blocked.send_replace(false);
                    }
                    _ => {}
                }
            }
        });
    }
}
