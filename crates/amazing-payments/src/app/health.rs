//! Health: the service is healthy when its database answers.

use super::{App, AppError};
use std::time::Duration;

impl App {
    /// Pings the database, waiting at most two seconds.
    pub async fn health(&self) -> Result<(), AppError> {
        let unavailable = || AppError::unavailable("DATABASE_UNAVAILABLE", "the database is unavailable");
        match tokio::time::timeout(Duration::from_secs(2), crate::store::ping(&self.db)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health check: database unavailable");
                Err(unavailable())
            }
            Err(_) => Err(unavailable()),
        }
    }
}
