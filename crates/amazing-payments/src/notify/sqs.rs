//! AWS SQS, through the AWS SDK: credentials and region from the SDK's usual
//! chain (environment, profile, web identity, container or instance role),
//! and `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_SQS` to point it at a local
//! stand-in. TLS is rustls on ring, the same provider as the rest of the
//! service.
//!
//! FIFO queues (URL ending in `.fifo`) get `MessageGroupId` = the payment
//! (or customer) and `MessageDeduplicationId` = the event id. The dead-letter
//! queue is the one named by the source queue's `RedrivePolicy`.

use crate::domain::event::Event;
use anyhow::{Context, bail};
use aws_sdk_sqs::{
    Client,
    types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry},
};
use aws_smithy_http_client::tls;
use std::time::Duration;

/// A message taken from a queue.
#[derive(Debug, Clone)]
pub struct SqsMessage {
    pub body: String,
    pub receipt_handle: String,
    pub receives: i32,
    pub message_id: String,
}

#[derive(Clone)]
pub struct Sqs {
    client: Client,
    pub url: String,
    fifo: bool,
    /// The dead-letter queue's URL, once looked up.
    dlq: std::sync::Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for Sqs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SQS {}", self.url)
    }
}

/// The SQS entries of a batch: id, body, and for FIFO the group.
const MAX_BATCH: usize = 10;

