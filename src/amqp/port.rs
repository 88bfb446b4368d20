//! The Broker port on these pieces: declare, bind, publish, subscribe, queue admin.

use super::{AmqpBroker, Publishers, timed};
use std::sync::Arc;

use async_trait::async_trait;
use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use mailroute_actors::broker::{
    Broker, BrokerError, Destination, Message, QueueSpec, Subscription,
};
use tracing::debug;

use super::consume::{AmqpConsumer, AmqpControl, ChannelCloser};
use super::publish::close_when_idle;

/// RabbitMQ's `PRECONDITION_FAILED - inequivalent arg 'A' for queue 'Q' in vhost 'V': received
/// X but current is Y`, as an error that says what to do.
fn inequivalent(queue: &str, error: BrokerError) -> BrokerError {
    let BrokerError::ChannelClosed(text) = &error else {
        return error;
    };
    let Some(rest) = text.split("inequivalent arg '").nth(1) else {
        return error;
    };
    let Some((argument, rest)) = rest.split_once('\'') else {
        return error;
    };
    let Some((_, values)) = rest.split_once(": received ") else {
        return error;
    };
    let Some((declared, existing)) = values.split_once(" but current is ") else {
        return error;
    };
    let clean = |v: &str| {
        let v = v
            .trim()
            .trim_end_matches(['"', ')'])
            .replace("the value ", "");
        // A queue declared without a type is classic; RabbitMQ says "none".
        if argument == "x-queue-type" && v == "none" {
            "'classic'".to_string()
        } else {
            v
        }
    };
    let hint = match argument {
        "x-message-ttl" => {
            " (an earlier mailroute put hold-time on the retry queue as x-message-ttl; held mail \
             now carries its own expiration, so the new retry queue has none)"
        }
        "x-queue-type" => " (rabbitmq-queue-type)",
        _ => "",
    };
    BrokerError::Inequivalent {
        queue: queue.to_string(),
        argument: argument.to_string(),
        existing: clean(existing),
        declared: clean(declared),
        hint: hint.to_string(),
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn identity(&self) -> String {
        self.identity.clone()
    }

    async fn declare_queue(&self, spec: &QueueSpec) -> Result<(), BrokerError> {
        let mut arguments = FieldTable::default();
        if let Some(ttl) = spec.message_ttl {
            let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        }
        if spec.single_active_consumer {
            arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if let Some(expires) = spec.expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        if spec.quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            if spec.dead_letter_queue.is_some() {
                // Classic dead-lettering is fire-and-forget: held mail could be lost on its
                // way back to the outbox. At-least-once needs reject-publish overflow.
                arguments.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString(LongString::from("at-least-once")),
                );
                arguments.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString(LongString::from("reject-publish")),
                );
            }
        }
        if let Some(target) = &spec.dead_letter_queue {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(LongString::from("")),
            );
            arguments.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(LongString::from(target.as_str())),
            );
        }
        let options = QueueDeclareOptions {
            durable: !spec.exclusive,
            exclusive: spec.exclusive,
            auto_delete: spec.auto_delete,
            ..QueueDeclareOptions::default()
        };
        let name = spec.name.clone();
        // Exclusive queues belong to the connection; admin channels share it, so that holds.
        self.with_admin(|ch| async move {
            ch.queue_declare(name.as_str().into(), options, arguments)
                .await
                .map(|_| ())
        })
        .await
        .map_err(|error| inequivalent(&spec.name, error))
    }

    async fn declare_topic_exchange(&self, name: &str) -> Result<(), BrokerError> {
        let options = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let name = name.to_string();
        self.with_admin(|ch| async move {
            ch.exchange_declare(
                name.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    async fn bind_queue(
        &self,
        queue: &str,
        exchange: &str,
        pattern: &str,
    ) -> Result<(), BrokerError> {
        let (q, e, p) = (queue.to_string(), exchange.to_string(), pattern.to_string());
        self.with_admin(|ch| async move {
            ch.queue_bind(
                q.as_str().into(),
                e.as_str().into(),
                p.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        })
        .await
    }

    async fn publish(
        &self,
        to: &Destination,
        message: &Message,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        if mandatory {
            let channel = self.publisher(Some(to)).await?;
            return self.publish_on(&channel, to, message, true).await;
        }
        let channel = self.publisher(None).await?;
        self.publish_on(&channel, to, message, false).await
    }

    fn publishing_blocked(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.blocked.subscribe())
    }

    fn release(&self, to: &Destination) {
        let channel = self
            .publishers_locked()
            .mandatory
            .get_mut(&to.exchange)
            .and_then(|keys| keys.remove(&to.routing_key));
        if let Some(channel) = channel {
            debug!(%to, "closing the confirm channel of a destination no longer used");
            self.handle.spawn(close_when_idle(channel));
        }
    }

    /// `connection.close` waits for the broker's close-ok, which it sends only after the
    /// frames before it. A process that just exits resets its sockets instead, and RabbitMQ
    /// discards what it had not read yet: acks sent last were lost that way, and the mail
    /// they settled was delivered a second time.
    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state.lock().await;
        *self.publishers_locked() = Publishers::default();
        for connection in [state.publishing.take(), state.consuming.take()]
            .into_iter()
            .flatten()
        {
            if connection.status().connected() {
                if let Err(error) = timed(connection.close(200, "shutdown".into())).await {
                    debug!(%error, "closing the connection failed");
                }
            }
        }
    }

    async fn subscribe(&self, queue: &str, prefetch: u16) -> Result<Subscription, BrokerError> {
        let connection = self.connection().await?;
        let channel = timed(connection.create_channel()).await?;
        timed(channel.basic_qos(prefetch, BasicQosOptions::default())).await?;
        let consumer = timed(channel.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        debug!(queue, prefetch, "consumer started");
        let closer = Arc::new(ChannelCloser {
            channel: channel.clone(),
            handle: self.handle.clone(),
        });
        Ok(Subscription {
            control: Box::new(AmqpControl {
                tag: consumer.tag(),
                closer: closer.clone(),
            }),
            deliveries: mailroute_actors::broker::paused_while(
                Box::pin(AmqpConsumer {
                    inner: consumer,
                    _closer: closer,
                }),
                Some(self.blocked.subscribe()),
            ),
        })
    }

    async fn queue_len(&self, queue: &str) -> Result<u32, BrokerError> {
        let options = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let name = queue.to_string();
        self.with_admin(|ch| async move {
            ch.queue_declare(name.as_str().into(), options, FieldTable::default())
                .await
                .map(|q| q.message_count())
        })
        .await
        .map_err(|e| match e {
            BrokerError::ChannelClosed(reason) if reason.contains("NOT_FOUND") => {
                BrokerError::NoSuchQueue(queue.to_string())
            }
            other => other,
        })
    }

    /// RabbitMQ answers a passive declare of another connection's exclusive queue with
    /// RESOURCE_LOCKED: the queue is there.
    async fn queue_exists(&self, queue: &str) -> Result<bool, BrokerError> {
        match self.queue_len(queue).await {
            Ok(_) => Ok(true),
            Err(BrokerError::NoSuchQueue(_)) => Ok(false),
            Err(BrokerError::ChannelClosed(reason)) if reason.contains("RESOURCE_LOCKED") => {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_queue(&self, queue: &str) -> Result<(), BrokerError> {
        let name = queue.to_string();
        self.with_admin(|ch| async move {
            ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await
                .map(|_| ())
        })
        .await
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), BrokerError> {
        let name = exchange.to_string();
        self.with_admin(|ch| async move {
            ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await
        })
        .await
    }
}