impl Sqs {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(30))
            .build();
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http)
            .timeout_config(timeouts)
            .load()
            .await;
        if config.region().is_none() {
            bail!("QUEUE_URL is an SQS queue but no AWS region is set (AWS_REGION or a profile)");
        }
        Ok(Sqs {
            client: Client::new(&config),
            url: url.to_string(),
            fifo: url.ends_with(".fifo"),
            dlq: Default::default(),
        })
    }

    fn for_url(&self, url: &str) -> Sqs {
        Sqs { client: self.client.clone(), url: url.to_string(), fifo: url.ends_with(".fifo"), dlq: Default::default() }
    }

    /// Sends events in order, ten at a time; how many of them (from the
    /// front) were accepted. Stops at the first refused entry, so that a
    /// later event is never published before an earlier one.
    pub async fn send_events(&self, events: &[&Event]) -> anyhow::Result<usize> {
        let mut sent = 0;
        for chunk in events.chunks(MAX_BATCH) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, e) in chunk.iter().enumerate() {
                let body = serde_json::to_string(e)?;
                let mut entry = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .message_attributes("type", string_attribute(&e.kind)?)
                    .message_attributes("event_id", string_attribute(&e.id.to_string())?);
                if self.fifo {
                    entry = entry.message_group_id(e.group()).message_deduplication_id(e.id.to_string());
                }
                entries.push(entry.build()?);
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
                .context("SQS SendMessageBatch")?;
            let first_failed = out.failed().iter().filter_map(|f| f.id().parse::<usize>().ok()).min();
            match first_failed {
                None => sent += chunk.len(),
                Some(i) => {
                    let reason = out.failed().iter().map(|f| f.code().to_string()).collect::<Vec<_>>().join(", ");
                    tracing::warn!(accepted = sent + i, reason, "SQS refused part of a batch");
                    return Ok(sent + i);
                }
            }
            tracing::debug!(sent, "published part of a batch");
        }
        Ok(sent)
    }

    /// Sends raw bodies (a redrive); each keeps its FIFO group and id when
    /// it is an event.
    async fn send_raw(&self, body: &str) -> anyhow::Result<()> {
        let mut req = self.client.send_message().queue_url(&self.url).message_body(body);
        if self.fifo {
            let (group, dedup) = match serde_json::from_str::<Event>(body) {
                Ok(e) => (e.group(), e.id.to_string()),
                Err(_) => ("unreadable".to_string(), uuid::Uuid::new_v4().to_string()),
            };
            req = req.message_group_id(group).message_deduplication_id(dedup);
        }
        req.send().await.map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))?;
        Ok(())
    }

    /// Up to `max` messages, waiting at most `wait` for the first,
    /// hidden for `visibility`.
    pub async fn receive(
        &self,
        max: i32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> anyhow::Result<Vec<SqsMessage>> {
        let mut req = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10))
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount);
        if let Some(v) = visibility {
            req = req.visibility_timeout(v.as_secs() as i32);
        }
        let out = req
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("SQS ReceiveMessage")?;
        Ok(out
            .messages()
            .iter()
            .map(|m| SqsMessage {
                body: m.body().unwrap_or_default().to_string(),
                receipt_handle: m.receipt_handle().unwrap_or_default().to_string(),
                receives: m
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1),
                message_id: m.message_id().unwrap_or_default().to_string(),
            })
            .collect())
    }

    pub async fn delete(&self, receipt_handle: &str) -> anyhow::Result<()> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("SQS DeleteMessage")?;
        Ok(())
    }

    /// Shows the message again after `delay` (SQS counts the receive; at the
    /// redrive policy's maxReceiveCount it moves to the dead-letter queue).
    pub async fn retry_later(&self, receipt_handle: &str, delay: Duration) -> anyhow::Result<()> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(delay.as_secs().min(43_200) as i32)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("SQS ChangeMessageVisibility")?;
        Ok(())
    }

    /// The dead-letter queue of this queue, from its `RedrivePolicy`.
    pub async fn dead_letter_queue(&self) -> anyhow::Result<Sqs> {
        let url = self.dlq.get_or_try_init(|| self.find_dead_letter_queue()).await?;
        Ok(self.for_url(url))
    }

    async fn find_dead_letter_queue(&self) -> anyhow::Result<String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("SQS GetQueueAttributes")?;
        let policy = out
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::RedrivePolicy))
            .with_context(|| format!("{} has no RedrivePolicy: it has no dead-letter queue", self.url))?;
        let policy: serde_json::Value = serde_json::from_str(policy).context("reading the RedrivePolicy")?;
        let arn = policy["deadLetterTargetArn"].as_str().context("RedrivePolicy without deadLetterTargetArn")?;
        // arn:aws:sqs:region:account:name
        let mut parts = arn.rsplitn(2, ':');
        let name = parts.next().unwrap_or_default();
        let account = parts.next().and_then(|rest| rest.rsplit(':').next()).unwrap_or_default();
        let url = self
            .client
            .get_queue_url()
            .queue_name(name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("SQS GetQueueUrl of the dead-letter queue")?;
        Ok(url.queue_url().unwrap_or_default().to_string())
    }

    /// Moves messages from this (dead-letter) queue to `to`: receive, send,
    /// delete, since not every SQS implementation offers a move task.
    /// `only` picks messages by event id; others are left (made visible
    /// again at once). Returns how many moved.
    pub async fn move_to(&self, to: &Sqs, only: Option<uuid::Uuid>) -> anyhow::Result<u64> {
        let mut moved = 0;
        let mut skipped = Vec::new();
        loop {
            let batch = self.receive(10, Duration::ZERO, Some(Duration::from_secs(30))).await?;
            if batch.is_empty() {
                break;
            }
            for m in batch {
                let id = serde_json::from_str::<Event>(&m.body).ok().map(|e| e.id);
                if only.is_some() && id != only {
                    skipped.push(m.receipt_handle);
                    continue;
                }
                to.send_raw(&m.body).await?;
                self.delete(&m.receipt_handle).await?;
                moved += 1;
            }
            if only.is_some() && moved > 0 {
                break;
            }
        }
        for handle in skipped {
            self.retry_later(&handle, Duration::ZERO).await?;
        }
        Ok(moved)
    }

    /// Looks at every message of this queue without taking any: each is
    /// received and made visible again at once.
    pub async fn peek_all(&self, limit: usize) -> anyhow::Result<Vec<SqsMessage>> {
        let mut seen: Vec<SqsMessage> = Vec::new();
        let mut handles = Vec::new();
        while seen.len() < limit {
            let batch = self.receive(10, Duration::ZERO, Some(Duration::from_secs(30))).await?;
            if batch.is_empty() {
                break;
            }
            for m in batch {
                handles.push(m.receipt_handle.clone());
                if !seen.iter().any(|s| s.message_id == m.message_id) {
                    seen.push(m);
                }
            }
        }
        for h in handles {
            self.retry_later(&h, Duration::ZERO).await?;
        }
        Ok(seen)
    }

    /// Approximate number of visible and in-flight messages.
    pub async fn depth(&self) -> anyhow::Result<(i64, i64)> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(aws_sdk_sqs::error::DisplayErrorContext(e)))
            .context("SQS GetQueueAttributes")?;
        let get = |n: QueueAttributeName| -> i64 {
            out.attributes().and_then(|a| a.get(&n)).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        ))
    }
}

fn string_attribute(v: &str) -> anyhow::Result<MessageAttributeValue> {
    Ok(MessageAttributeValue::builder().data_type("String").string_value(v).build()?)
}
